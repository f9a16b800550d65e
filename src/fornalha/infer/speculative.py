"""Speculative decoding (greedy-exact): a small draft model guesses, the big model checks in bulk.

Decoding one token at a time leaves a big model idle: at batch 1 each step reads every weight
to produce one token. Speculative decoding (Leviathan et al. 2023; Chen et al. 2023) lets a
cheap *draft* model (same tokenizer) propose k tokens one by one, then runs the *target* model
once over all k proposals. Causal attention makes that single pass give the target's choice
after every prefix of the proposal:

    pending p, draft proposes d1 d2 d3 d4
    target reads [p d1 d2 d3 d4]  →  greedy picks g0 g1 g2 g3 g4   (g_i follows d_i)
    accept d1..dn while d_i == g_{i-1}, then append g_n (the target's own next token)

So every round yields between 1 and k+1 tokens, and — for greedy decoding — *exactly* the tokens
the target alone would produce: each emitted token is the target's arg-max after its prefix.

Rolling back rejected proposals is free with `KVCache`: positions past `pos` are ignored, so
"forgetting" the rejected keys and values is just setting `pos` back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from fornalha.errors import ConfigError
from fornalha.model.gpt import GPT, KVCache


@dataclass
class SpeculativeStats:
    rounds: int = 0
    proposed: int = 0
    accepted: int = 0
    per_round: list[int] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0


@torch.inference_mode()
def speculative_generate(
    target: GPT,
    draft: GPT,
    prompt_ids: list[int],
    max_new_tokens: int,
    k: int = 4,
    stop_ids: frozenset[int] | set[int] = frozenset(),
) -> tuple[list[int], SpeculativeStats]:
    """Greedy generation of `target`, accelerated by `draft`. Returns (new token ids, stats).

    The result equals `target`'s own greedy output (stopping at a token in stop_ids, which is not
    included, or after max_new_tokens, or when the context is full)."""
    if target.config.vocab_size != draft.config.vocab_size:
        raise ConfigError("draft and target models must share the tokenizer (same vocab_size)")
    if k < 1 or not prompt_ids:
        raise ConfigError("speculative decoding needs k >= 1 and a non-empty prompt")
    dev = target.wte.weight.device
    max_len = min(target.config.block_size, draft.config.block_size)
    t_cache = KVCache.allocate(target.config, 1, max_len, dev, target.wte.weight.dtype)
    d_cache = KVCache.allocate(draft.config, 1, max_len, dev, draft.wte.weight.dtype)

    def feed(model: GPT, cache: KVCache, ids: list[int]) -> torch.Tensor:
        logits, _ = model(torch.tensor([ids], device=dev), kv_cache=cache)
        return logits[0]  # [len(ids), vocab]

    # `history` is prompt + output. The target's cache holds all of it but the last ("pending")
    # token; the draft's cache holds some prefix of it and catches up when it next proposes.
    history = list(prompt_ids)
    if len(history) > 1:
        feed(target, t_cache, history[:-1])
    out: list[int] = []
    stats = SpeculativeStats()
    while len(out) < max_new_tokens:
        start = len(history) - 1  # = t_cache.pos: where the pending token goes
        if start >= max_len:  # no room for the pending token: the context is full
            break
        n_prop = min(k, max_len - start - 1, max_new_tokens - len(out) - 1)
        # 1. The draft catches up, then proposes n_prop tokens greedily, one at a time.
        proposal: list[int] = []
        if n_prop > 0:
            logits = feed(draft, d_cache, history[int(d_cache.pos[0]) :])
            for i in range(n_prop):
                proposal.append(int(logits[-1].argmax()))
                if i + 1 < n_prop:
                    logits = feed(draft, d_cache, proposal[-1:])
        # 2. The target checks them all in one pass: choice[i] is its pick after proposal[:i].
        choice = feed(target, t_cache, [history[-1], *proposal]).argmax(dim=-1).tolist()
        n = 0
        while n < len(proposal) and proposal[n] == choice[n]:
            n += 1
        new = proposal[:n] + [choice[n]]
        stats.rounds += 1
        stats.proposed += len(proposal)
        stats.accepted += n
        stats.per_round.append(n)
        # 3. Roll back the rejected proposals: both caches keep at most pending + accepted ones.
        t_cache.pos[0] = start + 1 + n
        d_cache.pos[0] = min(int(d_cache.pos[0]), start + 1 + n)
        for tok in new:
            if tok in stop_ids:
                return out, stats
            out.append(tok)
            history.append(tok)
            if len(out) >= max_new_tokens:
                break
    return out, stats
