"""CUDA graphs for the decode step: one recorded graph per batch size the scheduler uses.

Why: on a GPU, the decode step of a small model is bound by *launching* kernels, not by running
them — an H200 decoded the 10M model at ~740 tokens/s at batch 1, about 1.3 ms a token for ~150
small kernels that each finish in microseconds. A CUDA graph records the step's kernels once and
then replays all of them with a single launch from the CPU.

What it takes: a graph replays exactly what it recorded — the same kernels, with the same shapes,
reading and writing the same memory addresses. So the step it records must be *static*:

* **inputs in fixed buffers.** `tokens` and `pos` below are allocated once; every step copies
  the batch's last tokens and positions into them, then replays.
* **the KV cache is a static buffer.** It already is: the engine allocates it once
  (`KVCache.allocate`) and never reallocates it. The step writes each row's new key/value at an
  offset computed *on the GPU* from `pos` (`index_copy_` into the cache's flat view), and
  attends over the **whole cache length** with a mask built from `pos` (`Decoder.__call__` with
  `kv_len = max_len`, `same_pos=None`), so no shape depends on how long the sequences are.
  (`torch.compile(mode="reduce-overhead")` could not do this here: inductor skips CUDA graphs
  for a step that writes into its inputs — see docs/inference.md — while a graph recorded by
  hand has no such rule: the writes are just kernels.)
* **one graph per batch bucket.** The running batch changes size at every step as requests join
  and leave (continuous batching), so a graph is recorded for each of a few sizes — 1, 2, 4, 8,
  16, … up to the number of slots — and a step with B rows replays the smallest bucket ≥ B. The
  rows past B are free slots: computed and ignored, exactly like the free rows between running
  ones that the eager step already carries (their position is 0; nothing reads what they write).
* **outputs in the graph's own memory.** A replay writes the logits into the same buffer each
  time; the engine samples from it before the next replay.

The graphs are recorded when the engine starts, largest first, all in one memory pool (as vLLM
does), after a few warm-up runs on a side stream (cuBLAS and the allocator initialise lazily, and
nothing may initialise during a capture). Warm-up and capture write keys/values at position 0 of
every slot — harmless at start, when no slot holds anything.

A recorded graph keeps pointing at the weights it read. Loading new weights *in place*
(`load_state_dict`, `copy_`) is seen by the next replay; replacing modules or calling
`Decoder.refresh()` is not — build a new `DecodeGraphs` then (the server's hot swap builds a whole
new engine, which records its own).

Without a GPU (`capture=False`) the class runs the very same static step eagerly. That is how the
tests on a CPU check the buckets, the idle rows and the full-length masked step against the plain
decode step; `benchmarks/gpu_serve_check.py` checks the recorded graphs on a GPU.
"""

from __future__ import annotations

import torch

from fornalha.infer.decode import Decoder


def batch_buckets(max_batch: int) -> list[int]:
    """The batch sizes that get a graph: powers of two below `max_batch`, and `max_batch` itself."""
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return [*sizes, max_batch]


class DecodeGraphs:
    """The decode step of `decoder`, recorded as one CUDA graph per batch bucket.

    `graphs(tokens, pos, n_rows)` takes the engine's per-slot last tokens and positions (at least
    `bucket(n_rows)` long: rows past n_rows are idle slots) and returns the logits of rows
    0..n_rows-1, [n_rows, vocab] float32 — a view of the graph's output buffer, valid until the
    next call. `capture=False` runs the same static step without recording (any device).
    """

    def __init__(self, decoder: Decoder, capture: bool = True, warmup: int = 2) -> None:
        cache = decoder.cache
        self.decoder = decoder
        self.max_len = cache.max_len
        self.buckets = batch_buckets(cache.k.size(1))
        dev = cache.k.device
        self.tokens = torch.zeros(self.buckets[-1], dtype=torch.long, device=dev)  # static inputs
        self.pos = torch.zeros(self.buckets[-1], dtype=torch.long, device=dev)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        # the callables the graphs were recorded from keep their tensors (stacked QK-norm weights,
        # packed copies) alive even if the decoder is refreshed: a graph must never read freed memory
        self._recorded_layers = decoder.layers
        if capture:
            if dev.type != "cuda":
                raise ValueError(f"CUDA graphs need a CUDA device; the cache is on {dev}")
            self._capture(warmup)

    def _step(self, b: int) -> torch.Tensor:
        """The static step for a batch of b rows: the full cache length, always masked."""
        return self.decoder(self.tokens, self.pos, b, self.max_len, same_pos=None)

    @torch.inference_mode()
    def _capture(self, warmup: int) -> None:
        pool = None
        for b in reversed(self.buckets):  # largest first: smaller graphs reuse its memory
            side = torch.cuda.Stream(self.tokens.device)
            side.wait_stream(torch.cuda.current_stream(self.tokens.device))
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self._step(b)
            torch.cuda.current_stream(self.tokens.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[b] = self._step(b)
            pool = graph.pool()
            self.graphs[b] = graph
        torch.cuda.synchronize(self.tokens.device)

    def bucket(self, n_rows: int) -> int:
        """The smallest recorded batch size that holds n_rows rows."""
        return next(b for b in self.buckets if b >= n_rows)

    def __call__(self, tokens: torch.Tensor, pos: torch.Tensor, n_rows: int) -> torch.Tensor:
        b = self.bucket(n_rows)
        self.tokens[:b].copy_(tokens[:b])
        self.pos[:b].copy_(pos[:b])
        if b in self.graphs:
            self.graphs[b].replay()
            return self.outputs[b][:n_rows]
        return self._step(b)[:n_rows]
