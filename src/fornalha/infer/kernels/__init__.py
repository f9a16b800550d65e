"""Hand-written CPU kernels for the decode step, built on first use, with a plain-PyTorch reference.

Three entry points in one C++ file (`decode_attention.cpp`): `decode_attention_step`, a decode step's
QK-norm, rotary, cache write and attention in one call per layer (`decode_step_kernel()`; it ends in
the next one), `add_rms_norm`, its residual add and next RMSNorm in one call (`add_rms_norm_kernel()`),
and **decode attention over a float16 KV cache** (`decode_attention_kernel()`). At decode
time every row reads its whole cache — the keys and values of all its earlier tokens — to do a
few multiply-adds per byte, so attention runs at the speed of memory. A float16 cache is half the
bytes of a float32 one (and half the RAM), but PyTorch's CPU attention has no fast float16 path:
converting the cache to float32 first, or running SDPA in float16, costs more than it saves
(benchmarks/LOG.md). The kernel reads float16 and does the arithmetic in float32, one
(row, key/value head) per task. `decode_attention_reference` below is the same math in PyTorch;
the tests hold the two together.

The C++ file is compiled by `torch.utils.cpp_extension.load` the first time it is needed (about 25 s,
needs a C++ compiler and `ninja`) and cached under ~/.cache/torch_extensions (or
$TORCH_EXTENSIONS_DIR), one build per CPU kind, since it is compiled for this CPU's vector
instructions (-march=native). Where it cannot be built (no compiler, an unsupported platform) or
FORNALHA_NO_KERNELS=1 is set, `decode_attention_kernel()` returns None and the engine keeps its
float32 cache and PyTorch's attention: slower, never wrong.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

SOURCE = Path(__file__).with_name("decode_attention.cpp")
MAX_HEAD_DIM = 256  # the largest head size the kernel takes (16, 32, 64, 128 have their own fast copy)

#: Why the kernel is not available (None when it is, or before the first try).
unavailable_reason: str | None = None


def decode_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor, scale: float
) -> torch.Tensor:
    """The kernel's math in PyTorch. q [B, Hkv, G, D] float32; k, v [Bmax, Hkv, S, D] (any float
    dtype); lengths [B]: row b attends to cache positions 0 .. lengths[b]-1. Returns [B, Hkv, G, D]
    float32: softmax(q·kᵀ·scale)·v, each row over its own positions."""
    B = q.size(0)
    L = int(lengths.max())
    keys, values = k[:B, :, :L].float(), v[:B, :, :L].float()
    visible = torch.arange(L, device=q.device)[None, :] < lengths[:, None]  # [B, L]
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=visible[:, None, None, :], scale=scale)


def _cpu_tag() -> str:
    """A short name for this CPU kind: builds for different CPUs (a shared home directory on a
    cluster) must not load each other's -march=native code."""
    text = platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        text += "".join(line for line in info.splitlines()[:40] if line.startswith(("model name", "flags")))
    except OSError:
        text += platform.processor()
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def _compile_flags() -> list[str]:
    arch = ["-mcpu=native"] if platform.machine().lower() in ("arm64", "aarch64") else ["-march=native"]
    # -ffast-math lets the compiler vectorize exp() and the sums (fixed order for a given build, so
    # results stay deterministic). It is a compile flag only: the link step does not get it, so the
    # extension does not switch the whole process to flush-to-zero arithmetic.
    return ["-O3", *arch, "-ffast-math", "-fopenmp"]


