"""A short, pure-Python byte-level BPE encoder, for reading (it is ~100x slower than tiktoken).

It gives exactly the ids of the fast encoder (`BPETokenizer`, i.e. tiktoken) and is tested to.
Encoding a text takes two steps:

1. **Pre-tokenize.** A regular expression cuts the text into chunks: words with their leading
   space, runs of one or two digits, punctuation runs, whitespace. Merges never cross a chunk
   boundary, so " the" and "the," stay separate and the vocabulary is not wasted on
   "word+punctuation" combinations.
2. **Merge.** Each chunk starts as its UTF-8 bytes (every byte is a token, so any text can be
   encoded: there is no "unknown"). Then, repeatedly, among all adjacent pairs of parts whose
   concatenation is in the vocabulary, merge the pair whose result has the *lowest rank* (it was
   learned earliest in training). Stop when no adjacent pair forms a known token.

A token's *rank* is its id: training learned the tokens in rank order, so "lowest rank first"
replays training's merges in the order they were learned. The same idea as tiktoken's
`_educational.py` and Karpathy's minbpe.
"""

from __future__ import annotations

import regex


def bpe_merge(ranks: dict[bytes, int], piece: bytes, max_rank: int | None = None) -> list[bytes]:
    """Split ``piece`` into tokens by greedy lowest-rank merging.

    ``max_rank`` stops before any merge whose result has rank >= max_rank; with
    ``max_rank=ranks[token]`` this recovers the two parts a token was built from (used to write
    the Hugging Face ``merges`` list).
    """
    parts = [bytes([b]) for b in piece]
    while len(parts) > 1:
        # Find the adjacent pair whose concatenation has the lowest rank.
        best_index, best_rank = -1, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and (best_rank is None or rank < best_rank):
                best_index, best_rank = i, rank
        if best_rank is None or (max_rank is not None and best_rank >= max_rank):
            break
        parts[best_index : best_index + 2] = [parts[best_index] + parts[best_index + 1]]
    return parts


class ReferenceBPE:
    """Encode and decode with a vocabulary of byte-string ranks and a split pattern.

    ``ranks`` maps each token's bytes to its id (special tokens are not included: they are never
    produced from ordinary text).
    """

    def __init__(self, ranks: dict[bytes, int], pattern: str):
        self.ranks = ranks
        self.pattern = regex.compile(pattern)
        self.decoder = {rank: token for token, rank in ranks.items()}

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for chunk in self.pattern.findall(text):
            piece = chunk.encode("utf-8")
            if piece in self.ranks:  # whole chunk is a token: done (tiktoken does the same)
                ids.append(self.ranks[piece])
                continue
            ids.extend(self.ranks[part] for part in bpe_merge(self.ranks, piece))
        return ids

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.decoder[i] for i in ids)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")
