"""Metrics on a hand-computed case, the leave-one-out split, preparation and the loader."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fornalha.errors import DataError
from fornalha.recommend.baselines import ALS, ItemKNN, Popularity
from fornalha.recommend.data import SequenceLoader, load_data, prepare, split_leave_one_out
from fornalha.recommend.metrics import hit_ndcg, target_ranks


def test_metrics_hand_computed():
    # 3 users, 6 columns (0 = padding). User 0: target 3 ranked first once item 1 (seen) is excluded.
    scores = torch.tensor(
        [
            [9.0, 5.0, 1.0, 4.0, 2.0, 0.0],  # seen {1}: candidates 2,3,4,5 -> 3 has the top score: rank 0
            [9.0, 5.0, 1.0, 4.0, 2.0, 0.0],  # seen {}: 1 beats 3 -> rank 1
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],  # target 1, seen {5}: 2,3,4 beat it -> rank 3
        ]
    )
    ranks = target_ranks(scores, torch.tensor([3, 3, 1]), [[1], [], [5]])
    assert ranks.tolist() == [0, 1, 3]
    m = hit_ndcg(ranks, ks=(1, 2, 5))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@2"] == pytest.approx(2 / 3)
    assert m["hr@5"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 3)


def test_leave_one_out_leaks_nothing(planted, tmp_path):
    prepare(planted, tmp_path / "d", min_interactions=5)
    data = load_data(tmp_path / "d")
    assert data.manifest["users"] == 120
    for seq in data.sequences:
        hist, val, test = split_leave_one_out(seq)
        assert test not in hist and val not in hist and test != val
        assert hist + [val, test] == seq
    loader = SequenceLoader([split_leave_one_out(s)[0] for s in data.sequences], 16, 50)
    tests = {t for t in (s[-1] for s in data.sequences)}
    for _ in range(20):  # a training batch never holds a user's own test target at its end
        x, y = loader.next_batch()
        assert x.shape == y.shape and (y[:, 0] >= 0).all()
    assert tests


def test_prepare_orders_by_time_and_filters(tmp_path):
    f = tmp_path / "r.csv"
    f.write_text("user,item,timestamp\n1,b,20\n1,a,10\n1,c,30\n1,d,40\n2,a,5\n")
    man = prepare(f, tmp_path / "d", fmt="csv", min_interactions=3)
    assert man["users"] == 1 and man["dropped"]["users_below_min"] == 1
    data = load_data(tmp_path / "d")
    assert [data.items[t - 1] for t in data.sequences[0]] == ["a", "b", "c", "d"]
    bad = tmp_path / "bad.dat"
    bad.write_text("1::x::3\n")
    with pytest.raises(DataError, match="user::item::rating::timestamp"):
        prepare(bad, tmp_path / "e")


def test_loader_resumes_exactly(planted, tmp_path):
    prepare(planted, tmp_path / "d")
    hist = [split_leave_one_out(s)[0] for s in load_data(tmp_path / "d").sequences]
    a = SequenceLoader(hist, 32, 8, seed=3)
    for _ in range(5):
        a.next_batch()
    b = SequenceLoader(hist, 32, 8, seed=3)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for _ in range(6):
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_baselines_rank_the_obvious_item():
    # items 1 and 2 always together; item 3 popular on its own
    hist = [[1, 2], [1, 2], [1, 2, 3], [3, 4], [3, 5], [3]]
    pop = Popularity(hist, 6).scores([[4]])[0]
    assert pop.argmax().item() == 3
    knn = ItemKNN(hist, 6).scores([[1]])[0]
    assert knn.argmax().item() == 2
    als = ALS(hist, 6, factors=4, iterations=10).scores([[1]])[0]
    assert als.shape == (6,) and torch.isfinite(als).all()
    assert als[2] > als[4]
