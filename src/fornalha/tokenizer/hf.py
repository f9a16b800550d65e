"""Foreign tokenizers: any Hugging Face `tokenizer.json`, behind fornalha's `Tokenizer` protocol.

A model imported with `fornalha import hf` (SmolLM2, TinyLlama, Qwen, ...) brings its own
tokenizer: its own vocabulary, its own special tokens (`<s>`, `<|im_end|>`, ...) at its own ids,
and its own chat template. `HFTokenizer` reads that folder as it is — `tokenizer.json` with the
`tokenizers` library, `tokenizer_config.json` / `special_tokens_map.json` for the bos/eos tokens,
and the chat template from `chat_template.jinja` or `tokenizer_config.json` — so that
`fornalha generate`, `chat` and `eval` work on the imported run.

What each method means here:

* ``encode`` gives the ids `transformers.AutoTokenizer(...).encode(text, add_special_tokens=False)`
  gives: the library's own normalizer, pre-tokenizer and model, no BOS/EOS added by the
  post-processor. Unlike fornalha's own tokenizers, text that spells a special token (a user
  typing ``<|im_end|>``) becomes that token, as in `transformers`.
* ``decode_bytes`` is the concatenation of each token's bytes, so it can be called one token at
  a time (the engine streams that way):

  - byte-level BPE (GPT-2 style: SmolLM2, Qwen, Llama 3): the token string mapped back through
    the inverse of GPT-2's ``bytes_to_unicode``, i.e. the exact bytes; ``decode`` is lossless.
  - SentencePiece-style (Metaspace ``▁`` for spaces, ``<0xNN>`` byte-fallback tokens: Llama 2,
    TinyLlama, Mistral): ``▁`` becomes a space and ``<0xNN>`` the byte 0xNN. A text's first
    token then carries the space the model's prefix added (``▁Hello`` -> b" Hello"), which is
    right mid-stream; ``decode`` uses the library's decoder, which strips that first space as
    `transformers` does.
  - anything else (WordPiece, Unigram without ``▁``, ...): the token string's UTF-8, a best effort;
    ``decode`` again uses the library's decoder.

  Added tokens (special or not) are their text's UTF-8 in every case.
* ``token_bytes`` is the length of each token's bytes as above, 0 for special tokens.
* ``bos_id`` / ``eos_id`` come from ``bos_token`` / ``eos_token`` in `tokenizer_config.json`
  (a string or an AddedToken dict). Models without a bos token (Qwen) use the eos token as the
  document separator, so ``bos_id`` falls back to ``eos_id``; either may be None when the
  tokenizer names neither.
* ``stop_ids`` are where generation stops: the eos token, the end-of-turn tokens that chat
  templates use (``<|im_end|>``, ``<|eot_id|>``, ``<end_of_turn>``, ...) when the vocabulary has
  them as special tokens, and any stop tokens recorded in `fornalha_tokenizer.json` (import takes
  them from the model's `generation_config.json`).
* ``encode_chat`` renders the model's own chat template with Jinja the way `transformers`'
  ``apply_chat_template`` does (a sandboxed environment with ``trim_blocks``/``lstrip_blocks``,
  variables ``messages``, ``add_generation_prompt``, the special tokens such as ``bos_token`` and
  ``eos_token``, and ``raise_exception``), then encodes the text without adding special tokens.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from fornalha.errors import FornalhaError

#: Files that make up a Hugging Face tokenizer folder (only tokenizer.json is required).
HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)
#: Special tokens that end an assistant turn in common chat templates; generation stops there.
END_OF_TURN_TOKENS = (
    "<|im_end|>",  # ChatML: SmolLM2, Qwen
    "<|eot_id|>",  # Llama 3
    "<|eom_id|>",
    "<|end|>",  # Phi-3, fornalha
    "<end_of_turn>",  # Gemma
    "<|endoftext|>",
    "<|end_of_text|>",
    "</s>",
)
SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
)
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@cache
def _unicode_to_bytes() -> dict[str, int]:
    from fornalha.tokenizer.bpe import bytes_to_unicode

    return {c: b for b, c in bytes_to_unicode().items()}


def _token_text(value: Any) -> str | None:
    """A special token from tokenizer_config.json: a string, or an AddedToken dict with "content"."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _components(node: Any) -> list[dict[str, Any]]:
    """A tokenizer.json pipeline piece and, for a Sequence, its parts (flattened)."""
    if not isinstance(node, Mapping):
        return []
    parts = [dict(node)]
    for key in ("pretokenizers", "decoders", "normalizers"):
        for child in node.get(key) or []:
            parts += _components(child)
    return parts


