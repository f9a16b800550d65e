"""The explain page: one self-contained HTML file (inline CSS and JavaScript, no network access).

    render_page(explanation)      the page for `fornalha explain --out PAGE.html`, its data inside it
    render_page(None, live=True)  the page `fornalha serve` shows at GET /explain: a text box whose
                                  text goes to POST /v1/explain and comes back as the same data

The view is written in plain JavaScript in ``static/explain.js`` (no framework, no build step) and
inlined here with ``static/explain.css``, so the file opens offline, can be mailed or archived.
The explanation travels as JSON in a ``<script type="application/json">`` element; every ``<`` in
it is written as ``\\u003c``, so a text containing ``</script>`` cannot end the element early.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

STATIC = Path(__file__).parent / "static"
GENERATOR = "fornalha explain"  # the <meta name="generator"> that marks pages this command wrote


def _static(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def render_page(explanation: dict[str, Any] | None, *, live: bool = False, title: str | None = None) -> str:
    """The complete HTML page (a string) for one explanation, or the empty live page."""
    data = json.dumps(explanation, ensure_ascii=False, separators=(",", ":")) if explanation else "null"
    data = data.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    page = _static("explain.html")
    replacements = {
        "{{TITLE}}": html.escape(title or "fornalha explain"),
        "{{GENERATOR}}": GENERATOR,
        "{{MODE}}": "live" if live else "file",
        "/*{{CSS}}*/": _static("explain.css"),
        "/*{{JS}}*/": _static("explain.js"),
        "{{DATA}}": data,
    }
    # one pass, so text inserted for one placeholder (a title, the user's text) is never read as another
    pattern = re.compile("|".join(re.escape(k) for k in replacements))
    return pattern.sub(lambda m: replacements[m.group(0)], page)


def written_by_explain(path: Path) -> bool:
    """True when `path` is a page this command wrote (so --out may replace it)."""
    try:
        head = path.read_bytes()[:2048].decode("utf-8", errors="replace")
    except OSError:
        return False
    return f'<meta name="generator" content="{GENERATOR}">' in head
