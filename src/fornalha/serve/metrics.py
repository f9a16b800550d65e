"""Prometheus metrics of one server (prometheus-client, a registry per app).

requests by endpoint and status, prompt/completion tokens, queue depth, running batch size,
time to first token, inter-token latency and whole-request latency histograms.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_ITL = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("fornalha_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=r)  # fmt: skip
        self.prompt_tokens = Counter("fornalha_prompt_tokens", "prompt tokens processed", registry=r)
        self.completion_tokens = Counter("fornalha_completion_tokens", "tokens generated", registry=r)
        self.cancelled = Counter("fornalha_requests_cancelled", "requests cancelled before their end, by reason",
                                 ["reason"], registry=r)  # fmt: skip
        self.queue_depth = Gauge("fornalha_queue_depth", "requests waiting for a slot", registry=r)
        self.running = Gauge("fornalha_running_batch_size", "sequences in the running batch", registry=r)
        self.prefix_hit_tokens = Counter("fornalha_prefix_cache_hit_tokens",
                                         "prompt tokens whose keys/values came from the prefix cache",
                                         registry=r)  # fmt: skip
        self.ttft = Histogram("fornalha_time_to_first_token_seconds", "time to first token",
                              buckets=_LATENCY, registry=r)  # fmt: skip
        self.itl = Histogram("fornalha_inter_token_latency_seconds", "time between tokens of a request",
                             buckets=_ITL, registry=r)  # fmt: skip
        self.latency = Histogram("fornalha_request_latency_seconds", "whole request latency",
                                 buckets=_LATENCY, registry=r)  # fmt: skip
