"""Test helper shared by the tokenizer and interop tests: a Hugging Face tokenizer folder of the
kind small public models ship (SmolLM2/Qwen-style byte-level BPE with ChatML special tokens)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]  # ids 0..3


def byte_level_tokenizer(out: Path, texts: Iterable[str], vocab_size: int, template: str | None = CHATML):
    """Train a byte-level BPE on `texts` with SPECIALS at ids 0..3 and save it to `out` as a
    transformers tokenizer folder (with `template` as its chat template). Returns the
    `PreTrainedTokenizerFast`."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        **({"chat_template": template} if template else {}),
    )
    fast.save_pretrained(out)
    return fast
