"""GPU check: the `gpt2-124m` preset for a few hundred steps in bf16 with torch.compile, on CUDA.

    python benchmarks/gpu_check.py                      # on a CUDA machine: ~300 steps, < 8 minutes
    python benchmarks/gpu_check.py --device cpu --smoke # anywhere: 3 steps of a tiny model (tests use it)

Measures, in one run: the bf16 matmul peak of this GPU (a timed 8192² matmul: the MFU denominator,
next to the datasheet figure when the GPU is known), which attention kernel SDPA picks (flash on
Ampere and newer), compile time, then training tokens/s and MFU of the `gpt2-124m` preset on
random tokens (data loading is not what is measured), with bf16 autocast, fused AdamW/Muon from
`fornalha.train.optim` and `torch.compile`. The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from fornalha.model import GPT
from fornalha.train.config import load_config
from fornalha.train.optim import build_optimizers

DATASHEET_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sdpa_backend(device: torch.device) -> str:
    """Which fused attention kernel SDPA can use here (flash > memory-efficient > math)."""
    if device.type != "cuda":
        return "cpu (flash attention for CPU)"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 12, 1024, 64, device=device, dtype=torch.bfloat16)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel(backend):
                torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
            return backend.name.lower()
        except RuntimeError:
            continue
    return "math"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="sequences of 1024 tokens per step (16: MFU 25 %%, 32: 38 %% on an H200)",
    )
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="a tiny model for 3 steps (checks the script runs)")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: CUDA is not available; run with --device cpu --smoke to check the script")

    overrides = ["train.dtype=bfloat16"]
    if args.smoke:
        overrides += ["model.n_layer=2", "model.n_embd=64", "model.n_head=2", "model.block_size=64"]
        args.steps, args.batch_size = 3, 2
    cfg = load_config("gpt2-124m", None, overrides)
    vocab = cfg.data.vocab_size
    model = GPT(cfg.model_cfg(vocab_size=vocab)).to(device)
    opts = build_optimizers(model, cfg.train)
    T, B = cfg.model.block_size, args.batch_size
    compiled = model if args.no_compile or args.smoke else torch.compile(model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = matmul_peak(device, torch.bfloat16, 256 if args.smoke else 8192)
    sheet = next((v for k, v in DATASHEET_BF16.items() if k in name), None)
    print(f"device: {name}; measured bf16 matmul peak {peak / 1e12:.1f} TFLOP/s", flush=True)
    print(f"SDPA kernel: {sdpa_backend(device)}; params {model.num_params() / 1e6:.1f} M; batch {B} x {T}")

    gen = torch.Generator(device=device).manual_seed(0)
    times: list[float] = []
    t_start = time.perf_counter()
    compile_s = None
    for step in range(args.steps):
        x = torch.randint(0, vocab, (B, T + 1), device=device, generator=gen)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            _, loss = compiled(x[:, :-1], x[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in opts:
            opt.step()
        model.zero_grad(set_to_none=True)
        sync(device)
        dt = time.perf_counter() - t0
        if step == 0:
            compile_s = dt
        times.append(dt)
        if step % 50 == 0:
            print(f"step {step:4d} loss {loss.item():.3f} {B * T / dt:,.0f} tok/s", flush=True)
    timed = times[10:] if len(times) > 20 else times[1:] or times
    tok_s = B * T / statistics.median(timed)
    flops = model.flops_per_token(T) * tok_s
    result = {
        "device": name,
        "params": model.num_params(),
        "tokens_per_s": tok_s,
        "achieved_tflops": flops / 1e12,
        "measured_peak_tflops": peak / 1e12,
        "mfu_vs_measured_peak": flops / peak,
        "mfu_vs_datasheet": flops / sheet if sheet else None,
        "first_step_s_incl_compile": compile_s,
        "wall_s": time.perf_counter() - t_start,
        "final_loss": loss.item(),
    }
    mfu = f"{100 * result['mfu_vs_measured_peak']:.1f}"
    print(f"{tok_s:,.0f} tokens/s, {flops / 1e12:.1f} TFLOP/s, MFU {mfu}% of the measured peak")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
