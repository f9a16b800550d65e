"""From a stream of token ids to a stream of text: UTF-8 safety and stop strings.

Two problems appear as soon as text is shown while it is being generated:

1. **A token is bytes, not characters.** A byte-level BPE token can end in the middle of a
   multi-byte UTF-8 character ("é" is two bytes, an emoji four), so decoding each token on its
   own would print replacement characters. `IncrementalDecoder` keeps the bytes of an unfinished
   character until the token that completes it arrives (Python's incremental UTF-8 decoder does
   exactly this buffering).
2. **A stop string can span tokens.** With stop ``"\\nUser:"``, the text ``"\\nUs"`` must not be
   shown yet: the next token may complete the stop string, and then it must never have been
   shown at all. `StopMatcher` holds back the longest tail of the text that is still the start
   of some stop string, and cuts the text where a stop string is found.

`TextStream` chains the two; the engine keeps one per request. The concatenation of everything it
emits equals the final text, which is the property the tests check.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterable, Sequence


class IncrementalDecoder:
    """Token ids in, complete characters out.

    `token_bytes(id)` gives a token's raw bytes (e.g. ``lambda i: tokenizer.decode_bytes([i])``);
    results are memoised, so each token id is converted once per decoder.
    """

    def __init__(self, token_bytes: Callable[[int], bytes]) -> None:
        self._token_bytes = token_bytes
        self._table: dict[int, bytes] = {}
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        """The text completed by this token (possibly "", when it ends mid-character)."""
        b = self._table.get(token_id)
        if b is None:
            b = self._table[token_id] = self._token_bytes(token_id)
        return self._utf8.decode(b)

    def flush(self) -> str:
        """End of stream: bytes of an unfinished character become U+FFFD, as a full decode would."""
        return self._utf8.decode(b"", final=True)


class StopMatcher:
    """Text in, text that is safe to show out; notices the first stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""  # text not yet emitted: it may be the beginning of a stop string
        self.stopped: str | None = None  # the stop string that ended the text, once found
        self._longest = max((len(s) for s in self.stops), default=0)

    def push(self, text: str) -> str:
        """Add text; return the part that can be shown now. After a stop, always ""."""
        if self.stopped is not None:
            return ""
        if not self.stops:
            return text
        buf = self._held + text
        # The earliest stop string wins (the one that starts first in the text).
        hits = [(buf.find(s), s) for s in self.stops]
        hits = [(i, s) for i, s in hits if i >= 0]
        if hits:
            i, s = min(hits)
            self.stopped, self._held = s, ""
            return buf[:i]
        keep = self._unsafe_tail(buf)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def _unsafe_tail(self, buf: str) -> int:
        """Length of the longest suffix of buf that is a proper prefix of some stop string."""
        for n in range(min(len(buf), self._longest - 1), 0, -1):
            tail = buf[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def flush(self) -> str:
        """End of stream without a stop: whatever was held back is ordinary text after all."""
        if self.stopped is not None:
            return ""
        held, self._held = self._held, ""
        return held


class TextStream:
    """Token ids in, displayable text out: UTF-8 reassembly, then stop-string hold-back.

    >>> s = TextStream(lambda i: [b"\\xc3", b"\\xa9", b"!"][i], stops=["!"])
    >>> s.push(0), s.push(1), s.push(2), s.stopped
    ('', 'é', '', '!')
    """

    def __init__(self, token_bytes: Callable[[int], bytes], stops: Sequence[str] = ()) -> None:
        self.decoder = IncrementalDecoder(token_bytes)
        self.matcher = StopMatcher(stops)
        self.text = ""  # everything emitted so far

    @property
    def stopped(self) -> str | None:
        return self.matcher.stopped

    def push(self, token_id: int) -> str:
        out = self.matcher.push(self.decoder.push(token_id))
        self.text += out
        return out

    def finish(self) -> str:
        """The rest of the text at the end of generation (held-back bytes and characters)."""
        out = "" if self.stopped is not None else self.matcher.push(self.decoder.flush())
        out += self.matcher.flush()
        self.text += out
        return out


def stream_text(token_ids: Iterable[int], token_bytes: Callable[[int], bytes], stops: Sequence[str] = ()):
    """Generator of text pieces for a finished list of ids (handy for tests and replay)."""
    stream = TextStream(token_bytes, stops)
    for t in token_ids:
        piece = stream.push(t)
        if piece:
            yield piece
        if stream.stopped is not None:
            return
    tail = stream.finish()
    if tail:
        yield tail
