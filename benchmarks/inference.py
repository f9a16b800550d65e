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
    val loss (with --run)              the validation loss of the case's own decode step (its
                                       weights format and KV-cache dtype, teacher-forced) on 16
                                       windows of RUN/dataset/val, and its change against `fp32`

Cases (see CASES): fornalha (the engine's default: fp16 decode weights on x86 CPUs and, on CPUs, a
float16 KV cache read by the hand-written kernel), kv32 (the same with a float32 cache and SDPA),
fp32 (the model's own float32 weights and a float32 cache), bf16 (a bfloat16 copy of the model), int8 (fused int8 weight-only
kernel), dynamic (fbgemm dynamic int8), compiled (torch.compile, static shapes; --no-compile
skips), nocache (the whole sequence recomputed each step; --nocache-tokens new tokens only, since
it is slow), hf (transformers `generate`, use_cache=True, on the folder `fornalha export hf`
writes). All cases are built first, then measured interleaved (best of --repeat).

    .venv/bin/python benchmarks/inference.py                   # both sizes, all cases
    .venv/bin/python benchmarks/inference.py --sizes 10M --no-compile --new-tokens 100
    .venv/bin/python benchmarks/inference.py --run runs/demo --no-compile   # a trained run: + val loss

A table with ratios and the target check (batch 1 ≥ 3× hf, batch 8 ≥ 4× batch 1) goes to stdout;
the LAST line is one JSON object with every figure, keys `<case>_<size>_<metric>` plus the headline
keys of the first size: `fornalha_b1_tok_s`, `fornalha_b8_tok_s`, `hf_b1_tok_s`, `hf_b8_tok_s`,
`nocache_b1_tok_s`, `ratio_b1_vs_hf`, `ratio_b8_vs_b1`, `fornalha_int8_b1_tok_s`, ….
"""

from __future__ import annotations

import argparse
import copy
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
    """Peak resident-memory growth inside the block; on a CUDA device (`PeakRSS.cuda = True`)
    the peak of `torch.cuda.memory_allocated` instead (the weights, cache and activations live there)."""

    cuda = False

    def __enter__(self) -> PeakRSS:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = self.peak = torch.cuda.memory_allocated()
            return self
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            return
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


def fit_context(args: argparse.Namespace, block: int) -> argparse.Namespace:
    """The lengths of `args`, shortened where a model's context (`block`) is smaller (a --run)."""
    fit = copy.copy(args)
    fit.prefill_len = min(args.prefill_len, block - 1)
    fit.new_tokens = min(args.new_tokens, block - args.prompt_len)
    fit.nocache_tokens = min(args.nocache_tokens, fit.new_tokens)
    if (fit.prefill_len, fit.new_tokens) != (args.prefill_len, args.new_tokens):
        print(
            f"   context {block}: prefill {fit.prefill_len} tokens, {fit.new_tokens} new tokens",
            file=sys.stderr,
        )
    return fit


def val_batches(run_dir: Path, tokenizer, seq_len: int, windows: int = 16) -> list | None:
    """Windows of the run's held-out text (RUN/dataset/val, as `fornalha pipeline` writes it) as
    (x, y) batches of 8, or None when the run has no such split."""
    from fornalha.data.dataset import iter_texts
    from fornalha.evaluate.loss import iter_document_tokens, iter_windows

    if not (run_dir / "dataset" / "val").is_dir():
        return None
    stream = iter_windows(iter_document_tokens(tokenizer, iter_texts(run_dir / "dataset", "val")), seq_len)
    full = [w for _, w in zip(range(windows), (w for w in stream if len(w[0]) == seq_len))]
    if not full:
        return None
    return [
        (torch.tensor([x for x, _ in full[i : i + 8]]), torch.tensor([y for _, y in full[i : i + 8]]))
        for i in range(0, len(full), 8)
    ]


def decode_val_loss(run: Callable, batches: list) -> float | None:
    """The validation loss of a case's own decode step (its weights format, its cache's dtype),
    teacher-forced one token at a time (`fornalha.infer.decode.decode_loss`)."""
    from fornalha.infer.decode import decode_loss

    engine = getattr(run, "engine", None)
    if engine is None or not engine.use_cache:
        return None
    dev = engine.device
    moved = [(x.to(dev), y.to(dev)) for x, y in batches]
    return decode_loss(engine.model, moved, engine.decode_weights, engine.cache.k.dtype)


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

    run.engine = engine  # for the validation loss of exactly what it decodes with
    return run


def hf_case(
    run_dir: Path, tmp: Path, device: torch.device, dtype: torch.dtype = torch.float32
) -> Callable[[list[list[int]], int], None]:
    from transformers import AutoModelForCausalLM

    from fornalha.interop.hf import export_hf

    out = export_hf(run_dir, tmp / f"hf-{run_dir.name}")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=dtype).to(device).eval()

    @torch.inference_mode()
    def run(batch: list[list[int]], n: int) -> None:
        ids = torch.tensor(batch, device=device)  # equal lengths: no padding needed
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
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


