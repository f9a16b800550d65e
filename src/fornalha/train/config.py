"""The run configuration: `model` + `train` + `data`, from presets, YAML files and `--set` overrides.

Resolution order (later wins):

    preset YAML (src/fornalha/configs/<name>.yaml)  ->  --config FILE.yaml  ->  depth dial  ->  --set key=value

`--set` takes dotted keys (``train.lr=3e-3``, ``model.n_layer=6``) or, when unambiguous, bare ones
(``max_steps=300``, ``seed=7``); values are parsed as YAML scalars (``1e-3``, ``true``, ``null``,
``[0.9, 0.95]``). Unknown keys and ill-typed values raise `ConfigError` naming the valid keys.

The size dial ``depth`` (as in nanochat) derives the rest of the shape from one number:
n_layer = depth, n_embd = 64·depth, n_head = depth (head_dim 64), an AdamW learning rate that
shrinks as 1/sqrt(width), and a batch of tokens per step that grows with the model. Keys given
explicitly (in --config or --set) still win over what the dial derives.
"""

from __future__ import annotations

import dataclasses
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from fornalha.errors import ConfigError
from fornalha.model.config import ModelConfig, help_of

PRESETS = ("tiny", "small", "gpt2-124m", "assistant")

# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _model_section() -> type[BaseModel]:
    """A pydantic mirror of the `ModelConfig` dataclass, built from it (same fields, defaults and
    help, so there is one source of truth; vocab_size may be null until the tokenizer is known). Derived fields stay null here so that changing n_embd later
    re-derives mlp_hidden."""
    hints = typing.get_type_hints(ModelConfig)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(ModelConfig):
        typ, default = hints[f.name], f.default
        if f.name == "vocab_size":
            typ, default = int | None, None
        fields[f.name] = (typ, Field(default, description=help_of(ModelConfig, f.name)))
    return create_model("ModelSection", __config__=ConfigDict(extra="forbid"), **fields)


ModelSection = _model_section()


class TrainSection(BaseModel):
    """How to train: batch, optimizer, schedule, evaluation, checkpoints, logging."""

    model_config = ConfigDict(extra="forbid")

    batch_size: int = Field(16, gt=0, description="sequences per micro-batch (per process)")
    seq_len: int | None = Field(None, gt=0, description="tokens per sequence; null: model.block_size")
    grad_accum: int = Field(
        1, gt=0, description="micro-batches per optimizer step (ignored if tokens_per_step)"
    )
    tokens_per_step: int | None = Field(
        None, gt=0, description="target tokens per optimizer step; sets grad_accum (must divide evenly)"
    )
    max_steps: int = Field(1000, gt=0, description="optimizer steps (an upper bound under a time budget)")
    time_budget_minutes: float | None = Field(
        None, gt=0, description="wall-clock budget; the schedule and eval cadence fit to it"
    )
    optimizer: Literal["adamw", "muon"] = Field(
        "adamw", description="adamw, or muon (hidden matrices) + adamw"
    )
    lr: float = Field(1e-3, gt=0, description="base AdamW learning rate")
    matrix_lr: float | None = Field(
        None, gt=0, description="hidden matrices; null: 0.02 (muon) or lr (adamw)"
    )
    embedding_lr: float | None = Field(None, gt=0, description="token embedding; null: lr")
    head_lr: float | None = Field(None, gt=0, description="untied LM head; null: lr")
    vector_lr: float | None = Field(None, gt=0, description="norms and other vectors; null: lr")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    weight_decay: float = Field(
        0.1, ge=0, description="decoupled weight decay on matrices (not norms/embeddings)"
    )
    muon_momentum: float = Field(0.95, ge=0, lt=1, description="Muon momentum")
    schedule: Literal["cosine", "wsd", "constant"] = Field("cosine", description="learning-rate schedule")
    warmup: float = Field(0.05, ge=0, description="warmup: a fraction of the run if < 1, else steps")
    decay: float = Field(0.3, ge=0, le=1, description="wsd: fraction of the run spent decaying")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr as a fraction of the peak")
    grad_clip: float = Field(1.0, ge=0, description="clip the global gradient norm; 0: off")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "float32",
        description="autocast dtype for matmuls; auto = bfloat16 where it runs natively (GPU, AVX512-BF16/AMX CPUs), "
        "else float32",
    )
    compile: bool = Field(False, description="torch.compile the model")
    eval_interval: int = Field(100, gt=0, description="evaluate every N steps (and at the end)")
    eval_batches: int = Field(20, gt=0, description="validation batches per evaluation (the same each time)")
    log_interval: int = Field(10, gt=0, description="write a train-loss line to metrics.jsonl every N steps")
    patience: int | None = Field(
        None, ge=1, description="early stopping: evaluations without improvement; null: off"
    )
    min_delta: float = Field(0.0, ge=0, description="improvement in val loss that resets patience")
    keep_checkpoints: int = Field(2, ge=1, description="newest step checkpoints kept (best is kept apart)")
    checkpoint_interval: int | None = Field(None, gt=0, description="save every N steps; null: eval_interval")
    seed: int = Field(1337, description="random seed (model init, data order, sampling)")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N or mps")
    samples: int = Field(2, ge=0, description="sample generations printed at each evaluation")
    sample_tokens: int = Field(80, gt=0, description="tokens per sample")
    sample_temperature: float = Field(0.8, ge=0, description="sampling temperature (0: greedy)")
    sample_prompt: str = Field("", description="prompt for samples (empty: start of a document)")
    log: list[Literal["tensorboard", "wandb"]] = Field(
        default_factory=list, description="extra loggers: tensorboard, wandb"
    )
    wandb_project: str = Field("fornalha", description="W&B project name")
    init_from: str | None = Field(None, description="start from this checkpoint/run (fine-tuning)")
    fsdp: bool = Field(False, description="under torchrun: shard with FSDP2 instead of DDP")
    evals_per_budget: int = Field(8, gt=0, description="under a time budget: evaluations spread over it")
    progress: bool = Field(True, description="show the live progress bar")

    def merged(self, **kw: Any) -> TrainSection:
        return self.model_copy(update=kw)


