"""Optimizers: Muon lowers the loss, decay groups, and state survives a flat tensor + JSON round trip."""

from __future__ import annotations

import json

import pytest
import torch

from fornalha.model import GPT, ModelConfig
from fornalha.train.optim import (
    Muon,
    build_optimizers,
    load_optimizer_state,
    optimizer_state_to_tensors,
    set_lr_multiplier,
    zeropower_via_newtonschulz5,
)


def small_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        ModelConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, tie_embeddings=False)
    )


def steps(model, opts, batch, n):
    losses = []
    for _ in range(n):
        _, loss = model(batch[:, :-1], batch[:, 1:])
        loss.backward()
        for o in opts:
            o.step()
            o.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_newton_schulz_orthogonalises():
    g = torch.randn(24, 40)
    s = torch.linalg.svdvals(zeropower_via_newtonschulz5(g))
    assert s.min() > 0.5 and s.max() < 1.3  # singular values pushed towards 1


def test_muon_step_decreases_loss():
    model = small_model()
    opts = build_optimizers(model, {"optimizer": "muon", "lr": 3e-3, "matrix_lr": 0.02})
    assert [type(o).__name__ for o in opts] == ["AdamW", "Muon"]
    assert all(p.ndim == 2 for g in opts[1].param_groups for p in g["params"])
    batch = torch.randint(0, 50, (4, 17))
    losses = steps(model, opts, batch, 20)
    assert losses[-1] < losses[0] - 1.0


def test_muon_rejects_vectors():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.ones(3))])


def test_adamw_groups_decay_only_matrices_and_head():
    model = small_model()
    (opt,) = build_optimizers(model, {"optimizer": "adamw", "weight_decay": 0.1, "lr": 1e-3})
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["matrix"]["weight_decay"] == 0.1 and by_name["head"]["weight_decay"] == 0.1
    assert by_name["embedding"]["weight_decay"] == 0.0 and by_name["vector"]["weight_decay"] == 0.0
    set_lr_multiplier([opt], 0.5)
    assert by_name["matrix"]["lr"] == pytest.approx(5e-4)


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_state_roundtrip_continues_identically(kind):
    batch = torch.randint(0, 50, (4, 17))
    a = small_model()
    opts_a = build_optimizers(a, {"optimizer": kind})
    steps(a, opts_a, batch, 3)
    tensors, meta = optimizer_state_to_tensors(opts_a)
    meta = json.loads(json.dumps(meta))  # must be plain JSON

    b = small_model(seed=1)
    b.load_state_dict(a.state_dict())
    opts_b = build_optimizers(b, {"optimizer": kind})
    load_optimizer_state(opts_b, tensors, meta)
    assert steps(a, opts_a, batch, 3) == steps(b, opts_b, batch, 3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