#: Cases in table order: name -> (description, engine keyword arguments or a special builder).
CASES = {
    "fornalha": "the engine as configured by default (on x86 CPUs: fp16 weights, fp16 KV cache + kernel)",
    "kv32": "the default engine but a float32 KV cache read by PyTorch's SDPA (kv_cache=None)",
    "fp32": "the engine with the model's own float32 weights and cache (decode_weights=None, kv_cache=None)",
    "bf16": "the engine on a bfloat16 copy of the model (dtype=torch.bfloat16)",
    "int8": "int8 weights through the fused aten._weight_int8pack_mm (decode_weights='int8')",
    "dynamic": "fbgemm dynamic int8, activations quantized per batch (decode_weights='dynamic')",
    "compiled": "torch.compile of the static-shape decode step, float32 weights",
    "nocache": "no KV cache: the whole sequence recomputed every step",
    "hf": "transformers generate(use_cache=True) on the exported folder, float32",
}
JSON_NAME = {"fornalha": "fornalha", "kv32": "fornalha_kv32", "fp32": "fornalha_fp32", "bf16": "fornalha_bf16", "int8": "fornalha_int8",
             "dynamic": "fornalha_dynamic", "compiled": "fornalha_compiled", "nocache": "nocache", "hf": "hf"}  # fmt: skip
METRICS = ("b1_tok_s", "b8_tok_s", "prefill_tok_s", "ttft_ms", "peak_mb", "case_mb")


def builders(
    model: GPT, tok, run_dir: Path, tmp: Path, device: torch.device
) -> dict[str, Callable[[], Callable]]:
    """On a GPU, `compiled` and `hf` run in bfloat16 (`compiled` with CUDA graphs), as one would serve there."""
    gpu = device.type == "cuda"
    half = {"dtype": torch.bfloat16} if gpu else {}
    return {
        "fornalha": lambda: fornalha_case(model, tok, 8, device=device),
        "kv32": lambda: fornalha_case(model, tok, 8, kv_cache=None, device=device),
        "fp32": lambda: fornalha_case(model, tok, 8, decode_weights=None, kv_cache=None, device=device),
        "bf16": lambda: fornalha_case(copy.deepcopy(model), tok, 8, dtype=torch.bfloat16, device=device),
        "int8": lambda: fornalha_case(model, tok, 8, decode_weights="int8", device=device),
        "dynamic": lambda: fornalha_case(model, tok, 8, decode_weights="dynamic", device=device),
        "compiled": lambda: fornalha_case(
            copy.deepcopy(model) if gpu else model, tok, 8, compile=True, device=device, **half
        ),
        "nocache": lambda: fornalha_case(model, tok, 8, use_cache=False, device=device),
        "hf": lambda: hf_case(run_dir, tmp, device, half.get("dtype", torch.float32)),
    }


