"""`fornalha explain` end to end: the real command line writes one self-contained page, bad input is one
line and exit 2, and the page works in headless Chromium (a click on a token changes the view)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from explain_helpers import assert_not_blank

ROOT = Path(__file__).resolve().parents[2]
TEXT = "the quick brown fox jumps over the lazy dog. é"


def fornalha(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "fornalha.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def run_in_process(capsys, *args: str) -> tuple[int, str]:
    """The CLI's own entry point in this process (fast): (exit code, stderr)."""
    from fornalha.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_bad_input_is_one_line_and_exit_2(tiny_run, tmp_path, capsys):
    page = tmp_path / "p.html"
    res = fornalha("explain", "--run", str(tmp_path / "nope"), "--text", "hi", "--out", str(page))
    assert res.returncode == 2 and res.stderr.startswith("error:") and "does not exist" in res.stderr
    cases = {
        "is empty": ["--run", str(tiny_run), "--text", "  ", "--out", str(page)],
        "context is 64 tokens": ["--run", str(tiny_run), "--text", "a" * 80, "--out", str(page)],
        "exactly one of --text": ["--run", str(tiny_run), "--out", str(page)],
    }
    for expected, args in cases.items():
        code, err = run_in_process(capsys, "explain", *args)
        assert code == 2, (expected, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], err
        assert "Traceback" not in err
        assert not page.exists()
    mine = tmp_path / "mine.html"  # a page the user wrote is never overwritten
    mine.write_text("<html>my notes</html>")
    code, err = run_in_process(capsys, "explain", "--run", str(tiny_run), "--text", "hi", "--out", str(mine))
    assert code == 2 and "refusing to overwrite" in err
    assert mine.read_text() == "<html>my notes</html>"


def test_page_is_self_contained_and_a_click_changes_the_view(tiny_run, tmp_path, browser, artifacts_dir):
    page_file = tmp_path / "explain.html"
    res = fornalha("explain", "--run", str(tiny_run), "--text", TEXT, "--out", str(page_file))
    assert res.returncode == 0, res.stderr
    html = page_file.read_text()
    assert not re.search(r"(src|href)=\"(?!#|/\")", html)  # no external scripts, styles or images
    assert "http://" not in html and "https://" not in html
    again = fornalha("explain", "--run", str(tiny_run), "--text", "the dog", "--out", str(page_file))
    assert again.returncode == 0, again.stderr  # its own page may be replaced

    page_file.write_text(html)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_file.as_uri())
    page.wait_for_selector("body[data-ready='true']", timeout=10000)
    tokens = page.locator("#tokens .tok")
    assert tokens.count() == len(TEXT) + 1  # char tokenizer: one token per character, plus <|bos|>
    assert tokens.nth(0).locator(".t").text_content() == "<|bos|>"
    assert tokens.nth(1).locator(".meta").text_content().endswith("· 1B")
    assert tokens.nth(len(TEXT)).locator(".meta").text_content().endswith("· 2B")  # é is two bytes
    # 2 layers x (4 heads + their average) small heatmaps
    assert page.locator("#grid canvas").count() == 2 * 5

    before = page.text_content("#focus")
    assert page.get_attribute("#focus", "data-selected") == "1"
    assert page.locator("#attends li").count() == 2  # token 1 sees <|bos|> and itself
    tokens.nth(3).hover()  # hovering previews a token ...
    assert page.get_attribute("#focus", "data-selected") == "3"
    page.mouse.move(5, 5)  # ... and leaving it returns to the pinned one
    assert page.get_attribute("#focus", "data-selected") == "1"
    tokens.nth(5).click()
    assert page.get_attribute("#focus", "data-selected") == "5"
    assert page.text_content("#focus") != before and "Token 5" in page.text_content("#focus")
    assert page.locator("#attends li").count() == 6
    assert page.locator("#topk li").count() == 10
    assert "selected" in (tokens.nth(5).get_attribute("class") or "")
    weights = [float(v.rstrip(" %")) for v in page.locator("#attends li .val").all_text_contents()]
    assert abs(sum(weights) - 100) < 0.5  # the attention row shown sums to 100 %

    # choosing another layer and head from the grid changes the large heatmap and the bars
    heat_before = page.evaluate("document.getElementById('heatmap').toDataURL()")
    attends_before = page.locator("#attends li .val").all_text_contents()
    page.locator("#grid figure[data-layer='1'][data-head='2']").click()
    assert page.input_value("#layer") == "1" and page.input_value("#head") == "2"
    assert page.evaluate("document.getElementById('heatmap').toDataURL()") != heat_before
    assert page.locator("#attends li .val").all_text_contents() != attends_before
    # coloring by attention paints later tokens grey and earlier ones by weight
    page.check("input[value='attention']")
    assert tokens.nth(9).evaluate("e => e.style.background") == "rgb(238, 238, 238)"
    page.check("input[value='surprisal']")
    page.screenshot(path=str(artifacts_dir / "explain-file.png"), full_page=True)
    assert_not_blank(artifacts_dir / "explain-file.png")
    assert errors == []
    ctx.close()
