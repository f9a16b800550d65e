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

import httpx
import sqlalchemy as sa
import torch
import zstandard
from improve_helpers import TEXT, fornalha
from test_hot_swap import RegistryServer

from fornalha.checkpoint import model_state_for_saving, save_checkpoint
from fornalha.improve.registry import Registry
from fornalha.model import GPT, ModelConfig
from fornalha.tokenizer.char import CharTokenizer

VOWELS = set("aeiou")
N_PROMPTS = 48
ANSWERS_PER_PROMPT = 3
MAX_TOKENS = 16
TUNE = ["--set", "train.max_steps=40", "--set", "train.eval_interval=20", "--set", "train.batch_size=8",
        "--set", "train.lr=1e-3"]  # fmt: skip


def vowels(text: str) -> int:
    return sum(c in VOWELS for c in text.lower())


def make_champion(root, seed: int = 0):
    """A run folder: an untrained tiny GPT whose answers are near-uniform characters, always MAX_TOKENS long.

    Every token embedding carries a constant in dimension 0, so the final hidden state always points
    that way; the (untied) head reads +1 there for ordinary characters and -1 for special tokens and
    `<|unk|>`: those never win, every answer is a string of ordinary characters of the same length
    (no length bias in summed log-probabilities), and which ones is close to a fair die.
    """
    run = root / "base"
    tok = CharTokenizer.train([TEXT])
    tok.save(run / "tokenizer")
    torch.manual_seed(seed)
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


def val_dataset(root):
    """A prepared dataset folder with a `val` split: what the gate's bpb check reads."""
    (root / "val").mkdir(parents=True)
    lines = [json.dumps({"text": TEXT[i:] + TEXT[:i], "source": "t", "id": str(i)}) for i in range(0, 60, 7)]
    (root / "val" / "part-00000.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress("\n".join(lines).encode())
    )
    split = {"shards": [{"file": "val/part-00000.jsonl.zst"}], "documents": len(lines)}
    (root / "manifest.json").write_text(
        json.dumps({"format": "fornalha-dataset", "version": 1, "splits": {"val": split}})
    )
    return root


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
            for _ in range(50):  # the store writes the completion on its own thread
                res = httpx.post(srv.url + "/v1/feedback", json={"completion_id": cid, "rating": rating},
                                 headers={"Authorization": "Bearer sk-user-1"})  # fmt: skip
                if res.status_code != 400 or "unknown" not in res.text:
                    break
                time.sleep(0.1)
            assert res.status_code == 200, res.text
            posted += 1
    return posted, fingerprints


def test_improve_promotes_a_better_version_and_refuses_random_feedback(tmp_path):
    reg_dir, val = tmp_path / "reg", val_dataset(tmp_path / "val")
    reg = Registry.open(reg_dir, create=True)
    reg.register(make_champion(tmp_path))
    reg.close()
    db = f"sqlite:///{reg_dir / 'fornalha.db'}"
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
