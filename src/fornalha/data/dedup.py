"""Deduplication: exact (content hash) and near-duplicate (MinHash + LSH).

*Exact*: two documents are the same if their **normalized** text — case-folded, with every
run of whitespace made one space — has the same BLAKE2b hash. Only the 16-byte digests are
kept in memory (~100 bytes per document with set overhead).

*Near*: a document is summarised by a MinHash signature of its word 5-gram "shingles"
(`datasketch`); locality-sensitive hashing (LSH) then finds earlier documents whose
estimated Jaccard similarity is above ``near_threshold`` (0.8 by default) without comparing
all pairs. Signatures are computed in the worker processes (:func:`signature`); the LSH
index lives in the orchestrator (:class:`Deduplicator`), which sees documents in input order
so the result is deterministic. The index costs about 1.5 KB per document: tens of millions of
documents fit on one machine; beyond that, run the same idea distributed (see docs/data.md).

Every document gets a *cluster key*: the exact hash of the first document of its
near-duplicate cluster. The split (:mod:`.split`) uses it so that near-copies stay on the
same side of train/validation even when deduplication itself is switched off.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

_SPACE = re.compile(r"\s+")
_MULT = np.uint64(0x9E3779B97F4A7C15)
_SEED = 1
_PERMUTATIONS: dict[int, np.ndarray] = {}


class DedupConfig(BaseModel):
    """Which duplicates to drop, and what counts as "near"."""

    model_config = ConfigDict(extra="forbid")

    exact: bool = True
    near: bool = True
    near_threshold: float = Field(0.8, ge=0.05, le=0.98, description="Jaccard similarity (LSH needs <= 0.98)")
    num_perm: int = Field(128, ge=16)
    shingle_words: int = Field(5, ge=1)


def normalized_for_hash(text: str) -> str:
    """Case-folded text with whitespace runs collapsed: what "exact duplicate" compares."""
    return _SPACE.sub(" ", text.casefold()).strip()


def exact_hash(text: str) -> str:
    """Hex BLAKE2b-128 of :func:`normalized_for_hash`."""
    return hashlib.blake2b(normalized_for_hash(text).encode("utf-8"), digest_size=16).hexdigest()


def _identity(value: int) -> int:
    return value


def shingle_hashes(text: str, n: int = 5) -> np.ndarray:
    """Distinct 32-bit hashes of the word n-grams of ``text`` (lower-cased)."""
    words = text.casefold().split()
    if not words:
        return np.zeros(0, np.uint64)
    vocab = {w: zlib.crc32(w.encode("utf-8", "surrogatepass")) for w in dict.fromkeys(words)}
    ids = np.fromiter(map(vocab.__getitem__, words), np.uint64, len(words))
    n = min(n, len(ids))
    count = len(ids) - n + 1
    h = np.zeros(count, np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            h = h * _MULT + ids[k : k + count]
    return np.unique((h ^ (h >> np.uint64(32))) & np.uint64(0xFFFFFFFF))


def signature(text: str, num_perm: int = 128, n: int = 5) -> np.ndarray:
    """MinHash signature (``datasketch``'s permutations) of the word n-gram shingles."""
    from datasketch import MinHash

    if num_perm not in _PERMUTATIONS:  # drawing them costs ~1 ms: do it once per process
        _PERMUTATIONS[num_perm] = MinHash(num_perm=num_perm, seed=_SEED, scheme="affine32").permutations
    m = MinHash(
        num_perm=num_perm,
        seed=_SEED,
        hashfunc=_identity,
        scheme="affine32",
        permutations=_PERMUTATIONS[num_perm],
    )
    shingles = shingle_hashes(text, n)
    for start in range(0, len(shingles), 16384):  # bounded memory: chunk x num_perm matrix
        m.update_batch(shingles[start : start + 16384].tolist())
    return m.hashvalues


def minhash(values: np.ndarray, num_perm: int = 128):  # noqa: ANN201 - datasketch.MinHash
    """Rebuild a ``datasketch.MinHash`` from a :func:`signature`."""
    from datasketch import MinHash

    return MinHash(num_perm=num_perm, seed=_SEED, hashfunc=_identity, hashvalues=values, scheme="affine32")


@dataclass(frozen=True)
class DedupResult:
    """What :meth:`Deduplicator.add` found: ``kind`` is None, "exact" or "near"."""

    kind: str | None
    cluster: str
    duplicate_of: str | None = None


class Deduplicator:
    """Streaming exact + near duplicate detector. Feed documents in a fixed order."""

    def __init__(self, cfg: DedupConfig | None = None, *, use_near: bool | None = None):
        from datasketch import MinHashLSH

        self.cfg = cfg or DedupConfig()
        self.use_near = self.cfg.near if use_near is None else use_near
        self._exact: dict[bytes, str] = {}  # digest -> cluster key
        self._lsh = MinHashLSH(threshold=self.cfg.near_threshold, num_perm=self.cfg.num_perm)
        self._cluster: dict[str, str] = {}  # lsh key -> cluster key
        self._sigs: dict[str, np.ndarray] = {}  # lsh key -> signature (512 bytes)
        self._count = 0

    @staticmethod
    def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.count_nonzero(np.asarray(a) == b)) / len(b)

    def add(self, doc_hash: str, sig: np.ndarray | None) -> DedupResult:
        """Register a document; report whether it duplicates an earlier one."""
        digest = bytes.fromhex(doc_hash)
        if digest in self._exact:
            return DedupResult("exact", self._exact[digest], self._exact[digest])
        if not self.use_near or sig is None:
            self._exact[digest] = doc_hash
            return DedupResult(None, doc_hash)
        mh = minhash(sig, self.cfg.num_perm)
        # LSH returns *candidates*; keep those whose estimated Jaccard really passes.
        matches = [
            k for k in self._lsh.query(mh) if self._jaccard(sig, self._sigs[k]) >= self.cfg.near_threshold
        ]
        if matches:
            first = min(matches, key=lambda k: int(k))  # earliest inserted: deterministic
            cluster = self._cluster[first]
            self._exact[digest] = cluster
            return DedupResult("near", cluster, cluster)
        key = str(self._count)
        self._count += 1
        self._lsh.insert(key, mh)
        self._cluster[key] = doc_hash
        self._sigs[key] = np.asarray(sig)
        self._exact[digest] = doc_hash
        return DedupResult(None, doc_hash)
