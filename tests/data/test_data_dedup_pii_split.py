"""Exact and near duplicates, PII scrubbing, and the deterministic leak-free split."""

from __future__ import annotations

from collections import Counter

import pytest

from fornalha.data.dedup import DedupConfig, Deduplicator, exact_hash, minhash, signature
from fornalha.data.pii import PiiConfig, luhn_valid, scrub
from fornalha.data.split import SplitConfig, assign_side, hash_unit, tail_split


def test_exact_hash_normalizes_case_and_space() -> None:
    assert exact_hash("Hello   World\n") == exact_hash("hello world")
    assert exact_hash("hello world") != exact_hash("hello there")


def test_near_duplicates_cluster(make_prose) -> None:  # noqa: ANN001
    a = make_prose(10, 600)
    b = a.replace("river", "stream", 3) + "One extra closing line.\n"
    c = make_prose(11, 600)
    assert 0.85 < minhash(signature(a)).jaccard(minhash(signature(b))) < 0.98
    assert minhash(signature(a)).jaccard(minhash(signature(c))) < 0.3
    d = Deduplicator(DedupConfig(near_threshold=0.8))
    first = d.add(exact_hash(a), signature(a))
    assert first.kind is None
    assert d.add(exact_hash(b), signature(b)).kind == "near"
    assert d.add(exact_hash(c), signature(c)).kind is None
    again = d.add(exact_hash(a.upper()), signature(a))
    assert again.kind == "exact" and again.cluster == first.cluster
    strict = Deduplicator(DedupConfig(near_threshold=0.98))
    strict.add(exact_hash(a), signature(a))
    assert strict.add(exact_hash(b), signature(b)).kind is None  # the threshold is honoured


def test_pii_replacements() -> None:
    text = (
        "Write to ana.souza@example.com.br or call +351 912 345 678 / (415) 555-0123. "
        "Server 8.8.4.4 and 2001:4860:4860::8888; card 4111-1111-1111-1111."
    )
    out, counts = scrub(text)
    assert out == ("Write to <EMAIL> or call <PHONE> / <PHONE>. Server <IP> and <IP>; card <CARD>.")
    assert counts == Counter(EMAIL=1, PHONE=2, IP=2, CARD=1)


def test_pii_leaves_ordinary_text_alone() -> None:
    text = "In 1999 we sold 1234567 units; x[1::2]; 127.0.0.1 is local; 4111 1111 1111 1112 fails Luhn."
    assert scrub(text) == (text, Counter())
    assert scrub("local 127.0.0.1", PiiConfig(keep_non_public_ips=False))[0] == "local <IP>"
    assert scrub("a@b.org", PiiConfig(enabled=False))[0] == "a@b.org"
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


def test_split_is_deterministic_and_close_to_fraction() -> None:
    cfg = SplitConfig(val_fraction=0.2)
    keys = [exact_hash(f"document {i}") for i in range(2000)]
    sides = [assign_side(k, cfg) for k in keys]
    assert sides == [assign_side(k, cfg) for k in keys]
    assert 0.16 < sides.count("val") / len(sides) < 0.24
    assert hash_unit("x") == hash_unit("x") != hash_unit("x", seed="other")
    assert all(assign_side(k, SplitConfig(val_fraction=0.0)) == "train" for k in keys[:50])


def test_tail_split_cuts_at_a_line() -> None:
    text = "".join(f"line {i}\n" for i in range(100))
    head, tail = tail_split(text, 0.1)
    assert head + tail == text
    assert tail.startswith("line ") and head.endswith("\n")
    assert 0.08 < len(tail) / len(text) < 0.12
    assert tail_split("one line only", 0.1) == ("one line only", "")


@pytest.mark.parametrize("n", [40])
def test_near_duplicates_never_straddle_the_split(make_prose, n: int) -> None:  # noqa: ANN001
    """Each base document and its light edits share a cluster, hence a side."""
    cfg = SplitConfig(val_fraction=0.5)
    d = Deduplicator(DedupConfig(), use_near=True)
    sides: dict[int, set[str]] = {}
    for i in range(n):
        base = make_prose(100 + i, 250)
        for variant in (base, base.replace(".", "!", 1), base + "Postscript.\n"):
            found = d.add(exact_hash(variant), signature(variant))
            sides.setdefault(i, set()).add(assign_side(found.cluster, cfg))
    assert all(len(s) == 1 for s in sides.values())
    assert {next(iter(s)) for s in sides.values()} == {"train", "val"}