class DataSection(BaseModel):
    """What to train on."""

    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(None, description="prepared dataset folder or shards folder (--data)")
    tokenizer: str | None = Field(
        None, description="tokenizer folder, 'char', or null to train a BPE tokenizer (--tokenizer)"
    )
    vocab_size: int = Field(
        4096, gt=0, description="vocabulary when a BPE tokenizer is trained (--vocab-size)"
    )


class RunConfig(BaseModel):
    """The whole configuration of a run; `config.yaml` in the run folder is `to_yaml()` of it."""

    model_config = ConfigDict(extra="forbid")

    depth: int | None = Field(None, gt=0, description="size dial: derives width, heads, lr and batch")
    model: ModelSection = Field(default_factory=ModelSection)  # type: ignore[valid-type]
    train: TrainSection = Field(default_factory=TrainSection)
    data: DataSection = Field(default_factory=DataSection)

    # ---- derived values ---------------------------------------------------------------------
    def model_cfg(self, vocab_size: int | None = None) -> ModelConfig:
        """The `ModelConfig` to build (vocab_size from the tokenizer when the config leaves it null)."""
        d = self.model.model_dump()
        if d["vocab_size"] is None:
            if vocab_size is None:
                raise ConfigError("model.vocab_size is null and no tokenizer gives it")
            d["vocab_size"] = vocab_size
        return ModelConfig(**d)

    @property
    def seq_len(self) -> int:
        return self.train.seq_len or self.model.block_size

    def grad_accum(self, world_size: int = 1) -> int:
        """Micro-batches per step per process, from tokens_per_step when given."""
        t = self.train
        if t.tokens_per_step is None:
            return t.grad_accum
        per_micro = t.batch_size * self.seq_len * world_size
        if t.tokens_per_step % per_micro:
            raise ConfigError(
                f"train.tokens_per_step ({t.tokens_per_step}) must be a multiple of "
                f"batch_size·seq_len·processes = {t.batch_size}·{self.seq_len}·{world_size} = {per_micro}"
            )
        return t.tokens_per_step // per_micro

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        header = "# fornalha run config (resolved). Reuse with: fornalha train --config config.yaml …\n"
        return header + yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


SECTIONS: dict[str, type[BaseModel]] = {"model": ModelSection, "train": TrainSection, "data": DataSection}

# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def valid_keys() -> list[str]:
    """Every dotted key `--set` accepts."""
    keys = ["depth"]
    for sec, cls in SECTIONS.items():
        keys += [f"{sec}.{name}" for name in cls.model_fields]
    return keys


