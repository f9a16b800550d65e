"""Normalisation and every quality filter, each with a passing and a failing case."""

from __future__ import annotations

import pytest

from fornalha.data.clean import (
    CODE,
    PROSE,
    CleanConfig,
    DecodeError,
    FilterConfig,
    LanguageConfig,
    decode,
    dup_ngram_char_fraction,
    html_to_text,
    language_reason,
    normalize,
    quality_reason,
    repair_mojibake,
    top_ngram_char_fraction,
)


def test_decode_errors() -> None:
    assert decode("caf\u00e9".encode()) == "caf\u00e9"
    assert decode(b"\xef\xbb\xbfbom") == "bom"  # BOM removed
    with pytest.raises(DecodeError, match="binary"):
        decode(b"\x00\x01\x02 binary")
    with pytest.raises(DecodeError, match="invalid UTF-8"):
        decode(b"caf\xe9 au lait")
    with pytest.raises(DecodeError, match="empty"):
        decode(b"  \n ")
    assert decode(b"caf\xe9", "legacy") == "caf\u00e9"
    assert decode(b"caf\xe9", "replace") == "caf\ufffd"


def test_normalize_steps() -> None:
    raw = "Cafe\u0301\r\nline\u00a0two\x07\u200b   \r\n\n\n\n\n\nend"
    assert normalize(raw) == "Caf\u00e9\nline two\n\n\nend\n"
    code = "def f():\n    return 1   \n"
    assert normalize(code) == "def f():\n    return 1\n"  # indentation kept
    assert normalize(normalize(raw)) == normalize(raw)  # idempotent


def test_mojibake_repaired() -> None:
    assert (
        repair_mojibake("S\u00c3\u00a3o Paulo, cora\u00c3\u00a7\u00c3\u00a3o")
        == "S\u00e3o Paulo, cora\u00e7\u00e3o"
    )
    clean = "A casa \u00e9 \u00abbonita\u00bb \u2014 disse ela."
    assert repair_mojibake(clean) == clean


def test_html_to_text() -> None:
    text = html_to_text(
        "<html><body><h1>Title</h1><p>Some <i>web</i> text.</p><script>x()</script></body></html>"
    )
    assert "Title" in text and "Some web text." in text and "<p>" not in text


def test_prose_passes_all_filters(make_prose) -> None:  # noqa: ANN001
    assert quality_reason(make_prose(1, 400), PROSE) is None


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("short text " * 5, "too short (chars)"),
        ("x" * 300, "too short (words)"),
        (" ".join(["1234 5678 99"] * 100), "gopher: alpha fraction"),
        (" ".join(["a b c d"] * 100), "gopher: mean word length"),
        (" ".join(["internationalisation"] * 100), "gopher: mean word length"),
        (" ".join(f"#tag{i} river" for i in range(100)), "gopher: symbol-to-word ratio"),
    ],
)
def test_word_level_filters_fail(bad: str, reason: str) -> None:
    assert quality_reason(bad, PROSE) == reason


def test_line_and_repetition_filters(make_prose) -> None:  # noqa: ANN001
    base = make_prose(2, 400)
    cfg = PROSE.model_copy(update={"max_top_ngram_char_fraction": None, "max_dup_ngram_char_fraction": None})
    bullets = "\n".join(f"-{w} item" for w in base.split()[:100])
    assert quality_reason(bullets, cfg) == "gopher: bullet lines"
    ellipsis = "\n".join(f"{line}..." for line in base.split(". ")[:60])
    assert (
        quality_reason(ellipsis, cfg.model_copy(update={"max_symbol_word_ratio": None}))
        == "gopher: ellipsis lines"
    )
    lines = base.split(". ")[:20]
    dup_lines = "\n".join(lines + lines[:10] * 2)
    assert quality_reason(dup_lines, cfg) == "gopher: duplicated lines"
    paras = base.split("\n\n")
    dup_paras = "\n\n".join(paras + paras[:1] * 2)
    no_lines = cfg.model_copy(update={"max_dup_line_fraction": None, "max_dup_line_char_fraction": None})
    assert quality_reason(dup_paras, no_lines).startswith("gopher: duplicated paragraph")
    # switching the rules off lets the same texts through
    off = FilterConfig(
        **{k: None for k in FilterConfig.model_fields if k.startswith("max_") and k != "max_chars"}
    )
    for text in (bullets, dup_lines, dup_paras):
        assert quality_reason(text, off) is None


def test_ngram_rules(make_prose) -> None:  # noqa: ANN001
    varied = make_prose(3, 400).split()
    assert top_ngram_char_fraction(varied, 2) < 0.2
    assert dup_ngram_char_fraction(varied, 5) < 0.15
    looping = (varied[:40] * 10)[:400]
    assert dup_ngram_char_fraction(looping, 5) > 0.8
    assert top_ngram_char_fraction(["the cat"] * 50 + varied[:50], 2) > 0.2
    no_dupline = PROSE.model_copy(update={"max_dup_line_fraction": None, "max_dup_line_char_fraction": None})
    refrain = " ".join(f"{w} the cat" for w in varied[:150])
    assert quality_reason(refrain, no_dupline) == "gopher: top 2-gram fraction"
    only_dup = no_dupline.model_copy(update={"max_top_ngram_char_fraction": None})
    assert quality_reason(" ".join(looping), only_dup) == "gopher: duplicated 5-grams"
    assert quality_reason(" ".join(varied), PROSE) is None


def test_whole_books_skip_repetition_rules(make_prose) -> None:  # noqa: ANN001
    """A book-length document that repeats its phrases is kept; the same text cut to web-page size is not."""
    varied = make_prose(3, 400).split()
    looping = " ".join((varied[:40] * 10)[:400])
    book = "\n\n".join([looping] * 200)  # ~500 KB, every 5-gram repeated
    assert len(book) > PROSE.repetition_max_chars
    assert quality_reason(book, PROSE) is None
    assert quality_reason(book[:100_000], PROSE) is not None  # web-page sized: the rules apply
    strict = PROSE.model_copy(update={"repetition_max_chars": None})
    assert quality_reason(book, strict) is not None


def test_code_preset_keeps_code() -> None:
    import inspect
    import json.decoder

    source = inspect.getsource(json.decoder)
    assert quality_reason(source, PROSE) is not None  # prose rules would drop real code...
    assert quality_reason(source, CODE) is None  # ...the code preset keeps it
    cfg = CleanConfig()
    assert cfg.filters_for("code") == cfg.code and cfg.filters_for("prose") == cfg.prose
    assert CleanConfig(preset="prose").filters_for("code") == cfg.prose


def test_language_filter(make_prose) -> None:  # noqa: ANN001
    pytest.importorskip("langdetect")
    pt = "O rapaz caminhava devagar pela rua estreita, pensando na carta que a mãe lhe escrevera. " * 5
    cfg = LanguageConfig(enabled=True, languages=["pt"])
    assert language_reason(pt, cfg) is None
    assert language_reason(make_prose(4, 200), cfg) == "language (en)"
    assert language_reason(make_prose(4, 200), LanguageConfig()) is None  # off by default
