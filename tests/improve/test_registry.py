"""The model registry through the real command line: versions with lineage, aliases, the gate, rollback,
the database mirror, the HTML report, and what it refuses (exit 2) without touching anyone's files."""

from __future__ import annotations

import json
import os

import sqlalchemy as sa
from improve_helpers import fornalha, make_run

from fornalha.improve.registry import Registry, read_registry_file


def test_register_promote_refuse_rollback(tmp_path, runs, cli):
    reg = tmp_path / "reg"
    r = fornalha("registry", "register", "--registry", str(reg), "--run", str(runs["base"]),
                 "--data", str(runs["base"] / "tokenizer"), "--created-by", "tester")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "as v1" in r.stdout and "champion" in r.stdout
    # the version is a run folder of hard links to the run's verified files
    v1 = reg / "versions" / "v1"
    src = runs["base"] / "checkpoints" / "best" / "model.safetensors"
    assert os.stat(v1 / "checkpoints" / "best" / "model.safetensors").st_ino == os.stat(src).st_ino
    assert (v1 / "tokenizer" / "tokenizer.json").is_file()

    for name in ("good", "bad"):
        code, out, err = cli("registry", "register", "--registry", str(reg), "--run", str(runs[name]))
        assert code == 0, err
    data = read_registry_file(reg)
    assert data["aliases"] == {"champion": "v1", "challenger": "v3"}
    v2, v3 = data["versions"]["v2"], data["versions"]["v3"]
    # lineage: the parent is found from the checkpoint's lineage.parent (the base run's best/)
    assert v2["parent"] == "v1" and v3["parent"] == "v1" and data["versions"]["v1"]["parent"] is None
    assert data["versions"]["v1"]["created_by"] == "tester"
    assert set(data["versions"]["v1"]["data_hashes"]) >= {"tokenizer", "data:tokenizer"}
    assert v2["metrics"]["val_bpb"] == 2.51 and v2["checkpoint"]["files"]["model.safetensors"]

    # v3: better on feedback but 0.40 bpb worse on validation -> refused (exit 3), champion unchanged
    code, out, err = cli("registry", "promote", "v3", "--registry", str(reg), "--tolerance", "0.05")
    assert code == 3, out + err
    assert "worse beyond tolerance" in out
    assert read_registry_file(reg)["aliases"]["champion"] == "v1"
    # v2: within tolerance and better on feedback -> promoted
    code, out, err = cli("registry", "promote", "v2", "--registry", str(reg), "--tolerance", "0.05")
    assert code == 0, out + err
    data = read_registry_file(reg)
    assert data["aliases"]["champion"] == "v2"
    assert data["aliases"]["challenger"] == "v3"  # the refused one stays the challenger

    code, out, err = cli("registry", "rollback", "--registry", str(reg))
    assert code == 0, err
    data = read_registry_file(reg)
    assert data["aliases"]["champion"] == "v1"
    assert [d["action"] for d in data["decisions"]] == ["initial", "promote", "promote", "rollback"]
    refused = data["decisions"][1]
    assert refused["promoted"] is False and refused["champion_after"] == "v1"
    checks = {c["name"]: c for c in refused["numbers"]["checks"]}
    assert checks["validation bpb"]["passed"] is False and checks["validation bpb"]["challenger"] == 2.9
    assert checks["preference_accuracy"]["passed"] is True

    # the database holds the same versions and decisions, with their numbers
    eng = sa.create_engine(f"sqlite:///{reg / 'fornalha.db'}")
    with eng.connect() as conn:
        versions = conn.execute(sa.text("select version, parent from model_versions order by number")).all()
        decisions = conn.execute(sa.text("select decision, action, promoted, numbers from promotion_decisions "
                                         "order by id")).all()  # fmt: skip
    eng.dispose()
    assert [tuple(v) for v in versions] == [("v1", None), ("v2", "v1"), ("v3", "v1")]
    assert [(d[1], bool(d[2])) for d in decisions] == [("initial", True), ("promote", False), ("promote", True),
                                                       ("rollback", True)]  # fmt: skip
    assert json.loads(decisions[1][3])["challenger"]["val_bpb"] == 2.9

    # the report shows every decision and its numbers
    html = (reg / "report.html").read_text()
    assert "refused" in html and "worse beyond tolerance" in html and "2.9000" in html
    code, out, err = cli("registry", "list", "--registry", str(reg), "--json")
    assert code == 0 and json.loads(out)["aliases"]["champion"] == "v1"
    code, out, err = cli("registry", "show", "v2", "--registry", str(reg))
    assert code == 0 and json.loads(out)["parent"] == "v1"


