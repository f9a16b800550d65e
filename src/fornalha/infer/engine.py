"""The inference engine: requests in, tokens out, many sequences at once.

How a request flows through it
------------------------------
::

    add_request(prompt, params) ─► waiting queue
                                        │ step(): a free KV-cache slot?
                                        ▼
                          PREFILL  the whole prompt in one forward pass (prompts admitted together
                                   are right-padded into one batch); keys/values go to the slot;
                                   the last position's logits give the first token
                                        │
                                        ▼
                          DECODE   every step, one forward pass for all running sequences: each
                                   feeds its last token at its own position, attends to its own slot
                                        │
                         stop token / stop string / max_new_tokens / context full
                                        ▼
                          FINISHED  the slot is freed at once; a waiting request can take it next step

This is *continuous batching* in its simplest form: sequences join and leave the running batch at
any step, each with its own sampling parameters (`SlotSampler`), random generator, text stream
(`TextStream`) and KV-cache row (`KVCache` keeps one position per row). `step()` returns the
`Event`s of that step — one new token (and its text, possibly "" while a UTF-8 character or a
possible stop string is incomplete) per running request — which is what a server streams.
`generate()` and `stream()` are loops over `step()` for the common cases.

Why a cache at all: without one, producing token t means recomputing all t previous positions
(quadratic work in the length); with it, each step only computes the new position and reads the
stored keys and values of the others. `use_cache=False` keeps that naive loop as the baseline
the benchmark measures against.

Structured output: a request whose `SamplingParams.grammar` is set gets a `Constraint` (its own
parser state, `fornalha.infer.constrained`); the sampler masks that row's logits with it, `_emit`
feeds it each token, and the request ends with "stop" as soon as the grammar is complete. The other
rows of the batch are sampled exactly as without it.

Prefix caching: a slot's cache keeps the keys/values of every token it has seen, and they stay
valid after its sequence finishes (until the slot is reused or idles inside a running batch).
When a request is admitted, the engine looks for the slot — running or free — whose tokens share
the longest prefix with the new prompt (a shared system prompt, the history of a conversation):
that many positions are copied (or, when that slot is free, simply kept) and only the rest of the
prompt is computed (`Decoder.prefill_from`). The first token then comes sooner; the outputs are
the same, because keys/values of a position depend only on the tokens up to it.

Slots are taken lowest-first, and the decode step runs over rows 0..(highest busy slot), so the
batch shrinks when sequences finish. Free rows inside that range cost a little compute but never
touch a live sequence: their position stays at 0 and nothing reads what they write.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from fornalha.errors import ConfigError, FornalhaError
from fornalha.infer.constrained import Constraint, GrammarVocabulary
from fornalha.infer.decode import Decoder, static_decode_fn
from fornalha.infer.graphs import DecodeGraphs
from fornalha.infer.kernels import MAX_HEAD_DIM, decode_attention_kernel
from fornalha.infer.quantize import DECODE_WEIGHTS, fbgemm_available
from fornalha.infer.sampling import SampleOutput, SamplingParams, SlotSampler
from fornalha.infer.streaming import TextStream
from fornalha.model.gpt import GPT, KVCache


class TokenizerLike(Protocol):
    """What the engine needs from a tokenizer (a subset of `fornalha.tokenizer.Tokenizer`)."""

    eos_id: int
    special_ids: dict[str, int]

    def encode(self, text: str) -> list[int]: ...

    def decode_bytes(self, ids: Sequence[int]) -> bytes: ...


# --------------------------------------------------------------------------------------------
# What comes out
# --------------------------------------------------------------------------------------------


@dataclass
class TokenLogprob:
    """A chosen token's log-probability and the top alternatives as (token id, log-probability)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class Event:
    """What one step did for one request: the token it generated and the text that became
    displayable (may be "" — the rest of a character or a possible stop string is pending).
    On the last event `finished` is True and `finish_reason` is "stop" (end-of-text token, stop
    string, or the grammar complete) or "length" (max_new_tokens, or the context is full)."""

    request_id: int
    token_id: int | None
    text: str
    finished: bool = False
    finish_reason: str | None = None
    logprob: TokenLogprob | None = None


