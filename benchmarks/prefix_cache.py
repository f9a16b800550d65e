"""Time to first token with and without prefix caching, in the engine (no HTTP).

    .venv/bin/python benchmarks/prefix_cache.py [--prefix-len 200] [--requests 16]

A random-init 10M model (the shape of benchmarks/inference.py); every request is a shared prefix
(a system prompt) plus a short distinct tail, submitted one after another (each alone in the
engine, so the figure is prefill time). The last stdout line is JSON with the median TTFT of both
and their ratio (the baseline is prefix_caching=False in the same run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fornalha.infer import Engine, SamplingParams
from fornalha.model import GPT, ModelConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prefix-len", type=int, default=200)
    ap.add_argument("--requests", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=72, n_layer=6, n_head=6, n_embd=384, block_size=256)).eval()

    class Tok:  # ids are given directly: only eos/special ids are needed
        eos_id, bos_id, special_ids = 1, 0, {"<|end|>": 6}

        def encode(self, text: str) -> list[int]:
            return [7 + (ord(c) % 60) for c in text]

        def decode_bytes(self, ids) -> bytes:
            return b"x" * len(list(ids))

    prefix = torch.randint(7, 72, (args.prefix_len,)).tolist()
    prompts = [[0, *prefix, *torch.randint(7, 72, (8,)).tolist()] for _ in range(args.requests)]
    params = SamplingParams(max_new_tokens=1, temperature=0)
    out = {}
    for name, on in (("without", False), ("with", True)):
        eng = Engine(model, Tok(), max_batch_size=4, prefix_caching=on)
        eng.generate([prompts[0]], params)  # warm-up (and, with caching, the first fill)
        times = []
        for p in prompts[1:]:
            t = time.perf_counter()
            eng.generate([p], params)
            times.append((time.perf_counter() - t) * 1e3)
        out[f"ttft_ms_{name}_prefix_cache"] = statistics.median(times)
        print(f"{name:8s} prefix cache: median TTFT {out[f'ttft_ms_{name}_prefix_cache']:.2f} ms", flush=True)
    out["speedup"] = out["ttft_ms_without_prefix_cache"] / out["ttft_ms_with_prefix_cache"]
    out.update(prefix_len=args.prefix_len, tail_len=9, baseline="prefix_caching=False, same run")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
