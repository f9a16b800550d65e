"""16 concurrent clients stream and rate against a live server; SIGTERM mid-load loses nothing acknowledged."""

from __future__ import annotations

import json
import threading
import time

import httpx

from fornalha.serve.store import Store


def client_loop(url: str, k: int, stop: threading.Event, done: list, rated: list) -> None:
    with httpx.Client(base_url=url, timeout=30) as http:
        model = http.get("/v1/models").json()["data"][0]["id"]
        i = 0
        while not stop.is_set():
            i += 1
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"client {k} turn {i}"}],
                "max_tokens": 12,
                "stream": True,
                "temperature": 0,
            }
            try:
                cid, finished = None, False
                with http.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        return
                    for line in r.iter_lines():
                        if line == "data: [DONE]":
                            finished = True
                        elif line.startswith("data: "):
                            cid = json.loads(line[6:])["id"]
                if not finished:
                    return
                done.append(cid)
                rating = 1 if (k + i) % 2 else -1
                r = http.post(
                    "/v1/feedback", json={"completion_id": cid, "rating": rating, "comment": f"c{k}"}
                )
                if r.status_code == 200:
                    rated.append((cid, rating))
            except httpx.TransportError:
                return  # the server went away: whatever was acknowledged before must be stored


def test_sigterm_under_load_keeps_every_acknowledged_write(live_server):
    stop = threading.Event()
    done: list[str] = []
    rated: list[tuple[str, int]] = []
    threads = [
        threading.Thread(target=client_loop, args=(live_server.url, k, stop, done, rated)) for k in range(16)
    ]
    for t in threads:
        t.start()
    deadline = time.time() + 20
    while len(rated) < 48 and time.time() < deadline:  # load well under way
        time.sleep(0.1)
    assert len(rated) >= 16, "the clients made too little progress"
    code = live_server.stop()  # SIGTERM while streams are in flight
    stop.set()
    for t in threads:
        t.join(30)
    assert code == 0
    store = Store(live_server.db_url)
    for cid in done:
        assert store.get_completion(cid) is not None, cid
    stored = {(r["completion_id"], r["rating"]) for r in store.list_feedback()}
    assert set(rated) <= stored
    assert store.counts()["feedback"] == len(rated)  # nothing half-written or duplicated
    store.close()