@dataclass
class Completion:
    """One finished sample: its text (stop string and stop token excluded), token ids (the stop
    token excluded), why it ended, and per-token log-probabilities when asked for."""

    text: str
    token_ids: list[int]
    finish_reason: str
    logprobs: list[TokenLogprob] | None = None


@dataclass
class GenerationResult:
    """All samples (n of them) of one prompt."""

    prompt: str | list[int]
    prompt_token_ids: list[int]
    completions: list[Completion]

    @property
    def text(self) -> str:
        return self.completions[0].text


# --------------------------------------------------------------------------------------------
# A request while it lives in the engine
# --------------------------------------------------------------------------------------------


@dataclass
class _Sequence:
    id: int
    prompt: str | list[int]
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator
    stream: TextStream
    stop_ids: frozenset[int]
    slot: int = -1
    out_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    created: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    sampled: list[int] = field(default_factory=list)  # every sampled token, stop token included
    cached_prefix: int = 0  # prompt tokens whose keys/values came from the prefix cache
    constraint: Constraint | None = None  # structured output: the grammar's state (params.grammar)

    def cached_tokens(self, pos: int) -> list[int]:
        """The tokens whose keys/values this sequence's slot holds (the first `pos`)."""
        return (self.prompt_ids + self.sampled)[:pos]

    def completion(self) -> Completion:
        return Completion(self.stream.text, list(self.out_ids), self.finish_reason or "length", self.logprobs)


