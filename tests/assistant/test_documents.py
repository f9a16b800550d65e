"""A folder of documents -> passages, with the readers of `data prepare`; bad folders are one clear error."""

from __future__ import annotations

import pytest
from assistant_helpers import DOCS

from fornalha.assistant import read_passages, split_passages
from fornalha.errors import DataError


def test_split_passages_keeps_every_word_in_order_within_the_limit():
    para = "One two three. Four five six seven. " * 6  # 42 words, sentences of 3 and 4 words
    text = f"# Title\n\n{para}\n\nshort tail\nwrapped line\n\n\n" + "x " * 25
    passages = split_passages(text, max_words=10)
    assert all(1 <= len(p.split()) <= 10 for p in passages)
    assert " ".join(passages).split() == text.split()  # nothing lost, nothing reordered
    assert passages[0].startswith("# Title One two three.")  # a short heading is packed with what follows
    assert any(p == "x " * 9 + "x" for p in passages)  # a 25-word run without sentence ends: cut at words


def test_read_passages_reads_every_format_and_reports_what_it_skipped(docs_dir):
    passages, skipped = read_passages(docs_dir, max_words=20)
    by_path: dict[str, list] = {}
    for p in passages:
        by_path.setdefault(p.path, []).append(p)
    assert set(by_path) == {*DOCS, "archive.txt.gz"}
    bread = by_path["kitchen/bread.md"]
    assert [p.id for p in bread] == [f"kitchen/bread.md#{i}" for i in range(len(bread))] and len(bread) >= 2
    assert {p.title for p in bread} == {"Baking bread"}  # the Markdown heading
    assert by_path["garden/tomatoes.txt"][0].title == "tomatoes.txt"  # no heading: the file name
    html = " ".join(p.text for p in by_path["pages/telescope.html"])
    assert "aperture" in html and "<p>" not in html  # HTML turned into text
    assert "vinegar" in by_path["archive.txt.gz"][0].text  # decompressed on the fly
    assert [(s.doc_id, s.reason) for s in skipped] == [("photo.txt", "binary")]


def test_jsonl_records_are_documents(tmp_path):
    (tmp_path / "faq.jsonl").write_text('{"text": "first answer"}\n{"oops": 1}\n{"text": "second answer"}\n')
    passages, skipped = read_passages(tmp_path)
    assert [(p.id, p.text) for p in passages] == [
        ("faq.jsonl:0#0", "first answer"),
        ("faq.jsonl:2#0", "second answer"),
    ]
    assert [s.doc_id for s in skipped] == ["faq.jsonl:1"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d, "is empty"),
        (lambda d: (d / "sub").mkdir() or d, "is empty"),
        (lambda d: d / "missing", "does not exist"),
        (lambda d: (d / "a.txt").write_text("hi") and d / "a.txt", "is not a folder"),
        (lambda d: (d / "b.bin.txt").write_bytes(b"\x00\x01" * 100) and d, "no readable text"),
        (lambda d: (d / "c.txt").write_bytes(b"caf\xe9 au lait") and d, "invalid UTF-8"),
        (lambda d: (d / "d.txt.gz").write_bytes(b"\x1f\x8b\x08\x00garbage") and d, "corrupt"),
    ],
)
def test_empty_or_unreadable_folder_is_a_data_error(tmp_path, make, message):
    target = make(tmp_path)
    with pytest.raises(DataError, match=message):
        read_passages(target)
