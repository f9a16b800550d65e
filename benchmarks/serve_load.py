"""Serving under load: streamed chat completions from 1, 4, 16 and 64 concurrent clients against
`fornalha serve`, and the same load against llama.cpp's `llama-server` on the same model.

    .venv/bin/python benchmarks/serve_load.py                 # full: 1/4/16/64 clients
    .venv/bin/python benchmarks/serve_load.py --quick         # seconds: tiny model, 1/4 clients
    .venv/bin/python benchmarks/serve_load.py --run runs/demo # a trained run instead of random weights

Every client loops: one streamed chat completion (``stream_options.include_usage``, so the token
count is the server's exact ``usage.completion_tokens``), then the next, for `--requests` rounds —
more when a level would otherwise run fewer than `--min-requests` in all (one client: 24 in a row, so
its figure is not 0.5 s of measurement, whose run-to-run spread was ±8 %).
Per level: aggregate output tokens/s (all completion tokens / wall time), p50/p99 time to first
token, p50/p99 inter-token latency (gaps between content chunks), errors (non-200, broken
streams) and the server's peak memory with its child processes, as summed RSS and as PSS (pages
shared between processes counted once). llama.cpp: `bash benchmarks/llamacpp_server.sh RUN PORT NP`
must start `llama-server` on 127.0.0.1:PORT; if the script is missing or fails, its figures are
null and the reason is in the JSON. The last stdout line is JSON.

Without --run the benchmark first trains the 10M shape of `benchmarks/inference.py` (6 x 384, BPE
2,048, context 256) briefly on TinyShakespeare with `fornalha pipeline` (`--train-minutes`, default 3),
so the text is real and the same run exports to GGUF for llama.cpp; `--random` serves random weights
instead (quicker; `--quick` is a 2-layer random toy). Every request asks for `ignore_eos` (an
extension both servers accept), so each answer is exactly `--max-tokens` long and the levels compare
the same work (`--natural-length` lets answers stop at the end token).

On a GPU, `--size 124m --device cuda --no-llamacpp` serves GPT-2 small's shape, trained with the
`gpt2-124m` preset itself; the engine records its decode step as CUDA graphs there
(`fornalha.infer.graphs`). `benchmarks/gpu_serve_check.py` runs it that way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Model shapes: the 10M shape of benchmarks/inference.py, and GPT-2 small's for a GPU (`--size 124m`).
SHAPES = {
    "10m": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
}


def make_run(tmp: Path, quick: bool, size: str = "10m") -> tuple[Path, str]:
    """A random-init run of the `size` shape (quick: a 2-layer toy) with a character tokenizer;
    returns the run folder and how to describe it."""
    import torch

    from fornalha.checkpoint import model_state_for_saving, save_checkpoint
    from fornalha.model import GPT, ModelConfig
    from fornalha.tokenizer.char import CharTokenizer

    chars = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    run = tmp / "run"
    tok = CharTokenizer(sorted(set(chars)))
    tok.save(run / "tokenizer")
    torch.manual_seed(0)
    shape = dict(n_layer=2, n_head=4, n_embd=64, block_size=256) if quick else SHAPES[size]
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, **shape))
    save_checkpoint(run / "checkpoints" / "best", model_state_for_saving(model),
                    {"model_config": model.config.to_dict(), "step": 0})  # fmt: skip
    if quick:
        return run, "random-init 2-layer toy"
    s = SHAPES[size]
    return (
        run,
        f"random-init {s['n_layer']}x{s['n_embd']} ({model.num_params() / 1e6:.0f}M with characters), not trained",
    )


def train_run(tmp: Path, minutes: float, size: str = "10m", device: str = "cpu") -> tuple[Path, str]:
    """The `size` shape trained briefly on TinyShakespeare (BPE, exportable to GGUF) with `fornalha
    pipeline`: 10m is the tiny preset at 6 x 384 (BPE 2,048, context 256); 124m the `gpt2-124m`
    preset as it is (12 x 768, BPE 32,768, context 1024). Returns the run folder and its description."""
    out = tmp / "pipeline"
    if size == "10m":
        preset = "tiny"
        sets = [a for k, v in SHAPES["10m"].items() for a in ("--set", f"model.{k}={v}")]
        what = "10M (6x384)"
    else:
        preset, sets, what = "gpt2-124m", [], "gpt2-124m preset (12x768)"
    cmd = [sys.executable, "-m", "fornalha.cli", "pipeline", "--preset", preset, "--source",
           str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"), "--split", "tail", "--minutes",
           str(minutes), "--out", str(out), "--device", device, *sets]  # fmt: skip
    print(f"training the {size} model for {minutes} min: {' '.join(cmd[2:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"fornalha pipeline failed:\n{proc.stderr[-3000:]}")
    params = json.loads((out / "summary.json").read_text())["parameters"]
    # a BPE vocabulary stops where the corpus runs out of merges (~21k of the 32,768 gpt2-124m asks for)
    vocab = yaml.safe_load((out / "config.yaml").read_text())["model"]["vocab_size"]
    what = f"{what[:-1]}, {params / 1e6:.1f}M parameters, BPE {vocab})"
    return out, f"{what} trained {minutes} min on TinyShakespeare"


def tree_kib(pid: int, file: str, key: str) -> int:
    """The `key` figure of /proc/PID/FILE (KiB) summed over the process and all its descendants."""
    total = 0
    try:
        for line in Path(f"/proc/{pid}/{file}").read_text().splitlines():
            if line.startswith(key):
                total += int(line.split()[1])
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_kib(int(child), file, key)
    except (OSError, ValueError):
        pass
    return total


def rss_kib(pid: int) -> int:
    """Resident memory of the process and its descendants (fornalha's fork server and engine
    process, the shell that execs llama-server)."""
    return tree_kib(pid, "status", "VmRSS:")


def pss_kib(pid: int) -> int:
    """Proportional memory (PSS) of the process and its descendants: pages shared between them
    (fornalha's engine process is forked from a fork server that loaded PyTorch) counted once in
    all, where summing RSS counts them once per process."""
    return tree_kib(pid, "smaps_rollup", "Pss:")


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        for path in ("/ready", "/health"):
            try:
                if httpx.get(url + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
        time.sleep(0.3)
    raise RuntimeError("server not ready in time")


async def client_loop(c: httpx.AsyncClient, url: str, model: str, i: int, args, out: dict) -> None:
    for r in range(args.requests):
        body = {"model": model, "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                             {"role": "user", "content": f"Tell me a story number {i}-{r}."}],
                "max_tokens": args.max_tokens, "temperature": 0.8, "seed": i * 1000 + r, "stream": True,
                "stream_options": {"include_usage": True}, "ignore_eos": not args.natural_length}  # fmt: skip
        start = time.perf_counter()
        last = None
        tokens = 0
        done = False
        try:
            async with c.stream("POST", url + "/v1/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    out["errors"] += 1
                    continue
                async for line in resp.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    data = line[6:]
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                    for ch in chunk.get("choices") or []:
                        if (ch.get("delta") or {}).get("content"):
                            now = time.perf_counter()
                            if last is None:
                                out["ttft"].append(now - start)
                            else:
                                out["itl"].append(now - last)
                            last = now
        except httpx.HTTPError:
            out["errors"] += 1
            continue
        if not done:
            out["errors"] += 1
        out["tokens"] += tokens


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] * 1e3


def load_level(url: str, model: str, clients: int, args, pid: int) -> dict:
    rounds = max(args.requests, -(-args.min_requests // clients))  # per client
    args = argparse.Namespace(**{**vars(args), "requests": rounds})
    out = {"tokens": 0, "errors": 0, "ttft": [], "itl": []}
    peak = [rss_kib(pid), pss_kib(pid)]
    stop = threading.Event()

    def sample() -> None:
        n = 0
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            if n % 5 == 0:  # PSS walks every mapping: every 0.25 s
                peak[1] = max(peak[1], pss_kib(pid))
            n += 1
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()

    async def main() -> float:
        limits = httpx.Limits(max_connections=clients + 8)
        async with httpx.AsyncClient(timeout=args.timeout, limits=limits) as c:
            start = time.perf_counter()
            await asyncio.gather(*(client_loop(c, url, model, i, args, out) for i in range(clients)))
            return time.perf_counter() - start

    wall = asyncio.run(main())
    stop.set()
    t.join()
    return {"clients": clients, "requests": clients * rounds, "tok_s": out["tokens"] / wall, "tokens": out["tokens"], "wall_s": wall,
            "ttft_p50_ms": pct(out["ttft"], 50), "ttft_p99_ms": pct(out["ttft"], 99),
            "itl_p50_ms": pct(out["itl"], 50), "itl_p99_ms": pct(out["itl"], 99), "errors": out["errors"],
            "peak_rss_mb": peak[0] / 1024, "peak_pss_mb": peak[1] / 1024}  # fmt: skip


def run_levels(name: str, url: str, model: str, levels: list[int], args, pid: int) -> dict[int, dict]:
    load_level(
        url, model, 1, argparse.Namespace(**{**vars(args), "requests": 1, "min_requests": 1}), pid
    )  # warm-up, not counted
    res = {}
    for n in levels:
        r = load_level(url, model, n, args, pid)
        res[n] = r
        print(f"{name:9s} c{n:<3d} {r['tok_s']:8.1f} tok/s  ttft p50 {r['ttft_p50_ms'] or 0:7.1f} ms "
              f"p99 {r['ttft_p99_ms'] or 0:7.1f} ms  itl p50 {r['itl_p50_ms'] or 0:6.1f} ms  errors {r['errors']}  "
              f"rss {r['peak_rss_mb']:.0f} MB pss {r['peak_pss_mb']:.0f} MB", flush=True)  # fmt: skip
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="serve this run folder (default: train the 10M shape briefly)")
    ap.add_argument("--train-minutes", type=float, default=3.0, help="budget of that brief training")
    ap.add_argument("--random", action="store_true", help="serve a random-init model (no training)")
    ap.add_argument("--size", choices=list(SHAPES), default="10m", help="model shape (124m: for a GPU)")
    ap.add_argument("--quick", action="store_true", help="random 2-layer toy, 1 and 4 clients, short answers")
    ap.add_argument("--natural-length", action="store_true", help="answers may stop at the end token")
    ap.add_argument("--clients", type=int, nargs="+", default=None)
    ap.add_argument("--requests", type=int, default=None, help="requests per client (default 6; quick 1)")
    ap.add_argument(
        "--min-requests", type=int, default=None, help="requests per level at least (default 24; quick 1)"
    )
    ap.add_argument("--max-tokens", type=int, default=None, help="tokens per answer (default 64; quick 8)")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--no-llamacpp", action="store_true")
    args = ap.parse_args()
    levels = args.clients or ([1, 4] if args.quick else [1, 4, 16, 64])
    args.requests = args.requests or (1 if args.quick else 6)
    args.min_requests = args.min_requests or (1 if args.quick else 24)
    args.max_tokens = args.max_tokens or (8 if args.quick else 64)

    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    if args.run:
        run, model = args.run, str(args.run)
    elif args.quick or args.random:
        run, model = make_run(tmp, args.quick, args.size)
    else:
        run, model = train_run(tmp, args.train_minutes, args.size, args.device)
    result: dict = {"levels": levels, "max_tokens": args.max_tokens, "requests_per_client": args.requests,
                    "min_requests_per_level": args.min_requests,
                    "model": model, "device": args.device, "max_batch": args.max_batch,
                    "answers": "natural length" if args.natural_length else "fixed length (ignore_eos)"}  # fmt: skip

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("FORNALHA_API_KEYS", None)
    cmd = [sys.executable, "-m", "fornalha.cli", "serve", "--run", str(run), "--port", str(port), "--model-name",
           "bench", "--device", args.device, "--max-batch", str(args.max_batch), "--max-queue", "128"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    errors = 0
    try:
        wait_ready(url, proc, 600)
        ours = run_levels("fornalha", url, "bench", levels, args, proc.pid)
    finally:
        proc.terminate()
        proc.wait(60)
    for n, r in ours.items():
        result[f"fornalha_c{n}"] = r
        errors += r["errors"]
    result["fornalha_c1_tok_s"] = ours[levels[0]]["tok_s"] if levels[0] == 1 else None
    result["fornalha_c16_tok_s"] = ours[16]["tok_s"] if 16 in ours else None
    result["fornalha_c16_ttft_p99_ms"] = ours[16]["ttft_p99_ms"] if 16 in ours else None
    if result["fornalha_c1_tok_s"] and result["fornalha_c16_tok_s"]:
        result["fornalha_c16_over_c1"] = result["fornalha_c16_tok_s"] / result["fornalha_c1_tok_s"]

    result["llamacpp_c1_tok_s"] = result["llamacpp_c16_tok_s"] = None
    script = ROOT / "benchmarks" / "llamacpp_server.sh"
    if args.no_llamacpp:
        result["llamacpp_reason"] = "skipped (--no-llamacpp)"
    elif not script.exists():
        result["llamacpp_reason"] = "benchmarks/llamacpp_server.sh is missing (written by the gguf work)"
    else:
        lport = free_port()
        llama_log = tmp / "llama-server.log"  # a file, not a pipe: nobody reads it while the load runs
        lp = subprocess.Popen(["bash", str(script), str(run), str(lport), str(args.max_batch)],
                              env={**env, "PYTHON": sys.executable},
                              stdout=subprocess.DEVNULL, stderr=llama_log.open("wb"))  # fmt: skip
        try:
            wait_ready(f"http://127.0.0.1:{lport}", lp, 1800)
            theirs = run_levels("llama.cpp", f"http://127.0.0.1:{lport}", "bench", levels, args, lp.pid)
            for n, r in theirs.items():
                result[f"llamacpp_c{n}"] = r
                errors += r["errors"]
            result["llamacpp_c1_tok_s"] = theirs[1]["tok_s"] if 1 in theirs else None
            result["llamacpp_c16_tok_s"] = theirs[16]["tok_s"] if 16 in theirs else None
            if result["llamacpp_c16_tok_s"] and result["fornalha_c16_tok_s"]:
                result["fornalha_over_llamacpp_c16"] = (
                    result["fornalha_c16_tok_s"] / result["llamacpp_c16_tok_s"]
                )
        except Exception as exc:
            err = llama_log.read_text(errors="replace")[-1500:]
            result["llamacpp_reason"] = f"llama-server did not run: {exc}; {err}"
        finally:
            lp.terminate()
            try:
                lp.wait(30)
            except subprocess.TimeoutExpired:
                lp.kill()
    result["errors"] = errors
    result["baseline"] = "fornalha_c1_tok_s (one client) and llama-server on the same model"
    print(json.dumps(result))


if __name__ == "__main__":
    main()
