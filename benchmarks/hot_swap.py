"""What a hot swap costs the users of `fornalha serve --registry`: the same streaming load with and
without switches, in one run.

    flock /tmp/fornalha-bench.lock .venv/bin/python benchmarks/hot_swap.py            # ~1.5 min
    flock /tmp/fornalha-bench.lock .venv/bin/python benchmarks/hot_swap.py --quick    # seconds

A registry gets two versions of one random-weight model (same shape, different seeds), and a server
serves it. `--clients` threads each loop over streamed chat completions (`--max-tokens` each, the
version read from every chunk's `system_fingerprint`). Phase "steady" (the baseline) runs the load for
`--seconds`; phase "swapping" runs it for as long again while the champion is switched back and forth
every `--every` seconds through `POST /admin/reload`. Per phase: completed streams, failed ones,
streams that mixed two versions, output tokens/s, p50/p99 time to first token and the largest gap
between two chunks of one stream; and how long each reload took. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
ADMIN, KEY = "bench-admin", "bench-user"


def make_run(root: Path, name: str, seed: int, n_layer: int, n_embd: int) -> Path:
    import torch

    from fornalha.checkpoint import model_state_for_saving, save_checkpoint
    from fornalha.model import GPT, ModelConfig
    from fornalha.tokenizer.char import CharTokenizer

    run = root / name
    tok = CharTokenizer.train(["abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,;:!?0123456789\n"])
    tok.save(run / "tokenizer")
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=512, n_layer=n_layer, n_head=4, n_kv_head=2,
                      n_embd=n_embd)  # fmt: skip
    model = GPT(cfg)
    with torch.no_grad():  # no end token: every answer is --max-tokens long
        model.wte.weight[: len(tok.special_ids)] = 0.0
    save_checkpoint(run / "checkpoints" / "best", model_state_for_saving(model),
                    {"model_config": cfg.to_dict(), "step": 0})  # fmt: skip
    return run


def stream_once(client: httpx.Client, max_tokens: int) -> dict:
    body = {"model": "bench", "messages": [{"role": "user", "content": "tell me a story"}],
            "max_tokens": max_tokens, "temperature": 0.8, "stream": True}  # fmt: skip
    t0 = time.perf_counter()
    first, last, gap, chunks, fps, done = None, t0, 0.0, 0, set(), False
    with client.stream(
        "POST", "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}
    ) as r:
        if r.status_code != 200:
            return {"ok": False, "why": f"status {r.status_code}"}
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                done = True
                break
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"ok": False, "why": chunk["error"]["message"]}
            fps.add(chunk.get("system_fingerprint"))
            now = time.perf_counter()
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = first or now
                gap = max(gap, now - last)
                chunks += 1
            last = now
    return {"ok": done, "why": None if done else "no [DONE]", "ttft": (first or last) - t0, "gap": gap,
            "tokens": chunks, "versions": len(fps), "t0": t0, "t1": time.perf_counter()}  # fmt: skip


def phase(url: str, clients: int, seconds: float, max_tokens: int, during=None) -> dict:  # noqa: ANN001
    stop = threading.Event()
    results: list[dict] = []

    def user() -> None:
        with httpx.Client(base_url=url, timeout=120) as c:
            while not stop.is_set():
                try:
                    results.append(stream_once(c, max_tokens))
                except httpx.HTTPError as exc:
                    results.append({"ok": False, "why": repr(exc)})

    threads = [threading.Thread(target=user) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    extra = during(stop) if during else None
    while time.perf_counter() - start < seconds:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if r["ok"]]
    ttfts = sorted(r["ttft"] for r in ok)

    def pct(xs: list[float], q: float) -> float | None:
        return round(xs[min(len(xs) - 1, int(q * len(xs)))], 4) if xs else None

    return {
        "streams": len(results), "failed": len(results) - len(ok), "why_failed": sorted({r["why"] for r in results if not r["ok"]}),
        "mixed_versions": sum(r["versions"] > 1 for r in ok), "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
        "ttft_p50_s": pct(ttfts, 0.5), "ttft_p99_s": pct(ttfts, 0.99),
        "max_gap_s": round(max((r["gap"] for r in ok), default=0.0), 4), "wall_s": round(wall, 2),
        **(extra or {}),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--every", type=float, default=5.0, help="seconds between two switches")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--quick", action="store_true", help="tiny model, 5 s phases")
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.every, args.n_layer, args.n_embd, args.max_tokens = 5.0, 1.5, 2, 64, 48
    sys.path.insert(0, str(ROOT / "src"))
    from fornalha.improve.registry import Registry

    tmp = Path(tempfile.mkdtemp(prefix="fornalha-hotswap-"))
    reg = Registry.open(tmp / "reg", create=True)
    for i in (1, 2):
        reg.register(make_run(tmp, f"run{i}", i, args.n_layer, args.n_embd))
    reg.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "FORNALHA_ADMIN_KEYS": ADMIN,
        "FORNALHA_API_KEYS": KEY,
    }
    cmd = [sys.executable, "-m", "fornalha.cli", "serve", "--registry", str(tmp / "reg"), "--port", str(port),
           "--model-name", "bench", "--device", "cpu", "--max-batch", str(max(8, args.clients)),
           "--registry-poll", "0"]  # fmt: skip
    log = open(tmp / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(900):
            try:
                if httpx.get(url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None:
                raise SystemExit((tmp / "server.log").read_text())
            time.sleep(0.2)
        phase(url, args.clients, 3.0, args.max_tokens)  # warm-up, not reported
        steady = phase(url, args.clients, args.seconds, args.max_tokens)

        def switcher(stop: threading.Event) -> dict:
            reloads: list[float] = []

            def loop() -> None:
                target = 2
                while not stop.wait(args.every):
                    r = Registry(tmp / "reg")
                    if r.alias("champion") != f"v{target}":
                        if f"v{target}" in r.data()["champion_history"]:
                            r.rollback(to=f"v{target}")
                        else:
                            r.promote(f"v{target}", force=True)
                    r.close()
                    t = time.perf_counter()
                    resp = httpx.post(
                        url + "/admin/reload", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=120
                    )
                    if resp.status_code == 200 and resp.json()["swapped"]:
                        reloads.append(time.perf_counter() - t)
                    target = 3 - target

            th = threading.Thread(target=loop, daemon=True)
            th.start()
            return {"reload_s": reloads}

        swapping = phase(url, args.clients, args.seconds, args.max_tokens, during=switcher)
        swaps = swapping.pop("reload_s")
        swapping["switches"] = len(swaps)
        swapping["reload_s_max"] = round(max(swaps), 3) if swaps else None
        swapping["reload_s_mean"] = round(sum(swaps) / len(swaps), 3) if swaps else None
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        log.close()
    result = {
        "benchmark": "hot_swap", "clients": args.clients, "max_tokens": args.max_tokens,
        "model": f"random n_layer={args.n_layer} n_embd={args.n_embd} block 512, char vocab",
        "baseline": {"phase": "steady (no switch)", **steady}, "swapping": swapping,
        "throughput_ratio": round(swapping["tokens_per_s"] / steady["tokens_per_s"], 3) if steady["tokens_per_s"] else None,
        "ttft_p99_ratio": round(swapping["ttft_p99_s"] / steady["ttft_p99_s"], 3) if steady["ttft_p99_s"] else None,
    }  # fmt: skip
    print(f"steady:   {steady}")
    print(f"swapping: {swapping}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
