"""Device auto-detection (cuda -> mps -> cpu) that says what it picked."""

from __future__ import annotations

import sys

import torch

from fornalha.errors import ConfigError


def pick_device(requested: str = "auto", announce: bool = True) -> torch.device:
    """`auto` takes the best available accelerator; anything else is checked and used as given."""
    if requested == "auto":
        if torch.cuda.is_available():
            dev, why = torch.device("cuda"), f"CUDA ({torch.cuda.get_device_name(0)})"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            dev, why = torch.device("mps"), "Apple MPS"
        else:
            dev, why = torch.device("cpu"), f"CPU ({torch.get_num_threads()} threads); no CUDA or MPS found"
        if announce:
            print(f"device: {why}", file=sys.stderr)
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
        print(f"device: {dev}", file=sys.stderr)
    return dev
