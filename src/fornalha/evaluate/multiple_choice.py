"""Zero-shot multiple-choice evaluation by log-probability: HellaSwag and BLiMP.

A language model does not answer multiple-choice questions; it assigns probabilities to text.
So each choice is scored by how likely the model finds it, and the most likely one is the
model's answer (the method of the GPT-2/GPT-3 papers and of EleutherAI's lm-evaluation-harness)::

    score(choice) = sum over the choice's tokens of  log p(token | context, earlier choice tokens)

* **HellaSwag** (``{"ctx", "endings": [4 strings], "label"}``): which ending continues the
  context? Each ending is scored as the continuation ``" " + ending`` of ``ctx``. Two
  accuracies, as lm-eval reports them: ``acc`` picks the highest summed log-prob, ``acc_norm``
  the highest log-prob per character of the *ending alone* (long endings are not penalised for
  being long). lm-evaluation-harness divides by ``len(choice)`` of `doc_to_choice`, the ending
  without the ``" "`` delimiter the scored continuation starts with; so do we. Chance is 25 %; a tiny model trained for minutes sits near it.
* **BLiMP** (``{"sentence_good", "sentence_bad"}``): minimal pairs of English sentences that
  differ in one grammatical point. The model is right when the good sentence gets the higher
  total log-prob (both are scored from `<|bos|>`). Chance is 50 %; small models do clearly
  better, which makes BLiMP the more informative test of a tiny model.

Every accuracy comes with its binomial standard error ``sqrt(p (1 - p) / n)``: with n = 200
examples, an accuracy of 0.55 ± 0.035 is not distinguishable from 0.50 at two standard errors.

Scoring is batched: all (context, continuation) requests are sorted by length and run through
the model ``batch_size`` at a time, right-padded (padding never influences earlier positions in a
causal model). Sequences longer than the model's context keep their last ``block_size`` tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fornalha.errors import DataError
from fornalha.jsonl import read_objects

# --------------------------------------------------------------------------------------------
# Reading the JSONL files
# --------------------------------------------------------------------------------------------


def _read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line; a malformed line is a DataError naming it."""
    return read_objects(path, what="evaluation file", items="examples")


