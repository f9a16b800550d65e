"""LoRA: fine-tune a few low-rank matrices beside each frozen weight, then fold them back in.

A linear layer computes y = x W^T with W of shape [out, in]. LoRA (Hu et al., 2021) freezes W
and learns a low-rank correction instead:

    y = x W^T + s · (x A^T) B^T          A: [r, in] (small random),  B: [out, r] (zeros),  s = alpha / r

so the layer starts exactly as it was (B = 0), and only r·(in + out) numbers per layer are trained
instead of in·out. With r = 8 on a 128-wide model that is 1/8 of the weights of each projection;
on a 4096-wide one it is 1/256. The optimizer keeps two moments per *trained* number, so its
memory shrinks by the same factor, and so does a checkpoint's optimizer file.

Merging: W' = W + s · B A is an ordinary weight of the same shape, so a merged model is a plain
GPT that every other stage (serve, export, eval) reads without knowing LoRA existed.

    add_lora(model, rank, alpha)   replace the attention (qkv, o_proj) and MLP (gate/up/down_proj)
                                   linears with LoRALinear; freeze everything else; -> trainable count
    merge_lora(model)              fold every adapter into its weight and put plain nn.Linear back

State dict: a LoRALinear keeps its frozen weight under the same key (`blocks.0.attn.qkv.weight`)
and adds `…lora_A`, `…lora_B` and `…lora_scale`, so a step checkpoint resumes exactly;
`fornalha.checkpoint.fold_lora` does the merge on such a state dict (best/ is saved folded, and
`load_model` folds any checkpoint it reads), so every checkpoint loads as an ordinary model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fornalha.errors import ConfigError

#: The projections LoRA adapts: attention's fused q|k|v and output, the MLP's three.
TARGETS: tuple[str, ...] = ("qkv", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank update s · B A (see the module docstring)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if base.bias is not None:
            raise ConfigError("LoRA here adapts bias-free linears only (fornalha's GPT has no biases)")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the same Parameter (and state-dict key): frozen
        self.weight.requires_grad_(False)
        dev, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=dev, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=dev, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # what nn.Linear does to its weight
        self.register_buffer("lora_scale", torch.tensor(alpha / rank, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.lora_scale.to(x.dtype)
        return F.linear(x, self.weight) + F.linear(F.linear(x, self.lora_A), self.lora_B) * scale

    def merged_weight(self) -> torch.Tensor:
        """W + s · B A: the weight of the plain linear this layer is equivalent to."""
        delta = (self.lora_B.float() @ self.lora_A.float()) * self.lora_scale
        return (self.weight.float() + delta).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.lora_A.shape[0]}"


def add_lora(
    model: nn.Module, rank: int, alpha: float | None = None, targets: tuple[str, ...] = TARGETS
) -> int:
    """Put LoRA adapters on every linear named in `targets`, freeze all other parameters.

    alpha defaults to 2·rank (s = 2). Returns the number of trainable parameters.
    """
    if rank < 1:
        raise ConfigError(f"--lora rank must be a positive integer, got {rank}")
    alpha = float(2 * rank if alpha is None else alpha)
    if alpha <= 0:
        raise ConfigError(f"--lora-alpha must be positive, got {alpha}")
    for p in model.parameters():
        p.requires_grad_(False)
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                if rank > min(child.in_features, child.out_features):
                    raise ConfigError(
                        f"--lora {rank} is larger than the layer it adapts ({child.out_features}×{child.in_features})"
                    )
                setattr(module, name, LoRALinear(child, rank, alpha))
                replaced += 1
    if replaced == 0:
        raise ConfigError(f"no layer named {', '.join(targets)} to put LoRA adapters on")
    return trainable_parameters(model)


def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its weight and put a plain nn.Linear back; returns how many were merged."""
    merged = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                plain = nn.Linear(child.in_features, child.out_features, bias=False)
                plain.to(device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    plain.weight.copy_(child.merged_weight())
                setattr(module, name, plain)
                merged += 1
    return merged


def trainable_parameters(model: nn.Module) -> int:
    """How many numbers the optimizer updates."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