def measure_all(
    runs: dict[str, Callable], vocab: int, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Throughput at batch 1 and 8, time to first token, prefill speed and peak memory of every case.

    The cases are *interleaved* — repeat r runs every case once before repeat r+1 — and each figure
    is the best of `--repeat` runs: on a shared machine, load that comes and goes then hits all cases
    alike, and the minimum time is the figure least disturbed by other processes."""
    p1, p8 = prompts(1, args.prompt_len, vocab), prompts(8, args.prompt_len, vocab, seed=1)
    long = prompts(1, args.prefill_len, vocab, seed=2)
    for run in runs.values():  # warm-up: first-call costs (allocator, kernels, compilation)
        run(p1, 4)
        run(p8, 4)
    times: dict[str, dict[str, list[float]]] = {name: {} for name in runs}
    peak = dict.fromkeys(runs, 0.0)
    for _ in range(args.repeat):
        for name, run in runs.items():
            n = args.nocache_tokens if name == "nocache" else args.new_tokens
            with PeakRSS() as mem:
                for key, batch, k in (("ttft", p1, 1), ("prefill", long, 1), ("b1", p1, n), ("b8", p8, n)):
                    t = time.perf_counter()
                    run(batch, k)
                    times[name].setdefault(key, []).append(time.perf_counter() - t)
            peak[name] = max(peak[name], mem.delta_mb)
    out = {}
    for name, t in times.items():
        n = args.nocache_tokens if name == "nocache" else args.new_tokens
        out[name] = {
            "b1_tok_s": n / min(t["b1"]),
            "b8_tok_s": 8 * n / min(t["b8"]),
            "prefill_tok_s": args.prefill_len / min(t["prefill"]),
            "ttft_ms": min(t["ttft"]) * 1e3,
            "peak_mb": peak[name],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="benchmark this run folder instead of random models")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--nocache-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--prefill-len", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many (interleaved) runs per figure")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile case (slow to build)")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers case")
    ap.add_argument("--cases", nargs="+", choices=list(CASES), help="only these cases")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda; memory is then CUDA memory")
    args = ap.parse_args()
    device = torch.device(args.device)
    PeakRSS.cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs{gpu}",
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
            print(f"== {size} ({model.num_params() / 1e6:.1f}M params, vocab {vocab})", file=sys.stderr)
            wanted = [c for c in CASES if not args.cases or c in args.cases]
            wanted = [
                c for c in wanted if not (c == "compiled" and args.no_compile or c == "hf" and args.no_hf)
            ]
            cases, case_mb = {}, {}
            for name, build in builders(model, tok, run_dir, tmp, device).items():
                if name not in wanted:
                    continue
                t0 = time.perf_counter()
                try:
                    with PeakRSS() as whole:  # building the case: KV cache, packed weights, HF model
                        cases[name] = build()
                        cases[name](prompts(1, 4, vocab), 2)
                except Exception as exc:  # one broken case should not lose the others
                    print(f"   {name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                case_mb[name] = whole.delta_mb
                print(f"   {name}: built in {time.perf_counter() - t0:.1f}s — {CASES[name]}", file=sys.stderr)
            batches = val_batches(run_dir, tok, min(128, model.config.block_size)) if args.run else None
            if args.run and batches is None:
                print(f"   no {run_dir / 'dataset' / 'val'}: no validation loss", file=sys.stderr)
            fit = fit_context(args, model.config.block_size)
            for name, figures in measure_all(cases, vocab, fit).items():
                figures["case_mb"] = case_mb[name]
                loss = decode_val_loss(cases[name], batches) if batches else None
                if loss is not None:
                    figures["val_loss"] = loss
                table.append((size, name, figures))
                for metric, value in figures.items():
                    results[f"{name}_{size}_{metric}"] = round(value, 6 if metric == "val_loss" else 2)
            del cases

    # Headline keys: the first size (10M by default).
    first = table[0][0] if table else None
    for size, name, figures in table:
        if size == first:
            for metric in METRICS:
                results[f"{JSON_NAME[name]}_{metric}"] = round(figures[metric], 2)
            if "val_loss" in figures:
                results[f"{JSON_NAME[name]}_val_loss"] = round(figures["val_loss"], 6)

    header = f"{'size':<6}{'case':<10}{'b1 tok/s':>10}{'b8 tok/s':>10}{'b8/b1':>7}{'prefill/s':>11}"
    header += f"{'TTFT ms':>9}{'peak MB':>9}{'case MB':>9}{'b1 vs hf':>10}{'b1 vs nocache':>15}"
    with_loss = any("val_loss" in f for _, _, f in table)
    header += f"{'val loss':>10}{'vs fp32':>10}" if with_loss else ""
    header += "  target"
    print(header)
    print("-" * len(header))
    for size, name, f in table:
        ref = {n: g for s, n, g in table if s == size}
        ratio_hf = f["b1_tok_s"] / ref["hf"]["b1_tok_s"] if "hf" in ref else None
        vs_hf = f"{ratio_hf:.2f}x" if ratio_hf else "-"
        vs_nc = f"{f['b1_tok_s'] / ref['nocache']['b1_tok_s']:.2f}x" if "nocache" in ref else "-"
        b8b1 = f["b8_tok_s"] / f["b1_tok_s"]
        met = "-" if ratio_hf is None or name in ("hf", "nocache") else ""
        if not met:
            met = (
                "b1>=3x hf "
                + ("yes" if ratio_hf >= 3 else "no")
                + ", b8>=4x b1 "
                + ("yes" if b8b1 >= 4 else "no")
            )
        loss = ""
        if with_loss:
            exact = ref.get("fp32", {}).get("val_loss")
            value, change = f.get("val_loss"), "-"
            if value is not None and exact:
                change = f"{(value - exact) / exact * 100:+.4f}%"
            loss = f"{value:>10.4f}{change:>10}" if value is not None else f"{'-':>10}{'-':>10}"
        print(
            f"{size:<6}{name:<10}{f['b1_tok_s']:>10.1f}{f['b8_tok_s']:>10.1f}{b8b1:>7.2f}"
            f"{f['prefill_tok_s']:>11.0f}{f['ttft_ms']:>9.1f}{f['peak_mb']:>9.1f}{f['case_mb']:>9.1f}{vs_hf:>10}{vs_nc:>15}{loss}  {met}"
        )
    if "fornalha_b1_tok_s" in results and "hf_b1_tok_s" in results:
        results["ratio_b1_vs_hf"] = round(results["fornalha_b1_tok_s"] / results["hf_b1_tok_s"], 2)
    if "fornalha_b1_tok_s" in results:
        results["ratio_b8_vs_b1"] = round(results["fornalha_b8_tok_s"] / results["fornalha_b1_tok_s"], 2)
    for size in dict.fromkeys(s for s, _, _ in table):
        for name in CASES:
            b1, hf = results.get(f"{name}_{size}_b1_tok_s"), results.get(f"hf_{size}_b1_tok_s")
            if b1 and hf and name != "hf":
                results[f"{name}_{size}_b1_vs_hf"] = round(b1 / hf, 2)
            if b1 and results.get(f"{name}_{size}_b8_tok_s"):
                results[f"{name}_{size}_b8_vs_b1"] = round(results[f"{name}_{size}_b8_tok_s"] / b1, 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
