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

FSDP2 (`train.fsdp: true`) shards parameters, gradients and optimizer state across processes,
for models whose weights and optimizer state do not fit on one device. `fully_shard` on each
block, then on the whole model, replaces every parameter by a DTensor that holds only this rank's
rows (dim 0). Before a block's forward (and backward) its rows are all-gathered from every rank,
and after the backward the gradients are reduce-scattered: each rank keeps the averaged gradient
of its own rows. Consequences the trainer takes care of (the order is torchtitan's):

* the optimizers are built *after* sharding (fully_shard swaps in new parameter objects), and
  AdamW, being elementwise, then just updates local rows; Muon needs the whole matrix for its
  Newton–Schulz iteration, so it gathers the update, orthogonalises it and applies its own rows;
* every forward pass is a collective: evaluation and sample generation run on all ranks together
  (never on rank 0 alone, which would wait forever for the others);
* a checkpoint is written by rank 0 in the single-process format (plain full tensors), after every
  rank took part in gathering the shards (`full_tensor`); resuming loads the weights before
  sharding and cuts the optimizer state back into shards (`shard_like`);
* the gradient norm is a DTensor whose full value needs one more all-reduce (`clip_grad_norm_`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
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


def wrap_model(
    model: nn.Module, info: DistInfo, device: torch.device, fsdp: bool = False, compile: bool = False
) -> nn.Module:
    """The module the training loop calls: `model` compiled and/or wrapped for data parallelism.

    DDP (default): torch.compile the whole model, then wrap it. FSDP2: compile each block in place,
    shard it, then shard the whole model (torchtitan's order: FSDP's hooks stay outside the
    compiled graphs); the returned module is `model` itself, now holding DTensor shards. Without
    torchrun (one process) `fsdp` changes nothing.
    """
    if fsdp and info.enabled:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:  # type: ignore[attr-defined]
            if compile:
                block.compile()
            fully_shard(block)
        fully_shard(model)  # the rest: embedding, final norm, head (tied or not)
        return model
    if compile:
        model = torch.compile(model)
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[info.local_rank] if device.type == "cuda" else None)


def is_sharded(t: torch.Tensor) -> bool:
    """True for an FSDP2 parameter, gradient or optimizer state (a DTensor)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor with the whole value: a DTensor's shards all-gathered (a collective, so every
    rank must call it, in the same order), any other tensor as it is."""
    return t.full_tensor() if is_sharded(t) else t


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` cut the way the DTensor `like` is sharded, keeping this rank's rows (every rank holds
    `full`, so no communication); `full` itself when `like` is a plain tensor."""
    if not is_sharded(like):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(like.device), like.device_mesh, like.placements, src_data_rank=None)


def clip_grad_norm_(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip gradients to a total 2-norm of `max_norm`; returns the norm before clipping.

    torch.nn.utils.clip_grad_norm_ in two halves, as torchtitan does it: under FSDP2 the total
    norm comes out as a DTensor of per-shard partial norms, and `full_tensor` reduces it to the
    global norm before the gradients are scaled by it.
    """
    params = [p for p in params if p.grad is not None]
    if not hasattr(torch.nn.utils, "get_total_norm"):  # torch < 2.6 (which has no FSDP2 either)
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    total = torch.nn.utils.get_total_norm([p.grad for p in params], 2.0)
    total = full_tensor(total)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain GPT under torch.compile and DDP wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def any_rank(value: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank when `value` is True on at least one (so all ranks loop together)."""
    if not info.enabled:
        return value
    t = torch.tensor([1.0 if value else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


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
