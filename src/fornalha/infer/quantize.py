"""Int8 weights: 4× smaller Linear layers, and what it costs in validation loss.

Weight-only int8 ("W8A16/W8A32") stores each Linear weight matrix W [out, in] as int8 values plus
one float scale per *output channel* (row):

    scale[o] = max_i |W[o, i]| / 127          q[o, i] = round(W[o, i] / scale[o])  ∈ [-127, 127]
    W ≈ q · scale[:, None]                    y = x Wᵀ = (x qᵀ) · scale            (scale factors out)

Per-row scales matter: one large weight in a row only coarsens that row's grid, not the whole
matrix's. The rounding error per weight is at most scale/2, i.e. 0.4 % of the row's largest
weight. Activations stay in float, so there is no calibration data to collect.

`quantize_dynamic` is PyTorch's alternative for CPUs: int8 weights *and* activations quantized
on the fly per batch, with fbgemm/qnnpack int8 matrix kernels.

Decoding one token per row is a matrix-*vector* product per layer, bound by reading the weights,
so the decode step (`fornalha.infer.decode`) can run its Linear layers from a smaller copy of the
weights, packed once when the engine is built (`pack_linear`; the model itself is untouched):

    "fp16"     weights rounded to float16 (relative error ≤ 2⁻¹¹ per weight), activations and
               accumulation in float32 — fbgemm's fp16 GEMM (x86 CPUs). Nearly exact; the
               engine's default on such CPUs.
    "int8"     the int8 weights above through `aten._weight_int8pack_mm` (the fused kernel gpt-fast
               uses on CPU): activations in bfloat16 inside the matmul, each row independent.
    "dynamic"  fbgemm's dynamic int8 matmul: activations quantized per call (per *batch*, so a
               row's result can depend slightly on the other rows).

`loss_change` measures the quality cost of each on validation batches; the benchmark the speed.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from fornalha.errors import ConfigError


class Int8Linear(nn.Module):
    """A bias-free Linear whose weight is int8 with one float scale per output channel."""

    def __init__(self, qweight: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        assert qweight.dtype == torch.int8 and qweight.ndim == 2 and scale.shape == (qweight.size(0),)
        self.in_features, self.out_features = qweight.size(1), qweight.size(0)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        if linear.bias is not None:
            raise ConfigError("Int8Linear supports bias-free layers only (fornalha's model has no biases)")
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return cls(q, scale.to(linear.weight.dtype))

    def dequantized(self) -> torch.Tensor:
        """The float weight this layer computes with: q · scale."""
        return self.qweight.to(self.scale.dtype) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (The decode step calls the fused kernel instead: `int8pack_linear`.) Convert the int8 weight to x's dtype on the fly (memory holds int8), scale the outputs.
        return F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


#: Weight formats the decode step can run its Linear layers in (besides the model's own).
DECODE_WEIGHTS = ("fp16", "int8", "dynamic")


def fbgemm_available() -> bool:
    """True where PyTorch's fbgemm kernels (x86 CPUs) back the fp16 and dynamic int8 matmuls."""
    return "fbgemm" in torch.backends.quantized.supported_engines and hasattr(
        torch.ops.quantized, "linear_prepack_fp16"
    )


