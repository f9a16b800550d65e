"""UTF-8-safe incremental decoding and stop-string hold-back."""

from __future__ import annotations

from fornalha.infer.streaming import IncrementalDecoder, StopMatcher, TextStream, stream_text

TEXT = "héllo wörld — 😀 日本"
BYTES = list(TEXT.encode("utf-8"))


def byte_of(i: int) -> bytes:
    return bytes([i])


def test_incremental_decoder_never_splits_a_character():
    dec = IncrementalDecoder(byte_of)
    pieces = [dec.push(b) for b in BYTES]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + dec.flush() == TEXT
    # the emoji's four bytes yield "", "", "", "😀"
    start = TEXT.encode().index("😀".encode())
    assert pieces[start : start + 4] == ["", "", "", "😀"]


def test_incomplete_tail_becomes_a_replacement_character_like_a_full_decode():
    data = "é".encode() + "😀".encode()[:2]
    dec = IncrementalDecoder(byte_of)
    out = "".join(dec.push(b) for b in data) + dec.flush()
    assert out == data.decode("utf-8", errors="replace")


def test_stop_matcher_holds_back_possible_stop_prefixes():
    m = StopMatcher(["\nUser:"])
    assert m.push("Hello") == "Hello"
    assert m.push("\nUs") == ""  # could become the stop string
    assert m.push("e") == ""
    assert m.push("r: hi") == ""  # it did: never shown
    assert m.stopped == "\nUser:"
    m = StopMatcher(["\nUser:"])
    assert m.push("a\nU") == "a"
    assert m.push("x") == "\nUx"  # it did not: released
    assert m.push("\n") == ""
    assert m.flush() == "\n"


def test_earliest_stop_string_wins():
    m = StopMatcher(["world", "lo"])
    assert m.push("hello world") == "hel"
    assert m.stopped == "lo"


def test_text_stream_pieces_join_to_the_decoded_text():
    for stops in ([], ["wör"], ["😀"], ["日本"], ["zzz"]):
        stream = TextStream(byte_of, stops)
        pieces = [stream.push(b) for b in BYTES]
        stream.finish()
        final = TEXT
        for s in stops:
            if s in final:
                final = final[: final.index(s)]
        assert "".join(pieces) + ("" if stream.stopped else stream.text[len("".join(pieces)) :]) == final
        assert stream.text == final
        assert "".join(stream_text(BYTES, byte_of, stops)) == final
