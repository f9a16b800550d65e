"""Does fusing the model's embeddings with BM25 find the right passage more often than BM25 alone?

    flock /tmp/fornalha-bench.lock .venv/bin/python benchmarks/retrieval.py --run RUN [--paraphrases 300]

The fixture is real: Aira (`../shared/data/sft/aira1_qa_pt.jsonl`, Portuguese Q&A about AI). Its 142
human-written answers are the documents, one file each, read by `fornalha.assistant.read_passages`
(one passage per answer); the questions are the 142 original questions plus a seeded sample of the
4,147 paraphrased ones, and the right passage is the question's own answer. Three retrievers over the
same passages, in the same run:

    bm25      fornalha.assistant.Retriever(passages)                      (the baseline)
    embed     the run's model alone: cosine of averaged final hidden states (engine.embed)
    hybrid    reciprocal rank fusion of the two (what `--retrieval hybrid` serves)

Figures: hit@1, hit@3 (the right answer among the first 3 passages, what `--docs-top-k 3` quotes),
MRR@10, and the mean search time per question. The last stdout line is JSON with every figure,
``hybrid_vs_bm25_hit3`` (ratio) and the run's validation bits per byte (how good the model is).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np

from fornalha.assistant import Retriever, engine_embedder, read_passages

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sft" / "aira1_qa_pt.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="run folder whose model gives the embeddings")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--paraphrases", type=int, default=300, help="paraphrased questions sampled (seed 0)")
    args = ap.parse_args()

    import torch

    from fornalha.checkpoint import load_run
    from fornalha.infer import Engine

    torch.set_num_threads(1)
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines()]
    answers: dict[int, str] = {}
    for row in rows:
        answers.setdefault(row["answer_id"], row["completion"])
    originals = [(r["prompt"], r["answer_id"]) for r in rows if r["source"] == "original"]
    paraphrased = [(r["prompt"], r["answer_id"]) for r in rows if r["source"] != "original"]
    random.Random(0).shuffle(paraphrased)
    questions = originals + paraphrased[: args.paraphrases]

    with tempfile.TemporaryDirectory() as tmp:
        for aid, text in answers.items():
            (Path(tmp) / f"answer-{aid:03d}.txt").write_text(text, encoding="utf-8")
        passages, _ = read_passages(tmp, max_words=400)
    assert len(passages) == len(answers), "one passage per answer"

    model, tokenizer, meta = load_run(args.run)
    engine = Engine(model, tokenizer, max_batch_size=1)
    embed = engine_embedder(engine, tokenizer)
    bm25 = Retriever(passages)
    t0 = time.perf_counter()
    hybrid = Retriever(passages, embed=embed)
    index_s = time.perf_counter() - t0

    def embed_only(question: str, k: int) -> list[str]:
        scores = hybrid.embedding_scores(question)
        return [passages[i].path for i in np.argsort(-scores, kind="stable")[:k]]

    searches = {
        "bm25": lambda q, k: [h.passage.path for h in bm25.search(q, k)],
        "embed": embed_only,
        "hybrid": lambda q, k: [h.passage.path for h in hybrid.search(q, k)],
    }
    results: dict[str, dict[str, float]] = {}
    for name, search in searches.items():
        hit1 = hit3 = rr = 0.0
        t0 = time.perf_counter()
        for question, aid in questions:
            ranked = search(question, 10)
            want = f"answer-{aid:03d}.txt"
            hit1 += ranked[:1] == [want]
            hit3 += want in ranked[:3]
            rr += 1.0 / (ranked.index(want) + 1) if want in ranked else 0.0
        ms = (time.perf_counter() - t0) / len(questions) * 1e3
        n = len(questions)
        results[name] = {"hit@1": hit1 / n, "hit@3": hit3 / n, "mrr@10": rr / n, "ms_per_query": ms}
        print(
            f"{name:7s} hit@1 {hit1 / n:.3f}  hit@3 {hit3 / n:.3f}  MRR@10 {rr / n:.3f}  {ms:.2f} ms/question"
        )

    print(f"({len(questions)} questions: {len(originals)} original + {len(questions) - len(originals)} "
          f"paraphrased; {len(passages)} passages; embedding index built in {index_s:.1f} s)")  # fmt: skip
    summary = {
        "fixture": "aira1_qa_pt: 142 answers as documents",
        "questions": len(questions),
        "run": str(args.run),
        "model_params": model.num_params(),
        "val_bpb": meta.get("val_bpb"),
        "baseline": "bm25",
        **{f"{name}_{k}": round(v, 4) for name, r in results.items() for k, v in r.items()},
        "hybrid_vs_bm25_hit3": round(results["hybrid"]["hit@3"] / max(results["bm25"]["hit@3"], 1e-9), 4),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
