"""Checkpoints: safetensors weights + JSON metadata, written atomically, verified by hash.

A checkpoint is a folder:

    model.safetensors      the model's weights (a tied LM head is stored once, as wte.weight)
    <extra>.safetensors    optional tensors (optimizer moments, …), flat name -> tensor
    <extra>.json           optional JSON state (scheduler, RNG, data-loader position, …)
    meta.json              format, model_config, step, metrics, lineage and the sha256 of every file

Writing goes to a temporary sibling folder whose files are fsync'ed before one `rename` publishes
it, so a crash (even SIGKILL) never leaves a half-written checkpoint under the final name.
Loading recomputes every hash; a mismatch raises `CheckpointError`, and `latest_checkpoint` then
falls back to the previous good one. Nothing is ever unpickled: tensors come from safetensors
and everything else from JSON.

Run-folder layout (see DESIGN.md): RUN_DIR/checkpoints/step-000200/, …, and RUN_DIR/checkpoints/best/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fornalha.errors import CheckpointError
from fornalha.files import file_sha256, fsync_dir, publish_dir
from fornalha.model import GPT, ModelConfig

FORMAT = "fornalha-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as plain CPU tensors, without the tied LM head (safetensors stores each tensor once).

    For a plain model; the trainer gathers sharded (FSDP2) and wrapped models itself
    (`fornalha.train.resume.gathered_weights`).
    """
    sd = model.state_dict()
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "tie_embeddings", False):
        sd.pop("lm_head.weight", None)
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def fold_lora(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ordinary state dict of a model saved with LoRA adapters (`fornalha.finetune.lora`).

    A LoRA layer `NAME` is saved as its frozen `NAME.weight` W beside `NAME.lora_A` A [r, in],
    `NAME.lora_B` B [out, r] and `NAME.lora_scale` s; folded, `NAME.weight` is W + s·B A and the
    adapter keys are gone. A state dict without adapters comes back unchanged.
    """
    out = {k: v for k, v in state.items() if ".lora_" not in k}
    for key in state:
        if key.endswith(".lora_A"):
            name = key.removesuffix(".lora_A")
            w, a, b = state[f"{name}.weight"], state[key], state[f"{name}.lora_B"]
            delta = (b.float() @ a.float()) * state[f"{name}.lora_scale"].float()
            out[f"{name}.weight"] = (w.float() + delta).to(w.dtype)
    return out


#: meta.json key of an adapter-only LoRA step checkpoint: {"path": the base checkpoint folder, "sha256":
#: its model.safetensors hash}. Such a checkpoint holds only the `.lora_*` tensors; the frozen weights
#: are the base's (`with_lora_base`). best/ is always a plain, folded model.
LORA_BASE = "lora_base"


def lora_adapters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the adapter tensors (`…lora_A`, `…lora_B`, `…lora_scale`) of a state dict; {} without LoRA."""
    return {k: v for k, v in state.items() if ".lora_" in k}


def lora_base_reference(base_meta: dict[str, Any]) -> dict[str, str]:
    """What an adapter-only checkpoint records about its base (`load_model`'s meta of the base)."""
    return {"path": str(Path(base_meta["path"]).resolve()), "sha256": base_meta["files"][MODEL_FILE]}


def with_lora_base(state: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The full state dict of an adapter-only LoRA checkpoint: its base's weights plus its adapters.

    The base is the checkpoint named in meta["lora_base"], verified against its recorded hash (the
    adapters were trained on exactly those weights). Any other state dict comes back unchanged.
    """
    ref = meta.get(LORA_BASE)
    if not ref:
        return state
    base = Path(ref["path"])
    if not (base / META_FILE).is_file():
        raise CheckpointError(
            f"this LoRA checkpoint holds only adapters; its base {base} is gone (put it back to load or resume)"
        )
    base_state, base_meta = load_checkpoint(base)
    if base_meta.get("files", {}).get(MODEL_FILE) != ref["sha256"]:
        raise CheckpointError(
            f"this LoRA checkpoint's base {base} has changed since the adapters were trained "
            f"(model.safetensors sha256 {base_meta.get('files', {}).get(MODEL_FILE)} != {ref['sha256']})"
        )
    return {**{k: v for k, v in base_state.items() if ".lora_" not in k}, **state}


def _fault(point: str, name: str) -> None:
    """Tests only: FORNALHA_FAULT=POINT:NAME kills this process (SIGKILL) at that point of writing
    checkpoint NAME, e.g. `after-model:step-000010` or `between-renames:best`."""
    if os.environ.get("FORNALHA_FAULT") == f"{point}:{name}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def save_checkpoint(
    ckpt_dir: str | Path,
    model_state: dict[str, torch.Tensor],
    meta: dict[str, Any],
    extra_tensors: dict[str, dict[str, torch.Tensor]] | None = None,
    extra_json: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder atomically. `extra_tensors` maps a file stem to flat tensors,
    `extra_json` a file stem to JSON-serialisable state. Returns the final folder."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir.parent / f".{ckpt_dir.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    files: dict[str, str] = {}

    def add_tensors(name: str, tensors: dict[str, torch.Tensor]) -> None:
        path = tmp / name
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        files[name] = file_sha256(path)

    add_tensors(MODEL_FILE, model_state)
    _fault("after-model", ckpt_dir.name)
    for stem, tensors in (extra_tensors or {}).items():
        add_tensors(f"{stem}.safetensors", tensors)
    for stem, obj in (extra_json or {}).items():
        path = tmp / f"{stem}.json"
        _write_json(path, obj)
        files[path.name] = file_sha256(path)

    full_meta = {
        "format": FORMAT,
        "version": VERSION,
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **meta,
    }
    full_meta["files"] = files
    _write_json(tmp / META_FILE, full_meta)
    fsync_dir(tmp)

    # Publish: a fresh name is one rename; replacing (e.g. "best") moves the old one aside first.
    # A kill between the two renames leaves only .NAME.old-PID: readers then use it
    # (`resolve_checkpoint`) and the next writer puts it back (`fornalha.train.resume`).
    publish_dir(tmp, ckpt_dir, between=lambda: _fault("between-renames", ckpt_dir.name))
    return ckpt_dir


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    path = Path(ckpt_dir) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir} is not a checkpoint (no {META_FILE})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fornalha checkpoint (format={meta.get('format')!r})")
    return meta


def verify_checkpoint(ckpt_dir: str | Path) -> dict[str, Any]:
    """Check every file against the hash recorded in meta.json; return the metadata."""
    ckpt_dir = Path(ckpt_dir)
    meta = read_meta(ckpt_dir)
    for name, digest in meta.get("files", {}).items():
        path = ckpt_dir / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {ckpt_dir} is incomplete: {name} is missing")
        if file_sha256(path) != digest:
            raise CheckpointError(f"checkpoint {ckpt_dir} is corrupt: {name} does not match its sha256")
    return meta


def load_checkpoint(
    ckpt_dir: str | Path, verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state dict, meta). Raises CheckpointError when missing or corrupt."""
    ckpt_dir = Path(ckpt_dir)
    meta = verify_checkpoint(ckpt_dir) if verify else read_meta(ckpt_dir)
    try:
        state = load_file(str(ckpt_dir / MODEL_FILE))
    except Exception as exc:  # safetensors raises its own error types on truncation
        raise CheckpointError(f"cannot read {ckpt_dir / MODEL_FILE}: {exc}") from None
    return state, meta


def load_extra(ckpt_dir: str | Path, stem: str) -> dict[str, torch.Tensor] | Any:
    """An extra file written by save_checkpoint: tensors for .safetensors, an object for .json."""
    ckpt_dir = Path(ckpt_dir)
    if (ckpt_dir / f"{stem}.safetensors").is_file():
        return load_file(str(ckpt_dir / f"{stem}.safetensors"))
    if (ckpt_dir / f"{stem}.json").is_file():
        return json.loads((ckpt_dir / f"{stem}.json").read_text())
    raise CheckpointError(f"checkpoint {ckpt_dir} has no {stem}")


def step_checkpoints(ckpt_root: str | Path) -> list[Path]:
    """The step-NNNNNN folders under a checkpoints folder, newest first."""
    root = Path(ckpt_root)
    if not root.is_dir():
        return []
    steps = (p for p in root.glob("step-*") if p.is_dir() and re.fullmatch(r"step-\d{6,}", p.name))
    return sorted(steps, key=lambda p: p.name, reverse=True)


def latest_checkpoint(ckpt_root: str | Path) -> Path | None:
    """The newest step checkpoint that verifies; corrupt ones are reported and skipped."""
    for path in step_checkpoints(ckpt_root):
        try:
            verify_checkpoint(path)
            return path
        except CheckpointError as exc:
            warnings.warn(f"{exc}; falling back to the previous checkpoint", stacklevel=2)
    return None


def prune_checkpoints(ckpt_root: str | Path, keep: int) -> None:
    """Keep the `keep` newest step checkpoints (at least 1) and remove older ones."""
    for path in step_checkpoints(ckpt_root)[max(1, keep) :]:
        shutil.rmtree(path, ignore_errors=True)


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint folder from a run folder, a checkpoints folder, or a checkpoint folder itself.

    which: "best" (falls back to the latest when a run kept no best), "last"/"latest", or a step folder name.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if (path / META_FILE).is_file():
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    if which == "best" and (root / "best" / META_FILE).is_file():
        return root / "best"
    if which == "best":  # a replacement of best/ cut between its two renames left it aside
        for aside in sorted(root.glob(".best.old-*")):
            try:
                verify_checkpoint(aside)
                return aside
            except CheckpointError:
                continue
    if which not in ("best", "last", "latest"):
        cand = root / which
        if (cand / META_FILE).is_file():
            return cand
        raise CheckpointError(f"no checkpoint named {which!r} in {root}")
    latest = latest_checkpoint(root)
    if latest is None:
        raise CheckpointError(f"no valid checkpoint found in {root}")
    return latest


def load_model(
    path: str | Path,
    which: str = "best",
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> tuple[GPT, dict[str, Any]]:
    """Build a GPT from a checkpoint (see resolve_checkpoint for `path` and `which`), in eval mode."""
    ckpt = resolve_checkpoint(path, which)
    state, meta = load_checkpoint(ckpt)
    # a LoRA fine-tune's step checkpoint (adapters only, on its recorded base) loads as the merged model
    state = fold_lora(with_lora_base(state, meta))
    try:
        config = ModelConfig.from_dict(meta["model_config"])
        model = GPT(config)
    except (KeyError, TypeError, ValueError) as exc:  # a meta.json with missing keys or wrong types
        raise CheckpointError(f"{path}: meta.json has an invalid model_config ({exc})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (config.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {ckpt} does not fit its config: missing {missing}, unexpected {unexpected}"
        )
    model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    model.eval()
    meta["path"] = str(ckpt)
    return model, meta


def load_run(run_dir: str | Path, which: str = "best", device: str | torch.device = "cpu", dtype=None):
    """(model, tokenizer, meta) from a run folder: everything later commands need from `--run`."""
    from fornalha.tokenizer import load_tokenizer

    run_dir = Path(run_dir)
    if not (run_dir / "tokenizer").is_dir():
        raise CheckpointError(f"{run_dir} is not a run folder (no tokenizer/ inside)")
    model, meta = load_model(run_dir, which, device, dtype)
    tokenizer = load_tokenizer(run_dir / "tokenizer")
    if tokenizer.vocab_size > model.config.vocab_size:
        raise CheckpointError(
            f"tokenizer in {run_dir} has {tokenizer.vocab_size} tokens but the model only {model.config.vocab_size}"
        )
    return model, tokenizer, meta