class Engine:
    """Batched, cached generation for a `GPT`.

    model: the network (put on `device`, in eval mode, cast to `dtype` when given — bf16 halves
        memory and is fast on recent GPUs; CPUs are usually fastest in float32).
    tokenizer: anything with encode / decode_bytes / eos_id / special_ids (`TokenizerLike`).
    max_batch_size: KV-cache slots = sequences decoded together; more wait in a queue.
    max_seq_len: longest prompt + output a slot holds (default and maximum: the model's block_size).
    compile: run the decode step through `torch.compile` with static shapes (see `decode.py`).
    cuda_graphs: record the decode step as CUDA graphs, one per batch bucket (`fornalha.infer.graphs`),
        when the engine starts. None (default): on when the device is CUDA (and neither `compile`
        nor `use_cache=False` is asked for), falling back to the eager step with a warning if the
        recording fails; True: on, or an error.
    use_cache: False gives the naive loop (recompute everything each step): the baseline.
    decode_weights: the format the decode step reads the Linear weights in — None: the model's
        own; "fp16" (nearly exact), "int8" or "dynamic" (see `fornalha.infer.quantize`): a packed
        copy made here, the model untouched (prefill uses the model). "auto" (default): "fp16" for
        a float32 model on a CPU with fbgemm kernels (x86), where it is ~3–4× faster per step, else
        None. Greedy outputs then match float32 up to near-ties of the two best logits.
    kv_cache: the KV cache's storage — None: the model's dtype; "fp16": float16, half the memory,
        read on a CPU by the hand-written kernel of `fornalha.infer.kernels` (compiled on first
        use). "auto" (default): "fp16" for a float32 model on a CPU where the kernel builds, else
        None. Like fp16 weights it moves logits by ~1e-4, so greedy outputs match float32 up to
        near-ties.
    prefix_caching: reuse the cached keys/values of a shared prompt prefix (see the module
        docstring) when it is at least `prefix_min_tokens` long. Off by default (on in `fornalha
        serve`): the reused keys/values come from another kernel path (batched prefill or decode
        steps) than a fresh prefill, so sampled outputs can differ from an uncached run at rare
        near-ties; greedy outputs are tested identical.

    >>> engine = Engine(model, tokenizer, max_batch_size=8)               # doctest: +SKIP
    >>> engine.generate(["Once upon a time"], SamplingParams(temperature=0))[0].text  # doctest: +SKIP
    """

    def __init__(
        self,
        model: GPT,
        tokenizer: TokenizerLike,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_batch_size: int = 8,
        max_seq_len: int | None = None,
        compile: bool = False,
        cuda_graphs: bool | None = None,
        use_cache: bool = True,
        decode_weights: str | None = "auto",
        kv_cache: str | None = "auto",
        prefix_caching: bool = False,
        prefix_min_tokens: int = 4,
    ) -> None:
        if max_batch_size < 1:
            raise ConfigError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.device = torch.device(device) if device is not None else model.wte.weight.device
        model.to(self.device)
        if dtype is not None:
            model.to(dtype)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        block = self.config.block_size
        self.max_seq_len = min(max_seq_len or block, block)
        self.max_batch_size = max_batch_size
        self.use_cache = use_cache
        self.dtype = model.wte.weight.dtype

        fast_path = self.device.type == "cpu" and self.dtype == torch.float32 and use_cache and not compile
        if kv_cache == "auto":
            kernel = (
                fast_path and self.config.head_dim <= MAX_HEAD_DIM and decode_attention_kernel() is not None
            )
            kv_cache = "fp16" if kernel else None
        if kv_cache not in (None, "fp16"):
            raise ConfigError(f"kv_cache must be None, 'auto' or 'fp16', got {kv_cache!r}")
        if kv_cache == "fp16" and compile:
            raise ConfigError(
                "kv_cache='fp16' is for the eager decode step; the compiled one keeps the model's dtype"
            )
        self.kv_cache = kv_cache
        cache_dtype = torch.float16 if kv_cache == "fp16" else self.dtype
        self.cache = KVCache.allocate(self.config, max_batch_size, self.max_seq_len, self.device, cache_dtype)
        if decode_weights == "auto":
            decode_weights = "fp16" if fast_path and fbgemm_available() else None
        if decode_weights is not None and decode_weights not in DECODE_WEIGHTS:
            raise ConfigError(f"decode_weights must be None, 'auto' or one of {DECODE_WEIGHTS}")
        self.decode_weights = decode_weights
        self.decoder = Decoder(model, self.cache, decode_weights if use_cache else None)
        self._compiled = None
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            self._compiled = torch.compile(
                static_decode_fn(self.decoder), dynamic=False, fullgraph=True, mode=mode
            )
        self.graphs: DecodeGraphs | None = None
        recordable = self.device.type == "cuda" and use_cache and not compile
        if cuda_graphs and not recordable:
            raise ConfigError("cuda_graphs needs a CUDA device, the KV cache, and no compile")
        if cuda_graphs:
            self.graphs = DecodeGraphs(self.decoder)
        elif cuda_graphs is None and recordable:
            try:  # the default: a GPU whose driver or setup cannot record falls back to the eager step
                self.graphs = DecodeGraphs(self.decoder)
            except RuntimeError as exc:
                warnings.warn(f"could not record CUDA graphs ({exc}); decoding without them", stacklevel=2)
        self.sampler = SlotSampler(max_batch_size, self.config.vocab_size, self.device)

        self._slots: list[_Sequence | None] = [None] * max_batch_size
        self._pos = [0] * max_batch_size  # python mirror of cache.pos (no device reads per step)
        self._tokens = torch.zeros(
            max_batch_size, dtype=torch.long, device=self.device
        )  # last token per slot
        self._waiting: deque[_Sequence] = deque()
        self._finished: dict[int, _Sequence] = {}
        self._next_id = 0
        self._default_stop_ids = frozenset(
            i
            for i in (
                getattr(tokenizer, "eos_id", None),
                getattr(tokenizer, "special_ids", {}).get("<|end|>"),
                *getattr(tokenizer, "stop_ids", list)(),  # a foreign tokenizer's own (HFTokenizer)
            )
            if i is not None
        )
        self.prefix_caching = prefix_caching and use_cache and not compile
        self.prefix_min_tokens = max(1, prefix_min_tokens)
        self._held: list[list[int]] = [[] for _ in range(max_batch_size)]  # tokens a free slot holds
        self.prefix_hit_tokens = 0  # prompt tokens not recomputed thanks to the prefix cache
        self._bytes_cache: dict[int, bytes] = {}
        self._special_ids = frozenset(getattr(tokenizer, "special_ids", {}).values())
        self._grammar_vocabulary: GrammarVocabulary | None = None  # built on the first grammar
        # How to build this engine again in another process (a picklable function returning an
        # Engine), set by whoever loaded it from a run folder: `fornalha serve` runs its decode
        # loop in a process of its own (fornalha.serve.engine_process). None: only in this process.
        self.recipe: Callable[[], Engine] | None = None

    def grammar_vocabulary(self) -> GrammarVocabulary:
        """The tokenizer prepared for grammar masks (`fornalha.infer.constrained`), built once."""
        if self._grammar_vocabulary is None:
            self._grammar_vocabulary = GrammarVocabulary(
                self.tokenizer, self.config.vocab_size, sorted(self._default_stop_ids)
            )
        return self._grammar_vocabulary

    # ---- requests ---------------------------------------------------------------------------
    def add_request(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None, add_bos: bool = True
    ) -> int:
        """Queue a prompt (text, or token ids used as given) and return its request id.

        Text prompts get `<|bos|>` in front when the tokenizer has one (training documents start
        with it). `params.n` must be 1 here; `generate` expands n > 1 into n requests."""
        params = params or SamplingParams()
        if params.n != 1:
            raise ConfigError("add_request takes one sample per request (n=1); use generate() for n > 1")
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
            bos = getattr(self.tokenizer, "bos_id", None)
            if add_bos and bos is not None:
                ids = [bos, *ids]
        else:
            ids = [int(i) for i in prompt]
        if not ids:
            raise FornalhaError("empty prompt: give at least one token")
        if len(ids) >= self.max_seq_len:
            raise FornalhaError(
                f"prompt of {len(ids)} tokens does not fit the context of {self.max_seq_len} tokens "
                "(it needs room for at least one new token); shorten it"
            )
        bad = [i for i in ids if not 0 <= i < self.config.vocab_size]
        if bad:
            raise FornalhaError(
                f"prompt token id {bad[0]} is outside the model's vocabulary of {self.config.vocab_size}"
            )
        seed = params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        stop_ids = frozenset(params.stop_token_ids) | (
            frozenset() if params.ignore_eos else self._default_stop_ids
        )
        seq = _Sequence(
            id=self._next_id,
            prompt=prompt if isinstance(prompt, str) else ids,
            prompt_ids=ids,
            params=params,
            generator=gen,
            stream=TextStream(
                self._text_bytes if params.skip_special_tokens else self._token_bytes, params.stop
            ),
            stop_ids=stop_ids,
            logprobs=[] if params.logprobs is not None else None,
            constraint=self.grammar_vocabulary().constraint(params.grammar) if params.grammar else None,
        )
        self._next_id += 1
        if params.max_new_tokens == 0:
            seq.finish_reason = "length"
            self._finished[seq.id] = seq
        else:
            self._waiting.append(seq)
        return seq.id

    def abort(self, request_id: int) -> bool:
        """Drop a request (a client went away). True if it was waiting or running."""
        for seq in self._waiting:
            if seq.id == request_id:
                self._waiting.remove(seq)
                return True
        for seq in self._slots:
            if seq is not None and seq.id == request_id:
                seq.finish_reason = "abort"
                self._release(seq)
                return True
        return False

    def has_unfinished(self) -> bool:
        return bool(self._waiting) or any(s is not None for s in self._slots)

    @property
    def num_running(self) -> int:
        return sum(s is not None for s in self._slots)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def pop_result(self, request_id: int) -> Completion:
        """The completion of a finished request (removed from the engine)."""
        seq = self._finished.pop(request_id, None)
        if seq is None:
            raise KeyError(f"request {request_id} is not finished (or was already collected)")
        return seq.completion()

    def discard(self, request_id: int) -> None:
        """Forget a finished (or aborted) request's result without building it (a server that
        streamed the events already has everything)."""
        self._finished.pop(request_id, None)

    @torch.inference_mode()
    def embed(self, prompts: Sequence[Sequence[int]]) -> list[list[float]]:
        """One vector per token-id list: the final hidden states (after the last norm), averaged
        over the positions. Runs the plain model, outside the KV cache and the running batch."""
        m = self.model
        out = []
        for ids in prompts:
            idx = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
            T = idx.size(1)
            x = m.wte(idx)
            cos, sin = m.rope_cos[:T], m.rope_sin[:T]
            for block in m.blocks:
                x = block(x, cos, sin)
            out.append(m.norm_f(x)[0].float().mean(0).tolist())
        return out

    # ---- one scheduler step -------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, on_prefill: Callable[[list[Event]], None] | None = None) -> list[Event]:
        """Admit waiting requests into free slots (prefill), then advance every running sequence
        by one token (decode), the new ones included. Returns this step's events.

        Admission comes first: a request that arrived during the last step gets its first token
        (prefill) and its second (decode) in this one, instead of waiting for this step's decode
        of the others before its prefill. Slots freed by this step's decode take new requests at
        the start of the next step. `on_prefill`: called with the prefill's events (the first
        tokens) as soon as they exist, before the decode — a server sends them on at once, a whole
        decode step sooner; they are then not in the returned list."""
        events: list[Event] = []
        admitted: list[_Sequence] = []
        while self._waiting and None in self._slots:
            seq = self._waiting.popleft()
            slot = self._place(seq)
            seq.slot = slot
            self._slots[slot] = seq
            self._held[slot] = []
            self.sampler.assign(slot, seq.params, seq.prompt_ids, seq.generator, seq.constraint)
            admitted.append(seq)
        if admitted:
            self._prefill(admitted, events)
            if on_prefill is not None and events:
                on_prefill(events)
                events = []
        running = [s for s in self._slots if s is not None]
        if running:
            self._decode(running, events)
        return events

    def _slot_tokens(self, slot: int) -> list[int]:
        """The tokens whose keys/values the slot holds now. A sequence admitted in this step and
        not yet prefilled already holds its cached prefix there: requests arriving together with
        the same system prompt all share it."""
        seq = self._slots[slot]
        if seq is None:
            return self._held[slot]
        return seq.cached_tokens(max(self._pos[slot], seq.cached_prefix))

    def _place(self, seq: _Sequence) -> int:
        """Pick a free slot for `seq`; with prefix caching, set up the longest cached prefix in it.

        The best source is any slot whose cached tokens start like the prompt (at most all but its
        last token: the last one must run through the model to give the first logits). The request
        always takes the lowest free slot, as without prefix caching: the decode step runs rows
        0..(highest busy slot), so one request in slot 12 after a burst would make every step
        compute 13 rows. A source that is that slot is used as it is; any other (free or running)
        has its prefix positions copied into it — a copy of a few kilobytes per token, against
        recomputing them (a running source's prefix never changes: it only writes further on)."""
        free = [i for i, s in enumerate(self._slots) if s is None]
        if not self.prefix_caching:
            return free[0]
        want = seq.prompt_ids[:-1]
        best, best_len = -1, 0
        for slot in range(self.max_batch_size):
            have = self._slot_tokens(slot)
            n, limit = 0, min(len(have), len(want))
            while n < limit and have[n] == want[n]:
                n += 1
            if n > best_len or (n == best_len and n > 0 and slot == free[0]):  # a tie: no copy
                best, best_len = slot, n
        if best_len < self.prefix_min_tokens:
            return free[0]
        seq.cached_prefix = best_len
        self.prefix_hit_tokens += best_len
        dst = free[0]
        if best == dst:
            return dst
        self.cache.k[:, dst, :, :best_len] = self.cache.k[:, best, :, :best_len]
        self.cache.v[:, dst, :, :best_len] = self.cache.v[:, best, :, :best_len]
        return dst

    def _prefill(self, seqs: list[_Sequence], events: list[Event]) -> None:
        """Run the prompts through the model and sample their first tokens: those without a cached
        prefix together (right-padded), those with one together from where each one's prefix ends."""
        plain = [s for s in seqs if s.cached_prefix == 0]
        rows = {s.id: i for i, s in enumerate(seqs)}
        logits = torch.empty(len(seqs), self.config.vocab_size, device=self.device)
        if plain:
            logits[[rows[s.id] for s in plain]] = self._prefill_plain(plain)
        cached = [s for s in seqs if s.cached_prefix]
        if cached:
            logits[[rows[s.id] for s in cached]] = self.decoder.prefill_from(
                [s.prompt_ids[s.cached_prefix :] for s in cached],
                [s.slot for s in cached],
                [s.cached_prefix for s in cached],
            )
        lengths = [len(s.prompt_ids) for s in seqs]
        slots = [s.slot for s in seqs]
        slot_idx = torch.tensor(slots, device=self.device)
        for slot, n in zip(slots, lengths, strict=True):
            self._pos[slot] = n
        self.cache.pos[slot_idx] = torch.tensor(lengths, device=self.device)
        out = self.sampler.sample(logits.float(), rows=slots)
        self._tokens[slot_idx] = out.tokens
        self.sampler.observe(out.tokens, rows=slots)
        now = time.perf_counter()
        for s in seqs:
            s.first_token_at = now
        self._emit(seqs, list(range(len(seqs))), out, events)

    def _prefill_plain(self, seqs: list[_Sequence]) -> torch.Tensor:
        """Whole prompts, right-padded into one batch: the logits of each one's last token."""
        lengths = [len(s.prompt_ids) for s in seqs]
        slots = [s.slot for s in seqs]
        idx = torch.zeros(len(seqs), max(lengths), dtype=torch.long)
        for i, s in enumerate(seqs):
            idx[i, : lengths[i]] = torch.tensor(s.prompt_ids)
        idx = idx.to(self.device)
        if self.use_cache:  # causal attention over the prompts, keys/values straight into their slots
            logits = self.decoder.prefill(idx, lengths, slots)
        else:
            logits, _ = self.model(idx)
            logits = logits[torch.arange(len(seqs)), torch.tensor(lengths) - 1]
        return logits.float()

    def _decode(self, seqs: list[_Sequence], events: list[Event]) -> None:
        """Feed every running sequence's last token at its position; sample the next ones."""
        B = max(s.slot for s in seqs) + 1  # rows 0..B-1 run (free ones in between idle along)
        computed = self.graphs.bucket(B) if self.graphs is not None else B  # a graph's rows past B idle too
        for slot in range(computed):  # an idle row gets a write at position 0: its cached prefix is gone
            if self._slots[slot] is None:
                self._held[slot] = []
        if not self.use_cache:
            logits = self._forward_without_cache(seqs, B)
        else:
            if self._compiled is not None:
                logits = self._compiled(self._tokens, self.cache.pos)[:B]
            elif self.graphs is not None:
                logits = self.graphs(self._tokens, self.cache.pos, B)
            else:
                pos = [self._pos[s.slot] for s in seqs]
                same = len(seqs) == B and min(pos) == max(pos)
                logits = self.decoder(
                    self._tokens, self.cache.pos, B, max(pos) + 1, same_pos=pos[0] if same else None
                )
            for s in seqs:
                self._pos[s.slot] += 1
            if len(seqs) == B:
                self.cache.pos[:B] += 1
            else:
                self.cache.pos[torch.tensor([s.slot for s in seqs], device=self.device)] += 1
        out = self.sampler.sample(logits)
        self._tokens[:B] = out.tokens
        if self.sampler.seen is not None:  # penalty bookkeeping, only when some request uses it
            slots = [s.slot for s in seqs]
            self.sampler.observe(out.tokens[slots], rows=slots)
        self._emit(seqs, [s.slot for s in seqs], out, events)

    def _forward_without_cache(self, seqs: list[_Sequence], B: int) -> torch.Tensor:
        """The baseline: the whole sequence (prompt + output so far) through the model, every step."""
        full = [s.prompt_ids + s.out_ids for s in seqs]
        T = max(len(f) for f in full)
        idx = torch.zeros(B, T, dtype=torch.long)
        last = torch.zeros(B, dtype=torch.long)
        for s, f in zip(seqs, full, strict=True):
            idx[s.slot, : len(f)] = torch.tensor(f)
            last[s.slot] = len(f) - 1
            self._pos[s.slot] = len(f)
        logits, _ = self.model(idx.to(self.device))
        return logits[torch.arange(B, device=self.device), last.to(self.device)].float()

    def _emit(self, seqs: list[_Sequence], rows: list[int], out: SampleOutput, events: list[Event]) -> None:
        """Book-keeping after sampling: append tokens, stream text, check the stop conditions."""
        all_tokens = out.tokens.tolist()  # the one device->host read of the step
        tokens = [all_tokens[r] for r in rows]
        lp = top_ids = top_lp = None
        if out.logprobs is not None:
            lp = [out.logprobs[r].item() for r in rows]
            if out.top_ids is not None and out.top_logprobs is not None:
                top_ids = [out.top_ids[r].tolist() for r in rows]
                top_lp = [out.top_logprobs[r].tolist() for r in rows]
        for i, (s, tok) in enumerate(zip(seqs, tokens, strict=True)):
            s.sampled.append(tok)
            logprob = None
            if s.logprobs is not None and lp is not None:
                k = s.params.logprobs or 0
                top = list(zip(top_ids[i][:k], top_lp[i][:k])) if top_ids is not None else []
                logprob = TokenLogprob(tok, lp[i], top)
                s.logprobs.append(logprob)
            if tok in s.stop_ids:
                s.finish_reason = "stop"
                text = s.stream.finish()
            else:
                s.out_ids.append(tok)
                text = s.stream.push(tok)
                if s.constraint is not None:
                    s.constraint.consume(tok)
                if s.stream.stopped is not None:
                    s.finish_reason = "stop"
                elif s.constraint is not None and s.constraint.finished:  # the grammar is complete
                    s.finish_reason = "stop"
                    text += s.stream.finish()
                elif len(s.out_ids) >= s.params.max_new_tokens or self._pos[s.slot] >= self.max_seq_len:
                    s.finish_reason = "length"
                if s.finish_reason == "length":
                    text += s.stream.finish()
            events.append(Event(s.id, tok, text, s.finish_reason is not None, s.finish_reason, logprob))
            if s.finish_reason is not None:
                self._release(s)

    def _release(self, seq: _Sequence) -> None:
        slot = seq.slot
        self._held[slot] = seq.cached_tokens(self._pos[slot]) if self.prefix_caching else []
        self._slots[slot] = None
        self._pos[slot] = 0
        self.cache.pos[slot] = 0
        self.sampler.release(slot)
        self._finished[seq.id] = seq

    def _text_bytes(self, token_id: int) -> bytes:
        """A token's bytes as text: nothing for special tokens."""
        return b"" if token_id in self._special_ids else self._token_bytes(token_id)

    def _token_bytes(self, token_id: int) -> bytes:
        b = self._bytes_cache.get(token_id)
        if b is None:
            b = self._bytes_cache[token_id] = self.tokenizer.decode_bytes([token_id])
        return b

    # ---- convenience loops --------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        add_bos: bool = True,
    ) -> list[GenerationResult]:
        """Generate for every prompt (n samples each, sample i seeded with seed + i) and wait for all.

        params: one SamplingParams for every prompt, or one per prompt."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if params is None or isinstance(params, SamplingParams):
            params = [params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ConfigError(f"{len(prompts)} prompts but {len(params)} sampling parameter sets")
        groups: list[list[int]] = []
        for prompt, p in zip(prompts, params, strict=True):
            ids = []
            for j in range(p.n):
                seed = None if p.seed is None else p.seed + j
                ids.append(self.add_request(prompt, p.with_(n=1, seed=seed), add_bos=add_bos))
            groups.append(ids)
        wanted = {i for g in groups for i in g}
        while not wanted <= self._finished.keys():
            self.step()
        results = []
        for prompt, ids in zip(prompts, groups, strict=True):
            prompt_ids = self._finished[ids[0]].prompt_ids
            results.append(GenerationResult(prompt, prompt_ids, [self.pop_result(i) for i in ids]))
        return results

    def stream(
        self, prompt: str | Sequence[int], params: SamplingParams | None = None, add_bos: bool = True
    ) -> Iterator[str]:
        """Text pieces of one request as they become displayable (never half a character, never
        part of a stop string). `"".join(engine.stream(p, sp))` equals the generated text."""
        rid = self.add_request(prompt, params, add_bos=add_bos)
        try:
            while rid not in self._finished:
                for ev in self.step():
                    if ev.request_id == rid and ev.text:
                        yield ev.text
        finally:
            if rid not in self._finished:
                self.abort(rid)
            self._finished.pop(rid, None)

    def stats(self) -> dict[str, Any]:
        return {
            "running": self.num_running,
            "waiting": self.num_waiting,
            "slots": self.max_batch_size,
            "max_seq_len": self.max_seq_len,
        }
