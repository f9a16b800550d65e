"""`POST /admin/promote` on a live `fornalha serve --registry` (polling off, so only the endpoint switches).

The same gate as `fornalha registry promote` (here on the metrics recorded at registration: v2 a
little worse on bpb but better on preferences, v3 far worse on bpb): a refused promotion is a 409
carrying the gate's numbers and leaves the champion serving; a passed one is recorded and served at
once; an unknown version is a 404; force promotes against the gate and says so in the record.
"""

from __future__ import annotations

import httpx
import pytest
from test_hot_swap import ADMIN, KEY, RegistryServer, ask, three_versions

from fornalha.improve.registry import Registry


@pytest.fixture
def served(tmp_path, runs):
    srv = RegistryServer(
        three_versions(tmp_path, runs), tmp_path, poll=0
    )  # no watcher: only /admin/* switches
    yield srv, tmp_path / "reg"
    assert srv.stop() == 0


def promote(srv, body: dict | None = None, key: str = ADMIN) -> httpx.Response:
    return httpx.post(srv.url + "/admin/promote", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=60)  # fmt: skip


def test_admin_promote_gate_refusal_unknown_version_and_switch(served):
    srv, reg_dir = served
    client = srv.client()
    v1_text, _ = ask(client, "the fox")

    assert promote(srv, {"version": "v2"}, key=KEY).status_code == 401  # an API key is not an admin key
    assert httpx.post(srv.url + "/admin/promote", json={}).status_code == 401

    r = promote(srv, {"version": "v9"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_version", r.text
    r = promote(srv, {"version": "v2", "tolerence": 1})
    assert r.status_code == 400 and "tolerence" in r.json()["error"]["message"], r.text
    r = promote(srv, {"version": "v2", "metric": "vibes"})
    assert r.status_code == 400 and "vibes" in r.json()["error"]["message"], r.text

    # the gate refuses v3 (bpb 2.90 vs 2.50): 409 with its numbers; v1 keeps serving
    r = promote(srv, {"version": "v3", "tolerance": 0.05})
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["error"]["code"] == "gate_refused" and "v1 stays the champion" in body["error"]["message"]
    checks = {c["name"]: c for c in body["decision"]["numbers"]["checks"]}
    assert checks["validation bpb"] == {**checks["validation bpb"], "champion": 2.5, "challenger": 2.9,
                                        "passed": False}  # fmt: skip
    assert not body["decision"]["promoted"] and body["decision"]["created_by"] == "POST /admin/promote"
    assert srv.version() == "v1" and ask(client, "the fox") == (v1_text, "v1")

    # v2 passes (bpb +0.01 within 0.05, preference accuracy 0.50 -> 0.70): recorded and served at once
    r = promote(srv, {"version": "v2", "tolerance": 0.05})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["decision"]["promoted"] and body["previous"] == "v1" and body["version"] == "v2"
    assert body["swapped"] and srv.version() == "v2"  # no polling: the endpoint switched
    assert ask(client, "the fox")[1] == "v2"
    reg = Registry(reg_dir)
    assert reg.alias("champion") == "v2"
    decisions = reg.data()["decisions"]
    assert [(d["challenger"], d["promoted"]) for d in decisions if d["action"] == "promote"] == [
        ("v3", False), ("v2", True)]  # fmt: skip
    assert [d["challenger"] for d in reg.db_rows()["decisions"] if d["action"] == "promote"] == ["v3", "v2"]
    reg.close()

    r = promote(srv, {"version": "v2"})
    assert r.status_code == 409 and "already the champion" in r.json()["error"]["message"], r.text

    # force: against the gate, recorded as forced
    r = promote(srv, {"version": "v3", "force": True, "tolerance": 0.05})
    assert r.status_code == 200, r.text
    assert r.json()["decision"]["forced"] and srv.version() == "v3"
    assert ask(client, "the fox")[1] == "v3"