def _decoding(spec: Mapping[str, Any]) -> tuple[str, str]:
    """("byte-level" | "metaspace" | "plain", the space replacement character) of a tokenizer.json."""
    pieces = [*_components(spec.get("decoder")), *_components(spec.get("pre_tokenizer"))]
    types = {p.get("type") for p in pieces}
    if "ByteLevel" in types:
        return "byte-level", " "
    for p in pieces:
        if p.get("type") == "Metaspace":
            return "metaspace", str(p.get("replacement", "▁"))
    # Llama-2-style files: a normalizer replaces " " by "▁" and the decoder replaces it back
    for p in [*_components(spec.get("normalizer")), *_components(spec.get("decoder"))]:
        if p.get("type") == "Replace" and "▁" in (p.get("pattern") or {}).get("String", "") + str(
            p.get("content", "")
        ):
            return "metaspace", "▁"
    return "plain", " "


def _stop_ids_from_config(config: Mapping[str, Any]) -> list[int]:
    """``eos_token_id`` of a config.json / generation_config.json: an int, a list, or absent."""
    value = config.get("eos_token_id")
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if isinstance(v, int) and not isinstance(v, bool)]


def stop_ids_of_model(model_dir: str | os.PathLike[str]) -> list[int]:
    """The eos ids a Hugging Face model folder's generation_config.json and config.json name."""
    out: list[int] = []
    for name in ("generation_config.json", "config.json"):
        path = Path(model_dir) / name
        if path.is_file():
            try:
                out += _stop_ids_from_config(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
    return sorted(set(out))


def _generation_extension():
    """Jinja extension for transformers' ``{% generation %}…{% endgeneration %}`` (renders the body)."""
    from jinja2 import nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    return Generation


@cache
def _compile_template(template: str):
    """The chat template compiled as `transformers` compiles it (sandboxed, same helpers)."""
    from datetime import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_generation_extension(), "jinja2.ext.loopcontrols"],
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


