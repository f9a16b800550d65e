"""Evaluation: how good is a trained model, in numbers a person can compare.

* `fornalha.evaluate.loss`: validation loss, perplexity and bits per byte on a prepared dataset
  (or token batches);
* `fornalha.evaluate.multiple_choice`: zero-shot HellaSwag and BLiMP accuracy by log-probability;
* `fornalha.evaluate.report`: the self-contained report.html of a run.

`evaluate_run` ties them together for one run folder; it is what `fornalha eval` and the
pipeline call, and its result is what RUN_DIR/eval.json holds::

    {"format": "fornalha-eval", "version": 1, "run", "checkpoint", "step", "created", "elapsed_s",
     "loss": {loss, ppl, bpb, tokens, bytes, nats, bytes_per_token, source, split} | null,
     "multiple_choice": {"hellaswag": {n, correct, accuracy, stderr, chance, acc_norm, …},
                         "blimp": {…, groups: {phenomenon: {n, accuracy}}}},
     "samples": [{"prompt", "text"}]}
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EVAL_FORMAT = "fornalha-eval"


def generate_samples(
    model: Any,
    tokenizer: Any,
    prompts: list[str],
    max_new_tokens: int = 160,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
) -> list[dict[str, str]]:
    """A few seeded generations (prompt, continuation) for the report, with the model's own loop."""
    import torch

    device = next(model.parameters()).device
    gen = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])
    out = []
    with gen:
        torch.manual_seed(seed)
        for prompt in prompts:
            ids = [tokenizer.bos_id, *tokenizer.encode(prompt)]
            ids = ids[-(model.config.block_size - 1) :]
            x = torch.tensor([ids], dtype=torch.long, device=device)
            y = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k)
            new = y[0, len(ids) :].tolist()
            stop = {tokenizer.bos_id, getattr(tokenizer, "eos_id", None)}
            for i, t in enumerate(new):
                if t in stop:
                    new = new[:i]
                    break
            out.append({"prompt": prompt, "text": tokenizer.decode(new)})
    return out


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    split: str = "val",
    hellaswag: str | Path | None = None,
    blimp: str | Path | None = None,
    limit: int | None = None,
    which: str = "best",
    max_tokens: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    samples: int = 0,
    sample_prompts: list[str] | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate a run folder's checkpoint (``which``: best or last) and return the eval.json object.

    data: a prepared dataset folder (or shards folder) for loss/ppl/bpb on ``split``;
    hellaswag / blimp: JSONL files for multiple-choice accuracy on ``limit`` examples each;
    samples: how many generations to add (for the report). Nothing is written here.
    """
    from fornalha.checkpoint import load_run
    from fornalha.evaluate.loss import evaluate_dataset
    from fornalha.evaluate.multiple_choice import evaluate_blimp, evaluate_hellaswag

    say = log or (lambda _msg: None)
    t0 = time.perf_counter()
    model, tokenizer, meta = load_run(run_dir, which=which, device=device)
    result: dict[str, Any] = {
        "format": EVAL_FORMAT,
        "version": 1,
        "run": str(Path(run_dir).resolve()),
        "checkpoint": meta.get("path"),
        "step": meta.get("step"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loss": None,
        "multiple_choice": {},
        "samples": [],
    }
    if data is not None:
        say(f"loss on {data} ({split})")
        r = evaluate_dataset(
            model, tokenizer, data, split, stride=stride, batch_size=batch_size, max_tokens=max_tokens
        )
        result["loss"] = r.to_dict()
    if hellaswag is not None:
        say(f"HellaSwag on {hellaswag}")
        result["multiple_choice"]["hellaswag"] = evaluate_hellaswag(
            model, tokenizer, hellaswag, limit=limit, batch_size=batch_size
        ).to_dict()
    if blimp is not None:
        say(f"BLiMP on {blimp}")
        result["multiple_choice"]["blimp"] = evaluate_blimp(
            model, tokenizer, blimp, limit=limit, batch_size=batch_size
        ).to_dict()
    if samples > 0:
        prompts = (sample_prompts or [""] * samples)[:samples]  # "": unconditional, from <|bos|>
        say(f"{samples} samples")
        result["samples"] = generate_samples(model, tokenizer, prompts)
    result["elapsed_s"] = round(time.perf_counter() - t0, 3)
    return result


__all__ = ["EVAL_FORMAT", "evaluate_run", "generate_samples"]
