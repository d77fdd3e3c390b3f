"""The operator page under its Content-Security-Policy, in headless Chromium: it draws, its
stylesheet applies, no policy violation is reported, and its own login and control POSTs
pass the cross-site checks (JSON from the view's origin). Waits poll with
``page.evaluate`` (CDP), since Playwright's ``wait_for_function`` evaluates strings with
``eval``, which the policy refuses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from playwright.async_api import Page, async_playwright
from test_ui_api import running_twin, wait_state
from test_ui_browser import ARGS, CHROMIUM

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow, pytest.mark.serial]


async def _until(page: Page, expression: str, timeout: float = 20.0) -> None:
    for _ in range(int(timeout / 0.1)):
        if await page.evaluate(expression):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not true within {timeout} s: {expression}")


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
            await _until(page, "document.body.dataset.cycle > 1")
            tag = "feed_dilution_sp"
            await _until(page, f"!!document.querySelector('#trend-{tag} .annotation-text')")
            background = await page.evaluate(
                "getComputedStyle(document.querySelector('section')).backgroundColor"
            )
            assert background == "rgb(255, 255, 255)"  # the stylesheet applies
            await page.fill("#user", "carl")
            await page.fill("#password", "carl-pass-1")
            await page.click("#login")
            await _until(page, "document.getElementById('who').textContent.startsWith('carl')")
            await wait_state(twin, "RUNNING")
            await page.fill("#reason", "browser release")
            await page.click("#release")
            await _until(page, "document.getElementById('state').textContent === 'RELEASED'")
            assert await page.text_content("#message") == ""
            violations = [t for t in console if "Content Security Policy" in t]
            assert not violations, violations
        finally:
            await browser.close()
