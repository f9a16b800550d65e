"""Choosing the next token: sampling parameters, logit processors, and a batched sampler.

A language model gives, at every step, one score (logit) per vocabulary entry. Turning those
scores into a token is a small pipeline, applied in this order:

    logits ─► grammar mask ─► penalties ─► / temperature ─► top-k ─► top-p ─► min-p ─► softmax ─► draw

* **grammar mask** (structured output, only for requests that have a grammar): tokens that would
  lead out of the grammar get -inf (`fornalha.infer.constrained`), so whatever is drawn after it
  keeps the text valid. Other rows of the batch are not touched.
* **penalties** discourage repeating what is already there. The *repetition* penalty (CTRL,
  Keskar et al. 2019) divides a positive logit (or multiplies a negative one) by ``r > 1`` for every
  token seen in the prompt or the output; the *frequency* and *presence* penalties (OpenAI) subtract
  ``frequency · count + presence · [count > 0]`` for tokens already generated.
* **temperature** divides the logits: below 1 sharpens the distribution, above 1 flattens it.
  Temperature 0 means *greedy*: always the arg-max, no randomness at all.
* **top-k** keeps the k best tokens; **top-p** (nucleus) keeps the smallest set of best tokens whose
  probability adds up to p; **min-p** keeps tokens at least ``min_p ×`` as likely as the best one.

Everything here is vectorised over a batch in which *every row has its own parameters* (a serving
batch mixes greedy and creative requests). Each row also draws from its own seeded
`torch.Generator`, with exactly one uniform number per step, so a request's tokens depend on its
seed and its logits only — never on which other requests share the batch (continuous batching
admits and retires neighbours at any step).

The draw itself is inverse-CDF sampling: take the running sum of the probabilities and pick the
first token whose running sum exceeds ``u · total`` for a uniform ``u``. A row with a filter runs it
over the sorted survivors (the filters need the order anyway); a row without one runs it over the
vocabulary in its own order — the same distribution, without sorting the whole vocabulary every
step, which was ~15 % of a 16-row serving step. Which path a row takes depends on its own
parameters only, never on its neighbours'.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch

from fornalha.errors import ConfigError
from fornalha.infer.constrained import Constraint, mask_logits

#: Uniform numbers a sampling slot draws from its generator at once (see `SlotSampler._uniform`).
DRAWS = 64


@dataclass
class SamplingParams:
    """How one request generates. The defaults sample at temperature 1 without any filter.

    max_new_tokens: stop after this many generated tokens (finish reason "length").
    temperature: 0 is greedy; otherwise logits are divided by it.
    top_k: keep the k most likely tokens (0 = off). top_p: nucleus mass in (0, 1] (1 = off).
    min_p: drop tokens less likely than min_p × the best token's probability (0 = off).
    repetition_penalty: ≥ 1 discourages tokens seen in prompt or output (1 = off).
    frequency_penalty / presence_penalty: subtracted per occurrence / once, for generated tokens.
    seed: seeds this request's own random generator (None: drawn from torch's global generator,
        so `torch.manual_seed` still makes a whole run reproducible).
    n: number of independent samples of the same prompt (sample i uses seed + i).
    stop: strings that end the generation; they are not part of the returned text.
    stop_token_ids: extra token ids that end the generation (the engine adds end-of-text and
        `<|end|>` unless ignore_eos).
    skip_special_tokens: leave special tokens (`<|pad|>`, `<|user|>`, …) out of the text (their
        ids stay in token_ids).
    logprobs: None for none, or how many top alternatives to report with each chosen token's
        log-probability (0 = only the chosen token). Log-probabilities are those of the model's
        raw distribution, before penalties, temperature and filters.
    grammar: an llguidance grammar the output must follow (built by `fornalha.infer.constrained`,
        e.g. from a JSON schema): tokens that would break it are masked out before sampling, and
        the request ends when the grammar is complete. None: free text.
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    logprobs: int | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"sampling: {msg}")

        need(self.max_new_tokens >= 0, f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        need(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        need(self.top_k >= 0, f"top_k must be >= 0 (0 = off), got {self.top_k}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        need(0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}")
        need(self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        need(self.n >= 1, f"n must be >= 1, got {self.n}")
        need(all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings")
        need(self.logprobs is None or self.logprobs >= 0, f"logprobs must be >= 0, got {self.logprobs}")
        need(self.grammar is None or not self.ignore_eos, "a grammar ends the output with a stop token: "
             "it cannot be combined with ignore_eos")  # fmt: skip

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_penalties(self) -> bool:
        return self.repetition_penalty != 1 or self.frequency_penalty != 0 or self.presence_penalty != 0

    def with_(self, **changes: Any) -> SamplingParams:
        """A copy with some fields changed."""
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SamplingParams:
        """From JSON-like input (a `--prompts-file` line, an API request); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"sampling: unknown parameters {unknown}; known are {sorted(known)}")
        try:
            return cls(**d)
        except TypeError as exc:
            raise ConfigError(f"sampling: {exc}") from None


# --------------------------------------------------------------------------------------------
# Logit processors: pure functions over a batch, each row with its own parameter
# --------------------------------------------------------------------------------------------


def apply_penalties(
    logits: torch.Tensor,
    seen: torch.Tensor,
    counts: torch.Tensor,
    repetition: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
) -> torch.Tensor:
    """Penalised copy of logits [B, V].

    seen [B, V] bool: token appears in the prompt or the output (repetition penalty);
    counts [B, V] float: how often the token was generated (frequency and presence penalties);
    repetition, frequency, presence: [B] per-row strengths (1, 0, 0 switch them off).
    """
    r = repetition[:, None]
    penalised = torch.where(logits > 0, logits / r, logits * r)
    logits = torch.where(seen, penalised, logits)
    return logits - frequency[:, None] * counts - presence[:, None] * (counts > 0).to(logits.dtype)


def sort_descending(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of logits [B, V] sorted, most likely first, and the token ids in that order.

    On a CPU through NumPy's sort: `torch.sort` of 16 rows of 2,048 fresh logits took 1.43 ms on the
    CPU this was measured on, NumPy's 0.24 ms — and a decode step at 16 rows is ~4 ms, so every
    request asking for top-k, top-p or min-p slowed the whole batch by a quarter. Rows are sorted
    independently (a row's order never depends on the others); ties, which do not change a draw,
    may come out in another order than `torch.sort` would give."""
    if logits.device.type != "cpu":
        return logits.sort(dim=-1, descending=True)
    ids = torch.from_numpy(np.argsort(-logits.detach().numpy(), axis=-1))
    return logits.gather(-1, ids), ids


def filter_logits(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply top-k, top-p and min-p, row by row. Returns (sorted_logits, sorted_ids), both [B, V],
    sorted from most to least likely, with every removed token's logit set to -inf.

    top_k [B] long (0 = keep all), top_p [B] float (1 = keep all), min_p [B] float (0 = keep all).
    Working in sorted order makes all three filters simple comparisons against the rank or the
    running probability mass, and the sampler can draw directly from the sorted list.
    """
    sorted_logits, sorted_ids = sort_descending(logits)
    V = logits.size(-1)
    rank = torch.arange(V, device=logits.device)
    k = torch.where(top_k > 0, top_k, V)
    remove = rank[None, :] >= k[:, None]  # top-k: only the first k ranks survive
    probs = sorted_logits.masked_fill(remove, float("-inf")).softmax(dim=-1)
    # top-p: drop a token when the tokens ranked before it already hold at least p of the mass
    # (the best token always survives: nothing comes before it).
    mass_before = probs.cumsum(dim=-1) - probs
    remove |= mass_before >= top_p[:, None]
    # min-p: relative to the best token, so it does not matter whether top-k/p ran first.
    remove |= probs < min_p[:, None] * probs[:, :1]
    return sorted_logits.masked_fill(remove, float("-inf")), sorted_ids


def sample_sorted(sorted_logits: torch.Tensor, sorted_ids: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: for each row, the first token whose running probability exceeds u [B] in [0, 1)."""
    cdf = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True)
    pick = pick.clamp_(max=cdf.size(-1) - 1)  # u·total can round onto the last edge
    return sorted_ids.gather(-1, pick).squeeze(-1)


def sample_unsorted(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw over the vocabulary in its own order (no filter: nothing to sort)."""
    cdf = logits.softmax(dim=-1).cumsum(dim=-1)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True)
    return pick.clamp_(max=cdf.size(-1) - 1).squeeze(-1)


def sample_logits(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    u: torch.Tensor,
    top_k: torch.Tensor | None = None,
    top_p: torch.Tensor | None = None,
    min_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per row of logits [B, V] (already penalised): greedy where temperature is 0,
    otherwise a draw at that temperature after the filters. u [B] holds each row's uniform number."""
    B, V = logits.shape
    greedy = temperature == 0
    scaled = logits.float() / torch.where(greedy, 1.0, temperature)[:, None]
    top_k = top_k if top_k is not None else torch.zeros(B, dtype=torch.long, device=logits.device)
    top_p = top_p if top_p is not None else torch.ones(B, device=logits.device)
    min_p = min_p if min_p is not None else torch.zeros(B, device=logits.device)
    filtered = (top_k > 0) | (top_p < 1) | (min_p > 0)
    n_filtered = int(filtered.sum())
    if n_filtered == B:
        drawn = sample_sorted(*filter_logits(scaled, top_k, top_p, min_p), u)
    else:
        drawn = sample_unsorted(scaled, u)
        if n_filtered:  # only the rows that asked for a filter pay for the sort
            rows = filtered.nonzero().squeeze(-1)
            sorted_logits, sorted_ids = filter_logits(scaled[rows], top_k[rows], top_p[rows], min_p[rows])
            drawn[rows] = sample_sorted(sorted_logits, sorted_ids, u[rows])
    return torch.where(greedy, logits.argmax(dim=-1), drawn)


# --------------------------------------------------------------------------------------------
# The batched sampler the engine uses: one slot per KV-cache row
# --------------------------------------------------------------------------------------------


@dataclass
class SampleOutput:
    """What the sampler chose for each row: tokens [B], and when asked, the chosen tokens'
    log-probabilities [B] and the top alternatives (ids and log-probabilities, [B, K])."""

    tokens: torch.Tensor
    logprobs: torch.Tensor | None = None
    top_ids: torch.Tensor | None = None
    top_logprobs: torch.Tensor | None = None


class SlotSampler:
    """Per-slot sampling parameters kept as tensors, so one call samples every row with its own.

    The engine calls `assign(slot, params, prompt_ids, generator, constraint)` when a request takes
    a slot, `sample(logits)` for the rows 0..B-1 of a step, and `observe(tokens)` to count what was
    generated (for the penalties). A slot's `Constraint` (structured output) masks its row only. Fast paths skip the work no row needs: an all-greedy batch
    without penalties is a single arg-max.
    """

    def __init__(self, max_batch_size: int, vocab_size: int, device: torch.device | str = "cpu") -> None:
        B, V = max_batch_size, vocab_size
        self.vocab_size = V
        self.device = torch.device(device)
        kw = {"device": self.device}
        self.temperature = torch.zeros(B, **kw)
        self.top_k = torch.zeros(B, dtype=torch.long, **kw)
        self.top_p = torch.ones(B, **kw)
        self.min_p = torch.zeros(B, **kw)
        self.repetition = torch.ones(B, **kw)
        self.frequency = torch.zeros(B, **kw)
        self.presence = torch.zeros(B, **kw)
        self.params: list[SamplingParams | None] = [None] * B
        self.generators: list[torch.Generator | None] = [None] * B
        self.constraints: list[Constraint | None] = [None] * B
        # Penalty state is only allocated when some request asks for a penalty.
        self.seen: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        # Each slot's uniform numbers, drawn from its generator DRAWS at a time (one call instead of
        # one per step; on a CPU the values are the same as drawing them one by one).
        self.draws: list[list[float]] = [[] for _ in range(B)]

    # ---- slots --------------------------------------------------------------------------------
    def assign(
        self,
        slot: int,
        params: SamplingParams,
        prompt_ids: list[int],
        generator: torch.Generator | None,
        constraint: Constraint | None = None,
    ) -> None:
        self.params[slot] = params
        self.generators[slot] = generator
        self.draws[slot] = []
        self.constraints[slot] = constraint
        self.temperature[slot] = params.temperature
        self.top_k[slot] = params.top_k
        self.top_p[slot] = params.top_p
        self.min_p[slot] = params.min_p
        self.repetition[slot] = params.repetition_penalty
        self.frequency[slot] = params.frequency_penalty
        self.presence[slot] = params.presence_penalty
        if params.uses_penalties:
            if self.seen is None:
                B = self.temperature.numel()
                self.seen = torch.zeros(B, self.vocab_size, dtype=torch.bool, device=self.device)
                self.counts = torch.zeros(B, self.vocab_size, device=self.device)
            assert self.counts is not None
            self.seen[slot] = False
            self.counts[slot] = 0
            ids = torch.tensor([i for i in prompt_ids if 0 <= i < self.vocab_size], dtype=torch.long)
            self.seen[slot, ids.to(self.device)] = True

    def release(self, slot: int) -> None:
        self.params[slot] = None
        self.generators[slot] = None
        self.constraints[slot] = None
        self.repetition[slot], self.frequency[slot], self.presence[slot] = 1.0, 0.0, 0.0

    def _active(self, B: int) -> list[SamplingParams]:
        return [p for p in self.params[:B] if p is not None]

    # ---- sampling -------------------------------------------------------------------------------
    def sample(self, logits: torch.Tensor, rows: list[int] | None = None) -> SampleOutput:
        """Sample one token for each row of logits [B, V], where row i belongs to slot rows[i]
        (default: slot i). Free slots among them get a greedy token that the caller ignores."""
        B = logits.size(0)
        idx = list(range(B)) if rows is None else rows
        contiguous = rows is None
        active = [self.params[s] for s in idx if self.params[s] is not None]

        def col(t: torch.Tensor) -> torch.Tensor:
            return t[:B] if contiguous else t[torch.as_tensor(idx, device=t.device)]

        raw = logits.float()
        scored = raw
        constrained = [(i, self.constraints[s]) for i, s in enumerate(idx) if self.constraints[s] is not None]
        if constrained:  # structured output: those rows may only take what their grammar allows
            scored = mask_logits(raw, [i for i, _ in constrained], [c for _, c in constrained])
        need_penalty = self.seen is not None and any(p.uses_penalties for p in active)
        if need_penalty:
            assert self.seen is not None and self.counts is not None
            scored = apply_penalties(
                scored,
                col(self.seen),
                col(self.counts),
                col(self.repetition),
                col(self.frequency),
                col(self.presence),
            )

        if all(p.greedy for p in active):
            tokens = scored.argmax(dim=-1)
        else:
            u = torch.tensor([self._uniform(s) for s in idx], device=self.device)
            # Each row's path (sorted or not) follows its own parameters, whatever the neighbours
            # ask for: a row's token depends on its own logits, parameters and generator only.
            tokens = sample_logits(
                scored, col(self.temperature), u, col(self.top_k), col(self.top_p), col(self.min_p)
            )

        out = SampleOutput(tokens=tokens)
        want = [p.logprobs for p in active if p.logprobs is not None]
        if want:
            logp = raw.log_softmax(dim=-1)
            out.logprobs = logp.gather(-1, tokens[:, None]).squeeze(-1)
            k = max(want)
            if k > 0:
                out.top_logprobs, out.top_ids = logp.topk(min(k, logp.size(-1)), dim=-1)
        return out

    def _uniform(self, slot: int) -> float:
        """The slot's next uniform number in [0, 1) from its own generator (0 for a greedy or free
        slot, which draws nothing): a row's draws never depend on the rest of the batch."""
        p = self.params[slot]
        if p is None or p.greedy:
            return 0.0
        draws = self.draws[slot]
        if not draws:
            draws += reversed(torch.rand(DRAWS, generator=self.generators[slot], device=self.device).tolist())
        return draws.pop()

    def observe(self, tokens: torch.Tensor, rows: list[int] | None = None) -> None:
        """Count the tokens just generated (for the penalties); rows as in `sample`."""
        if self.seen is None:
            return
        assert self.counts is not None
        idx = torch.arange(tokens.numel(), device=self.device) if rows is None else torch.as_tensor(rows)
        idx = idx.to(self.device)
        self.counts.index_put_(
            (idx, tokens), torch.ones_like(tokens, dtype=self.counts.dtype), accumulate=True
        )
        self.seen[idx, tokens] = True
