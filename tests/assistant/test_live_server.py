"""`fornalha serve --docs` as users meet it: a subprocess on 127.0.0.1, reached with the official `openai`
client, the example client and httpx; `fornalha chat --docs` on piped input; bad folders exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from assistant_helpers import KEY, QUESTIONS

ROOT = Path(__file__).resolve().parents[2]


def test_sources_reach_the_openai_client(client):
    question = "How long should I knead the dough?"
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": question}],
                                       max_tokens=5, temperature=0)  # fmt: skip
    sources = r.model_extra["sources"]
    assert 1 <= len(sources) <= 2  # --docs-top-k 2
    assert sources[0]["path"] == QUESTIONS[question] and "Knead" in sources[0]["text"]
    assert set(sources[0]) == {"id", "title", "path", "text", "score"}
    assert r.model_extra["conversation"]["dropped_messages"] == 0
    # the passages were in the prompt: it is longer than the bare conversation (char tokenizer: 1 token a char)
    assert r.usage.prompt_tokens > len(question) + sum(len(s["text"]) for s in sources)


def test_sources_ride_on_the_final_streamed_chunk(client):
    msgs = [{"role": "user", "content": "what does the aperture of a telescope decide"}]
    plain = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0)
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    with_sources = [c for c in chunks if (c.model_extra or {}).get("sources")]
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert (
        finishing and finishing[0] in with_sources and chunks[-1] in with_sources
    )  # last text chunk, usage chunk
    assert with_sources[0].model_extra["sources"] == plain.model_extra["sources"]
    assert plain.model_extra["sources"][0]["path"] == "pages/telescope.html"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == plain.choices[0].message.content
    )


def test_a_long_conversation_drops_its_oldest_turns_and_says_so(client):
    msgs = [{"role": "system", "content": "Be brief."}]
    for i in range(12):
        msgs += [{"role": "user", "content": f"tomato {i} " + "q" * 150},
                 {"role": "assistant", "content": f"answer {i} " + "a" * 150}]  # fmt: skip
    msgs.append({"role": "user", "content": "how many hours of sun do tomato plants need"})
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=200, temperature=0)
    info = r.model_extra["conversation"]
    assert info["dropped_messages"] > 0 and info["dropped_messages"] % 2 == 0  # whole exchanges, oldest first
    assert info["context_window"] == 2048 and "oldest messages left out" in info["note"]
    assert r.usage.prompt_tokens == info["prompt_tokens"] <= 2048 - 200
    assert r.model_extra["sources"][0]["path"] == "garden/tomatoes.txt"


def test_a_message_longer_than_the_window_is_still_a_400(client):
    import openai

    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x" * 3000}])
    assert exc.value.code == "context_length_exceeded"


def test_the_example_client(server, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "assistant_client.py"), "--base-url", server.url + "/v1",
         "--api-key", KEY, "--max-tokens", "8", "--rating", "-1",
         "How long should I knead the dough?", "what is a sourdough starter"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["model"] == "tiny" and len(summary["turns"]) == 2
    first, second = summary["turns"]
    assert (
        first["id"].startswith("chatcmpl-")
        and second["id"].startswith("chatcmpl-")
        and first["id"] != second["id"]
    )
    assert first["sources"][0]["path"] == "kitchen/bread.md"
    assert any("sourdough" in s["text"] for s in second["sources"])  # streamed: sources from the last chunk
    assert second["answer"] and second["answer"] in proc.stdout
    assert summary["feedback"]["completion_id"] == second["id"] and summary["feedback"]["rating"] == -1
    assert "[1] Baking bread (kitchen/bread.md" in proc.stdout


def test_the_example_client_fails_in_one_line_without_a_server(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "assistant_client.py"), "--base-url",
                           "http://127.0.0.1:9/v1"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_the_page_reads_the_fields_the_server_sends(server):
    js = httpx.get(server.url + "/static/chat.js").text
    assert "chunk.sources" in js and "chunk.conversation" in js and "dropped_messages" in js


def fornalha(capsys, monkeypatch, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """The real command line, in this process (`fornalha.cli.main`): (exit code, stdout, stderr)."""
    import io

    from fornalha.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    monkeypatch.setenv("FORNALHA_NO_KERNELS", "1")
    with pytest.raises(SystemExit) as exc:
        main(list(args))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.parametrize("command", ["serve", "chat"])
@pytest.mark.parametrize(
    "folder, message",
    [("empty", "is empty"), ("binary", "no readable text"), ("missing", "does not exist")],
)
def test_an_empty_or_unreadable_folder_exits_2_in_one_line(run_dir, tmp_path, capsys, monkeypatch, command,
                                                           folder, message):  # fmt: skip
    docs = tmp_path / folder
    if folder != "missing":
        docs.mkdir()
    if folder == "binary":
        (docs / "scan.txt").write_bytes(bytes(range(256)))
        (docs / "old.txt").write_bytes(b"ol\xe1 mundo")  # Latin-1, not UTF-8
    code, out, err = fornalha(capsys, monkeypatch, command, "--run", str(run_dir), "--docs", str(docs),
                              "--device", "cpu", *(["--port", "9"] if command == "serve" else []),
                              stdin="hi\n")  # fmt: skip
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in err and out == ""
    if folder == "binary":
        assert "binary" in lines[0] and "invalid UTF-8" in lines[0]


def test_chat_cli_shows_sources_and_drops_old_turns(run_dir, docs_dir, tmp_path, capsys, monkeypatch):
    lines = ["tomato " + "z" * 600, "tomato " + "y" * 600, "How long should I knead the dough?",
             f"/save {tmp_path / 'chat.json'}"]  # fmt: skip
    code, out, err = fornalha(capsys, monkeypatch, "chat", "--run", str(run_dir), "--docs", str(docs_dir),
                              "--docs-top-k", "1", "-t", "0", "--max-new-tokens", "300", "--device", "cpu",
                              stdin="\n".join(lines) + "\n")  # fmt: skip
    assert code == 0, err
    assert "docs: " in err and "from 5 document(s)" in err and "skipped 1" in err
    assert "  [1] kitchen/bread.md#0 (score" in err
    assert "(2 oldest messages left out" in err and "2048-token context window" in err
    saved = json.loads((tmp_path / "chat.json").read_text())
    assert saved["messages"][0]["content"].startswith("tomato " + "y")  # the first exchange was forgotten
    assert len(out.strip("\n").split("\n")) == 3  # three replies


def test_hybrid_retrieval_runs_on_the_engine_thread(run_dir, docs_dir):
    """--retrieval hybrid: the query's embedding is computed between decode steps; sources still come back."""
    from assistant_helpers import Server

    srv = Server(run_dir, "--docs", str(docs_dir), "--retrieval", "hybrid", "--docs-top-k", "3")
    try:
        r = httpx.post(srv.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                       json={"model": "tiny", "max_tokens": 4, "temperature": 0,
                             "messages": [{"role": "user", "content": "how many hours of sun do tomato plants need"}]})  # fmt: skip
        assert r.status_code == 200, r.text
        sources = r.json()["sources"]
        assert len(sources) == 3  # the embedding ranking reaches every passage
        assert "garden/tomatoes.txt" in [
            s["path"] for s in sources
        ]  # first for BM25: near the top when fused
        assert all(0 < s["score"] <= 2 / 61 for s in sources)  # reciprocal-rank scores
    finally:
        code = srv.stop()
    assert code == 0 and "(hybrid)" in srv.stderr()
