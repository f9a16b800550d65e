"""Hugging Face export and import: our run folders <-> `transformers` model folders.

Our GPT was built so that this is (almost) a rename. The architecture maps onto
`LlamaForCausalLM` — RMSNorm, rotary in the "rotate half" layout, grouped-query attention, SwiGLU,
no biases — and, when QK-norm is on, onto `Qwen3ForCausalLM`, which is Llama plus a per-head
RMSNorm on queries and keys before rotary (exactly what our `q_norm`/`k_norm` do).

Parameter names, ours (left) and Hugging Face's (right), layer i:

    wte.weight                         model.embed_tokens.weight
    blocks.i.attn_norm.weight          model.layers.i.input_layernorm.weight
    blocks.i.attn.qkv.weight           model.layers.i.self_attn.q_proj.weight   rows [0, q)
      (fused: rows q | k | v)          model.layers.i.self_attn.k_proj.weight   rows [q, q+kv)
                                       model.layers.i.self_attn.v_proj.weight   rows [q+kv, q+2kv)
    blocks.i.attn.o_proj.weight        model.layers.i.self_attn.o_proj.weight
    blocks.i.attn.q_norm.weight        model.layers.i.self_attn.q_norm.weight   (Qwen3 only)
    blocks.i.attn.k_norm.weight        model.layers.i.self_attn.k_norm.weight   (Qwen3 only)
    blocks.i.mlp_norm.weight           model.layers.i.post_attention_layernorm.weight
    blocks.i.mlp.gate_proj.weight      model.layers.i.mlp.gate_proj.weight
    blocks.i.mlp.up_proj.weight        model.layers.i.mlp.up_proj.weight
    blocks.i.mlp.down_proj.weight      model.layers.i.mlp.down_proj.weight
    norm_f.weight                      model.norm.weight
    lm_head.weight                     lm_head.weight   (absent when tie_word_embeddings)

with q = n_head * head_dim and kv = n_kv_head * head_dim. Both sides store `nn.Linear` weights as
[out_features, in_features], so splitting the fused matrix is slicing rows; no transposes and no
permutation of rotary dimensions (both use the rotate-half layout).

Config fields:

    vocab_size -> vocab_size            n_embd -> hidden_size        n_layer -> num_hidden_layers
    n_head -> num_attention_heads       n_kv_head -> num_key_value_heads
    head_dim -> head_dim                mlp_hidden -> intermediate_size
    block_size -> max_position_embeddings                          norm_eps -> rms_norm_eps
    rope_theta -> rope_theta (and rope_parameters, transformers 5)  tie_embeddings -> tie_word_embeddings

What does not map: the ReLU² MLP (Llama's MLP is SwiGLU) and logit soft-capping (Llama has none);
export refuses those with an error that names the setting. Import refuses biases
(`attention_bias`/`mlp_bias`), rope scaling, sliding windows and a `head_dim` other than
hidden_size / num_attention_heads, since our model has none of those.

This module never imports `transformers`: export writes plain files and import reads them, so
both work where only torch and safetensors are installed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from fornalha.errors import CheckpointError, FornalhaError
from fornalha.model import ModelConfig
from fornalha.tokenizer.chat import CHAT_TEMPLATE

#: The special tokens fornalha tokenizers reserve, in id order (see DESIGN.md section 2).
FORNALHA_SPECIALS = (
    "<|bos|>",
    "<|endoftext|>",
    "<|pad|>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
)
BOS, EOS, PAD, END = "<|bos|>", "<|endoftext|>", "<|pad|>", "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Tokenizer files copied between a run's tokenizer/ folder and a Hugging Face folder.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "fornalha_tokenizer.json",
)


# --------------------------------------------------------------------------------------------
# Config mapping
# --------------------------------------------------------------------------------------------


def hf_model_type(cfg: ModelConfig) -> str:
    """ "llama" or "qwen3" for a config that maps onto Hugging Face; a `FornalhaError` otherwise."""
    problems = []
    if cfg.mlp != "swiglu":
        problems.append(
            f"mlp={cfg.mlp!r} (Llama's MLP is SwiGLU; train with `mlp: swiglu` to get an exportable model)"
        )
    if cfg.logit_softcap is not None:
        problems.append(
            f"logit_softcap={cfg.logit_softcap} (Llama has no logit soft-capping; "
            "train with `logit_softcap: null`)"
        )
    if problems:
        raise FornalhaError(
            "cannot export to Hugging Face: this model's config does not map onto Llama/Qwen3: "
            + "; ".join(problems)
        )
    return "qwen3" if cfg.qk_norm else "llama"


def hf_config(cfg: ModelConfig, special_ids: dict[str, int], dtype: str = "float32") -> dict[str, Any]:
    """The `config.json` of a Hugging Face export of a model with config `cfg`.

    `rope_theta` is written both at the top level (transformers 4.x, vLLM, llama.cpp's converter)
    and inside `rope_parameters` (transformers 5).
    """
    model_type = hf_model_type(cfg)
    eos = [special_ids[t] for t in (EOS, END) if t in special_ids]
    config: dict[str, Any] = {
        "architectures": [ARCHITECTURES[model_type]],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": special_ids.get(BOS),
        "eos_token_id": special_ids.get(EOS),
        "pad_token_id": special_ids.get(PAD),
        "use_cache": True,
        "torch_dtype": dtype,
        "dtype": dtype,
    }
    if model_type == "qwen3":
        config.update(
            {
                "use_sliding_window": False,
                "sliding_window": None,
                "max_window_layers": cfg.n_layer,
                "layer_types": ["full_attention"] * cfg.n_layer,
            }
        )
    if not eos:
        config["eos_token_id"] = None
    return config


def _rope_theta(hf: dict[str, Any]) -> float:
    params = hf.get("rope_parameters") or {}
    theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
    return float(theta)


def model_config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Our `ModelConfig` for a Hugging Face Llama or Qwen3 `config.json` (a dict).

    Raises `FornalhaError` naming each setting our model cannot represent.
    """
    archs = hf.get("architectures") or []
    model_type = hf.get("model_type")
    supported = set(ARCHITECTURES.values())
    if model_type not in ARCHITECTURES or (archs and archs[0] not in supported):
        got = archs[0] if archs else model_type
        raise FornalhaError(
            f"{source}: architecture {got!r} is not supported; import reads "
            f"{' and '.join(sorted(supported))} checkpoints"
        )
    problems = []
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        problems.append("attention_bias/mlp_bias is true (our model has no biases)")
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act={hf.get('hidden_act')!r} (our SwiGLU uses silu)")
    rope_params = hf.get("rope_parameters") or {}
    if hf.get("rope_scaling") is not None or rope_params.get("rope_type", "default") != "default":
        scaling = hf.get("rope_scaling") or rope_params
        problems.append(f"rope scaling {scaling} (our rotary has no scaling; only plain RoPE imports)")
    if hf.get("use_sliding_window"):
        problems.append("use_sliding_window is true (our attention is always full)")
    if int(hf.get("pretraining_tp", 1) or 1) != 1:
        problems.append(f"pretraining_tp={hf.get('pretraining_tp')} (only 1 is supported)")
    hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or hidden // heads)
    if head_dim * heads != hidden:
        problems.append(
            f"head_dim={head_dim} but hidden_size / num_attention_heads = {hidden}/{heads} "
            "(our model derives head_dim from n_embd / n_head)"
        )
    if problems:
        raise FornalhaError(f"{source}: cannot import into a fornalha model: " + "; ".join(problems))
    try:
        return ModelConfig(
            vocab_size=int(hf["vocab_size"]),
            block_size=int(hf.get("max_position_embeddings", 2048)),
            n_layer=int(hf["num_hidden_layers"]),
            n_head=heads,
            n_kv_head=int(hf.get("num_key_value_heads") or heads),
            n_embd=hidden,
            mlp="swiglu",
            mlp_hidden=int(hf["intermediate_size"]),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qk_norm=model_type == "qwen3",
            rope_theta=_rope_theta(hf),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            dropout=0.0,
            logit_softcap=None,
            init_std=float(hf.get("initializer_range", 0.02)),
        )
    except KeyError as exc:
        raise FornalhaError(f"{source}: missing field {exc}") from None


# --------------------------------------------------------------------------------------------
# Weight mapping
# --------------------------------------------------------------------------------------------


def _renames(cfg: ModelConfig) -> list[tuple[str, str]]:
    """(our name, Hugging Face name) for every tensor except the fused qkv and a tied head."""
    pairs = [("wte.weight", "model.embed_tokens.weight"), ("norm_f.weight", "model.norm.weight")]
    if not cfg.tie_embeddings:
        pairs.append(("lm_head.weight", "lm_head.weight"))
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"model.layers.{i}."
        pairs += [
            (ours + "attn_norm.weight", hf + "input_layernorm.weight"),
            (ours + "attn.o_proj.weight", hf + "self_attn.o_proj.weight"),
            (ours + "mlp_norm.weight", hf + "post_attention_layernorm.weight"),
            (ours + "mlp.gate_proj.weight", hf + "mlp.gate_proj.weight"),
            (ours + "mlp.up_proj.weight", hf + "mlp.up_proj.weight"),
            (ours + "mlp.down_proj.weight", hf + "mlp.down_proj.weight"),
        ]
        if cfg.qk_norm:
            pairs += [
                (ours + "attn.q_norm.weight", hf + "self_attn.q_norm.weight"),
                (ours + "attn.k_norm.weight", hf + "self_attn.k_norm.weight"),
            ]
    return pairs


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Rename our tensors to Hugging Face's and split each fused qkv into q_proj/k_proj/v_proj."""
    hf_model_type(cfg)
    q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    out = {hf: state[ours] for ours, hf in _renames(cfg)}
    for i in range(cfg.n_layer):
        q, k, v = state[f"blocks.{i}.attn.qkv.weight"].split([q_dim, kv_dim, kv_dim], dim=0)
        prefix = f"model.layers.{i}.self_attn."
        out[prefix + "q_proj.weight"], out[prefix + "k_proj.weight"], out[prefix + "v_proj.weight"] = q, k, v
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_state_dict(
    hf_state: dict[str, torch.Tensor], cfg: ModelConfig, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """The inverse of `to_hf_state_dict`: rename to ours and fuse q/k/v into one qkv matrix.

    A tied checkpoint that still stores `lm_head.weight` has it dropped (it equals the embedding);
    rotary `inv_freq` buffers of old checkpoints are ignored. Anything else missing or left over
    raises `FornalhaError`.
    """
    hf_state = {k: v for k, v in hf_state.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings:
        hf_state.pop("lm_head.weight", None)
    out: dict[str, torch.Tensor] = {}
    missing = []
    for ours, hf in _renames(cfg):
        if hf in hf_state:
            out[ours] = hf_state.pop(hf)
        else:
            missing.append(hf)
    for i in range(cfg.n_layer):
        prefix = f"model.layers.{i}.self_attn."
        names = [prefix + p for p in ("q_proj.weight", "k_proj.weight", "v_proj.weight")]
        if all(n in hf_state for n in names):
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat([hf_state.pop(n) for n in names], dim=0)
        else:
            missing += [n for n in names if n not in hf_state]
    if missing:
        hint = " (the config says the embeddings are untied)" if "lm_head.weight" in missing else ""
        raise FornalhaError(
            f"{source}: missing tensors {missing[:6]}{' …' if len(missing) > 6 else ''}{hint}"
        )
    if hf_state:
        extra = sorted(hf_state)
        raise FornalhaError(
            f"{source}: tensors a fornalha model has no place for: {extra[:6]}{' …' if len(extra) > 6 else ''}"
        )
    _check_shapes(out, cfg, source)
    return out


def _check_shapes(state: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> None:
    """Compare against a GPT built on the meta device (shapes only, no memory)."""
    from fornalha.model import GPT

    with torch.device("meta"):
        expected = GPT(cfg).state_dict()
    for name, tensor in state.items():
        want = expected[name].shape
        if tensor.shape != want:
            raise FornalhaError(
                f"{source}: tensor for {name} has shape {tuple(tensor.shape)}, "
                f"the config implies {tuple(want)}"
            )


# --------------------------------------------------------------------------------------------
# Tokenizer files
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FornalhaError(f"cannot read {path}: {exc}") from None


def special_token_ids(tokenizer_json: dict[str, Any]) -> dict[str, int]:
    """content -> id of the added (special) tokens of a `tokenizer.json`."""
    return {t["content"]: int(t["id"]) for t in tokenizer_json.get("added_tokens", [])}


def _export_tokenizer(tok_dir: Path, out: Path, block_size: int) -> dict[str, int]:
    """Copy tokenizer.json and write tokenizer_config.json / special_tokens_map.json for transformers.

    Returns the special-token ids. Ids are the run's own: the exported tokenizer encodes text
    exactly as fornalha does, and, like Llama's, puts `<|bos|>` in front by itself (a
    `TemplateProcessing` post-processor and `add_bos_token: true`), since every training document
    started with one: `tok(prompt)` in transformers, vLLM's completions and llama.cpp then feed the
    model the ids `fornalha generate --prompt` feeds it. The chat template starts with `<|bos|>` too;
    chat paths tokenize the rendered text without special tokens (transformers'
    `apply_chat_template`, vLLM's chat endpoint) or strip the template's leading BOS (llama.cpp),
    so a conversation still gets exactly one.
    """
    tok_json_path = tok_dir / "tokenizer.json"
    if not tok_json_path.is_file():
        raise FornalhaError(
            f"{tok_dir} has no tokenizer.json; Hugging Face export needs the standard tokenizers file"
        )
    special = special_token_ids(_read_json(tok_json_path))
    if BOS in special:
        from tokenizers import Tokenizer, processors

        hf_tok = Tokenizer.from_file(str(tok_json_path))
        hf_tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, special[BOS])]
        )
        hf_tok.save(str(out / "tokenizer.json"))
    else:
        shutil.copyfile(tok_json_path, out / "tokenizer.json")
    if (tok_dir / "fornalha_tokenizer.json").is_file():  # lets `import hf` restore a fornalha tokenizer
        shutil.copyfile(tok_dir / "fornalha_tokenizer.json", out / "fornalha_tokenizer.json")

    config: dict[str, Any] = {}
    if (tok_dir / "tokenizer_config.json").is_file():
        config = _read_json(tok_dir / "tokenizer_config.json")
    names = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    config.setdefault("tokenizer_class", "PreTrainedTokenizerFast")
    for key, tok in names.items():
        if tok in special:
            config.setdefault(key, tok)
    extra = [t for t in ROLE_TOKENS if t in special]
    if extra:
        config.setdefault("additional_special_tokens", extra)
    if all(t in special for t in FORNALHA_SPECIALS):
        config.setdefault("chat_template", CHAT_TEMPLATE)
    config["add_bos_token"] = BOS in special
    config.setdefault("add_eos_token", False)
    config.setdefault("clean_up_tokenization_spaces", False)
    config["model_max_length"] = block_size
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    special_map = {key: config[key] for key in names if key in config}
    if extra:
        special_map["additional_special_tokens"] = config["additional_special_tokens"]
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")
    return special


def _tokenizer_report(tok_dir: Path, error: str | None = None) -> dict[str, Any]:
    """What an imported tokenizer offers compared with a fornalha one.

    ``error``: why a foreign tokenizer could not be read as kind "hf" (None when it could).
    """
    report: dict[str, Any] = {"has_tokenizer_json": (tok_dir / "tokenizer.json").is_file()}
    if not report["has_tokenizer_json"]:
        report["note"] = "no tokenizer.json in the Hugging Face folder; add a tokenizer before using the run"
        return report
    special = special_token_ids(_read_json(tok_dir / "tokenizer.json"))
    expected = {t: i for i, t in enumerate(FORNALHA_SPECIALS)}
    missing = [t for t in FORNALHA_SPECIALS if special.get(t) != expected[t]]
    meta_path = tok_dir / "fornalha_tokenizer.json"
    meta = _read_json(meta_path) if meta_path.is_file() else {}
    report["fornalha_special_tokens"] = not missing
    report["missing_special_tokens"] = missing
    report["fornalha_tokenizer"] = meta.get("kind") in ("bpe", "char")
    report["kind"] = meta.get("kind")
    if meta.get("kind") == "hf":
        report["chat_template"] = bool(meta.get("chat_template"))
        report["stop_tokens"] = meta.get("stop_tokens", [])
    if error is not None:
        report["note"] = (
            f"the tokenizer cannot be read ({error}); add a readable tokenizer before using the run"
        )
    elif meta.get("kind") == "hf" and not report["chat_template"]:
        report["note"] = (
            "the tokenizer lacks fornalha's special tokens and has no chat template of its own, so "
            "fornalha's chat template does not apply and `fornalha chat` will not work (a base model); "
            'generation and evaluation use the model\'s own tokenizer (kind "hf")'
        )
    elif missing and meta.get("kind") != "hf":
        report["note"] = (
            "the tokenizer lacks fornalha's special tokens "
            f"({', '.join(missing)} not at their reserved ids): fornalha's chat template does not apply"
        )
    return report


# --------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------


def _model_card(
    name: str, cfg: ModelConfig, arch: str, meta: dict[str, Any], n_params: int, dtype: str
) -> str:
    metrics = []
    for key, label in (("step", "training step"), ("tokens_seen", "tokens seen"), ("val_loss", "validation loss"),
                       ("val_bpb", "validation bits per byte")):  # fmt: skip
        if meta.get(key) is not None:
            value = meta[key]
            metrics.append(
                f"| {label} | {value:.4f} |" if isinstance(value, float) else f"| {label} | {value:,} |"
            )
    shape = [
        f"| parameters | {n_params:,} |",
        f"| layers | {cfg.n_layer} |",
        f"| hidden size | {cfg.n_embd} |",
        f"| attention heads (key/value heads) | {cfg.n_head} ({cfg.n_kv_head}) |",
        f"| MLP hidden size (SwiGLU) | {cfg.mlp_hidden} |",
        f"| context length | {cfg.block_size} |",
        f"| vocabulary | {cfg.vocab_size} |",
        f"| tied embeddings | {cfg.tie_embeddings} |",
        f"| QK-norm | {cfg.qk_norm} |",
        f"| RoPE theta | {cfg.rope_theta} |",
        f"| weights dtype | {dtype} |",
    ]
    table = "\n".join(["| | |", "|---|---|", *shape, *metrics])
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- fornalha
- {arch}
---

# {name}

A small language model trained from scratch with fornalha and exported to the Hugging Face
`{arch}` architecture (`fornalha export hf`).

{table}

## Load with transformers

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("path/to/{name}")
model = AutoModelForCausalLM.from_pretrained("path/to/{name}")

ids = tok("Once upon a time", return_tensors="pt")  # <|bos|> is added, as in training
out = model.generate(**ids, max_new_tokens=50, do_sample=False)
print(tok.decode(out[0], skip_special_tokens=True))

# chat (the template starts with <|bos|> and ends with the <|assistant|> generation prompt)
msgs = [{{"role": "user", "content": "Hello!"}}]
ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
out = model.generate(**ids, max_new_tokens=50)  # stops at <|end|> or <|endoftext|> (generation_config.json)
```

Every training document started with `<|bos|>`, so the tokenizer puts it in front of a prompt by
itself, as Llama's does (`add_bos_token`); do not type it. The greedy continuation of `tok(prompt)`
here, in vLLM's completions endpoint and in llama.cpp is the one `fornalha generate --prompt` gives.
The chat template starts with `<|bos|>`; `apply_chat_template`, vLLM's chat endpoint and llama.cpp
all keep just that one.

## Serve with vLLM

```bash
vllm serve path/to/{name} --max-model-len {cfg.block_size}
```

## Run with llama.cpp (GGUF)

Export the run itself with fornalha, which names llama.cpp's pre-tokenizer (`llama-bpe`, the
split pattern this tokenizer was trained with) in the file:

```bash
fornalha export gguf --run RUN_DIR --out {name}.gguf
llama-server -m {name}.gguf --port 8080
```

(llama.cpp's `convert_hf_to_gguf.py` recognises pre-tokenizers by hashing the ids of a probe text,
so it stops with "BPE pre-tokenizer was not recognized" on any newly trained vocabulary.)

Limits: context of {cfg.block_size} tokens (rotary positions were only trained that far).
"""


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def export_hf(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    which: str = "best",
    dtype: str = "float32",
) -> Path:
    """Write a Hugging Face model folder for a run's checkpoint; returns the folder.

    Files: config.json (LlamaForCausalLM, or Qwen3ForCausalLM with QK-norm), model.safetensors,
    tokenizer.json, tokenizer_config.json (with the chat template), special_tokens_map.json,
    generation_config.json (stops at <|end|> and <|endoftext|>) and a README.md model card.
    `which` picks the checkpoint ("best", "last", or a step folder name); `dtype` the weight
    precision ("float32", "bfloat16" or "float16").
    """
    from safetensors.torch import save_file

    from fornalha.checkpoint import load_model

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if dtype not in DTYPES:
        raise FornalhaError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if not run_dir.exists():
        raise FornalhaError(f"run folder {run_dir} does not exist")
    tok_dir = run_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise FornalhaError(
            f"{run_dir} is not a run folder (no tokenizer/ inside); export needs the tokenizer"
        )
    model, meta = load_model(run_dir, which=which)
    cfg = model.config
    arch = ARCHITECTURES[hf_model_type(cfg)]  # fails early, before anything is written

    from fornalha.outputs import claim

    owned = claim(out_dir, "export hf")  # a non-empty folder that is not an earlier export: refused
    tmp = owned.staging()
    try:
        special = _export_tokenizer(tok_dir, tmp, cfg.block_size)
        if special and cfg.vocab_size < max(special.values()) + 1:
            raise FornalhaError(
                f"the tokenizer's special tokens go past the model's vocab_size {cfg.vocab_size}"
            )
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        hf_state = {k: v.to(DTYPES[dtype]).contiguous() for k, v in to_hf_state_dict(state, cfg).items()}
        save_file(hf_state, str(tmp / "model.safetensors"), metadata={"format": "pt"})

        config = hf_config(cfg, special, dtype)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        generation = {
            "_from_model_config": False,
            "bos_token_id": special.get(BOS),
            "eos_token_id": [special[t] for t in (END, EOS) if t in special] or None,
            "pad_token_id": special.get(PAD),
        }
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
        (tmp / "README.md").write_text(_model_card(out_dir.name, cfg, arch, meta, model.num_params(), dtype))
        provenance = {
            "format": "fornalha-hf-export",
            "version": 1,
            "run": str(run_dir.resolve()),
            "checkpoint": meta.get("path"),
            "step": meta.get("step"),
            "model_config": cfg.to_dict(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (tmp / "fornalha_export.json").write_text(json.dumps(provenance, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    owned.publish(tmp, last=["config.json"])  # replaces only files an earlier export wrote
    return out_dir


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------


def _load_hf_weights(model_dir: Path) -> tuple[dict[str, torch.Tensor], str]:
    """All tensors of a Hugging Face folder, and a word for where they came from.

    Reads model.safetensors, a sharded model.safetensors.index.json, pytorch_model.bin or a sharded
    pytorch_model.bin.index.json; .bin files go through `torch.load(weights_only=True)`, which
    refuses anything but tensors (no arbitrary pickled code runs).
    """
    from safetensors.torch import load_file

    def read(path: Path) -> dict[str, torch.Tensor]:
        try:
            if path.suffix == ".safetensors":
                return load_file(str(path))
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise FornalhaError(f"cannot read weights {path}: {exc}") from None

    def sharded(index_path: Path) -> dict[str, torch.Tensor]:
        weight_map = _read_json(index_path).get("weight_map", {})
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (model_dir / shard).is_file():
                raise FornalhaError(f"{index_path.name} lists {shard}, which is missing from {model_dir}")
            state.update(read(model_dir / shard))
        return state

    if (model_dir / "model.safetensors").is_file():
        return read(model_dir / "model.safetensors"), "model.safetensors"
    if (model_dir / "model.safetensors.index.json").is_file():
        return sharded(model_dir / "model.safetensors.index.json"), "sharded safetensors"
    if (model_dir / "pytorch_model.bin").is_file():
        return read(model_dir / "pytorch_model.bin"), "pytorch_model.bin"
    if (model_dir / "pytorch_model.bin.index.json").is_file():
        return sharded(model_dir / "pytorch_model.bin.index.json"), "sharded pytorch_model.bin"
    raise FornalhaError(
        f"{model_dir} has no weights (model.safetensors, model.safetensors.index.json or pytorch_model.bin)"
    )


def _describe_foreign_tokenizer(tok_dir: Path, model_dir: Path) -> str | None:
    """Write fornalha_tokenizer.json (kind "hf") for a foreign tokenizer, so `load_tokenizer` reads it
    as `HFTokenizer` with the model's stop tokens (generation_config.json's eos ids); an exported
    fornalha tokenizer (which brings its own fornalha_tokenizer.json) is left alone.

    Returns why the tokenizer could not be read, or None.
    """
    from fornalha.tokenizer.hf import HFTokenizer, stop_ids_of_model

    if (tok_dir / "fornalha_tokenizer.json").is_file() or not (tok_dir / "tokenizer.json").is_file():
        return None
    try:
        HFTokenizer.load(tok_dir).with_stop_ids(stop_ids_of_model(model_dir)).save(tok_dir)
    except FornalhaError as exc:
        return str(exc)
    return None


def import_hf(model_dir: str | os.PathLike[str], out_run_dir: str | os.PathLike[str]) -> Path:
    """Turn a local Hugging Face Llama or Qwen3 folder into a fornalha run folder; returns it.

    The run gets checkpoints/best (float32 weights, lineage parent "hf:<dir>"), tokenizer/ (the
    HF tokenizer files, plus fornalha_tokenizer.json: the one an `export hf` folder carries, or for a
    foreign tokenizer one of kind "hf" naming its stop tokens, which `load_tokenizer` reads as
    `fornalha.tokenizer.HFTokenizer`), config.yaml (the model section of a run config) and
    import.json (what was imported and what the tokenizer offers: a foreign tokenizer chats with
    the model's own chat template, and one without a template cannot chat).
    """
    import yaml

    from fornalha.checkpoint import save_checkpoint

    model_dir, out_run_dir = Path(model_dir), Path(out_run_dir)
    if not model_dir.is_dir():
        raise FornalhaError(
            f"Hugging Face model folder {model_dir} does not exist (import reads local folders)"
        )
    if not (model_dir / "config.json").is_file():
        raise FornalhaError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    hf = _read_json(model_dir / "config.json")
    cfg = model_config_from_hf(hf, str(model_dir / "config.json"))
    hf_state, weights_from = _load_hf_weights(model_dir)
    source_dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in hf_state.values()})
    state = from_hf_state_dict(hf_state, cfg, str(model_dir))
    state = {k: v.to(torch.float32).contiguous() for k, v in state.items()}

    if out_run_dir.exists() and (not out_run_dir.is_dir() or any(out_run_dir.iterdir())):
        raise FornalhaError(f"{out_run_dir} already exists and is not empty; choose a new --out")
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    parent = f"hf:{model_dir.resolve()}"
    out_run_dir.mkdir(parents=True, exist_ok=True)
    try:
        tok_out = out_run_dir / "tokenizer"
        tok_out.mkdir()
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, tok_out / name)
        error = _describe_foreign_tokenizer(tok_out, model_dir)
        tokenizer = _tokenizer_report(tok_out, error)
        report = {
            "format": "fornalha-hf-import",
            "version": 1,
            "source": str(model_dir.resolve()),
            "architecture": (hf.get("architectures") or [hf.get("model_type")])[0],
            "weights": weights_from,
            "source_dtypes": source_dtypes,
            "imported_dtype": "float32",
            "tokenizer": tokenizer,
            "created": created,
        }
        meta = {
            "model_config": cfg.to_dict(),
            "step": 0,
            "tokens_seen": 0,
            "val_loss": None,
            "val_bpb": None,
            "lineage": {"parent": parent, "created": created},
            "import": {k: report[k] for k in ("architecture", "weights", "source_dtypes", "tokenizer")},
        }
        save_checkpoint(out_run_dir / "checkpoints" / "best", state, meta)
        header = (
            f"# Imported from {model_dir.resolve()} by `fornalha import hf` ({created}).\n"
            f"# Only the model section is known; fine-tune with: fornalha train --init-from {out_run_dir} …\n"
        )
        body = yaml.safe_dump({"model": cfg.to_dict()}, sort_keys=False)
        (out_run_dir / "config.yaml").write_text(header + body)
        (out_run_dir / "import.json").write_text(json.dumps(report, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(out_run_dir, ignore_errors=True)
        raise
    return out_run_dir


def import_notes(run_dir: str | os.PathLike[str]) -> list[str]:
    """Human-readable notes about an imported run (for the CLI): tokenizer gaps and the like."""
    path = Path(run_dir) / "import.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} was not made by `fornalha import hf` (no import.json)")
    report = _read_json(path)
    note = report.get("tokenizer", {}).get("note")
    return [note] if note else []