def _resolve_key(key: str) -> tuple[str, ...]:
    """'train.lr' -> ('train', 'lr'); a bare 'lr' works when exactly one section has it."""
    key = key.strip()
    if key == "depth":
        return ("depth",)
    if "." in key:
        sec, name = key.split(".", 1)
        if sec in SECTIONS and name in SECTIONS[sec].model_fields:
            return (sec, name)
    else:
        owners = [sec for sec, cls in SECTIONS.items() if key in cls.model_fields]
        if len(owners) == 1:
            return (owners[0], key)
        if len(owners) > 1:
            raise ConfigError(
                f"config key {key!r} is ambiguous: say {' or '.join(f'{o}.{key}' for o in owners)}"
            )
    raise ConfigError(f"unknown config key {key!r}; valid keys: {', '.join(valid_keys())}")


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """'train.lr=3e-3' -> (('train', 'lr'), 0.003). Values are YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    if isinstance(value, str) and _looks_numeric(value):  # YAML 1.1 reads '1e-3' as a string
        value = float(value)
    return _resolve_key(key), value


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _fix_numbers(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _fix_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fix_numbers(v) for v in obj]
    if isinstance(obj, str) and _looks_numeric(obj) and obj.strip().lower() not in ("nan", "inf", "-inf"):
        return float(obj)
    return obj


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping with sections model/train/data")
    return _fix_numbers(data)


def preset_path(name: str) -> Path:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Path(str(resources.files("fornalha") / "configs" / f"{name}.yaml"))


def _flatten(d: dict[str, Any], where: str) -> dict[tuple[str, ...], Any]:
    """Nested YAML -> {(section, key): value}, checking every key."""
    out: dict[tuple[str, ...], Any] = {}
    for sec, body in d.items():
        if sec == "depth":
            out[("depth",)] = body
            continue
        if sec not in SECTIONS:
            raise ConfigError(
                f"{where}: unknown section {sec!r}; sections are depth, {', '.join(SECTIONS)}; "
                f"valid keys: {', '.join(valid_keys())}"
            )
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: section {sec!r} must be a mapping")
        for name, value in body.items():
            if name not in SECTIONS[sec].model_fields:
                raise ConfigError(
                    f"{where}: unknown key {sec}.{name}; valid {sec} keys: {', '.join(SECTIONS[sec].model_fields)}"
                )
            out[(sec, name)] = value
    return out


def depth_dial(depth: int) -> dict[tuple[str, ...], Any]:
    """What one number derives (nanochat-style): shape, AdamW lr, and batch tokens per step."""
    n_embd = 64 * depth
    return {
        ("model", "n_layer"): depth,
        ("model", "n_embd"): n_embd,
        ("model", "n_head"): depth,  # head_dim 64
        ("model", "n_kv_head"): None,
        ("model", "mlp_hidden"): None,
        ("train", "lr"): round(3e-3 * (256 / n_embd) ** 0.5, 6),
        ("train", "embedding_lr"): None,
        ("train", "tokens_per_step"): None,
        ("train", "grad_accum"): max(1, depth // 4),
    }


def load_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: typing.Iterable[str] = (),
) -> RunConfig:
    """Resolve a run config: preset, then a YAML file, then the depth dial, then `--set` overrides."""
    values: dict[tuple[str, ...], Any] = {}
    if preset is not None:
        values.update(_flatten(_read_yaml(preset_path(preset)), f"preset {preset}"))
    explicit: dict[tuple[str, ...], Any] = {}
    from_file: dict[tuple[str, ...], Any] = {}
    if config_file is not None:
        from_file = _flatten(_read_yaml(Path(config_file)), str(config_file))
        explicit.update(from_file)
    from_set: dict[tuple[str, ...], Any] = {}
    for text in overrides:
        key, value = parse_override(text)
        from_set[key] = value
    explicit.update(from_set)
    values.update(explicit)
    depth = values.get(("depth",))
    if depth is not None:
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
            raise ConfigError(f"depth must be a positive integer, got {depth!r}")
        dial = depth_dial(depth)
        if ("depth",) in from_set:  # an override that cannot apply is an error, never a silent no-op
            blocked = [k for k in (("model", "n_layer"), ("model", "n_embd"), ("model", "n_head"))
                       if k in from_file and k not in from_set and from_file[k] != dial[k]]  # fmt: skip
            if blocked:
                shown = ", ".join(f"{'.'.join(k)}={from_file[k]}" for k in blocked)
                raise ConfigError(
                    f"--set depth={depth} cannot apply: {config_file} sets {shown} explicitly; "
                    "remove those keys from the file, or --set them instead of depth"
                )
        for key, value in dial.items():
            if key not in explicit:
                values[key] = value

    nested: dict[str, Any] = {}
    for key, value in values.items():
        if len(key) == 1:
            nested[key[0]] = value
        else:
            nested.setdefault(key[0], {})[key[1]] = value
    try:
        cfg = RunConfig.model_validate(nested)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    # ModelConfig has its own checks (divisibility, …): run them now, with a stand-in vocab.
    cfg.model_cfg(vocab_size=cfg.model.vocab_size or 256)
    if cfg.train.seq_len is not None and cfg.train.seq_len > cfg.model.block_size:
        raise ConfigError(
            f"train.seq_len ({cfg.train.seq_len}) exceeds model.block_size ({cfg.model.block_size})"
        )
    return cfg


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return "invalid config: " + "; ".join(parts)


def config_reference_markdown() -> str:
    """A Markdown table of every key with its default and meaning (for the README)."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows.append("| `depth` | `null` | size dial: derives width, heads, lr and batch |")
    for sec, cls in SECTIONS.items():
        inst = cls()
        for name, field in cls.model_fields.items():
            default = getattr(inst, name)
            if isinstance(default, tuple):
                default = list(default)
            shown = yaml.safe_dump(default, default_flow_style=True).strip().removesuffix("...").strip()
            rows.append(f"| `{sec}.{name}` | `{shown}` | {field.description or ''} |")
    return "\n".join(rows)
