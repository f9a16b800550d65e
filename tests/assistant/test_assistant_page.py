"""The chat page with `--docs` in a real browser (Debian's chromium driven by Playwright): the sources
appear under the answer, and when the conversation outgrows the context the page says so."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("FORNALHA_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium; .ci/run does)"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        ctx = browser.new_context(viewport={"width": 1000, "height": 900},
                                  extra_http_headers={"Authorization": "Bearer sk-assistant-test"})  # fmt: skip
        pg = ctx.new_page()
        pg.goto(server.url + "/")
        pg.wait_for_function("document.getElementById('model-name').textContent !== '…'")
        yield pg
        browser.close()


def ask(page, text: str, max_tokens: int, nth: int) -> None:
    page.fill("#temperature", "0")
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#input", text)
    page.press("#input", "Enter")
    page.wait_for_selector(f".msg.assistant >> nth={nth} >> xpath=self::*[@data-done='true']", timeout=60000)


def test_sources_and_the_dropped_turns_note_on_the_page(page, tmp_path):
    # 1. a long first question: its sources are listed under the answer, each passage one click away
    ask(page, "How long should I knead the dough? " + "please " * 170, 8, 0)
    first = page.locator(".msg.assistant").nth(0)
    assert "Error" not in first.locator(".text").text_content()
    summaries = first.locator(".sources summary")
    assert summaries.count() == 2 and summaries.nth(0).text_content().startswith(
        "Baking bread — kitchen/bread.md"
    )
    quote = first.locator(".sources blockquote").nth(0)
    assert not quote.is_visible()
    summaries.nth(0).click()
    assert quote.is_visible() and "Knead" in quote.text_content()
    assert first.locator(".context-note").count() == 0

    # 2. a reply of 900 tokens leaves no room for the first exchange in the 2048-token window
    ask(page, "what does the aperture of a telescope decide", 900, 1)
    second = page.locator(".msg.assistant").nth(1)
    note = second.locator(".context-note").text_content()
    assert note.startswith("2 oldest messages left out") and "2048-token context window" in note
    forgotten = page.locator(".msg.forgotten")
    assert forgotten.count() == 2  # the first question and its answer, greyed out
    assert "please please" in forgotten.nth(0).text_content()
    assert "Choosing a telescope" in second.locator(".sources summary").nth(0).text_content()

    shot = tmp_path / "assistant-page.png"
    page.screenshot(path=str(shot), full_page=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10, f"{shot} looks blank"
