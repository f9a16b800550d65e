"""Finding the passages that answer a question: BM25, optionally fused with the model's embeddings.

    retriever = Retriever(passages)                       # BM25 only
    retriever = Retriever(passages, embed=embedder)       # BM25 + embeddings, fused by rank
    hits = retriever.search("what is a tokenizer?", k=3)  # -> list[Hit], best first

**BM25** (the `bm25s` library) scores a passage by the query words it contains, each weighted by
how rare it is in the collection (IDF) and damped by how often it repeats and how long the passage
is. Words are lower-cased and stripped of accents ("está" matches "esta"), and English and
Portuguese stop words are ignored, so "o que é um tokenizador" is scored on "tokenizador".

**Embeddings** (optional, ``embed``): the model's own hidden states averaged over a text
(`fornalha.infer.Engine.embed`) give one vector per passage; a query ranks passages by cosine
similarity. They can match words the query does not share with the passage, but a small language
model's averaged states are a weak semantic signal (measured in docs/assistant.md).

**Reciprocal rank fusion** combines the two rankings without comparing their scores, which live on
different scales: a passage's fused score is ``sum over rankings of 1 / (60 + rank)`` (Cormack et
al., 2009), so a passage near the top of either list rises. With BM25 alone, a passage that shares
no word with the query is never returned: with nothing in common there is nothing to ground on.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fornalha.assistant.documents import Passage

RRF_K = 60

#: ``embed(texts) -> array [len(texts), dim]``: one vector per text.
Embedder = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Hit:
    """A retrieved passage, its rank score, and its BM25 score (0 when no query word matched)."""

    passage: Passage
    score: float
    bm25: float

    def to_dict(self) -> dict[str, object]:
        """The ``sources`` entry of an answer: what the API returns and the page shows."""
        p = self.passage
        return {"id": p.id, "title": p.title, "path": p.path, "text": p.text, "score": round(self.score, 6)}


def fold(text: str) -> str:
    """Lower case without accents: the form both documents and queries are indexed in."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def _stopwords() -> list[str]:
    from bm25s.stopwords import STOPWORDS_EN, STOPWORDS_PORTUGUESE

    return sorted({fold(w) for w in (*STOPWORDS_EN, *STOPWORDS_PORTUGUESE)})


class Retriever:
    """A BM25 index (and optionally an embedding matrix) over a fixed list of passages."""

    def __init__(self, passages: Sequence[Passage], embed: Embedder | None = None) -> None:
        import bm25s
        from bm25s.tokenization import Tokenizer

        if not passages:
            raise ValueError("a retriever needs at least one passage")
        self.passages = list(passages)
        self._tokenizer = Tokenizer(lower=True, stopwords=_stopwords())
        corpus = self._tokenizer.tokenize(
            [fold(f"{p.title}\n{p.text}") for p in self.passages], return_as="ids", show_progress=False
        )
        self._bm25 = bm25s.BM25()
        self._bm25.index(corpus, show_progress=False)
        self._embed = embed
        self._vectors: np.ndarray | None = None
        if embed is not None:
            self._vectors = _normalize(np.asarray(embed([p.text for p in self.passages]), dtype=np.float32))

    @property
    def uses_embeddings(self) -> bool:
        """True when a search runs the model (in a server: on the engine's thread)."""
        return self._embed is not None

    def bm25_scores(self, query: str) -> np.ndarray:
        """The BM25 score of every passage for ``query`` (0 where no query word occurs)."""
        ids = self._tokenizer.tokenize(
            [fold(query)], update_vocab=False, return_as="ids", show_progress=False
        )
        scores = np.zeros(len(self.passages), dtype=np.float32)
        empty = self._tokenizer.get_vocab_dict().get("")  # bm25s's id for "no known word"
        words = [i for i in ids[0] if i != empty]
        if not words:
            return scores
        return self._bm25.get_scores(words).astype(np.float32)

    def embedding_scores(self, query: str) -> np.ndarray:
        """Cosine similarity of ``query``'s embedding with every passage's (needs ``embed``)."""
        if self._embed is None or self._vectors is None:
            raise RuntimeError("this retriever was built without embeddings")
        q = _normalize(np.asarray(self._embed([query]), dtype=np.float32))[0]
        return self._vectors @ q

    def search(self, query: str, k: int = 3) -> list[Hit]:
        """The ``k`` best passages for ``query``, best first (fewer if fewer match)."""
        if k < 1 or not query.strip():
            return []
        bm25 = self.bm25_scores(query)
        if self._embed is None:
            order = [int(i) for i in np.argsort(-bm25, kind="stable") if bm25[i] > 0][:k]
            return [Hit(self.passages[i], float(bm25[i]), float(bm25[i])) for i in order]
        fused = rrf([_ranking(bm25, positive_only=True), _ranking(self.embedding_scores(query))], len(bm25))
        order = [int(i) for i in np.argsort(-fused, kind="stable") if fused[i] > 0][:k]
        return [Hit(self.passages[i], float(fused[i]), float(bm25[i])) for i in order]


def _ranking(scores: np.ndarray, positive_only: bool = False) -> list[int]:
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order if not positive_only or scores[i] > 0]


def rrf(rankings: Sequence[Sequence[int]], n: int, k: int = RRF_K) -> np.ndarray:
    """Reciprocal rank fusion: ``score[i] = sum over rankings of 1 / (k + rank of i)``, rank from 1."""
    fused = np.zeros(n, dtype=np.float64)
    for ranking in rankings:
        for rank, i in enumerate(ranking, start=1):
            fused[i] += 1.0 / (k + rank)
    return fused


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def engine_embedder(engine, tokenizer, batch: int = 16) -> Embedder:
    """``embed`` backed by a `fornalha.infer.Engine`: each text as ``<|bos|>`` + its tokens, cut to the
    context window, averaged final hidden states. Call it where the engine may run (its own thread in
    a server)."""
    limit = engine.max_seq_len
    bos = getattr(tokenizer, "bos_id", None)

    def embed(texts: Sequence[str]) -> np.ndarray:
        ids = [(([bos] if bos is not None else []) + tokenizer.encode(t))[:limit] for t in texts]
        out: list[list[float]] = []
        for i in range(0, len(ids), batch):
            out.extend(engine.embed(ids[i : i + batch]))
        return np.asarray(out, dtype=np.float32)

    return embed


def index_folder(folder, embed: Embedder | None = None, max_words: int | None = None):
    """(Retriever, skipped) over every passage of the documents under ``folder``; `DataError` when
    the folder is missing, unreadable or holds no text (see `documents.read_passages`)."""
    from fornalha.assistant.documents import MAX_WORDS, read_passages

    passages, skipped = read_passages(folder, max_words or MAX_WORDS)
    return Retriever(passages, embed=embed), skipped