class HFTokenizer:
    """A Hugging Face tokenizer folder behind the `Tokenizer` protocol (see the module docstring).

    Build it with `HFTokenizer.load(folder)`; ``files`` holds the raw bytes of the folder's
    tokenizer files so `save` can write them back unchanged.
    """

    kind = "hf"

    def __init__(self, files: Mapping[str, bytes], stop_tokens: Sequence[str] = ()):
        from tokenizers import Tokenizer

        if "tokenizer.json" not in files:
            raise FornalhaError("a Hugging Face tokenizer needs tokenizer.json")
        self.files = dict(files)
        try:
            spec = json.loads(self.files["tokenizer.json"])
            self._tok = Tokenizer.from_str(self.files["tokenizer.json"].decode("utf-8"))
            config = json.loads(self.files.get("tokenizer_config.json", b"{}"))
            special_map = json.loads(self.files.get("special_tokens_map.json", b"{}"))
        except Exception as exc:  # tokenizers raises plain Exceptions for malformed files
            raise FornalhaError(f"cannot read the Hugging Face tokenizer: {exc}") from exc
        self.config: dict[str, Any] = {**special_map, **config}
        self.decoding, self._space = _decoding(spec)
        model = spec.get("model") or {}
        self._byte_fallback = bool(model.get("byte_fallback"))

        self._added_ids = {str(t["content"]): int(t["id"]) for t in spec.get("added_tokens", [])}
        self._added: dict[int, str] = {i: t for t, i in self._added_ids.items()}
        self.special_ids: dict[str, int] = {
            str(t["content"]): int(t["id"]) for t in spec.get("added_tokens", []) if t.get("special")
        }
        max_id = max([*self._tok.get_vocab(with_added_tokens=True).values(), -1])
        self.vocab_size = max(self._tok.get_vocab_size(with_added_tokens=True), max_id + 1)

        self.tokens: dict[str, str | None] = {
            key: _token_text(self.config.get(key)) for key in SPECIAL_TOKEN_KEYS
        }
        self.eos_id = self._id_of(self.tokens["eos_token"])
        bos = self._id_of(self.tokens["bos_token"])
        self.bos_id = bos if bos is not None else self.eos_id

        self.chat_template = self._find_chat_template()
        self._stop_tokens = [t for t in stop_tokens if self._tok.token_to_id(t) is not None]
        self._bytes: list[bytes] | None = None

    def _id_of(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    # -- loading and saving -------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> HFTokenizer:
        """Read a folder with `tokenizer.json` (and the optional config files next to it)."""
        directory = Path(directory)
        files: dict[str, bytes] = {}
        for name in HF_TOKENIZER_FILES:
            if (directory / name).is_file():
                try:
                    files[name] = (directory / name).read_bytes()
                except OSError as exc:
                    raise FornalhaError(f"cannot read {directory / name}: {exc}") from exc
        if "tokenizer.json" not in files:
            raise FornalhaError(f"{directory} has no tokenizer.json (a Hugging Face tokenizer needs one)")
        meta: dict[str, Any] = {}
        if (directory / "fornalha_tokenizer.json").is_file():
            try:
                meta = json.loads((directory / "fornalha_tokenizer.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise FornalhaError(f"cannot read {directory / 'fornalha_tokenizer.json'}: {exc}") from exc
        try:
            return cls(files, stop_tokens=meta.get("stop_tokens") or ())
        except FornalhaError as exc:
            raise FornalhaError(f"{directory}: {exc}") from exc

    def with_stop_ids(self, ids: Iterable[int]) -> HFTokenizer:
        """Also stop generation at these ids (e.g. a model's generation_config.json eos ids)."""
        for i in ids:
            token = self._tok.id_to_token(int(i))
            if token is not None and token not in self._stop_tokens:
                self._stop_tokens.append(token)
        return self

    def metadata(self) -> dict[str, Any]:
        """The `fornalha_tokenizer.json` of this tokenizer."""
        return {
            "format": "fornalha-tokenizer",
            "version": 1,
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "special_tokens": dict(self.special_ids),
            "bos_token": self._tok.id_to_token(self.bos_id) if self.bos_id is not None else None,
            "eos_token": self._tok.id_to_token(self.eos_id) if self.eos_id is not None else None,
            "stop_tokens": [self._tok.id_to_token(i) for i in self.stop_ids()],
            "decoding": self.decoding,
            "chat_template": self.chat_template is not None,
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the Hugging Face files as they were read, plus `fornalha_tokenizer.json`."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (out / name).write_bytes(data)
        (out / "fornalha_tokenizer.json").write_text(
            json.dumps(self.metadata(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        return out

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, as `transformers` gives them with ``add_special_tokens=False``."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int | None = None) -> list[list[int]]:
        """Encode many texts in parallel (the library's own threads; ``num_threads`` is not used:
        set ``RAYON_NUM_THREADS`` to limit them)."""
        texts = list(texts)
        fast = getattr(self._tok, "encode_batch_fast", None)
        encodings = (fast or self._tok.encode_batch)(texts, add_special_tokens=False)
        return [e.ids for e in encodings]

    def encode_chat(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Render ``messages`` with the model's chat template and encode the text (no special tokens
        are added: the template writes them), as ``apply_chat_template(..., tokenize=True)``."""
        return self.encode(self.render_chat(messages, add_generation_prompt))

    def render_chat(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """The chat template's text for ``messages``."""
        import jinja2

        if self.chat_template is None:
            raise FornalhaError(
                "this tokenizer has no chat template (no chat_template in tokenizer_config.json and no "
                "chat_template.jinja): it belongs to a base model, so use `fornalha generate`, not chat"
            )
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or "role" not in message:
                raise FornalhaError(f"chat message {i} must be a mapping with a 'role', got {message!r}")
        variables: dict[str, Any] = {k: v for k, v in self.tokens.items() if v is not None}
        extra = self.config.get("additional_special_tokens") or self.config.get("extra_special_tokens")
        if isinstance(extra, list):
            variables["additional_special_tokens"] = [_token_text(t) for t in extra]
        chat = [{k: v for k, v in dict(m).items() if v is not None} for m in messages]
        try:
            return _compile_template(self.chat_template).render(
                messages=chat,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except jinja2.TemplateError as exc:
            raise FornalhaError(f"the model's chat template failed: {exc}") from exc

    def _find_chat_template(self) -> str | None:
        if "chat_template.jinja" in self.files:
            return self.files["chat_template.jinja"].decode("utf-8")
        template = self.config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, Mapping)}
            template = named.get("default")
        return template if isinstance(template, str) and template else None

    # -- decoding -----------------------------------------------------------------------------
    def _token_bytes_of(self, token_id: int) -> bytes:
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        token = self._tok.id_to_token(token_id)
        if token is None:
            return b""
        if self.decoding == "byte-level":
            inverse = _unicode_to_bytes()
            return b"".join(bytes([inverse[c]]) if c in inverse else c.encode("utf-8") for c in token)
        if self._byte_fallback and (m := _BYTE_TOKEN.fullmatch(token)):
            return bytes([int(m.group(1), 16)])
        if self.decoding == "metaspace":
            token = token.replace(self._space, " ")
        return token.encode("utf-8")

    def _all_bytes(self) -> list[bytes]:
        if self._bytes is None:
            self._bytes = [self._token_bytes_of(i) for i in range(self.vocab_size)]
        return self._bytes

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The concatenated bytes of ``ids`` (exact for byte-level BPE; see the module docstring)."""
        table = self._all_bytes()
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(table):
                raise FornalhaError(f"token id {i} is outside the vocabulary of {self.vocab_size}")
            out.append(table[i])
        return b"".join(out)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (special tokens included); invalid UTF-8 becomes U+FFFD."""
        ids = [int(i) for i in ids]
        if self.decoding == "byte-level":
            return self.decode_bytes(ids).decode("utf-8", errors="replace")
        self.decode_bytes(ids)  # range check
        return self._tok.decode(ids, skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        """Id of an added/special token, of the token whose bytes are ``token``'s UTF-8, or else of
        the vocabulary entry spelled ``token`` (e.g. ``"Ġthe"``); None if there is none."""
        if token in self._added_ids:
            return self._added_ids[token]
        found = self._tok.token_to_id(self._vocab_spelling(token))
        return found if found is not None else self._tok.token_to_id(token)

    def _vocab_spelling(self, text: str) -> str:
        if self.decoding == "byte-level":
            from fornalha.tokenizer.bpe import bytes_to_unicode

            table = bytes_to_unicode()
            return "".join(table[b] for b in text.encode("utf-8"))
        if self.decoding == "metaspace":
            return text.replace(" ", self._space)
        return text

    def token_bytes(self) -> np.ndarray:
        """Byte length of each token (0 for special tokens), for bits per byte."""
        out = np.array([len(b) for b in self._all_bytes()], dtype=np.int64)
        for i in self.special_ids.values():
            out[i] = 0
        return out

    def stop_ids(self) -> list[int]:
        """Ids at which generation stops: eos, the model's end-of-turn tokens, recorded stop tokens."""
        ids = {self.eos_id} if self.eos_id is not None else set()
        ids |= {self.special_ids[t] for t in END_OF_TURN_TOKENS if t in self.special_ids}
        ids |= {i for t in self._stop_tokens if (i := self._tok.token_to_id(t)) is not None}
        return sorted(ids)

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, decoding={self.decoding!r})"
