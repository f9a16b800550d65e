"""Data-parallel training: the same `fornalha train` command under `torchrun`.

    torchrun --nproc_per_node=2 -m fornalha.cli train --preset tiny --data SHARDS --out runs/ddp

torchrun starts N processes and sets RANK, LOCAL_RANK and WORLD_SIZE; `init_distributed` reads
them and joins the process group (NCCL on GPUs, gloo on CPU). Each process then:

* builds the same model from the same seed (DDP also broadcasts rank 0's weights at wrap time);
* reads its own slice of the data (`TokenLoader(rank=, world_size=)` gives disjoint windows);
* runs forward and backward on its micro-batches; DDP averages gradients across processes
  during the last micro-batch's backward, so every rank applies the same update;
* leaves logging, checkpoints and plots to rank 0.

With W processes and grad_accum A, a step sees W·A micro-batches: the same update as one process
with grad_accum W·A (tested in tests/train/test_distributed.py).

FSDP2 (`train.fsdp: true`) shards parameters, gradients and optimizer state across processes
(`torch.distributed.fsdp.fully_shard` on each block, then the whole model), for models that do
not fit on one device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return info


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device, fsdp: bool = False) -> nn.Module:
    """DDP (default) or FSDP2 around `model`; the model itself when not distributed."""
    if not info.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:  # type: ignore[attr-defined]
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.local_rank] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain GPT under torch.compile and DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_mean(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= info.world_size
    return t


def broadcast_flag(value: bool, info: DistInfo, device: torch.device) -> bool:
    """Rank 0's decision (stop early, out of time) for everyone, so all ranks leave the loop together."""
    if not info.enabled:
        return value
    t = torch.tensor([1.0 if value else 0.0], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's `obj` (small, e.g. RNG states) on every rank."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def grad_sync(model: nn.Module, sync: bool):
    """Context for one micro-batch's backward: skip the gradient all-reduce unless `sync`.

    Gradient accumulation only needs the averaged gradient once, after the last micro-batch.
    """
    import contextlib

    if sync:
        return contextlib.nullcontext()
    if hasattr(model, "no_sync"):  # DDP
        return model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(False)

        @contextlib.contextmanager
        def _restore():
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

        return _restore()
    return contextlib.nullcontext()