def test_force_rollback_to_and_db_resync(tmp_path, runs):
    reg = Registry.open(tmp_path / "reg", create=True)
    for name in ("base", "good", "bad"):
        reg.register(runs[name])
    d = reg.promote("v3", force=True)  # no gate at all: only with force, and said so
    assert d.promoted and d.forced and "without the gate" in d.reasons[-1]
    reg.promote("v2", force=True)
    assert reg.rollback(to="v1").champion_after == "v1"
    assert read_registry_file(reg.root)["champion_history"] == ["v1"]
    reg.close()
    # a new database (or one that missed a write) is filled from registry.json
    other = Registry(reg.root, f"sqlite:///{tmp_path / 'other.db'}")
    assert other.sync_db() == 3 + 4
    assert [r["version"] for r in other.db_rows()["versions"]] == ["v1", "v2", "v3"]
    assert other.sync_db() == 0
    other.close()


def test_refusals_are_one_line_and_touch_nothing(tmp_path, runs, cli):
    # a folder with someone else's files is not made a registry
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    r = fornalha("registry", "register", "--registry", str(foreign), "--run", str(runs["base"]))
    assert r.returncode == 2 and "not empty" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in foreign.iterdir()) == ["mine.txt"]

    reg = tmp_path / "reg"
    code, out, err = cli("registry", "list", "--registry", str(reg))
    assert code == 2 and "not a model registry" in err
    assert cli("registry", "register", "--registry", str(reg), "--run", str(runs["base"]))[0] == 0
    # a damaged checkpoint is refused before anything is linked
    broken = make_run(tmp_path, "broken", 4)
    with open(broken / "checkpoints" / "best" / "model.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02\x03")
    code, out, err = cli("registry", "register", "--registry", str(reg), "--run", str(broken))
    assert code == 2 and "sha256" in err and len(err.strip().splitlines()) == 1
    assert not (reg / "versions" / "v2").exists()
    for args in (("promote", "v9"), ("rollback",), ("show", "v7"), ("promote",)):
        code, out, err = cli("registry", *args, "--registry", str(reg))
        assert code == 2, (args, out, err)
        assert "Traceback" not in err
    code, out, err = cli(
        "registry", "register", "--registry", str(reg), "--run", str(runs["good"]), "--metric", "oops"
    )
    assert code == 2 and "NAME=NUMBER" in err
    code, out, err = cli("registry", "promote", "--registry", str(reg), "--metric", "bleu")
    assert code == 2
    # the registry's own files are listed in its ownership manifest; a run's files are never moved
    owned = json.loads((reg / ".fornalha-output.json").read_text())["files"]
    assert "registry.json" in owned and "fornalha.db" in owned and "versions/v1/version.json" in owned
    assert (runs["base"] / "checkpoints" / "best" / "model.safetensors").is_file()


def test_a_version_does_not_change_when_its_run_trains_on(tmp_path, runs):
    from fornalha.checkpoint import model_state_for_saving, save_checkpoint, verify_checkpoint
    from fornalha.model import GPT, ModelConfig

    reg = Registry.open(tmp_path / "reg", create=True)
    reg.register(runs["base"])
    v1 = reg.path("v1") / "checkpoints" / "best"
    before = verify_checkpoint(v1)["files"]
    # the run goes on training: its best/ is replaced (a new folder renamed over the old one)
    best = runs["base"] / "checkpoints" / "best"
    cfg = ModelConfig.from_dict(verify_checkpoint(best)["model_config"])
    save_checkpoint(best, model_state_for_saving(GPT(cfg)), {"model_config": cfg.to_dict(), "step": 99})
    assert verify_checkpoint(best)["files"] != before
    assert verify_checkpoint(v1)["files"] == before  # the hard links still hold the registered bytes
    reg.close()
