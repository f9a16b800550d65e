"""BM25 (bm25s) finds the passage that answers; reciprocal rank fusion with embeddings; real Q&A data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from assistant_helpers import QUESTIONS

from fornalha.assistant import Passage, Retriever, read_passages
from fornalha.assistant.retrieval import index_folder, rrf


@pytest.fixture(scope="module")
def retriever(docs_dir):
    return index_folder(docs_dir, max_words=20)[0]


@pytest.mark.parametrize("question", list(QUESTIONS))
def test_the_right_passage_comes_first(retriever, question):
    hits = retriever.search(question, k=3)
    assert hits and hits[0].passage.path == QUESTIONS[question]
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_the_passage_not_just_the_document(retriever):
    # bread.md has two passages at 20 words: the kneading one and the sourdough one
    assert "Knead" in retriever.search("How long should I knead the dough?", k=1)[0].passage.text
    assert "sourdough" in retriever.search("what is a sourdough starter", k=1)[0].passage.text


def test_nothing_in_common_means_no_sources(retriever):
    assert retriever.search("zzz qqq", k=3) == []
    assert retriever.search("the and of what is", k=3) == []  # stop words only
    assert retriever.search("", k=3) == []


def test_sources_entry_shape(retriever):
    entry = retriever.search("telescope aperture", k=1)[0].to_dict()
    assert set(entry) == {"id", "title", "path", "text", "score"}
    assert entry["path"] == "pages/telescope.html" and entry["id"].startswith("pages/telescope.html#")
    assert entry["score"] > 0


def test_rrf_is_the_sum_of_reciprocal_ranks():
    fused = rrf([[2, 0, 1], [0, 2]], 3, k=60)
    assert fused == pytest.approx([1 / 62 + 1 / 61, 1 / 63, 1 / 61 + 1 / 62])


def test_hybrid_fuses_bm25_with_embeddings():
    """A passage BM25 cannot reach (no shared word) is found through the embedding ranking, while a
    passage both rankings agree on stays first."""
    passages = [
        Passage(str(i), "p", "p", t) for i, t in enumerate(["red apple pie", "green salad", "the automobile"])
    ]
    vectors = {"red apple pie": [1, 0, 0], "green salad": [0, 1, 0], "the automobile": [0, 0, 1],
               "car": [0, 0.1, 1], "apple pie recipe": [1, 0, 0.1]}  # fmt: skip

    def embed(texts):
        return np.array([vectors[t] for t in texts], dtype=np.float32)

    bm25_only = Retriever(passages)
    hybrid = Retriever(passages, embed=embed)
    assert bm25_only.search("car", 3) == []
    assert hybrid.uses_embeddings and hybrid.search("car", 1)[0].passage.text == "the automobile"
    top = hybrid.search("apple pie recipe", 3)
    assert top[0].passage.text == "red apple pie" and top[0].bm25 > 0
    assert top[0].score == pytest.approx(2 / 61)  # first in both rankings


def test_real_questions_find_their_answer(shared_data, tmp_path):
    """Aira (Portuguese Q&A on AI): the 142 human answers are the documents, one file each; each of
    the 142 original questions should retrieve its own answer. Chance would be 3/142 for hit@3."""
    answers: dict[int, str] = {}
    questions: list[tuple[str, int]] = []
    for line in (shared_data / "sft" / "aira1_qa_pt.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        answers.setdefault(row["answer_id"], row["completion"])
        if row["source"] == "original":
            questions.append((row["prompt"], row["answer_id"]))
    for aid, text in answers.items():
        (tmp_path / f"answer-{aid:03d}.txt").write_text(text, encoding="utf-8")
    passages, _ = read_passages(tmp_path, max_words=200)  # one passage per answer (the longest has 162 words)
    assert len(passages) == len(answers) == 142
    retriever = Retriever(passages)
    hit1 = hit3 = 0
    for question, aid in questions:
        paths = [h.passage.path for h in retriever.search(question, k=3)]
        hit1 += paths[:1] == [f"answer-{aid:03d}.txt"]
        hit3 += f"answer-{aid:03d}.txt" in paths
    # measured: hit@1 0.61, hit@3 0.73 (docs/assistant.md)
    assert hit1 / len(questions) > 0.55 and hit3 / len(questions) > 0.68
