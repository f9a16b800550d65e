"""The improvement loop, played end to end: users rate a served model, `fornalha improve` makes it better.

    python examples/feedback_loop.py [--work DIR] [--prompts 200] [--steps 80]

1. A registry with one version, v1 (the champion): by default an untrained tiny character-level
   GPT whose answers are near-uniform strings of characters (`--run RUN` uses a trained run instead).
2. `fornalha serve --registry` in a subprocess on 127.0.0.1; every request goes through the official
   `openai` client, every rating through `POST /v1/feedback`, as a real user's would.
3. Simulated users with a STATED RULE: they like an answer that has at least MIN_VOWELS vowels
   (a, e, i, o, u, either case) and dislike the others. Each training prompt is answered three times
   (temperature 1), so one prompt often gets a liked and a disliked answer: a preference pair.
4. `fornalha improve` exports the ratings, fine-tunes v1 with DPO, and the gate decides; the server
   switches to v2 by itself (it polls the champion alias).
5. The share of answers satisfying the rule is measured on HELD-OUT prompts (never rated, never
   trained on; the same seeds) before and after.
6. A second round with CORRUPTED feedback (the same kind of traffic, labels drawn at random) must be
   refused by the gate (exit 3) while v2 keeps serving.

The last stdout line is JSON: share_before, share_after, corrupted_refused, and the numbers behind them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import torch
import zstandard

ROOT = Path(__file__).resolve().parents[1]
MIN_VOWELS = 3  # the rule: an answer with at least this many vowels is liked
ANSWER_TOKENS = 16
KEY = "sk-feedback-loop"
VAL_TEXT = (
    "The river ran quietly past the old mill, and the children followed it to the sea. "
    "Every morning the baker opened his shop at six and sold bread to the fishermen. "
    "In the evening the square filled with music, and the lanterns swayed in the warm air. "
)
PROMPT_WORDS = [
    "river",
    "mill",
    "children",
    "sea",
    "baker",
    "shop",
    "bread",
    "fishermen",
    "evening",
    "square",
    "music",
    "lanterns",
    "air",
]


def satisfies(answer: str) -> bool:
    return sum(c in "aeiouAEIOU" for c in answer) >= MIN_VOWELS


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---- the champion and the validation set -----------------------------------------------------------
def make_champion(work: Path) -> Path:
    """An untrained tiny char GPT: near-uniform answers of ordinary characters, always ANSWER_TOKENS long.

    Every token embedding carries a constant in dimension 0, so the last hidden state always points
    that way; the untied head reads +1 there for characters and -1 for special tokens and <|unk|>,
    which therefore never win.
    """
    from fornalha.checkpoint import model_state_for_saving, save_checkpoint
    from fornalha.model import GPT, ModelConfig
    from fornalha.tokenizer.char import CharTokenizer

    run = work / "base"
    tok = CharTokenizer.train([VAL_TEXT + "".join(chr(c) for c in range(33, 127))])
    tok.save(run / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                      tie_embeddings=False)  # fmt: skip
    model = GPT(cfg)
    with torch.no_grad():
        model.wte.weight[:, 0] = 5.0
        model.lm_head.weight[:, 0] = 1.0
        model.lm_head.weight[: tok.unk_id + 1, 0] = -1.0
    meta = {"model_config": cfg.to_dict(), "step": 0, "metrics": {}, "lineage": {"parent": None}}
    save_checkpoint(run / "checkpoints" / "best", model_state_for_saving(model), meta)
    return run


def make_val_dataset(folder: Path) -> Path:
    """A prepared dataset with a `val` split (fornalha-dataset manifest): the gate's bpb check."""
    (folder / "val").mkdir(parents=True)
    docs = [VAL_TEXT[i:] + VAL_TEXT[:i] for i in range(0, len(VAL_TEXT), 23)]
    lines = [json.dumps({"text": t, "source": "example", "id": str(i)}) for i, t in enumerate(docs)]
    (folder / "val" / "part-00000.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress("\n".join(lines).encode())
    )
    split = {"shards": [{"file": "val/part-00000.jsonl.zst"}], "documents": len(lines)}
    (folder / "manifest.json").write_text(
        json.dumps({"format": "fornalha-dataset", "version": 1, "splits": {"val": split}})
    )
    return folder


# ---- the server and its users ----------------------------------------------------------------------
def env() -> dict[str, str]:
    src = str(ROOT / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "FORNALHA_API_KEYS": KEY, "OMP_NUM_THREADS": "1"}  # fmt: skip


def fornalha(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fornalha.cli", *args], env=env(), capture_output=True, text=True
    )


