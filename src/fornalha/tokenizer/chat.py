"""Special tokens and the chat format, shared by every tokenizer.

Every fornalha tokenizer reserves the same seven special tokens at ids 0..6, in this order,
so a model pre-trained today can be fine-tuned for chat tomorrow without a new vocabulary:

    0 <|bos|>        start of every document (the shards put one before each document)
    1 <|endoftext|>  end of text (the `eos` token; generation also stops on it)
    2 <|pad|>        padding for batched inference
    3 <|system|>      4 <|user|>      5 <|assistant|>   chat roles
    6 <|end|>        end of one chat message

A conversation is rendered as

    <|bos|><|system|>{text}<|end|><|user|>{text}<|end|><|assistant|>{text}<|end|>...

and the *generation prompt* is a bare `<|assistant|>`: the model writes the reply and closes it
with `<|end|>`. Message text is always encoded as ordinary text, so a user who types
"<|end|>" gets the characters, never the control token.

The same format is written as a Jinja template (`CHAT_TEMPLATE`) into `tokenizer_config.json`, so
`transformers`' `apply_chat_template` produces the same ids as `render_chat` here (tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from fornalha.errors import DataError

BOS = "<|bos|>"
EOS = "<|endoftext|>"
PAD = "<|pad|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"

#: The reserved special tokens, in id order (token ``SPECIAL_TOKENS[i]`` has id ``i``).
SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, END)
#: Special token -> id.
SPECIAL_IDS: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
ROLES: tuple[str, ...] = ("system", "user", "assistant")

#: Jinja chat template for Hugging Face `tokenizer_config.json`. Mirrors `render_chat`.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


class _Encoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


def _check_messages(messages: Sequence[Mapping[str, Any]]) -> None:
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise DataError(f"chat message {i} must be a mapping with 'role' and 'content', got {message!r}")
        if message["role"] not in ROLES:
            raise DataError(
                f"chat message {i} has role {message['role']!r}; expected one of {', '.join(ROLES)}"
            )
        if not isinstance(message["content"], str):
            raise DataError(
                f"chat message {i} content must be a string, got {type(message['content']).__name__}"
            )


def render_chat_with_mask(
    tokenizer: _Encoder,
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
) -> tuple[list[int], list[int]]:
    """Encode a conversation and return ``(ids, mask)`` with ``mask[i] == 1`` where ``ids[i]``
    is a token the model should learn to produce.

    The trained tokens are the assistant's text and the `<|end|>` that closes it (so the model
    learns to stop); the role tokens, the system and user turns and `<|bos|>` are context only.
    Supervised fine-tuning uses the mask to set ignored targets (-1).
    """
    _check_messages(messages)
    ids = [SPECIAL_IDS[BOS]]
    mask = [0]
    for message in messages:
        role_id = SPECIAL_IDS[f"<|{message['role']}|>"]
        content = tokenizer.encode(message["content"])
        trained = 1 if message["role"] == "assistant" else 0
        ids += [role_id, *content, SPECIAL_IDS[END]]
        mask += [0] + [trained] * (len(content) + 1)
    if add_generation_prompt:
        ids.append(SPECIAL_IDS[ASSISTANT])
        mask.append(0)
    return ids, mask


def render_chat(
    tokenizer: _Encoder, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
) -> list[int]:
    """Encode a conversation in the chat format (see the module docstring).

    With ``add_generation_prompt`` the ids end in `<|assistant|>`, ready for the model to reply.
    """
    return render_chat_with_mask(tokenizer, messages, add_generation_prompt)[0]


def stop_ids() -> set[int]:
    """Ids at which generation stops: `<|end|>` and `<|endoftext|>`."""
    return {SPECIAL_IDS[END], SPECIAL_IDS[EOS]}


def hf_tokenizer_config(model_max_length: int | None = None, extra: Iterable[str] = ()) -> dict[str, Any]:
    """The `tokenizer_config.json` written next to `tokenizer.json` (Hugging Face format).

    ``extra`` names further special tokens of a tokenizer (the char tokenizer's `<|unk|>`).
    """
    added = {
        str(i): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, tok in enumerate([*SPECIAL_TOKENS, *extra])
    }
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "additional_special_tokens": [SYSTEM, USER, ASSISTANT, END],
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    if "<|unk|>" in extra:
        config["unk_token"] = "<|unk|>"
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    return config
