"""API keys and per-key rate limits.

Keys come from a file (one per line; blank lines and ``#`` comments ignored) or the
``FORNALHA_API_KEYS`` environment variable (comma-separated). A request presents one as
``Authorization: Bearer KEY``; it is compared against every known key with
`hmac.compare_digest`, whose time does not depend on where the strings differ, so response
times leak nothing about a key's prefix.

Rate limit: a *token bucket* per key. The bucket holds at most ``burst`` tokens and refills at
``rate`` tokens per second; each request takes one. An empty bucket means 429 with a
``Retry-After`` of the seconds until the next token arrives.
"""

from __future__ import annotations

import hmac
import math
import os
import threading
import time
from pathlib import Path

from fornalha.errors import ConfigError


def load_keys(path: str | Path | None = None, env: str | None = None) -> list[str]:
    """Keys from a file, else from the FORNALHA_API_KEYS value given (or in the environment)."""
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"API keys file {p} does not exist")
        keys = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
        keys = [k for k in keys if k and not k.startswith("#")]
        if not keys:
            raise ConfigError(f"API keys file {p} holds no key")
        return keys
    env = os.environ.get("FORNALHA_API_KEYS") if env is None else env
    return [k.strip() for k in (env or "").split(",") if k.strip()]


class KeyChecker:
    """Constant-time key lookup. No keys configured means an open server."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [k.encode() for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def check(self, presented: str | None) -> str | None:
        """The matching key, or None. Every key is compared (no early exit)."""
        if presented is None:
            return None
        given = presented.encode()
        found = None
        for k in self._keys:
            if hmac.compare_digest(k, given):
                found = k.decode()
        return found


class TokenBucket:
    """`rate` tokens per second, at most `burst` stored. Thread-safe."""

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ConfigError(f"rate limit needs rate > 0 and burst >= 1, got {rate}, {burst}")
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> float:
        """0 if a token was taken, else the seconds until one is available."""
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per key (or per client when the server has no keys)."""

    def __init__(self, rate: float | None, burst: int | None = None) -> None:
        self.rate = rate
        self.burst = burst or max(1, math.ceil(rate or 1))
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def retry_after(self, who: str) -> float:
        if self.rate is None:
            return 0.0
        with self._lock:
            bucket = self._buckets.get(who)
            if bucket is None:
                bucket = self._buckets[who] = TokenBucket(self.rate, self.burst)
        return bucket.take()