class _BuildLock:
    """Makes torch's build lock safe against killed builds.

    `cpp_extension.load` guards a build with a plain `lock` file that it deletes when done. A build
    that is killed (SIGKILL, a power cut, a CI job ended mid-build) leaves that file behind, and every
    later build waits on it forever. So fornalha holds its own `flock` around the whole load: the
    kernel drops an flock when its process dies, so while we hold ours no other fornalha process is
    building, and a `lock` file that is there is left over from a dead one and is removed."""

    def __init__(self, build_dir: Path | None) -> None:
        self.build_dir = build_dir
        self.fd: int | None = None

    def acquire(self) -> None:
        if self.build_dir is None:
            return
        try:
            import fcntl

            self.build_dir.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.build_dir / ".fornalha-build.lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self.fd, fcntl.LOCK_EX)  # waits while another live process builds
        except (ImportError, OSError):
            self.fd = None
            return
        stale = self.build_dir / "lock"
        if stale.exists():
            print(f"fornalha: removing a build lock left by a killed build ({stale})", file=sys.stderr)
            with contextlib.suppress(OSError):
                stale.unlink()

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the file drops the flock
            self.fd = None


def decode_attention_kernel() -> Callable[..., torch.Tensor] | None:
    """The compiled `decode_attention(q, k, v, lengths, scale)` op, or None where it cannot be
    built or FORNALHA_NO_KERNELS is set (then `unavailable_reason` says why). Built at most once per
    process; the switch is read at every call, so turning it on for a while never sticks."""
    global unavailable_reason
    if os.environ.get("FORNALHA_NO_KERNELS", "") not in ("", "0"):
        unavailable_reason = "FORNALHA_NO_KERNELS is set"
        return None
    module = _built_kernel()
    return None if module is None else module.decode_attention


def decode_step_kernel() -> Callable[..., torch.Tensor] | None:
    """The compiled `decode_attention_step(h, qw, kw, eps, cos, sin, pos, k, v, scale)`: a decode
    step's QK-norm, rotary, float16 cache write and attention in one call (see the C++ file), or
    None where `decode_attention_kernel()` is None."""
    return _entry_point("decode_attention_step")


def add_rms_norm_kernel() -> Callable[..., torch.Tensor] | None:
    """The compiled `add_rms_norm(x, delta, w, eps)`: x += delta in place (delta may be empty), then
    RMSNorm(x) · w — a decode step's residual add and next norm in one call (see the C++ file), or
    None where `decode_attention_kernel()` is None."""
    return _entry_point("add_rms_norm")


def _entry_point(name: str) -> Callable[..., torch.Tensor] | None:
    """The built module's function `name`, or None where the kernel is off or cannot be built."""
    if decode_attention_kernel() is None:
        return None
    return getattr(_built_kernel(), name)


@functools.cache
def _built_kernel() -> Any:
    """The build itself (see `decode_attention_kernel`), once per process."""
    global unavailable_reason
    if sys.platform == "win32":
        unavailable_reason = "the kernel is built with GCC/Clang flags; not on Windows"
        return None
    from torch.utils import cpp_extension

    name = f"fornalha_decode_attention_{_cpu_tag()}"
    try:
        build_dir = Path(cpp_extension._get_build_directory(name, verbose=False))
    except Exception:  # a private helper: only used for the two conveniences below
        build_dir = None
    build_lock = _BuildLock(build_dir)
    build_lock.acquire()
    # No built .so: a first build, said at once. Otherwise loading takes milliseconds, and anything
    # longer is a rebuild (the source, the flags or torch changed), said by a timer.
    first_build = build_dir is None or not (build_dir / f"{name}.so").exists()
    notice = threading.Timer(
        0.0 if first_build else 0.5,
        lambda: print(
            "fornalha: compiling the float16 decode-attention kernel (once for this CPU, ~25 s)…",
            file=sys.stderr,
            flush=True,
        ),
    )
    notice.daemon = True
    if first_build:
        notice.run()  # now, in this thread
    else:
        notice.start()
    try:
        module = cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=_compile_flags(),
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as exc:  # no compiler, no ninja, a compile error on an unusual platform
        unavailable_reason = (
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
        )
        print(
            f"fornalha: decode-attention kernel unavailable ({unavailable_reason}); using a float32 KV cache",
            file=sys.stderr,
        )
        return None
    finally:
        notice.cancel()
        build_lock.release()
    unavailable_reason = None
    return module


__all__ = [
    "MAX_HEAD_DIM",
    "add_rms_norm_kernel",
    "decode_attention_kernel",
    "decode_attention_reference",
    "decode_step_kernel",
]
