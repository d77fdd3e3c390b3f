"""The operator page under its Content-Security-Policy, in headless Chromium: it draws, its
stylesheet applies, no policy violation is reported, and its own login and control POSTs
pass the cross-site checks (JSON from the view's origin). Waits use Playwright's selectors
and assertions, not ``wait_for_function``, which evaluates strings with ``eval`` (the policy
refuses it)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.async_api import async_playwright, expect
from test_ui_api import running_twin, wait_state
from test_ui_browser import ARGS, CHROMIUM

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow, pytest.mark.serial]


async def test_the_page_works_under_its_policy_and_acts_from_its_origin(tmp_path: Path) -> None:
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: apt-get install -y chromium"
    async with running_twin(tmp_path) as twin, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1500})
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            policy = await (await page.goto(twin.view.url + "/")).all_headers()  # type: ignore[union-attr]
            assert "default-src 'self'" in policy["content-security-policy"]
            tag = "feed_dilution_sp"  # a trend drew its limit: cycles came in and were shown
            await page.wait_for_selector(f"#trend-{tag} .annotation-text", timeout=20000)
            background = await page.evaluate(
                "getComputedStyle(document.querySelector('section')).backgroundColor"
            )
            assert background == "rgb(255, 255, 255)"  # the stylesheet applies
            await page.fill("#user", "carl")
            await page.fill("#password", "carl-pass-1")
            await page.click("#login")
            await expect(page.locator("#who")).to_have_text(re.compile("^carl"), timeout=20000)
            await wait_state(twin, "RUNNING")
            await page.fill("#reason", "browser release")
            await page.click("#release")
            await expect(page.locator("#state")).to_have_text("RELEASED", timeout=20000)
            assert await page.text_content("#message") == ""
            violations = [t for t in console if "Content Security Policy" in t]
            assert not violations, violations
        finally:
            await browser.close()
