"""Real-browser fixtures for the kiosk and till screens: Debian's Chromium, driven by Playwright.

Playwright's own browser downloads are not used (`playwright install` is never run): `make setup` installs
Debian's `chromium`, and these tests drive it. Without it they skip, or fail when CI=true.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IN_CI = os.environ.get("CI") == "true"

# Long enough for a USERPAYING customer, a reversal or a printed receipt on a loaded 2-core CI machine.
expect.set_options(timeout=10_000)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing: run `make setup` (it installs Debian's chromium package)"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="session")
def chromium(chromium_path: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(chromium: Browser, stack_factory) -> Iterator[Page]:
    """A fresh browser profile (own sessionStorage) per test; uncaught JavaScript errors fail the test.

    It asks for `stack_factory` so that it closes first: an agent stopped while a screen still follows its
    event stream would wait for that connection to end."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
