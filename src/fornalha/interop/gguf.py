"""GGUF export: a run folder -> one `.gguf` file that llama.cpp (`llama-server`, `llama-cli`) runs.

GGUF is llama.cpp's single-file format: a header of typed key/value metadata (architecture,
shape, tokenizer) followed by named tensors. We write it with the `gguf` package (llama.cpp's own
Python writer) straight from the checkpoint, without going through llama.cpp's
`convert_hf_to_gguf.py`: that converter recognises a BPE pre-tokenizer only by hashing the ids it
gives on a probe text, so it refuses every newly trained vocabulary. Here the export *names* the
pre-tokenizer instead (`tokenizer.ggml.pre = "llama-bpe"`), which is right because our BPE splits
text with exactly llama.cpp's Llama-3 pattern (see `fornalha.tokenizer.bpe`); a tokenizer trained
with another pattern is refused, since llama.cpp would cut its text differently.

The steps:

1. Architecture: the Hugging Face mapping (`fornalha.interop.hf`) decides — "qwen3" when QK-norm
   is on (Llama plus RMSNorm on each head's queries and keys), "llama" otherwise; a ReLU² MLP or
   logit soft-capping is refused with the same message as `export hf`.
2. Tensors: our names -> Hugging Face names (`to_hf_state_dict`) -> llama.cpp names:

       model.embed_tokens.weight                 token_embd.weight
       model.layers.i.input_layernorm.weight     blk.i.attn_norm.weight
       model.layers.i.self_attn.{q,k,v}_proj     blk.i.attn_{q,k,v}.weight
       model.layers.i.self_attn.o_proj           blk.i.attn_output.weight
       model.layers.i.self_attn.{q,k}_norm       blk.i.attn_{q,k}_norm.weight   (qwen3)
       model.layers.i.post_attention_layernorm   blk.i.ffn_norm.weight
       model.layers.i.mlp.{gate,up,down}_proj    blk.i.ffn_{gate,up,down}.weight
       model.norm.weight                         output_norm.weight
       lm_head.weight                            output.weight   (absent when tied: llama.cpp reuses
                                                                  token_embd)

   llama.cpp's "llama" graph applies rotary in the interleaved layout (pairs 0-1, 2-3, ...), ours
   and Hugging Face's in the rotate-half layout (pairs i, i + d/2), so for "llama" the rows of
   each head's query and key projections are permuted (as `convert_hf_to_gguf.py` does);
   "qwen3" uses the rotate-half (NEOX) layout and takes them as they are. A `[out, in]` torch
   matrix is written as is: GGUF lists dimensions innermost first, so it reads as `{in, out}`.
   Norm weights stay float32 whatever `dtype` is (llama.cpp expects them so).
3. Tokenizer: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with the tokens as strings in
   GPT-2's byte-to-unicode alphabet (as in `tokenizer.json`), their types (our seven special
   tokens are CONTROL), the merge list, and the special ids: bos `<|bos|>`, eos `<|endoftext|>`,
   eot `<|end|>`, padding `<|pad|>`. `add_bos_token` is true: llama.cpp puts `<|bos|>` in front
   of a prompt as every training document had, and removes the chat template's own leading
   `<|bos|>` when it renders a conversation, so a chat still gets one.
4. The file is written next to its destination and renamed into place; an existing file is
   replaced only if it is a GGUF (an earlier export), never anything else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fornalha.errors import FornalhaError
from fornalha.interop.hf import BOS, END, EOS, PAD, hf_model_type, to_hf_state_dict
from fornalha.model import ModelConfig
from fornalha.tokenizer.chat import CHAT_TEMPLATE, SPECIAL_IDS

#: Weight precisions `export gguf` writes (matrices; norms stay float32).
GGUF_DTYPES = ("f32", "f16")
#: llama.cpp's pre-tokenizer implementing our split pattern (`fornalha.tokenizer.bpe.LLAMA3_SPLIT_PATTERN`).
LLAMA_CPP_PRE = "llama-bpe"
GGUF_MAGIC = b"GGUF"

_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}


def gguf_tensor_name(hf_name: str) -> str:
    """llama.cpp's name for a Hugging Face Llama/Qwen3 tensor name."""
    if hf_name in _TOP_NAMES:
        return _TOP_NAMES[hf_name]
    prefix = "model.layers."
    if hf_name.startswith(prefix):
        layer, _, rest = hf_name[len(prefix) :].partition(".")
        if rest in _LAYER_NAMES:
            return f"blk.{layer}.{_LAYER_NAMES[rest]}"
    raise FornalhaError(f"no GGUF name for tensor {hf_name}")


