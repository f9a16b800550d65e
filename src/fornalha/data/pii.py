"""PII scrubbing: replace e-mail addresses, phone numbers, IP addresses and card numbers.

Each kind of identifier is found with a regular expression, checked where a check exists
(IP addresses must parse with :mod:`ipaddress`; card numbers must pass the Luhn checksum),
and replaced by a placeholder: ``<EMAIL>``, ``<PHONE>``, ``<IP>``, ``<CARD>``.
:func:`scrub` returns the new text and how many of each it replaced (for the report).

Deliberate choices, documented because scrubbing is always a trade-off:

* IP addresses that identify nobody — loopback (``127.0.0.1``), private ranges
  (``10.x``, ``192.168.x``), documentation ranges, ``::1`` — are kept by default
  (``keep_non_public_ips``), as BigCode's PII pipeline does: they are everywhere in code
  and config files and carry no personal information. IPv6 candidates need three
  non-empty groups, so a slice like ``x[1::2]`` is never taken for ``1::2``.
* Phone numbers need a shape that ordinary numbers rarely have: an international ``+CC``
  prefix, or the ``(555) 123-4567`` / ``555-123-4567`` / ``555.123.4567`` North-American
  forms. Bare runs of digits (years, counts, ids) are left alone.
* Card numbers: 13-19 digits, optionally grouped by spaces or dashes, Luhn-valid.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

# The patterns start with a plain character class (no look-behind) so that `re` can skip
# quickly to candidate positions; what must not precede a match is checked in Python
# (:func:`_clear_before`). That makes scrubbing about 4x faster on source code.
EMAIL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
CARD = re.compile(r"\d(?:[ -]?\d){12,18}(?![\d-])")
IPV4 = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\d.]|\.\d)")
IPV6 = re.compile(r"[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?(?![\w:])")
PHONES = (
    re.compile(
        r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?!\w)"
    ),  # +351 912 345 678
    re.compile(r"\(\d{3}\)[ .-]?\d{3}[ .-]\d{4}(?!\w)"),  # (555) 123-4567
    re.compile(r"\d{3}([.-])\d{3}\1\d{4}(?!\w)"),  # 555-123-4567, 555.123.4567
)


def _clear_before(m: re.Match[str], forbidden: str) -> bool:
    """True if the character before the match is not alphanumeric nor in ``forbidden``."""
    start = m.start()
    if start == 0:
        return True
    ch = m.string[start - 1]
    return not (ch.isalnum() or ch in forbidden)


class PiiConfig(BaseModel):
    """Which identifiers to replace."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    emails: bool = True
    phones: bool = True
    ips: bool = True
    cards: bool = True
    keep_non_public_ips: bool = True


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum used by payment cards (``"4111111111111111"`` is valid)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _ip_ok(candidate: str, keep_non_public: bool) -> bool:
    """True if ``candidate`` is an IP address that should be replaced."""
    try:
        addr = ipaddress.ip_address(candidate)
    except ValueError:
        return False
    if keep_non_public:
        return addr.is_global
    return True


def _ipv6_ok(candidate: str, keep_non_public: bool) -> bool:
    """IPv6 with at least three non-empty groups (so slices like ``x[1::2]`` never match)."""
    groups = [g for g in re.split(r"[:.]", candidate) if g]
    return len(groups) >= 3 and _ip_ok(candidate, keep_non_public)


def _phone_ok(m: re.Match[str]) -> bool:
    return _clear_before(m, "+_") and 9 <= sum(c.isdigit() for c in m.group(0)) <= 15


def scrub(text: str, cfg: PiiConfig | None = None) -> tuple[str, Counter[str]]:
    """Replace identifiers in ``text``; return (new text, count per placeholder kind)."""
    cfg = cfg or PiiConfig()
    counts: Counter[str] = Counter()
    if not cfg.enabled:
        return text, counts

    def sub(pattern: re.Pattern[str], label: str, check: Callable[[re.Match[str]], bool]) -> None:
        nonlocal text

        def repl(m: re.Match[str]) -> str:
            if not check(m):
                return m.group(0)
            counts[label] += 1
            return f"<{label}>"

        text = pattern.sub(repl, text)

    keep = cfg.keep_non_public_ips
    if cfg.emails and "@" in text:
        sub(EMAIL, "EMAIL", lambda m: _clear_before(m, "._%+-"))
    if cfg.cards:
        sub(CARD, "CARD", lambda m: _clear_before(m, "-_") and luhn_valid(re.sub(r"[ -]", "", m.group(0))))
    if cfg.ips and "." in text:
        sub(IPV4, "IP", lambda m: _clear_before(m, "._") and _ip_ok(m.group(0), keep))
    if cfg.ips and ":" in text:
        sub(IPV6, "IP", lambda m: _clear_before(m, ":._") and _ipv6_ok(m.group(0), keep))
    if cfg.phones:
        for pattern in PHONES:
            sub(pattern, "PHONE", _phone_ok)
    return text, counts
