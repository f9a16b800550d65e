"""The recommender's fast paths compute what the GPT's own forward pass computes."""

from __future__ import annotations

import torch

from fornalha.model import GPT, ModelConfig
from fornalha.recommend.data import pad_right
from fornalha.recommend.model import next_item_loss, score_histories


def tiny_gpt() -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=30, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.3, tie_embeddings=True
    )
    return GPT(cfg)


def test_loss_on_real_positions_equals_the_models_next_token_loss():
    model = tiny_gpt().eval()  # no dropout: the two must agree exactly
    hist = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10, 11]]
    x = pad_right([h[:-1] for h in hist])
    y = pad_right([h[1:] for h in hist], value=-1)
    _, ref = model(x, y)
    assert torch.allclose(next_item_loss(model, (x, y)), ref, atol=1e-6)


def test_scores_are_the_logits_at_each_historys_last_position():
    model = tiny_gpt().eval()
    hist = [[1, 2, 3], [4], [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]  # the last one is cut to block_size
    scores = score_histories(model, hist)
    for i, h in enumerate(hist):
        logits, _ = model(torch.tensor([h[-8:]]))
        assert torch.allclose(scores[i], logits[0, -1], atol=1e-5)


def test_training_mode_drops_embeddings_too():
    model = tiny_gpt().train()
    x = torch.tensor([[1, 2, 3, 4]])
    y = torch.tensor([[2, 3, 4, 5]])
    torch.manual_seed(1)
    a = next_item_loss(model, (x, y))
    torch.manual_seed(2)
    assert not torch.allclose(a, next_item_loss(model, (x, y)))
    assert model.training  # scoring restores the mode it found
    score_histories(model, [[1, 2]])
    assert model.training