def int8_weights(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: (q [out, in] int8, scale [out] float32), W ≈ q·scale."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    return torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8), scale


def int8pack_linear(q: torch.Tensor, scale: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> x qᵀ · scale through the fused int8 weight-only kernel (bfloat16 activations inside)."""
    q, s = q.contiguous(), scale.to(torch.bfloat16)
    mm = torch.ops.aten._weight_int8pack_mm
    return lambda x: mm(x.to(torch.bfloat16), q, s).to(x.dtype)


def pack_linear(weight: torch.Tensor, method: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A bias-free linear layer x -> x Wᵀ in one of `DECODE_WEIGHTS` (float32 activations in and out)."""
    if method == "int8":
        return int8pack_linear(*int8_weights(weight))
    if method not in ("fp16", "dynamic"):
        raise ConfigError(f"unknown decode weight format {method!r}; choose one of {DECODE_WEIGHTS}")
    if weight.device.type != "cpu" or not fbgemm_available():
        raise ConfigError(f"{method!r} decode weights need PyTorch's fbgemm kernels (an x86 CPU)")
    w = weight.detach().float().contiguous()
    ops = torch.ops.quantized
    if method == "fp16":
        with warnings.catch_warnings():  # fbgemm warns when weights saturate float16 (|w| > 65504)
            warnings.simplefilter("ignore")
            packed = ops.linear_prepack_fp16(w, None)
        return lambda x: ops.linear_dynamic_fp16(x, packed)
    q, scale = int8_weights(w)
    with warnings.catch_warnings():  # quantized tensors announce their move to torchao
        warnings.simplefilter("ignore")
        qw = torch._make_per_channel_quantized_tensor(
            q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0
        )
        packed = ops.linear_prepack(qw, None)
    return lambda x: ops.linear_dynamic(x, packed, True)


def quantize_model(model: nn.Module, method: str = "int8", include_head: bool = True) -> nn.Module:
    """A quantized copy of `model` (the original is untouched).

    method: "int8" — every nn.Linear becomes an `Int8Linear` (weight-only, any device);
            "dynamic" — `torch.ao.quantization.quantize_dynamic` (CPU only; int8 activations too).
    include_head: also quantize the LM head (with tied embeddings the input embedding stays float).
    """
    if method not in ("int8", "dynamic"):
        raise ConfigError(f"unknown quantization method {method!r}; choose int8 or dynamic")
    q = copy.deepcopy(model).eval()
    if method == "dynamic":
        with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
            from torch.ao.quantization import quantize_dynamic

            head = q.lm_head if not include_head and hasattr(q, "lm_head") else None
            if head is not None:
                q.lm_head = nn.Identity()
            q = quantize_dynamic(q, {nn.Linear}, dtype=torch.qint8)
            if head is not None:
                q.lm_head = head
            return q

    for parent in list(q.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and (include_head or name != "lm_head"):
                setattr(parent, name, Int8Linear.from_linear(child))
    return q


def linear_weight_bytes(model: nn.Module) -> int:
    """Bytes held by the Linear layers' weights (float or int8 + scales)."""
    total = 0
    for m in model.modules():
        if isinstance(m, nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
        elif isinstance(m, Int8Linear):
            total += m.qweight.numel() + m.scale.numel() * m.scale.element_size()
        elif callable(getattr(m, "weight", None)) and type(m).__name__ == "Linear":  # quantize_dynamic's
            w = m.weight()
            total += w.numel() * w.element_size() + 8  # int8 values + one scale and zero point
    return total


@torch.inference_mode()
def evaluate_loss(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean next-token cross-entropy of `model` over (x, y) batches, weighted by token count."""
    total, count = 0.0, 0
    for x, y in batches:
        _, loss = model(x, y, loss_reduction="sum")
        total += float(loss)
        count += int((y != -1).sum())
    if count == 0:
        raise ConfigError("evaluate_loss needs at least one target token")
    return total / count


def loss_change(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    method: str = "int8",
    include_head: bool = True,
) -> dict[str, float]:
    """Quantize `model` and measure the validation loss before and after on the same batches.

    Returns {"loss": float loss, "loss_quantized": …, "delta": after − before,
    "relative": delta / before, "weight_bytes": …, "weight_bytes_quantized": …}."""
    qmodel = quantize_model(model, method, include_head)
    before, after = evaluate_loss(model, batches), evaluate_loss(qmodel, batches)
    return {
        "loss": before,
        "loss_quantized": after,
        "delta": after - before,
        "relative": (after - before) / before,
        "weight_bytes": linear_weight_bytes(model),
        "weight_bytes_quantized": linear_weight_bytes(qmodel),
    }
