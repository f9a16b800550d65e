"""How well a model answers held-out questions: the three figures the assistant pipeline reports.

    answer loss       mean nats per token of the reference answers (and their end-of-turn token),
                      the question given: how likely the model finds the right answer
    chrF              character n-gram F-score (sacrebleu) of the greedy answer against the reference:
                      how close what it actually says is to what it should say (0-100)
    end-of-turn rate  share of greedy answers that end with the end-of-turn token before the
                      length limit: whether it learned to stop talking

The same questions, the same limits and greedy decoding for every model compared (the base model
before fine-tuning and the fine-tuned one), so the figures differ only by the weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fornalha.errors import ConfigError
from fornalha.finetune.chat_data import Example, prompt_ids, render_with_mask
from fornalha.finetune.sft import _pad_id, answer_loss, pack_rows


def pick_questions(held_out: Sequence[Example], n: int) -> list[Example]:
    """Up to n held-out examples, one group at a time in turn, so that n questions cover as many
    different answers as possible (the Aira set has ~30 paraphrases per answer)."""
    by_group: dict[str, list[Example]] = {}
    for ex in held_out:
        by_group.setdefault(ex.group, []).append(ex)
    queues = [by_group[g] for g in sorted(by_group)]
    picked: list[Example] = []
    depth = 0
    while len(picked) < n and any(depth < len(q) for q in queues):
        picked += [q[depth] for q in queues if depth < len(q)][: n - len(picked)]
        depth += 1
    return picked


def evaluate_answers(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    max_new_tokens: int = 128,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Answer loss, chrF and end-of-turn rate of `model` on `examples` (the last assistant turn of
    each is the reference), with every greedy answer for the report."""
    try:
        import sacrebleu
    except ImportError:
        raise ConfigError("the answer evaluation needs sacrebleu: pip install sacrebleu") from None
    from fornalha.infer import Engine, SamplingParams

    block = model.config.block_size
    prompts, refs, kept = [], [], []
    for ex in examples:
        prompt = prompt_ids(tokenizer, ex.messages[:-1])
        if len(prompt) + 8 <= block:  # room for an answer
            prompts.append(prompt)
            refs.append(ex.messages[-1]["content"])
            kept.append(ex)
    if not kept:
        raise ConfigError(f"no held-out question fits the model's context of {block} tokens")

    model = model.to(device).eval()
    seqs = []
    for ex in kept:
        ids, mask = render_with_mask(tokenizer, ex.messages)
        seqs.append((ids[: block + 1], mask[: block + 1]))
    rows = pack_rows(seqs, block, _pad_id(tokenizer))
    loss = answer_loss(model, rows, batch_size, device)

    engine = Engine(model, tokenizer, max_batch_size=batch_size, kv_cache=None, decode_weights=None)
    params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens)
    results = engine.generate(prompts, params)
    answers = [r.completions[0].text.strip() for r in results]
    ended = [r.completions[0].finish_reason == "stop" for r in results]
    chrf = sacrebleu.corpus_chrf(answers, [refs]).score
    return {
        "answer_loss": loss,
        "chrf": chrf,
        "end_of_turn_rate": sum(ended) / len(ended),
        "questions": len(kept),
        "answers": [
            {
                "question": ex.messages[-2]["content"] if len(ex.messages) > 1 else "",
                "reference": ref,
                "answer": ans,
                "ended": end,
            }
            for ex, ref, ans, end in zip(kept, refs, answers, ended)
        ],  # fmt: skip
    }