class Server:
    def __init__(self, registry: Path, log_file: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_file, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fornalha.cli", "serve", "--registry", str(registry), "--port", str(self.port),
             "--device", "cpu", "--model-name", "tiny", "--registry-poll", "0.5"],
            env=env(), stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited; see {log_file}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=KEY, max_retries=2, timeout=60)

    def version(self) -> str:
        return self.client.models.list().data[0].model_extra["version"]

    def answer(self, prompt: str, seed: int) -> tuple[str, str, str]:
        r = self.client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                                max_tokens=ANSWER_TOKENS, temperature=1.0, seed=seed)  # fmt: skip
        return r.id, r.choices[0].message.content, r.system_fingerprint

    def rate(self, completion_id: str, rating: int, user: str) -> None:
        for _ in range(50):  # the store writes a completion on its own thread, a moment after answering
            res = httpx.post(self.url + "/v1/feedback", headers={"Authorization": f"Bearer {KEY}"},
                             json={"completion_id": completion_id, "rating": rating, "user": user})  # fmt: skip
            if res.status_code == 200:
                return
            time.sleep(0.1)
        raise SystemExit(f"feedback refused: {res.text}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def prompt_for(tag: str, i: int) -> str:
    rng = random.Random(f"{tag}-{i}")
    return f"Tell me about the {rng.choice(PROMPT_WORDS)} and the {rng.choice(PROMPT_WORDS)} ({tag} {i})."


def play_users(server: Server, tag: str, n_prompts: int, corrupt: bool) -> dict[str, int]:
    """Three answers per prompt, each rated by the rule (or, corrupt=True, by a coin)."""
    coin, counts = random.Random(tag), {"answers": 0, "liked": 0, "disliked": 0}
    for i in range(n_prompts):
        for k in range(3):
            cid, text, _ = server.answer(prompt_for(tag, i), seed=10_000 * k + i)
            liked = coin.random() < 0.5 if corrupt else satisfies(text)
            server.rate(cid, 1 if liked else -1, user=f"user{i % 7}")
            counts["answers"] += 1
            counts["liked" if liked else "disliked"] += 1
    return counts


def share_on_held_out(server: Server, n: int) -> tuple[float, set[str]]:
    """Share of answers satisfying the rule on held-out prompts (seeded: the same draws every time)."""
    hits, versions = 0, set()
    for i in range(n):
        _, text, version = server.answer(prompt_for("held-out", i), seed=7 + i)
        hits += satisfies(text)
        versions.add(version)
    return hits / n, versions


def improve(registry: Path, db: str, out: Path, val: Path, steps: int) -> subprocess.CompletedProcess:
    return fornalha("improve", "--registry", str(registry), "--db", db, "--out", str(out), "--val-data", str(val),
                    "--set", f"train.max_steps={steps}", "--set", "train.eval_interval=20")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one)")
    p.add_argument("--prompts", type=int, default=200, help="training prompts per round (3 answers each)")
    p.add_argument("--held-out-prompts", type=int, default=200)
    p.add_argument("--steps", type=int, default=80, help="DPO steps (DPO's other defaults: lr 3e-4, 8 pairs)")
    p.add_argument("--run", type=Path, default=None, help="a trained run to start from (default: built)")
    args = p.parse_args()
    started = time.time()
    work = args.work or Path(tempfile.mkdtemp(prefix="feedback-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "src"))
    from fornalha.improve.registry import Registry

    registry = work / "registry"
    val = make_val_dataset(work / "val")
    reg = Registry.open(registry, create=True)
    reg.register(args.run or make_champion(work), created_by="examples/feedback_loop.py")
    reg.close()
    db = f"sqlite:///{registry.resolve() / 'fornalha.db'}"
    log(f"registry {registry}: v1 is the champion; rule: liked iff the answer has >= {MIN_VOWELS} vowels")

    server = Server(registry, work / "server.log")
    try:
        share_before, versions = share_on_held_out(server, args.held_out_prompts)
        log(
            f"share before (v1, {args.held_out_prompts} held-out prompts): {share_before:.3f} {sorted(versions)}"
        )
        clean = play_users(server, "clean", args.prompts, corrupt=False)
        log(f"clean round: {clean}")
        r1 = improve(registry, db, work / "round1", val, args.steps)
        log(f"fornalha improve (clean): exit {r1.returncode}: {r1.stdout.strip()}")
        if r1.returncode not in (0, 3):
            raise SystemExit(r1.stderr)
        if r1.returncode == 0:
            deadline = time.monotonic() + 30
            while server.version() != "v2" and time.monotonic() < deadline:
                time.sleep(0.2)
        served_after = server.version()
        share_after, versions = share_on_held_out(server, args.held_out_prompts)
        log(f"share after ({served_after}): {share_after:.3f} {sorted(versions)}")

        corrupted = play_users(server, "corrupted", args.prompts, corrupt=True)
        log(f"corrupted round (random labels): {corrupted}")
        r2 = improve(registry, db, work / "round2", val, args.steps)
        log(f"fornalha improve (corrupted): exit {r2.returncode}: {r2.stdout.strip()}")
        time.sleep(1.5)  # three polls of the alias
        still = server.version()
        _, text, fp = server.answer("still there?", seed=1)
        corrupted_refused = r2.returncode == 3 and still == served_after and fp == served_after
    finally:
        server.stop()

    def decision(folder: Path) -> dict:
        f = folder / "improve.json"
        if not f.is_file():
            return {}
        s = json.loads(f.read_text())
        return {"promoted": s["result"]["promoted"], "checks": s["result"]["numbers"].get("checks"),
                "min_gain": s["settings"]["min_gain_used"], "held_out_conversations": s["held_out_conversations"],
                "pairs": s["feedback"]["counts"], "report": str(folder / "improve.html")}  # fmt: skip

    print(json.dumps({
        "rule": f"liked iff the answer has >= {MIN_VOWELS} vowels (a e i o u, either case)",
        "share_before": round(share_before, 4), "share_after": round(share_after, 4),
        "corrupted_refused": corrupted_refused, "served_after_clean": served_after, "served_after_corrupted": still,
        "clean_round": {**clean, "exit": r1.returncode, **decision(work / "round1")},
        "corrupted_round": {**corrupted, "exit": r2.returncode, **decision(work / "round2")},
        "held_out_prompts": args.held_out_prompts, "prompts_per_round": args.prompts, "dpo_steps": args.steps,
        "seconds": round(time.time() - started, 1), "work": str(work),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
