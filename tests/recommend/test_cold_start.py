"""Cold start: items outside the model's vocabulary, answered from their text (content.py)."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
from tests.recommend.conftest import COLD_TITLES, fornalha

from fornalha.errors import DataError
from fornalha.recommend.content import ContentIndex, evaluate_cold, item_text
from fornalha.recommend.data import load_data, prepare
from fornalha.recommend.recommender import Recommender


def bag_of_words(texts):
    """A stand-in text embedding with planted similarity: one hashed dimension per word."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().replace(".", " ").replace(",", " ").split():
            out[i, zlib.crc32(w.encode()) % 64] += 1.0
    return out


def test_prepare_keeps_cold_items_and_cold_users(trained):
    _, data_dir = trained
    data = load_data(data_dir)
    assert data.cold == ["X1", "X2", "X3", "X4"] and not set(data.cold) & set(data.items)
    assert data.cold_users == [["X1", "X2"], ["X2", "X1"], ["X3", "X4"], ["X4", "X3", "A0"]]
    assert data.titles["X2"] == COLD_TITLES["X2"] and data.manifest["cold_users"] == 4
    assert len(data.users) == 120  # the warm data is unchanged by them


def test_min_item_interactions_makes_rare_items_cold(tmp_path):
    rows = [
        f"{u}::{it}::5::{100 * u + t}" for u in range(1, 6) for t, it in enumerate(["a", "b", "c", "d", "e"])
    ]
    rows += ["1::rare::5::999", "9::rare::5::1", "9::solo::5::2"]  # user 9: a cold-only history
    (tmp_path / "r.dat").write_text("\n".join(rows) + "\n")
    man = prepare(tmp_path / "r.dat", tmp_path / "d", min_item_interactions=2)
    data = load_data(tmp_path / "d")
    assert sorted(data.items) == ["a", "b", "c", "d", "e"] and data.cold == ["rare", "solo"]
    assert man["dropped"]["rare_items"] == 1 and data.cold_users == [["rare", "solo"]]
    with pytest.raises(DataError):
        prepare(tmp_path / "r.dat", tmp_path / "d2", min_item_interactions=0)


def test_content_index_returns_the_planted_similar_item():
    items = ["alien", "aliens", "notting", "toy"]
    texts = ["Alien (1979). Horror, Sci-Fi", "Aliens (1986). Action, Horror, Sci-Fi",
             "Notting Hill (1999). Comedy, Romance", "Toy Story (1995). Animation, Comedy"]  # fmt: skip
    index = ContentIndex(items, bag_of_words(texts))
    assert [it for it, _ in index.recommend(["alien"], k=2)][0] == "aliens"
    assert "alien" not in [it for it, _ in index.recommend(["alien"], k=4)]
    assert index.recommend(["notting"], k=1)[0][0] == "toy"  # shares "Comedy"
    # user 1: aliens is content's first (rank 0), popularity puts toy above it (rank 1);
    # user 2: content ranks toy, then alien (rank 1); alien is the most popular (rank 0)
    res = evaluate_cold(index, [["alien", "aliens"], ["notting", "alien"]], {"alien": 5, "toy": 3})
    both = (1 + 1 / np.log2(3)) / 2
    assert res["cold_content_hr@5"] == 1.0 and res["cold_content_ndcg@10"] == pytest.approx(both)
    assert res["cold_popularity_ndcg@10"] == pytest.approx(both) and res["cold_popularity_hr@10"] == 1.0
    assert item_text("x", {"x": "T"}, {"x": "A|B"}) == "T. A, B" and item_text("y", {}, {}) == ""


def test_recommender_answers_cold_only_histories_from_text(trained):
    run, _ = trained
    rec = Recommender(run)
    with pytest.raises(DataError, match="cold items"):
        rec.answer(["X1"])  # no text model yet
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return bag_of_words(texts)

    rec.use_text_model(embed, "bow")
    ans = rec.answer(["X1"], k=3)
    assert ans["source"] == "content" and ans["data"][0]["item"] == "X2"
    assert ans["data"][0]["title"] == COLD_TITLES["X2"]
    assert rec.answer(["X3", "A2"], k=1) == {"source": "model", "data": rec.recommend(["A2"], k=1)}
    Recommender(run).use_text_model(embed, "bow")  # the cached vectors are reused
    assert calls == [len(rec.items) + 4]
    Recommender(run).use_text_model(embed, "another model")  # a new model: embedded again
    assert calls[-1] == len(rec.items) + 4


def test_eval_and_predict_with_a_language_model(trained, lm_run):
    run, data = trained
    res = json.loads(fornalha("recommend", "eval", "--run", str(run), "--data", str(data), "--lm-run",
                              str(lm_run)).stdout.splitlines()[-1])  # fmt: skip
    assert res["cold_users"] == 4 and res["cold_items"] == 4
    for key in (
        "cold_content_hr@10",
        "cold_content_ndcg@10",
        "cold_text_hr@10",
        "cold_text_ndcg@10",
        "cold_popularity_hr@10",
        "cold_popularity_ndcg@10",
    ):
        assert 0.0 <= res[key] <= 1.0
    # the text weight was chosen on the warm users' validation items, and kept beside the vectors
    fitted = res["cold_text_weight_validation_ndcg@10"]
    assert len(fitted) == 11 and fitted[str(res["cold_text_weight"])] == max(fitted.values())
    assert json.loads((run / "content_weight.json").read_text())["text_weight"] == res["cold_text_weight"]
    out = json.loads(fornalha("recommend", "predict", "--run", str(run), "--history", "X1", "--lm-run",
                              str(lm_run), "--k", "2").stdout.splitlines()[-1])  # fmt: skip
    assert out["source"] == "content" and len(out["data"]) == 2
    p = fornalha("recommend", "predict", "--run", str(run), "--history", "X1", check=False)
    assert p.returncode == 2 and "--lm-run" in p.stderr


def test_text_weight_is_chosen_on_validation_users():
    """The content fallback blends text with a popularity prior; the weight comes from validation users:
    text alone where the text finds the target, popularity alone where it does not."""
    import numpy as np

    from fornalha.recommend.content import ContentIndex, rank_prior

    items = ["p0", "p1", "p2", "a", "b", "c", "d"]  # p0 the most popular
    prior = rank_prior(items, ["p0", "p1", "p2", "a", "b", "c", "d"])
    assert prior[0] == 1.0 and list(prior) == sorted(prior, reverse=True)
    vec = np.eye(len(items), dtype=np.float32)
    vec[3, 4] = vec[4, 3] = 0.9  # a and b read alike, as do c and d
    vec[5, 6] = vec[6, 5] = 0.9
    index = ContentIndex(items, vec, prior)
    table = index.fit_text_weight([(["a"], "b"), (["c"], "d"), (["b"], "a")], k=1)
    assert index.text_weight > 0 and table[str(index.text_weight)] == 1.0 and table["0.0"] == 0.0
    index.fit_text_weight([(["a"], "p0"), (["c"], "p0"), (["d"], "p0")], k=1)
    assert index.text_weight == 0.0  # the text points away from what users take next: popularity
    assert index.recommend(["a"], 1)[0][0] == "p0"
    assert ContentIndex(items, vec).fit_text_weight([(["a"], "b")]) == {}  # no prior: text alone
