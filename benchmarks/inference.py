"""Inference benchmark: the fornalha engine vs. no KV cache vs. Hugging Face transformers.

On the same weights (a ~10M and a ~50M parameter model, random init unless --run is given) it
measures, for each case:

    gen tok/s at batch 1 and batch 8   generated tokens / wall time of a whole greedy generation
                                       (a short prompt, then --new-tokens tokens per sequence)
    prefill tok/s                      prompt tokens / time to first token, for a --prefill-len prompt
    TTFT                               time to first token for the short prompt (batch 1)
    peak memory                        peak RSS growth while the case generates (sampled every 2 ms),
                                       and while it is built and run (case_mb: + KV cache,
                                       quantized copy, or transformers' own copy of the weights)

Cases: fornalha (the engine), fornalha-int8 (weight-only int8), fornalha-dynamic (torch dynamic
int8), fornalha-compiled (torch.compile, static shapes; --no-compile skips), nocache (the same
model, the whole sequence recomputed each step; --nocache-tokens new tokens only, since it is
slow), hf (transformers `generate`, use_cache=True, on the folder `fornalha export hf` writes).

    .venv/bin/python benchmarks/inference.py                   # both sizes, all cases
    .venv/bin/python benchmarks/inference.py --sizes 10M --no-compile --new-tokens 100

A table with ratios goes to stdout; the LAST line is one JSON object with every figure, keys
`<case>_<size>_<metric>` plus the 10M headline keys `fornalha_b1_tok_s`, `hf_b1_tok_s`, ….
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fornalha.checkpoint import load_run, model_state_for_saving, save_checkpoint
from fornalha.infer import Engine, SamplingParams
from fornalha.infer.quantize import quantize_model
from fornalha.model import GPT, ModelConfig

SIZES = {
    # GPT-2-small-like shapes with Llama blocks. 10M: nanoGPT's Shakespeare-char shape.
    "10M": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "50M": dict(n_layer=7, n_head=12, n_embd=768, block_size=256),
}
CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # 65 - 7 specials used


# --------------------------------------------------------------------------------------------
# Memory: peak resident-set growth, sampled from /proc (torch allocations are invisible to tracemalloc)
# --------------------------------------------------------------------------------------------


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


class PeakRSS:
    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / 2**20


# --------------------------------------------------------------------------------------------
# The model under test
# --------------------------------------------------------------------------------------------


def make_run(size: str, tmp: Path) -> Path:
    """A run folder with a random-init model of the given size and a 65-token char tokenizer."""
    from fornalha.tokenizer.char import CharTokenizer

    run = tmp / f"run-{size}"
    tok = CharTokenizer(sorted(set(CHARS)))
    tok.save(run / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, **SIZES[size])
    model = GPT(cfg)
    save_checkpoint(
        run / "checkpoints" / "best",
        model_state_for_saving(model),
        {"model_config": cfg.to_dict(), "step": 0},
    )
    return run


def prompts(batch: int, length: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[0, *torch.randint(7, vocab, (length - 1,), generator=g).tolist()] for _ in range(batch)]


# --------------------------------------------------------------------------------------------
# Cases: each is a function (list of prompt ids, new tokens) -> None that generates greedily
# --------------------------------------------------------------------------------------------


def fornalha_case(
    model: GPT, tokenizer, max_batch: int, **engine_kw
) -> Callable[[list[list[int]], int], None]:
    engine = Engine(model, tokenizer, max_batch_size=max_batch, **engine_kw)

    def run(batch: list[list[int]], n: int) -> None:
        params = SamplingParams(temperature=0, max_new_tokens=n, ignore_eos=True)
        res = engine.generate(batch, params, add_bos=False)
        assert all(len(r.completions[0].token_ids) == n for r in res)

    return run


def hf_case(run_dir: Path, tmp: Path) -> Callable[[list[list[int]], int], None]:
    from transformers import AutoModelForCausalLM

    from fornalha.interop.hf import export_hf

    out = export_hf(run_dir, tmp / f"hf-{run_dir.name}")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()

    @torch.inference_mode()
    def run(batch: list[list[int]], n: int) -> None:
        ids = torch.tensor(batch)  # equal lengths: no padding needed
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=True,
            pad_token_id=2,
        )
        assert out.shape[1] == ids.shape[1] + n

    return run


def measure(
    run: Callable, vocab: int, new_tokens: int, prompt_len: int, prefill_len: int, repeat: int = 3
) -> dict[str, float]:
    """Throughput at batch 1 and 8, time to first token, prefill speed and peak memory of one case.

    Each timing is the best of `repeat` runs: on a shared machine the minimum is the figure least
    disturbed by other processes."""
    p1, p8 = prompts(1, prompt_len, vocab), prompts(8, prompt_len, vocab, seed=1)
    long = prompts(1, prefill_len, vocab, seed=2)
    run(p1, 4)  # warm-up: first-call costs (allocator, kernels, compilation) are not the steady state
    run(p8, 4)

    def best(batch: list[list[int]], n: int) -> float:
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            run(batch, n)
            times.append(time.perf_counter() - t)
        return min(times)

    out: dict[str, float] = {}
    with PeakRSS() as mem:
        out["ttft_ms"] = best(p1, 1) * 1e3
        out["prefill_tok_s"] = prefill_len / best(long, 1)
        out["b1_tok_s"] = new_tokens / best(p1, new_tokens)
        out["b8_tok_s"] = 8 * new_tokens / best(p8, new_tokens)
    out["peak_mb"] = mem.delta_mb
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="benchmark this run folder instead of random models")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--nocache-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--prefill-len", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs per figure")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile case (slow to build)")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers case")
    ap.add_argument(
        "--cases", nargs="+", help="only these cases (fornalha, int8, dynamic, compiled, nocache, hf)"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs",
        file=sys.stderr,
    )

    results: dict[str, float] = {}
    table: list[tuple[str, str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        runs = {"run": args.run} if args.run else {s: make_run(s, tmp) for s in args.sizes}
        for size, run_dir in runs.items():
            model, tok, _ = load_run(run_dir)
            vocab = model.config.vocab_size
            label = f"{size} ({model.num_params() / 1e6:.1f}M params, vocab {vocab})"
            print(f"== {label}", file=sys.stderr)
            cases: dict[str, Callable[[], Callable]] = {
                "fornalha": lambda m=model, t=tok: fornalha_case(m, t, 8),
                "int8": lambda m=model, t=tok: fornalha_case(quantize_model(m, "int8"), t, 8),
                "dynamic": lambda m=model, t=tok: fornalha_case(quantize_model(m, "dynamic"), t, 8),
                "compiled": lambda m=model, t=tok: fornalha_case(m, t, 8, compile=True),
                "nocache": lambda m=model, t=tok: fornalha_case(m, t, 8, use_cache=False),
                "hf": lambda r=run_dir: hf_case(r, tmp),
            }
            if args.no_compile:
                cases.pop("compiled")
            if args.no_hf:
                cases.pop("hf")
            if args.cases:
                cases = {k: v for k, v in cases.items() if k in args.cases}
            for name, build in cases.items():
                n = args.nocache_tokens if name == "nocache" else args.new_tokens
                t0 = time.perf_counter()
                try:
                    with PeakRSS() as whole:  # building the case too: KV cache, quantized copy, HF model
                        run = build()
                        figures = measure(run, vocab, n, args.prompt_len, args.prefill_len, args.repeat)
                except Exception as exc:  # one broken case should not lose the others
                    print(f"   {name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                figures["case_mb"] = whole.delta_mb
                print(f"   {name}: {figures} ({time.perf_counter() - t0:.0f}s)", file=sys.stderr)
                table.append((size, name, figures))
                for metric, value in figures.items():
                    results[f"{name}_{size}_{metric}"] = round(value, 2)
                del run

    # Headline keys: the first size (10M by default).
    first = table[0][0] if table else None
    case_key = {"fornalha": "fornalha", "int8": "fornalha_int8", "dynamic": "fornalha_dynamic",
                "compiled": "fornalha_compiled", "nocache": "nocache", "hf": "hf"}  # fmt: skip
    for size, name, figures in table:
        if size == first:
            for metric in ("b1_tok_s", "b8_tok_s", "prefill_tok_s", "ttft_ms", "peak_mb", "case_mb"):
                results[f"{case_key[name]}_{metric}"] = round(figures[metric], 2)

    header = f"{'size':<6}{'case':<10}{'b1 tok/s':>10}{'b8 tok/s':>10}{'b8/b1':>7}{'prefill/s':>11}"
    header += f"{'TTFT ms':>9}{'peak MB':>9}{'case MB':>9}{'b1 vs hf':>10}{'b1 vs nocache':>15}"
    print(header)
    print("-" * len(header))
    for size, name, f in table:
        ref = {n: g for s, n, g in table if s == size}
        vs_hf = f"{f['b1_tok_s'] / ref['hf']['b1_tok_s']:.2f}x" if "hf" in ref else "-"
        vs_nc = f"{f['b1_tok_s'] / ref['nocache']['b1_tok_s']:.2f}x" if "nocache" in ref else "-"
        print(
            f"{size:<6}{name:<10}{f['b1_tok_s']:>10.1f}{f['b8_tok_s']:>10.1f}{f['b8_tok_s'] / f['b1_tok_s']:>7.2f}"
            f"{f['prefill_tok_s']:>11.0f}{f['ttft_ms']:>9.1f}{f['peak_mb']:>9.1f}{f['case_mb']:>9.1f}{vs_hf:>10}{vs_nc:>15}"
        )
    if "fornalha_b1_tok_s" in results and "hf_b1_tok_s" in results:
        results["fornalha_vs_hf_b1"] = round(results["fornalha_b1_tok_s"] / results["hf_b1_tok_s"], 2)
        results["fornalha_b8_vs_b1"] = round(results["fornalha_b8_tok_s"] / results["fornalha_b1_tok_s"], 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
