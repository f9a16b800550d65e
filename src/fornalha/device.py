"""Device auto-detection (cuda -> mps -> cpu) that says what it picked.

The `device: …` line is *held back* while the CLI runs (`hold_announcements`): it is printed just
before the command's first other output, so when a command fails before doing anything, its error
is the first line of stderr, not the device it would have used.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TextIO

from fornalha.errors import ConfigError

if TYPE_CHECKING:
    import torch

_held: list[str] | None = None  # lines waiting for the command's first output (None: print at once)


def hold_announcements() -> None:
    """From now on, keep `device: …` lines until `release_announcements` (the CLI calls this)."""
    global _held
    _held = []


def release_announcements(stream: TextIO | None, stop: bool = False) -> None:
    """Print the held lines to ``stream`` (None: drop them); ``stop`` ends holding."""
    global _held
    lines, _held = (_held or []), (None if stop else [])
    if stream is not None:
        for line in lines:
            stream.write(line + "\n")


def _say(line: str) -> None:
    if _held is not None:
        _held.append(line)
    else:
        print(line, file=sys.stderr)


def pick_device(requested: str = "auto", announce: bool = True) -> torch.device:
    """`auto` takes the best available accelerator; anything else is checked and used as given."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            dev, why = torch.device("cuda"), f"CUDA ({torch.cuda.get_device_name(0)})"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            dev, why = torch.device("mps"), "Apple MPS"
        else:
            dev, why = torch.device("cpu"), f"CPU ({torch.get_num_threads()} threads); no CUDA or MPS found"
        if announce:
            _say(f"device: {why}")
        return dev
    try:
        dev = torch.device(requested)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {requested!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available on this machine")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device 'mps' requested but MPS is not available on this machine")
    if announce:
        _say(f"device: {dev}")
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run natively here (CUDA with bf16, or a CPU with AVX512-BF16/AMX or Arm BF16).

    On other CPUs PyTorch emulates bfloat16, many times slower than float32."""
    import torch

    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(requested: str, device: torch.device) -> str:
    """'auto' -> 'bfloat16' where it runs natively, else 'float32'; other names pass through."""
    if requested != "auto":
        return requested
    return "bfloat16" if native_bf16(device) else "float32"
