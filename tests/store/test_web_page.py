"""The chat page in a real browser: Debian's chromium driven by Playwright against a live server."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fornalha.serve.store import Store

CHROMIUM = os.environ.get("FORNALHA_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} not found: install Debian's chromium (apt-get install -y chromium; .ci/run does)"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def assert_not_blank(path: Path) -> None:
    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert pixels.std() > 10, f"{path} looks blank (pixel std {pixels.std():.1f})"


def test_chat_streams_stops_rates_and_the_rating_is_stored(live_server, browser, artifacts_dir):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server.url)
    page = ctx.new_page()
    page.goto(live_server.url + "/")
    page.wait_for_function("document.getElementById('model-name').textContent !== '…'")
    assert "no model" not in page.text_content("#model-name")
    page.fill("#system", "You are terse.")
    page.fill("#temperature", "0")  # greedy: the tiny random model's answer runs to max_tokens

    # 1. A long answer streams in (its text grows while we watch), then Stop aborts it. Long: the
    # engine decodes this tiny model at thousands of tokens a second, and 400 could end before Stop.
    page.fill("#max-tokens", "1800")
    page.fill("#input", "tell me a long story")
    page.press("#input", "Enter")
    answer = page.locator(".msg.assistant").nth(0)
    page.wait_for_function("document.querySelector('.msg.assistant .text').textContent.length > 0")
    first = len(answer.locator(".text").text_content())
    page.wait_for_function(
        f"document.querySelector('.msg.assistant .text').textContent.length > {first}", timeout=10000
    )
    assert page.is_enabled("#stop")
    page.click("#stop")
    page.wait_for_selector(".msg.assistant[data-stopped='true']", timeout=10000)
    stopped_len = len(answer.locator(".text").text_content())
    page.wait_for_timeout(300)
    assert len(answer.locator(".text").text_content()) == stopped_len, "text kept growing after Stop"
    assert page.is_enabled("#send") and not page.is_enabled("#stop")

    # 2. A second turn completes; it is copied, then rated thumbs down with a comment.
    page.fill("#max-tokens", "8")
    page.fill("#input", "and a short one")
    page.press("#input", "Enter")
    second = page.locator(".msg.assistant").nth(1)
    page.wait_for_selector(".msg.assistant >> nth=1 >> xpath=self::*[@data-done='true']", timeout=20000)
    text = second.locator(".text").text_content()
    assert text.strip() and "Error" not in text
    cid = second.get_attribute("data-completion-id")
    assert cid
    second.locator("button.copy").click()
    page.wait_for_function("document.getElementById('status').textContent.length > 0")
    assert page.evaluate("navigator.clipboard.readText()") == text
    second.locator("input.comment").fill("too vague")
    second.locator("button.rate-down").click()
    page.wait_for_selector(".msg.assistant >> nth=1 >> xpath=self::*[@data-rated='-1']", timeout=10000)
    page.screenshot(path=str(artifacts_dir / "chat-desktop.png"), full_page=True)

    store = Store(live_server.db_url)
    rows = store.list_feedback(cid)
    assert [(r["rating"], r["comment"]) for r in rows] == [(-1, "too vague")]
    stored = store.get_completion(cid)
    assert stored["request"]["messages"][0] == {"role": "system", "content": "You are terse."}
    assert [m["role"] for m in stored["request"]["messages"]] == ["system", "user", "assistant", "user"]
    store.close()

    if live_server.kind == "test double":  # an answer object carrying `sources` shows them
        page.fill("#input", "sources please")
        page.press("#input", "Enter")
        page.wait_for_selector(".msg.assistant .sources li", timeout=20000)
        assert page.locator(".msg.assistant >> nth=2 >> .sources li").all_text_contents() == [
            "Doc A",
            "Doc B",
        ]

    # 3. Phone width: the same conversation fits without horizontal scrolling.
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(200)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    assert page.locator("#send").is_visible() and page.locator("#stop").is_visible()
    page.screenshot(path=str(artifacts_dir / "chat-phone.png"), full_page=True)
    for name in ("chat-desktop.png", "chat-phone.png"):
        assert_not_blank(artifacts_dir / name)
    ctx.close()
