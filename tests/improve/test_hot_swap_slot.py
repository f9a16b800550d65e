"""The hot-swap mechanics without a server process: a version that cannot be loaded or does not fit is
refused and the old one keeps serving; a switch retires the old engine once its requests are done; the
admin endpoints answer only their own keys; `fornalha serve --registry` refuses bad input with exit 2."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from improve_helpers import make_run

from fornalha.cli.infer import _load_engine
from fornalha.infer.sampling import SamplingParams
from fornalha.serve.async_engine import AsyncEngine
from fornalha.serve.errors import install_error_handlers
from fornalha.serve.swap import ModelSlot, Served, SwapError, admin_router


def _engine(run):
    return _load_engine(run, "best", "cpu", "auto", 4)[0]


def test_refused_versions_leave_the_old_one_serving_and_a_switch_retires_it(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "FORNALHA_NO_KERNELS", "1"
    )  # the decode kernel's first build is covered in tests/infer
    v1, v2 = make_run(tmp_path, "v1", 1), make_run(tmp_path, "v2", 2)
    short = make_run(tmp_path, "short", 3, block_size=64)  # another context window

    async def scenario() -> None:
        slot = ModelSlot(Served(AsyncEngine(_engine(v1)), "v1"), AsyncEngine)
        slot.start()
        try:
            with pytest.raises(SwapError, match="context 64"):
                await slot.swap("v9", lambda: _engine(short))
            with pytest.raises(SwapError, match="cannot load version v8"):
                await slot.swap("v8", lambda: _engine(tmp_path / "missing"))
            assert slot.current.version == "v1" and slot.swaps == 0 and slot.current.runner.alive

            old = slot.current
            old.runner.reserve(1)  # a request in flight on v1
            events = [ev async for ev in old.runner.generate([0, 5, 6], SamplingParams(max_new_tokens=3))]
            assert await slot.swap("v2", lambda: _engine(v2)) is True
            assert slot.current.version == "v2" and slot.retiring == [old]
            await asyncio.sleep(0.3)
            assert old.runner.alive and slot.retiring == [old]  # still running: its request is not done
            old.runner.release(1)
            for _ in range(100):
                if not slot.retiring:
                    break
                await asyncio.sleep(0.05)
            assert slot.retiring == [] and not old.runner.alive and events[-1].finished
            assert await slot.swap("v2", lambda: _engine(v2)) is False  # already served
        finally:
            slot.stop()

    asyncio.run(scenario())


def test_admin_endpoints_answer_only_admin_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("FORNALHA_NO_KERNELS", "1")
    v1 = make_run(tmp_path, "v1", 1)
    slot = ModelSlot(Served(AsyncEngine(_engine(v1)), "v1"), AsyncEngine)
    for keys, header, status in (([], "Bearer a", 403), (["adm"], None, 401), (["adm"], "Bearer user", 401),
                                 (["adm"], "Bearer adm", 200)):  # fmt: skip
        app = FastAPI()
        install_error_handlers(app)
        app.include_router(admin_router(slot, keys, lambda: ("v1", v1), _engine))
        r = TestClient(app).get("/admin/status", headers={"Authorization": header} if header else {})
        assert r.status_code == status, (keys, header, r.text)
        if status != 200:
            assert set(r.json()["error"]) >= {"message", "code"}
    assert r.json() == {"object": "admin.status", "version": "v1", "swaps": 0, "retiring": []}


def test_serve_registry_bad_input_is_exit_2(tmp_path, cli):
    code, _, err = cli("serve", "--registry", tmp_path / "nowhere", "--port", "8")
    assert code == 2 and "not a model registry" in err
    code, _, err = cli("serve", "--registry", tmp_path, "--run", tmp_path, "--port", "8")
    assert code == 2 and "one of them" in err
    code, _, err = cli("serve", "--port", "8")
    assert code == 2 and "one of them" in err
