"""The improvement loop, played end to end: users rate a served model, `fornalha improve` makes it better.

    python examples/feedback_loop.py [--work DIR] [--prompts 200] [--held-out-prompts 300] [--steps 200]

1. A registry with one version, v1 (the champion): by default an untrained tiny character-level
   GPT whose answers are near-uniform strings of characters (`--run RUN` uses a trained run instead).
2. `fornalha serve --registry` in a subprocess on 127.0.0.1; every request goes through the official
   `openai` client, every rating through `POST /v1/feedback`, as a real user's would.
3. Simulated users with a STATED RULE: they like an answer that has at least MIN_VOWELS vowels
   (a, e, i, o, u, either case) and dislike the others. Each training prompt is answered three times
   (temperature 1), so one prompt often gets a liked and a disliked answer: a preference pair.
4. `fornalha improve` exports the ratings, fine-tunes v1 with DPO at DPO's own defaults (200 steps,
   lr 3e-4; 80 steps ranked the pairs but barely moved sampling, benchmarks/LOG.md) and the gate
   decides at ITS defaults (tolerance 0.02 bpb, min gain 1/sqrt(held-out conversations)); the server
   switches to v2 by itself (it polls the champion alias).
5. The share of answers satisfying the rule is measured on HELD-OUT prompts (never rated, never
   trained on; the same seeds) before and after, with its binomial standard error.
6. A second round with CORRUPTED feedback (the same kind of traffic, labels drawn at random) must be
   refused by the gate (exit 3) while v2 keeps serving.

The last stdout line is JSON: share_before, share_after, corrupted_refused, and the numbers behind them.
"""

from __future__ import annotations

import argparse
import json
import math
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
    """An untrained tiny char GPT: near-uniform answers of ordinary characters, always ANSWER_TOKENS long
    (fornalha.improve.simulate.uniform_char_champion, as in tests/improve/test_improve.py)."""
    from fornalha.improve.simulate import uniform_char_champion

    return uniform_char_champion(work / "base", VAL_TEXT + "".join(chr(c) for c in range(33, 127)))


def make_val_dataset(folder: Path) -> Path:
    """A prepared dataset with a `val` split: the gate's bpb check (rotations of VAL_TEXT)."""
    from fornalha.improve.simulate import val_dataset

    return val_dataset(folder, [VAL_TEXT[i:] + VAL_TEXT[:i] for i in range(0, len(VAL_TEXT), 23)])


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
        from fornalha.improve.simulate import post_rating

        post_rating(self.url, KEY, completion_id, rating, user)

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


def standard_error(p: float, n: int) -> float:
    """Binomial standard error of a share p measured on n answers."""
    return math.sqrt(p * (1 - p) / n)


def improve(registry: Path, db: str, out: Path, val: Path, steps: int) -> subprocess.CompletedProcess:
    return fornalha("improve", "--registry", str(registry), "--db", db, "--out", str(out), "--val-data", str(val),
                    "--set", f"train.max_steps={steps}", "--set", "train.eval_interval=20")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=None, help="work folder (default: a new temporary one)")
    p.add_argument("--prompts", type=int, default=200, help="training prompts per round (3 answers each)")
    p.add_argument("--held-out-prompts", type=int, default=300, help="prompts the share is measured on")
    p.add_argument(
        "--steps", type=int, default=200, help="DPO steps (DPO's defaults: 200 steps, lr 3e-4, 8 pairs)"
    )
    p.add_argument("--run", type=Path, default=None, help="a trained run to start from (default: built)")
    args = p.parse_args()
    started, load_start = time.time(), os.getloadavg()
    work = args.work or Path(tempfile.mkdtemp(prefix="feedback-loop-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT / "src"))
    from fornalha.improve.simulate import registry_with_champion

    registry = work / "registry"
    val = make_val_dataset(work / "val")
    db = registry_with_champion(registry, args.run or make_champion(work), "examples/feedback_loop.py")
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
        dpo = (s["finetune"].get("dpo") or {}).get("after") or {}
        return {"promoted": s["result"]["promoted"], "checks": s["result"]["numbers"].get("checks"),
                "dpo_held_out_reward_margin": dpo.get("reward_margin"),
                "min_gain": s["settings"]["min_gain_used"], "held_out_conversations": s["held_out_conversations"],
                "pairs": s["feedback"]["counts"], "report": str(folder / "improve.html")}  # fmt: skip

    n = args.held_out_prompts
    se0, se1 = standard_error(share_before, n), standard_error(share_after, n)
    print(json.dumps({
        "rule": f"liked iff the answer has >= {MIN_VOWELS} vowels (a e i o u, either case)",
        "share_before": round(share_before, 4), "share_after": round(share_after, 4), "share_n": n,
        "share_before_se": round(se0, 4), "share_after_se": round(se1, 4),
        "share_rise_in_se": round((share_after - share_before) / math.hypot(se0, se1), 1),
        "corrupted_refused": corrupted_refused, "served_after_clean": served_after, "served_after_corrupted": still,
        "clean_round": {**clean, "exit": r1.returncode, **decision(work / "round1")},
        "corrupted_round": {**corrupted, "exit": r2.returncode, **decision(work / "round2")},
        "held_out_prompts": args.held_out_prompts, "prompts_per_round": args.prompts, "dpo_steps": args.steps,
        "seconds": round(time.time() - started, 1), "load_avg_1min_start_end": [load_start[0], os.getloadavg()[0]],
        "work": str(work),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
