"""GPU check for serving: the decode step's CUDA graphs, then `serve_load.py` on a 124M model.

    python benchmarks/gpu_serve_check.py                        # on a CUDA machine: ~6 minutes
    python benchmarks/gpu_serve_check.py --device cpu --smoke   # anywhere: the script runs (tests use it)

One prepared run for a lent GPU, in three parts; the last stdout line is JSON.

1. **Same tokens.** The engine with its recorded graphs (`fornalha.infer.graphs`, on by default on
   CUDA) against the same engine with `cuda_graphs=False`, in bfloat16 as `fornalha serve` runs
   there: 16 prompts admitted a few steps apart (batches of every size up to 16, so every bucket
   is replayed), greedy. Reports whether all token ids are equal, and the largest logit difference
   of one decode step.
2. **Decode speed.** Tokens/s at batch 1 and batch 16 (fixed-length answers) with and without
   graphs, for random-init models of the 10M shape (6 x 384) and GPT-2 small's (12 x 768): the
   graphs' gain is the ratio, measured in the same run.
3. **Serving.** `benchmarks/serve_load.py --size 124m --device cuda --no-llamacpp` at 1, 16 and 64
   clients on the `gpt2-124m` preset trained for `--train-minutes` (its JSON is embedded as `serve`).

Without CUDA it stops with a clear error; `--smoke` runs parts 1 and 2 on a tiny model, with the
graphs' static step run eagerly (`DecodeGraphs(capture=False)`), and skips part 3.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from fornalha.infer import Engine, SamplingParams
from fornalha.infer.graphs import DecodeGraphs
from fornalha.model import GPT, ModelConfig

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {
    "10m": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "smoke": dict(n_layer=2, n_head=4, n_embd=64, block_size=128),
}


class Bytes:
    """A byte-level tokenizer (id = byte + 1, 0 is the end token): random models need no vocabulary."""

    eos_id, bos_id, special_ids = 0, None, {}
    vocab_size = 257

    def encode(self, text: str) -> list[int]:
        return [b + 1 for b in text.encode()]

    def decode_bytes(self, ids) -> bytes:
        return bytes(i - 1 for i in ids if i > 0)


def engine(shape: str, device: str, graphs: bool, max_batch: int = 16) -> Engine:
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=Bytes.vocab_size, init_std=0.3, **SHAPES[shape]))
    dtype = torch.bfloat16 if device == "cuda" else None
    e = Engine(model, Bytes(), device=device, dtype=dtype, max_batch_size=max_batch,
               cuda_graphs=graphs and device == "cuda", decode_weights=None, kv_cache=None)  # fmt: skip
    if graphs and device != "cuda":  # no GPU: the very same static step, run eagerly
        e.graphs = DecodeGraphs(e.decoder, capture=False)
    return e


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def same_tokens(shape: str, device: str, new_tokens: int) -> dict:
    """Part 1: greedy token ids with and without graphs under continuous batching."""
    prompts = [f"Request {i}: " + "to be or not to be " * (i % 5) for i in range(16)]
    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens, ignore_eos=True)
    outs, logits = [], []
    for graphs in (False, True):
        e = engine(shape, device, graphs)
        ids = []
        for i, p in enumerate(prompts):
            ids.append(e.add_request(p, params))
            if i % 3 == 2:
                e.step()
        while e.has_unfinished():
            e.step()
        outs.append([e.pop_result(i).token_ids for i in ids])
        # one decode step's logits over 5 rows at different positions
        for i in range(5):
            e.add_request(prompts[i], params.with_(max_new_tokens=2))
        e.step()
        with torch.inference_mode():
            if e.graphs is None:
                logits.append(e.decoder(e._tokens, e.cache.pos, 5, int(e.cache.pos.max()) + 1).float().cpu())
            else:
                logits.append(e.graphs(e._tokens, e.cache.pos, 5).float().cpu())
    return {
        "tokens_equal": outs[0] == outs[1],
        "rows_equal": sum(a == b for a, b in zip(*outs, strict=True)),
        "rows": len(prompts),
        "max_logit_diff": float((logits[0] - logits[1]).abs().max()),
    }


def decode_speed(shape: str, device: str, new_tokens: int, repeat: int) -> dict:
    """Part 2: tokens/s at batch 1 and 16, best of `repeat`, with and without graphs."""
    out: dict = {}
    params = SamplingParams(temperature=0.0, max_new_tokens=new_tokens, ignore_eos=True)
    for graphs in (False, True):
        e = engine(shape, device, graphs)
        name = "graphs" if graphs else "eager"
        for batch in (1, 16):
            prompts = [f"Prompt {i} to be or not" for i in range(batch)]
            e.generate(prompts, params.with_(max_new_tokens=4))  # warm-up
            best = float("inf")
            for _ in range(repeat):
                sync(device)
                t = time.perf_counter()
                e.generate(prompts, params)
                sync(device)
                best = min(best, time.perf_counter() - t)
            out[f"{name}_b{batch}_tok_s"] = batch * new_tokens / best
        del e
        if device == "cuda":
            torch.cuda.empty_cache()
    for b in (1, 16):
        out[f"graphs_over_eager_b{b}"] = out[f"graphs_b{b}_tok_s"] / out[f"eager_b{b}_tok_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument(
        "--smoke", action="store_true", help="a tiny model, parts 1 and 2 only (checks the script)"
    )
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--train-minutes", type=float, default=2.0, help="training of the served 124M model")
    ap.add_argument("--no-serve", action="store_true", help="skip part 3")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: CUDA is not available; run with --device cpu --smoke to check the script")
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    result: dict = {"device": name, "torch": torch.__version__}
    shapes = ["smoke"] if args.smoke else ["10m", "124m"]
    new_tokens = 8 if args.smoke else args.new_tokens
    result["same_tokens"] = same_tokens(shapes[0], args.device, 3 if args.smoke else 48)
    print(f"same tokens: {result['same_tokens']}", flush=True)
    for shape in shapes:
        result[f"decode_{shape}"] = decode_speed(
            shape, args.device, new_tokens, 1 if args.smoke else args.repeat
        )
        print(f"decode {shape}: {result[f'decode_{shape}']}", flush=True)
    if not (args.smoke or args.no_serve):
        cmd = [sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--size", "124m", "--device",
               args.device, "--no-llamacpp", "--clients", "1", "16", "64", "--train-minutes",
               str(args.train_minutes)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = proc.stdout.strip().splitlines()
        try:
            result["serve"] = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            result["serve"] = {"failed": proc.returncode, "stderr": proc.stderr[-2000:]}
        print(f"serve: {result['serve']}", flush=True)
    result["wall_s"] = time.perf_counter() - t0
    result["baseline"] = "the same engine with cuda_graphs=False, in the same run"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
