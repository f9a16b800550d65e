"""Tokenizer speed against its peers, in one run, on the same corpus.

Corpus: the `.py` files of the Python standard library that runs this script (site-packages
excluded), about 31.6 MB; one file = one document. Vocabulary: 4,096 tokens.

* Training throughput (MB of text / s): fornalha's `train_bpe` (rustbpe + building the tiktoken
  encoder), rustbpe alone, Hugging Face `tokenizers`' BpeTrainer (same split regex, byte level).
* Encoding throughput (MB/s) over the whole corpus as one batch: fornalha's `encode_batch`
  (2 threads), tiktoken's `encode_ordinary_batch` with the same ranks (2 threads), HF
  `encode_batch` on the saved `tokenizer.json`; the three must give identical ids (checked).
* The pure-Python reference encoder on the first ~300 KB, for scale.

fornalha and its closest peer (rustbpe, tiktoken) run interleaved, best of ``--repeats``
(default 3); HF runs once. Prints a table; the last line is a JSON object.

    .venv/bin/python benchmarks/tokenizer.py [--vocab-size 4096] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def stdlib_texts() -> list[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(root.rglob("*.py")):
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            continue
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue
    return texts


def best_of(repeats: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import rustbpe
    import tiktoken
    from rich.console import Console
    from rich.table import Table
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    from fornalha.tokenizer import SPECIAL_TOKENS, train_bpe
    from fornalha.tokenizer.bpe import SPLIT_PATTERN
    from fornalha.tokenizer.reference import ReferenceBPE

    texts = stdlib_texts()
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    console = Console()
    console.print(
        f"corpus: {len(texts)} stdlib .py files, {mb:.1f} MB; vocab {args.vocab_size}; cores {os.cpu_count()}"
    )

    # -- training -----------------------------------------------------------------------------
    def train_rustbpe():
        tok = rustbpe.Tokenizer()
        tok.train_from_iterator(iter(texts), args.vocab_size, pattern=SPLIT_PATTERN)
        return tok

    def train_hf():
        hf = Tokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=args.vocab_size,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer=trainer)
        return hf

    # interleaved, so both see the same machine load; best of the repeats
    t_rust = t_ours = float("inf")
    for repeat in range(args.repeats):
        if repeat % 2:  # alternate who goes first
            t_rust = min(t_rust, best_of(1, train_rustbpe)[0])
        seconds, tok = best_of(1, lambda: train_bpe(texts, args.vocab_size))
        t_ours = min(t_ours, seconds)
        if not repeat % 2:
            t_rust = min(t_rust, best_of(1, train_rustbpe)[0])
    t_hf, _ = best_of(1, train_hf)

    # -- encoding -----------------------------------------------------------------------------
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        tok.save(tmp)
        t_save = time.perf_counter() - start
        hf = Tokenizer.from_file(str(Path(tmp) / "tokenizer.json"))
    enc = tiktoken.Encoding(
        "peer",
        pat_str=SPLIT_PATTERN,
        mergeable_ranks=tok.ranks,
        special_tokens={t: i for i, t in enumerate(SPECIAL_TOKENS)},
    )
    e_ours = e_tik = float("inf")
    for repeat in range(args.repeats):
        runs = [("ours", lambda: tok.encode_batch(texts, num_threads=args.threads))]
        runs.append(("tiktoken", lambda: enc.encode_ordinary_batch(texts, num_threads=args.threads)))
        for name, fn in runs[:: 1 if repeat % 2 else -1]:  # alternate who goes first
            seconds, ids = best_of(1, fn)
            if name == "ours":
                e_ours, ids_ours = min(e_ours, seconds), ids
            else:
                e_tik, ids_tik = min(e_tik, seconds), ids
    e_hf, hf_out = best_of(1, lambda: hf.encode_batch(texts, add_special_tokens=False))
    ids_hf = [e.ids for e in hf_out]
    identical = ids_ours == ids_tik == ids_hf
    n_tokens = sum(map(len, ids_ours))

    sample, size = [], 0
    for t in texts:
        sample.append(t)
        size += len(t.encode("utf-8"))
        if size > 300_000:
            break
    ref = ReferenceBPE(tok.ranks, tok.pattern)
    e_ref, ids_ref = best_of(1, lambda: [ref.encode(t) for t in sample])
    ref_identical = ids_ref == ids_ours[: len(sample)]

    figures = {
        "corpus_mb": round(mb, 2),
        "documents": len(texts),
        "vocab_size": args.vocab_size,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_1min": round(os.getloadavg()[0], 2),  # other work on the machine slows every figure
        "train_mb_s": {
            "fornalha": round(mb / t_ours, 2),
            "rustbpe": round(mb / t_rust, 2),
            "hf_tokenizers": round(mb / t_hf, 2),
        },
        "encode_mb_s": {
            "fornalha": round(mb / e_ours, 2),
            "tiktoken": round(mb / e_tik, 2),
            "hf_encode_batch": round(mb / e_hf, 2),
            "reference_python": round(size / 1e6 / e_ref, 3),
        },
        "save_s": round(t_save, 3),
        "tokens": n_tokens,
        "bytes_per_token": round(mb * 1e6 / n_tokens, 3),
        "ids_identical_fornalha_tiktoken_hf": identical,
        "ids_identical_reference": ref_identical,
    }

    table = Table(title=f"stdlib .py ({mb:.1f} MB), vocab {args.vocab_size}, best of {args.repeats}")
    for column in ("measure", "fornalha MB/s", "peer", "peer MB/s", "fornalha / peer"):
        table.add_column(column, justify="left" if column in ("measure", "peer") else "right")
    train, encode = figures["train_mb_s"], figures["encode_mb_s"]
    for measure, ours, peer, theirs in (
        ("train", train["fornalha"], "rustbpe", train["rustbpe"]),
        ("train", train["fornalha"], "HF BpeTrainer", train["hf_tokenizers"]),
        (f"encode ({args.threads} threads)", encode["fornalha"], "tiktoken", encode["tiktoken"]),
        ("encode", encode["fornalha"], "HF encode_batch", encode["hf_encode_batch"]),
        ("encode", encode["fornalha"], "reference (pure Python)", encode["reference_python"]),
    ):
        table.add_row(measure, f"{ours:.2f}", peer, f"{theirs:.3g}", f"{ours / theirs:.2f}x")
    console.print(table)
    console.print(
        f"{n_tokens:,} tokens ({figures['bytes_per_token']} bytes/token); identical ids fornalha = tiktoken = HF: "
        f"{identical}; reference = fornalha: {ref_identical}; save (tokenizer.json etc.): {t_save:.2f} s"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
