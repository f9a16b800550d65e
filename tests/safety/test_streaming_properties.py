"""Property-based tests (hypothesis) for streaming text token by token (`fornalha.infer.streaming`).

For any text, through the BPE, the byte-level Hugging Face and the char tokenizers, pushed one
token at a time with random stop strings: the pieces join to the decoded text, cut before the
first stop string to appear, and never contain U+FFFD (a character split between tokens).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fornalha.infer.streaming import TextStream
from fornalha.tokenizer import CharTokenizer, load_tokenizer, train_bpe

CORPUS = [
    "Olá, coração! Ação é ótima; über naïve café 🙂 中文 日本語 " * 20,
    "def f(x):\n    return x + 1\n" * 20,
]
TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\ufffd"), max_size=60
) | st.sampled_from(CORPUS[0].split(" ")).map(lambda w: w * 3)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from hf_helpers import byte_level_tokenizer

    folder: Path = tmp_path_factory.mktemp("hf-bytelevel")
    byte_level_tokenizer(folder, CORPUS, 400)
    return {
        "bpe": train_bpe(CORPUS, 400),
        "hf": load_tokenizer(folder),
        "char": CharTokenizer("".join(CORPUS)),
    }


def expected(tok, ids: list[int], stops: list[str]) -> str:
    """Generation stops after the first token whose text completes a stop string; the text is cut
    before the earliest stop string then present (what a client of a streaming server sees)."""
    for k in range(len(ids)):
        prefix = tok.decode_bytes(ids[: k + 1]).decode("utf-8", errors="ignore")
        cuts = [prefix.find(s) for s in stops if s in prefix]
        if cuts:
            return prefix[: min(cuts)]
    return tok.decode(ids)


@pytest.mark.parametrize("kind", ["bpe", "hf", "char"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXT, data=st.data())
def test_streamed_pieces_join_to_the_decoded_text(tokenizers, kind, text, data):
    tok = tokenizers[kind]
    ids = tok.encode(text)
    decoded = tok.decode(ids)
    if kind != "char":
        assert decoded == text  # byte-level tokenizers are lossless
    substrings = st.integers(0, max(len(decoded) - 1, 0)).flatmap(
        lambda i: st.integers(i + 1, len(decoded) + 1).map(lambda j: decoded[i:j])
    )
    stops = data.draw(
        st.lists(st.text(max_size=4) | substrings, max_size=3).map(lambda s: [x for x in s if x])
    )
    stream = TextStream(lambda i: tok.decode_bytes([i]), stops)
    pieces = []
    for i in ids:
        pieces.append(stream.push(i))
        if stream.stopped is not None:
            break
    pieces.append(stream.finish())
    joined = "".join(pieces)
    assert joined == expected(tok, ids, stops)
    assert "\ufffd" not in joined or "\ufffd" in decoded
