"""The evaluation gate: a challenger replaces the champion only when it is measurably better.

Two checks, both required (`GatePolicy` states the numbers):

1. **No regression on language.** Held-out validation bits per byte: the challenger may be worse than
   the champion by at most ``bpb_tolerance`` bits per byte (fine-tuning on feedback usually costs a
   little; a model that forgot how to write costs a lot).
2. **Better on what the users said.** On the feedback-derived held-out set, the challenger must beat
   the champion on ``feedback_metric`` by more than ``min_gain``: ``preference_accuracy`` (the share
   of held-out pairs where the model gives the chosen answer a higher log-probability than the
   rejected one) or ``reward_margin`` (the mean of that log-probability difference, in nats).

Where the numbers come from is the caller's choice, a function ``measure(version) -> metrics``:

* `measure_on(val_data=..., pairs=...)` measures both models *now, on the same data* (the fair
  comparison): bpb on a prepared dataset or shards folder, and the two preference figures on a JSONL
  file of pairs (`{"messages": [...], "chosen": str, "rejected": str}` as in
  ../shared/data/preference, or `{"prompt": str, ...}`; the format `fornalha feedback export` writes).
* `recorded` uses what each version recorded when it was registered (its training run's own
  evaluation, or `--metric` values a DPO run reported); fine when both were measured on one set.
* anything else, e.g. `fornalha improve` passing the DPO evaluation of the fine-tuning helper.

A missing number fails its check (a gate that cannot measure does not promote).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fornalha.errors import ConfigError, DataError

FEEDBACK_METRICS = ("preference_accuracy", "reward_margin")
#: What a check measured now scores per model unless told otherwise (`--max-tokens`, `--max-pairs`).
MAX_VAL_TOKENS = 200_000
MAX_PAIRS = 500


@dataclass(frozen=True)
class GatePolicy:
    """The rule, stated: what the report prints above every decision."""

    bpb_tolerance: float = 0.02  # bits per byte the challenger may lose on held-out validation text
    feedback_metric: str = "preference_accuracy"  # or "reward_margin"
    min_gain: float = 0.0  # the challenger must exceed the champion's feedback metric by more than this
    bpb_metric: str = "val_bpb"

    def __post_init__(self) -> None:
        if self.feedback_metric not in FEEDBACK_METRICS:
            raise ConfigError(
                f"feedback metric must be one of {', '.join(FEEDBACK_METRICS)}, got {self.feedback_metric!r}"
            )
        if not self.bpb_tolerance >= 0 or not self.min_gain >= 0:
            raise ConfigError("the bpb tolerance and the minimum gain must be >= 0")

    def describe(self) -> str:
        return (f"promote when {self.bpb_metric}(challenger) <= {self.bpb_metric}(champion) + {self.bpb_tolerance:g} "
                f"AND {self.feedback_metric}(challenger) > {self.feedback_metric}(champion) + {self.min_gain:g}")  # fmt: skip


@dataclass
class Check:
    name: str
    rule: str
    champion: float | None
    challenger: float | None
    passed: bool
    reason: str


@dataclass
class GateResult:
    passed: bool
    checks: list[Check]
    policy: dict[str, Any]
    source: str  # where the numbers came from
    champion_metrics: dict[str, float] = field(default_factory=dict)
    challenger_metrics: dict[str, float] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        return [c.reason for c in self.checks]

    @property
    def numbers(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "champion": self.champion_metrics,
            "challenger": self.challenger_metrics,
            "checks": [asdict(c) for c in self.checks],
        }


def _num(metrics: Mapping[str, Any], key: str) -> float | None:
    v = metrics.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else None


def decide(
    champion: Mapping[str, Any], challenger: Mapping[str, Any], policy: GatePolicy, source: str
) -> GateResult:
    """Apply the policy to two sets of numbers (pure: no model, no file)."""
    b0, b1 = _num(champion, policy.bpb_metric), _num(challenger, policy.bpb_metric)
    if b0 is None or b1 is None:
        bpb = Check("validation bpb", f"<= champion + {policy.bpb_tolerance:g}", b0, b1, False,
                    f"{policy.bpb_metric} was not measured for the {'champion' if b0 is None else 'challenger'}")  # fmt: skip
    else:
        ok = b1 <= b0 + policy.bpb_tolerance
        bpb = Check("validation bpb", f"<= champion + {policy.bpb_tolerance:g}", b0, b1, ok,
                    f"{policy.bpb_metric} {b1:.4f} vs champion {b0:.4f} ({b1 - b0:+.4f}; tolerance {policy.bpb_tolerance:g}): "
                    + ("within tolerance" if ok else "worse beyond tolerance"))  # fmt: skip
    key = policy.feedback_metric
    f0, f1 = _num(champion, key), _num(challenger, key)
    if f0 is None or f1 is None:
        fb = Check(key, f"> champion + {policy.min_gain:g}", f0, f1, False,
                   f"{key} was not measured for the {'champion' if f0 is None else 'challenger'}")  # fmt: skip
    else:
        ok = f1 > f0 + policy.min_gain
        fb = Check(key, f"> champion + {policy.min_gain:g}", f0, f1, ok,
                   f"{key} {f1:.4f} vs champion {f0:.4f} ({f1 - f0:+.4f}): " + ("better" if ok else "not better"))  # fmt: skip
    return GateResult(bpb.passed and fb.passed, [bpb, fb], {**asdict(policy), "rule": policy.describe()}, source,
                      dict(champion), dict(challenger))  # fmt: skip


def make_gate(policy: GatePolicy, measure: Callable[[Path, dict[str, Any]], dict[str, float]] | None = None,
              source: str = "recorded") -> Callable[[dict[str, Any], dict[str, Any]], GateResult]:  # fmt: skip
    """The `gate(champion, challenger)` that `Registry.promote` calls.

    measure(version_folder, version_record) -> metrics; None uses each version's recorded metrics.
    """

    def gate(champion: dict[str, Any], challenger: dict[str, Any]) -> GateResult:
        if measure is None:
            m0, m1 = champion.get("metrics") or {}, challenger.get("metrics") or {}
        else:
            m0 = measure(Path(champion["_path"]), champion)
            m1 = measure(Path(challenger["_path"]), challenger)
        return decide(m0, m1, policy, source)

    return gate


# ---- measuring a version on held-out data ---------------------------------------------------------
def read_pairs(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Preference pairs as {"messages": [...], "chosen": str, "rejected": str}; bad lines are a DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"preference pairs file {path} does not exist")
    pairs = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise DataError(f"{path}:{n}: not JSON ({exc})") from None
            messages = rec.get("messages")
            if messages is None and isinstance(rec.get("prompt"), str):
                messages = [{"role": "user", "content": rec["prompt"]}]
            chosen, rejected = rec.get("chosen"), rec.get("rejected")
            for name, v in (("chosen", chosen), ("rejected", rejected)):
                if isinstance(v, list) and v and isinstance(v[-1], dict):  # a message list: its last answer
                    v = v[-1].get("content")
                if not isinstance(v, str) or not v:
                    raise DataError(f"{path}:{n}: {name} must be a non-empty string")
                rec[name] = v
            if not isinstance(messages, list) or not messages:
                raise DataError(f"{path}:{n}: needs `messages` (a list) or `prompt` (a string)")
            pairs.append({"messages": messages, "chosen": rec["chosen"], "rejected": rec["rejected"]})
            if limit is not None and len(pairs) >= limit:
                break
    if not pairs:
        raise DataError(f"{path} holds no preference pair")
    return pairs


def preference_metrics(model: Any, tokenizer: Any, pairs: list[dict[str, Any]]) -> dict[str, float]:
    """Reference-free preference figures of one model on held-out pairs.

    For each pair: the summed log-probability of the chosen answer's tokens (and its `<|end|>`) after
    the conversation, minus the same for the rejected answer. preference_accuracy is the share of
    pairs where that difference is positive, reward_margin its mean (nats).
    """
    import torch

    from fornalha.tokenizer.chat import render_chat_with_mask

    ctx = model.config.block_size
    device = next(model.parameters()).device

    def answer_logprob(messages: list[dict], answer: str) -> float:
        ids, mask = render_chat_with_mask(tokenizer, [*messages, {"role": "assistant", "content": answer}])
        ids, mask = ids[-(ctx + 1) :], mask[-(ctx + 1) :]  # keep the answer when the prompt is long
        x = torch.tensor([ids[:-1]], device=device)
        y = torch.tensor([[t if m else -1 for t, m in zip(ids[1:], mask[1:])]], device=device)
        with torch.no_grad():
            logits, _ = model(x)
            logp = torch.log_softmax(logits.float(), dim=-1)
            keep = y >= 0
            picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            return float(picked[keep].sum())

    diffs = [
        answer_logprob(p["messages"], p["chosen"]) - answer_logprob(p["messages"], p["rejected"])
        for p in pairs
    ]
    return {
        "preference_accuracy": sum(d > 0 for d in diffs) / len(diffs),
        "reward_margin": sum(diffs) / len(diffs),
        "preference_pairs": float(len(diffs)),
    }


def measure_on(
    val_data: str | Path | None = None,
    pairs: str | Path | None = None,
    *,
    max_tokens: int | None = MAX_VAL_TOKENS,
    max_pairs: int | None = MAX_PAIRS,
    device: str = "cpu",
) -> Callable[[Path, dict[str, Any]], dict[str, float]]:
    """A `measure` that evaluates a version now: bpb on `val_data`'s val split, preference figures on
    `pairs`; metrics neither gives are taken from what the version recorded."""
    if val_data is not None and not Path(val_data).is_dir():
        raise DataError(f"--val-data {val_data} is not a dataset or shards folder")
    pair_list = read_pairs(pairs, max_pairs) if pairs is not None else None

    def measure(version_dir: Path, record: dict[str, Any]) -> dict[str, float]:
        from fornalha.checkpoint import load_run
        from fornalha.evaluate.loss import evaluate_dataset

        out = dict(record.get("metrics") or {})
        if val_data is None and pair_list is None:
            return out
        model, tokenizer, _ = load_run(version_dir, device=device)
        if val_data is not None:
            res = evaluate_dataset(model, tokenizer, val_data, "val", max_tokens=max_tokens)
            out["val_bpb"], out["val_loss"] = res.bpb, res.loss
        if pair_list is not None:
            out.update(preference_metrics(model, tokenizer, pair_list))
        return out

    return measure


def promote_through_gate(
    registry: str | Path,
    version: str | None = None,
    *,
    db: str | None = None,
    val_data: str | Path | None = None,
    pairs: str | Path | None = None,
    policy: GatePolicy | None = None,
    max_tokens: int | None = MAX_VAL_TOKENS,
    max_pairs: int | None = MAX_PAIRS,
    device: str = "cpu",
    force: bool = False,
    created_by: str | None = None,
) -> Any:
    """`fornalha registry promote` and `POST /admin/promote`: the same gate, the same record.

    Promotes `version` (default: the challenger) if the gate passes — measured now on `val_data`
    and/or `pairs` when given, else on the metrics each version recorded — or when `force`.
    Returns the recorded `fornalha.improve.registry.Decision`; raises RegistryError for an unknown
    version or a registry without a challenger. Rewrites REGISTRY/report.html.
    """
    from fornalha.improve.registry import Registry, write_report

    policy = policy or GatePolicy()
    if val_data is not None or pairs is not None:
        measure = measure_on(val_data, pairs, max_tokens=max_tokens, max_pairs=max_pairs, device=device)
        parts = [f"val bpb on {val_data}" if val_data else None, f"pairs from {pairs}" if pairs else None]
        gate = make_gate(policy, measure, "measured now: " + ", ".join(p for p in parts if p))
    else:
        gate = make_gate(policy)
    reg = Registry.open(registry, db)
    try:
        decision = reg.promote(version, gate=gate, force=force, created_by=created_by)
        write_report(reg)
    finally:
        reg.close()
    return decision