def permute_rotary(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder each head's rows from the rotate-half layout to the interleaved one.

    Rotate-half pairs dimension i with i + d/2; interleaved pairs 2i with 2i + 1. Per head, row
    order [0, 1, ..., d/2-1 | d/2, ..., d-1] becomes [0, d/2, 1, d/2+1, ...].
    """
    out_features = weight.shape[0]
    head_dim = out_features // n_head
    return weight.reshape(n_head, 2, head_dim // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def gguf_tensors(state: dict[str, torch.Tensor], cfg: ModelConfig, arch: str) -> dict[str, torch.Tensor]:
    """Our state dict -> {llama.cpp tensor name: float32 tensor} for architecture `arch`."""
    out = {}
    for hf_name, tensor in to_hf_state_dict(state, cfg).items():
        tensor = tensor.detach().to(torch.float32).cpu()
        if arch == "llama" and hf_name.endswith("self_attn.q_proj.weight"):
            tensor = permute_rotary(tensor, cfg.n_head)
        elif arch == "llama" and hf_name.endswith("self_attn.k_proj.weight"):
            tensor = permute_rotary(tensor, cfg.n_kv_head or cfg.n_head)
        out[gguf_tensor_name(hf_name)] = tensor.contiguous()
    return out


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def _read_tokenizer(tok_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fornalha_tokenizer.json, tokenizer.json) of a run's BPE tokenizer with the Llama-3 pattern."""
    from fornalha.tokenizer.bpe import LLAMA3_SPLIT_PATTERN

    try:
        meta = json.loads((tok_dir / "fornalha_tokenizer.json").read_text())
        hf = json.loads((tok_dir / "tokenizer.json").read_text())
    except (OSError, ValueError) as exc:
        raise FornalhaError(f"cannot read the run's tokenizer in {tok_dir}: {exc}") from None
    kind = meta.get("kind")
    if kind != "bpe":
        raise FornalhaError(
            f"GGUF export needs a fornalha byte-level BPE tokenizer; this run's is of kind {kind!r} "
            "(train one with `fornalha tokenizer train --kind bpe`)"
        )
    if meta.get("pattern") != LLAMA3_SPLIT_PATTERN:
        raise FornalhaError(
            "the run's tokenizer splits text with a pattern llama.cpp does not implement "
            f"({meta.get('pattern')!r}); GGUF export needs the default Llama-3 pattern "
            "(`fornalha tokenizer train --pattern llama3`, then retrain the model)"
        )
    return meta, hf


def gguf_vocab(hf: dict[str, Any], vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) for llama.cpp from a byte-level BPE `tokenizer.json`.

    Tokens are listed by id; ids the tokenizer does not use (a model vocabulary padded past the
    tokenizer's) become "[PAD<id>]" of type UNUSED, as llama.cpp's converter writes them.
    """
    import gguf

    by_id: dict[int, tuple[str, int]] = {}
    for token, i in hf["model"]["vocab"].items():
        by_id[int(i)] = (token, gguf.TokenType.NORMAL)
    for added in hf.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    if by_id and max(by_id) >= vocab_size:
        raise FornalhaError(
            f"the tokenizer has ids up to {max(by_id)}, past the model's vocab_size {vocab_size}"
        )
    tokens, types = [], []
    for i in range(vocab_size):
        token, kind = by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))
        tokens.append(token)
        types.append(int(kind))
    merges = [m if isinstance(m, str) else " ".join(m) for m in hf["model"].get("merges", [])]
    return tokens, types, merges


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def _check_out(out: Path) -> None:
    if out.suffix != ".gguf":
        raise FornalhaError(f"--out must be a .gguf file, got {out}")
    if out.exists():
        if not out.is_file():
            raise FornalhaError(f"{out} exists and is not a file")
        with open(out, "rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise FornalhaError(f"{out} exists and is not a GGUF file; refusing to overwrite it")


def export_gguf(
    run_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    which: str = "best",
    dtype: str = "f32",
) -> Path:
    """Write a run's checkpoint as a GGUF file for llama.cpp; returns the file's path.

    `which` picks the checkpoint ("best", "last" or a step folder name); `dtype` the precision of
    the weight matrices ("f32" or "f16"; norms are always f32).
    """
    import gguf

    from fornalha.checkpoint import load_model

    run_dir, out = Path(run_dir), Path(out)
    if dtype not in GGUF_DTYPES:
        raise FornalhaError(f"unknown GGUF dtype {dtype!r}; choose one of {', '.join(GGUF_DTYPES)}")
    if not run_dir.is_dir():
        raise FornalhaError(f"run folder {run_dir} does not exist")
    tok_dir = run_dir / "tokenizer"
    if not tok_dir.is_dir():
        raise FornalhaError(
            f"{run_dir} is not a run folder (no tokenizer/ inside); export needs the tokenizer"
        )
    _check_out(out)
    meta, hf_tok = _read_tokenizer(tok_dir)
    model, ckpt_meta = load_model(run_dir, which=which)
    cfg = model.config
    arch = hf_model_type(cfg)  # "llama" or "qwen3"; refuses ReLU² / soft-capping
    tokens, types, merges = gguf_vocab(hf_tok, cfg.vocab_size)
    tensors = gguf_tensors(model.state_dict(), cfg, arch)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        writer = gguf.GGUFWriter(str(tmp), arch)
        writer.add_name(run_dir.resolve().name)
        writer.add_description(f"fornalha run {run_dir.resolve()} ({Path(ckpt_meta['path']).name})")
        writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
        writer.add_context_length(cfg.block_size)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_feed_forward_length(cfg.mlp_hidden)
        writer.add_head_count(cfg.n_head)
        writer.add_head_count_kv(cfg.n_kv_head)
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        writer.add_rope_dimension_count(cfg.head_dim)
        writer.add_rope_freq_base(cfg.rope_theta)
        writer.add_layer_norm_rms_eps(cfg.norm_eps)
        writer.add_vocab_size(cfg.vocab_size)

        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(LLAMA_CPP_PRE)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(SPECIAL_IDS[BOS])
        writer.add_eos_token_id(SPECIAL_IDS[EOS])
        writer.add_eot_token_id(SPECIAL_IDS[END])
        writer.add_pad_token_id(SPECIAL_IDS[PAD])
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_chat_template(CHAT_TEMPLATE)

        for name, tensor in tensors.items():
            array = tensor.numpy()
            if dtype == "f16" and array.ndim == 2:
                array = array.astype(np.float16)
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