def spread(items: Sequence[Any], limit: int | None) -> list[Any]:
    """``limit`` items spread evenly over ``items`` (all of them when limit is None or larger).

    BLiMP files are sorted by phenomenon, so the first N lines would test only one or two of them;
    evenly spaced picks keep the mix. Deterministic: the same file and limit give the same subset.
    """
    if limit is None or limit >= len(items):
        return list(items)
    if limit <= 0:
        raise DataError(f"--limit must be positive, got {limit}")
    return [items[(i * len(items)) // limit] for i in range(limit)]


def load_hellaswag(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """HellaSwag-format examples ``{ctx, endings, label}`` (other keys are kept)."""
    examples = []
    for lineno, obj in _read_jsonl(path):
        ctx, endings, label = obj.get("ctx"), obj.get("endings"), obj.get("label")
        where = f"{path}, line {lineno}"
        if not isinstance(ctx, str):
            raise DataError(f'{where}: "ctx" must be a string (HellaSwag format: {{ctx, endings, label}})')
        if not (isinstance(endings, list) and len(endings) >= 2 and all(isinstance(e, str) for e in endings)):
            raise DataError(f'{where}: "endings" must be a list of at least 2 strings')
        if isinstance(label, str) and label.isdigit():
            label = int(label)
        if not (isinstance(label, int) and 0 <= label < len(endings)):
            raise DataError(f'{where}: "label" must be an index into "endings", got {obj.get("label")!r}')
        examples.append({**obj, "label": label, "line": lineno})
    return spread(examples, limit)


def load_blimp(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """BLiMP-format minimal pairs ``{sentence_good, sentence_bad}`` (other keys are kept)."""
    examples = []
    for lineno, obj in _read_jsonl(path):
        good, bad = obj.get("sentence_good"), obj.get("sentence_bad")
        if not (isinstance(good, str) and isinstance(bad, str) and good and bad):
            raise DataError(
                f'{path}, line {lineno}: "sentence_good" and "sentence_bad" must be non-empty strings (BLiMP format)'
            )
        examples.append({**obj, "line": lineno})
    return spread(examples, limit)


# --------------------------------------------------------------------------------------------
# Scoring continuations
# --------------------------------------------------------------------------------------------


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (`<|bos|>` + context, continuation), as lm-eval splits them.

    The two are encoded together and split where the context's own encoding ends, so the
    continuation's tokens are those the model would actually see after the context (a BPE token
    never straddles the boundary in the common case, since the continuation starts with a space).
    If encoding together changes the context's tokens, they are encoded separately instead.
    """
    ctx_ids = tokenizer.encode(context)
    whole = tokenizer.encode(context + continuation)
    if whole[: len(ctx_ids)] == ctx_ids and len(whole) > len(ctx_ids):
        cont_ids = whole[len(ctx_ids) :]
    else:
        cont_ids = tokenizer.encode(continuation)
    return [tokenizer.bos_id, *ctx_ids], cont_ids


@torch.no_grad()
def score_continuations(
    model: torch.nn.Module,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 32,
) -> list[float]:
    """Summed log-probability of each continuation given its context: ``[(context_ids, cont_ids)]``.

    The sequence fed to the model is (context + continuation)[:-1]; only the positions that
    predict continuation tokens are summed. Requests are run longest first, so that similar
    lengths share a batch and little padding is computed; the result keeps the input order.
    """
    block = model.config.block_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    seqs = []
    for ctx, cont in requests:
        if len(cont) == 0:
            raise ValueError("a continuation needs at least one token")
        full = [*ctx, *cont]
        x, y = full[:-1], full[1:]
        scored = len(cont)
        if len(x) > block:  # keep the end: the continuation and as much context as fits
            x, y = x[-block:], y[-block:]
            scored = min(scored, block)
        seqs.append((x, y, scored))

    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
    out = [0.0] * len(seqs)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(seqs[i][0]) for i in idx)
            x = torch.zeros(len(idx), width, dtype=torch.long)
            y = torch.full((len(idx), width), -1, dtype=torch.long)
            for row, i in enumerate(idx):
                xs, ys, scored = seqs[i]
                x[row, : len(xs)] = torch.tensor(xs)
                y[row, len(ys) - scored : len(ys)] = torch.tensor(ys[len(ys) - scored :])
            _, nll = model(x.to(device), y.to(device), loss_reduction="none")
            logprob = -nll.double().sum(dim=1).cpu()  # ignored positions contribute 0
            for row, i in enumerate(idx):
                out[i] = float(logprob[row])
    finally:
        model.train(was_training)
    return out


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of an accuracy p measured on n independent examples: sqrt(p(1-p)/n)."""
    return math.sqrt(p * (1.0 - p) / n) if n > 0 else float("nan")


@dataclass
class MCResult:
    """Accuracy on one multiple-choice task, next to what guessing would score.

    acc_norm (HellaSwag only) is the length-normalised accuracy; groups holds per-category
    accuracies (BLiMP: per linguistic phenomenon) as {name: {"n", "accuracy"}}.
    """

    task: str
    n: int
    correct: int
    accuracy: float
    stderr: float
    chance: float
    acc_norm: float | None = None
    acc_norm_stderr: float | None = None
    source: str | None = None
    groups: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _groups(keys: list[str], correct: list[bool]) -> dict[str, dict[str, float]]:
    tally: dict[str, list[int]] = {}
    for k, c in zip(keys, correct):
        t = tally.setdefault(k, [0, 0])
        t[0] += 1
        t[1] += int(c)
    return {k: {"n": n, "accuracy": c / n} for k, (n, c) in sorted(tally.items())}


def _examples(
    examples: Sequence[dict[str, Any]] | str | Path,
    limit: int | None,
    load: Callable[[str | Path, int | None], list[dict[str, Any]]],
    task: str,
) -> tuple[Sequence[dict[str, Any]], str | None]:
    """(examples, source path or None): read a JSONL path with ``load`` or take ``limit`` of a list."""
    source = None
    if isinstance(examples, (str, Path)):
        source = str(examples)
        examples = load(examples, limit)
    elif limit is not None:
        examples = spread(examples, limit)
    if not examples:
        raise DataError(f"no {task} examples to evaluate")
    return examples, source


def acc_norm_scores(logprobs: Sequence[float], endings: Sequence[str]) -> list[float]:
    """lm-eval's length normalisation: each choice's summed log-prob divided by the number of
    characters of the ending itself (not of ``" " + ending``, the continuation actually scored)."""
    return [lp / max(len(ending), 1) for lp, ending in zip(logprobs, endings)]


def evaluate_hellaswag(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[dict[str, Any]] | str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 32,
) -> MCResult:
    """Zero-shot HellaSwag accuracy (acc and acc_norm). ``examples`` may be a JSONL path."""
    examples, source = _examples(examples, limit, load_hellaswag, "HellaSwag")
    requests, endings = [], []
    for ex in examples:
        for ending in ex["endings"]:
            requests.append(encode_pair(tokenizer, ex["ctx"], " " + ending))
            endings.append(ending)
    scores = score_continuations(model, requests, batch_size)

    correct, correct_norm, chance, pos = [], [], 0.0, 0
    for ex in examples:
        k = len(ex["endings"])
        s = scores[pos : pos + k]
        pos += k
        normed = acc_norm_scores(s, endings[pos - k : pos])
        correct.append(max(range(k), key=lambda j: s[j]) == ex["label"])
        correct_norm.append(max(range(k), key=lambda j: normed[j]) == ex["label"])
        chance += 1.0 / k
    n = len(examples)
    acc, acc_norm = sum(correct) / n, sum(correct_norm) / n
    return MCResult(
        task="hellaswag",
        n=n,
        correct=sum(correct),
        accuracy=acc,
        stderr=binomial_stderr(acc, n),
        chance=chance / n,
        acc_norm=acc_norm,
        acc_norm_stderr=binomial_stderr(acc_norm, n),
        source=source,
    )


def evaluate_blimp(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[dict[str, Any]] | str | Path,
    *,
    limit: int | None = None,
    batch_size: int = 32,
) -> MCResult:
    """BLiMP accuracy: how often the good sentence gets the strictly higher total log-prob."""
    examples, source = _examples(examples, limit, load_blimp, "BLiMP")
    requests = []
    for ex in examples:
        for sentence in (ex["sentence_good"], ex["sentence_bad"]):
            requests.append(([tokenizer.bos_id], tokenizer.encode(sentence)))
    scores = score_continuations(model, requests, batch_size)
    correct = [scores[2 * i] > scores[2 * i + 1] for i in range(len(examples))]
    n = len(examples)
    acc = sum(correct) / n
    keys = [str(ex.get("linguistics_term") or ex.get("UID") or "all") for ex in examples]
    return MCResult(
        task="blimp",
        n=n,
        correct=sum(correct),
        accuracy=acc,
        stderr=binomial_stderr(acc, n),
        chance=0.5,
        source=source,
        groups=_groups(keys, correct),
    )
