"""`fornalha improve` end to end, as users meet it: a live `fornalha serve --registry` subprocess,
conversations through the official openai client, ratings through POST /v1/feedback.

Simulated users like answers rich in vowels (VOWEL_RULE): of the answers to one prompt, those with at
least the median number of vowels are liked, the others disliked, so every prompt gives preference
pairs. `fornalha improve` must then fine-tune the champion on them, pass the gate and be served
without a restart; the same loop run on random labels must be refused while the champion keeps serving.
"""

from __future__ import annotations

import json
import random
import time

import sqlalchemy as sa
from improve_helpers import TEXT, fornalha
from test_hot_swap import RegistryServer

from fornalha.improve.registry import Registry
from fornalha.improve.simulate import post_rating, registry_with_champion, uniform_char_champion
from fornalha.improve.simulate import val_dataset as simulated_val_dataset

VOWELS = set("aeiou")
N_PROMPTS = 120
ANSWERS_PER_PROMPT = 3
MAX_TOKENS = 16
TUNE = ["--set", "train.max_steps=40", "--set", "train.eval_interval=20", "--set", "train.batch_size=8",
        "--set", "train.lr=1e-3"]  # fmt: skip


def vowels(text: str) -> int:
    return sum(c in VOWELS for c in text.lower())


def make_champion(root):
    """An untrained tiny GPT with near-uniform answers, always MAX_TOKENS long (the example's champion)."""
    return uniform_char_champion(root / "base", TEXT)


def val_dataset(root):
    """A prepared dataset folder with a `val` split: what the gate's bpb check reads."""
    return simulated_val_dataset(root, [TEXT[i:] + TEXT[:i] for i in range(0, 60, 7)])


def play_users(srv, tag: str, corrupt: bool = False, seed: int = 0) -> tuple[int, set[str]]:
    """Each prompt answered ANSWERS_PER_PROMPT times (temperature 1); ratings posted through the API.

    Rule: an answer with the most vowels among its siblings is liked, one with the fewest disliked.
    corrupt=True: the same answers, labels drawn at random. Returns (ratings posted, fingerprints).
    """
    client, rng, posted, fingerprints = srv.client(), random.Random(seed), 0, set()
    for i in range(N_PROMPTS):
        prompt = f"{tag} {i}: {TEXT[i % 40 : (i % 40) + 12]}"
        got = []
        for _ in range(ANSWERS_PER_PROMPT):
            r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": prompt}],
                                               max_tokens=MAX_TOKENS, temperature=1.0,
                                               seed=1000 * i + len(got) + 100_000 * seed)  # fmt: skip
            got.append((r.id, r.choices[0].message.content))
            fingerprints.add(r.system_fingerprint)
        counts = [vowels(text) for _, text in got]
        for cid, text in got:
            if corrupt:
                rating = rng.choice([1, -1])
            elif vowels(text) == max(counts) != min(counts):
                rating = 1
            elif vowels(text) == min(counts) != max(counts):
                rating = -1
            else:
                continue
            post_rating(srv.url, "sk-user-1", cid, rating)
            posted += 1
    return posted, fingerprints


def test_improve_promotes_a_better_version_and_refuses_random_feedback(tmp_path):
    reg_dir, val = tmp_path / "reg", val_dataset(tmp_path / "val")
    db = registry_with_champion(reg_dir, make_champion(tmp_path))
    srv = RegistryServer(reg_dir, tmp_path, poll=0.3)
    try:
        # no feedback yet: one clear line, exit 2, nothing trained or registered
        r = fornalha("improve", "--registry", str(reg_dir), "--db", db, "--out", str(tmp_path / "w0"),
                     "--val-data", str(val))  # fmt: skip
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.count("\n") == 1 and "too little feedback" in r.stderr
        assert not (tmp_path / "w0").exists() and [v["id"] for v in Registry(reg_dir).versions()] == ["v1"]

        posted, fps = play_users(srv, "clean")
        assert fps == {"v1"} and posted >= 60
        work = tmp_path / "w1"
        r = fornalha("improve", "--registry", str(reg_dir), "--db", db, "--out", str(work), "--val-data", str(val),
                     "--tolerance", "0.05", *TUNE, timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert "promoted v2" in r.stdout
        srv.wait_version("v2")  # the server switched by itself, no restart
        answer = srv.client().chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                      max_tokens=4)  # fmt: skip
        assert answer.system_fingerprint == "v2"

        # recorded: lineage, data hashes, the gate's numbers (measured now), the report
        reg = Registry(reg_dir)
        v2, data = reg.version("v2"), reg.data()
        assert v2["parent"] == "v1" and v2["created_by"] == "fornalha improve"
        assert {"data:preferences.jsonl"} <= set(v2["data_hashes"])
        decision = data["decisions"][-1]
        assert decision["action"] == "promote" and decision["promoted"] and decision["challenger"] == "v2"
        checks = {c["name"]: c for c in decision["numbers"]["checks"]}
        fb = checks["preference_accuracy"]
        assert (
            fb["passed"]
            and fb["challenger"] > fb["champion"] + decision["policy"]["min_gain"] > fb["champion"]
        )
        assert checks["validation bpb"]["passed"]
        rows = reg.db_rows()
        assert [d["challenger"] for d in rows["decisions"] if d["action"] == "promote"] == ["v2"]
        reg.close()
        summary = json.loads((work / "improve.json").read_text())
        assert summary["result"]["promoted"] and summary["feedback"]["rated_answers"] == posted
        html = (work / "improve.html").read_text()
        assert "v2 promoted" in html and "preference_accuracy" in html and str(posted) in html

        # random labels on the new champion's answers: refused, v2 keeps serving
        posted2, fps = play_users(srv, "noise", corrupt=True, seed=1)
        assert fps == {"v2"}
        r = fornalha("improve", "--registry", str(reg_dir), "--db", db, "--out", str(tmp_path / "w2"),
                     "--val-data", str(val), "--tolerance", "0.05", *TUNE, timeout=300)  # fmt: skip
        assert r.returncode == 3, r.stdout + r.stderr
        assert "refused v3" in r.stdout
        summary = json.loads((tmp_path / "w2" / "improve.json").read_text())
        assert summary["feedback"]["rated_answers"] == posted2  # only feedback since v2 was created
        time.sleep(1.0)  # three polls
        assert srv.version() == "v2"
        reg = Registry(reg_dir)
        assert reg.alias("champion") == "v2" and reg.alias("challenger") == "v3"
        assert not reg.data()["decisions"][-1]["promoted"]
        reg.close()
        eng = sa.create_engine(db)
        with eng.connect() as conn:
            served = set(conn.execute(sa.text("select model_version from completions")).scalars())
        eng.dispose()
        assert served == {"v1", "v2"}
    finally:
        assert srv.stop() == 0
