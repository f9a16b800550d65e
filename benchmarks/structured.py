"""The speed cost of structured output: decode tokens/s with grammar masks vs free, same run.

    flock /tmp/fornalha-bench.lock .venv/bin/python benchmarks/structured.py [--vocab 8192]
        [--batch 8] [--tokens 128] [--threads 2] [--smoke]

A byte-level BPE tokenizer trained on `../shared/data/tinyshakespeare.txt` (`--vocab` tokens: the
mask is computed over all of them, so its cost grows with the vocabulary) and a random-init 10M
model (the shape of benchmarks/inference.py). Three batches of `--batch` requests, each generating
exactly `--tokens` tokens (the free ones ignore end-of-text; the constrained ones follow a schema
— an object holding an array of at least 200 short records, nested object, enum, integer, string —
that cannot close within that budget, so both do the same number of decode steps):

* free        — no grammar (the baseline);
* constrained — every request under the schema;
* mixed       — half and half (what the free half pays for sharing the batch).

Each case runs 3 times, the cases interleaved (after a warm-up of each); the median is reported. Also: the time to prepare the
vocabulary for llguidance (once per server) and to compile the schema (once per request). The last
stdout line is JSON: tokens/s of each case, ratios to the free baseline, mask time per step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from fornalha.infer import Engine, SamplingParams
from fornalha.infer.constrained import GrammarVocabulary, json_schema_grammar
from fornalha.model import GPT, ModelConfig
from fornalha.tokenizer import train_bpe

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"

RECORDS = {
    "type": "object",
    "properties": {
        "scene": {"type": "string", "maxLength": 20},
        "lines": {
            "type": "array",
            "minItems": 200,
            "items": {
                "type": "object",
                "properties": {
                    "speaker": {"type": "string", "maxLength": 12},
                    "mood": {"enum": ["calm", "angry", "sad", "merry"]},
                    "n": {"type": "integer", "minimum": 0, "maximum": 999},
                    "aside": {"type": "object", "properties": {"to": {"type": "string", "maxLength": 8}},
                              "required": ["to"], "additionalProperties": False},
                },
                "required": ["speaker", "mood", "n", "aside"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["scene", "lines"],
    "additionalProperties": False,
}  # fmt: skip


def run_case(engine: Engine, params: list[SamplingParams], prompts: list[str]) -> tuple[float, int]:
    t = time.perf_counter()
    out = engine.generate(prompts, params)
    dt = time.perf_counter() - t
    return dt, sum(len(r.completions[0].token_ids) for r in out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script runs")
    args = ap.parse_args()
    if args.smoke:
        args.vocab, args.batch, args.tokens, args.repeats = 512, 2, 16, 1
    torch.set_num_threads(args.threads)
    text = DATA.read_text(encoding="utf-8")
    t = time.perf_counter()
    tok = train_bpe([text[: 200_000 if args.smoke else None]], args.vocab)
    print(f"tokenizer: BPE {tok.vocab_size} tokens ({time.perf_counter() - t:.1f} s to train)", flush=True)

    torch.manual_seed(0)
    shape = dict(n_layer=2, n_head=2, n_embd=64) if args.smoke else dict(n_layer=6, n_head=6, n_embd=384)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=512, **shape)).eval()
    engine = Engine(model, tok, max_batch_size=args.batch)

    t = time.perf_counter()
    GrammarVocabulary(tok, model.config.vocab_size, [tok.eos_id])
    vocab_s = time.perf_counter() - t
    t = time.perf_counter()
    grammar = json_schema_grammar(RECORDS)
    engine.grammar_vocabulary().constraint(grammar)
    compile_ms = (time.perf_counter() - t) * 1e3

    free = SamplingParams(max_new_tokens=args.tokens, temperature=1.0, ignore_eos=True)
    cons = SamplingParams(max_new_tokens=args.tokens, temperature=1.0, grammar=grammar)
    half = args.batch // 2
    cases = {
        "free": [free] * args.batch,
        "constrained": [cons] * args.batch,
        "mixed": [free] * (args.batch - half) + [cons] * half,
    }
    prompts = [f"Scene {i}: " for i in range(args.batch)]
    for params in cases.values():  # warm-up
        run_case(engine, [p.with_(seed=0) for p in params], prompts)
    rates: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.repeats):  # interleaved, so a change in the machine's load hits every case
        for name, params in cases.items():
            dt, n = run_case(engine, [p.with_(seed=100 * r + i) for i, p in enumerate(params)], prompts)
            assert n == args.tokens * args.batch, f"{name}: {n} tokens, expected {args.tokens * args.batch}"
            rates[name].append(n / dt)
            print(f"  run {r + 1}/{args.repeats} {name}: {n / dt:.1f} tokens/s", flush=True)
    out: dict[str, object] = {}
    for name, rs in rates.items():
        out[f"tokens_per_s_{name}"] = statistics.median(rs)
        print(f"{name:12s} {statistics.median(rs):9.1f} tokens/s  (runs: {', '.join(f'{x:.1f}' for x in rs)})",
              flush=True)  # fmt: skip

    # the mask alone: one step's masks for a full batch of constrained rows, mid-answer, right
    # after a matmul (torch's threads busy, as in a decode step): on this thread (what the engine
    # does) and through llguidance's thread pool (LLExecutor), 30 times each, interleaved
    import llguidance

    vocab = engine.grammar_vocabulary()
    cs = [vocab.constraint(grammar) for _ in range(args.batch)]
    prefix = tok.encode('{"scene":"Verona","lines":[{"speaker":"Romeo","mood":"calm","n":')
    for c in cs:
        for tid in prefix:
            c.consume(tid)
    executor, words = llguidance.LLExecutor(), (model.config.vocab_size + 31) // 32
    pairs = [(c.matcher, i) for i, c in enumerate(cs)]

    def pool() -> None:
        bits = torch.zeros(len(cs), words, dtype=torch.int32)
        executor.unsafe_compute_mask_ptr(pairs, bits.data_ptr(), words * 4, len(cs))

    a, x = torch.randn(384, 1536), torch.randn(args.batch, 384)
    mask_ms: dict[str, list[float]] = {"this_thread": [], "executor": []}
    for _ in range(30):
        for name, fn in (("this_thread", lambda: vocab.allowed(cs)), ("executor", pool)):
            x @ a
            t = time.perf_counter()
            fn()
            mask_ms[name].append((time.perf_counter() - t) * 1e3)
    for name, ms in mask_ms.items():
        ms.sort()
        out[f"mask_ms_{name}_median"], out[f"mask_ms_{name}_p90"] = statistics.median(ms), ms[26]
    mask_ms_step = out["mask_ms_this_thread_median"]

    free_rate = out["tokens_per_s_free"]
    out.update(
        constrained_vs_free=out["tokens_per_s_constrained"] / free_rate,
        mixed_vs_free=out["tokens_per_s_mixed"] / free_rate,
        mask_ms_per_step_batch=mask_ms_step,
        vocabulary_prepare_s=vocab_s,
        schema_compile_ms=compile_ms,
        vocab_size=tok.vocab_size,
        batch=args.batch,
        tokens_per_request=args.tokens,
        threads=args.threads,
        decode_weights=engine.decode_weights,
        kv_cache=engine.kv_cache,
        load_average_1min=os.getloadavg()[0],
        baseline="free (no grammar) requests, same engine, same run",
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
