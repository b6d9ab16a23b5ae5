"""The device console in a real browser: whatever the devices, scans and print jobs say, nothing runs off the page."""

from __future__ import annotations

import json
import re

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from tests.checkout_stack import Stack

SIZES = [(1024, 768), (1280, 800), (1920, 1080)]

# What a badly set up scanner sends: the longest text the API takes, without a space to break at (the agent
# shows its first 512 characters).
GARBAGE = ("Zx7qW9K3" * 512)[:4096]
LONG_ID = "usb-Acme_Scanner_0123456789abcdef" * 3
LONG_ERROR = "cannot open /dev/serial/by-id/" + "usb-Acme_Thermal_Receipt_Printer_" * 40 + ": Permission denied"
LONG_REASON = "no answer from the device; " * 30


def open_console(page: Page, stack: Stack) -> None:
    page.goto(f"{stack.url}/console/#token={stack.token}")
    expect(page.locator("#station")).to_contain_text("T01")


def lengthen(route: Route) -> None:
    """The agent's real answer, with the long texts a failing device or job can carry (an OS error names paths),
    and ids longer than the settings allow, for a console talking to another release."""
    answer = route.fetch()
    body = answer.json()
    if isinstance(body, list):  # print jobs
        for job in body:
            job["last_error"] = LONG_ERROR
            job["purpose"] += LONG_ID
    else:  # devices
        for scanner in body["scanners"]:
            scanner["reason"] = LONG_REASON
            scanner["id"] += LONG_ID
        body["printer"]["reason"] = LONG_REASON
        body["printer"]["id"] += LONG_ID
    route.fulfill(response=answer, body=json.dumps(body))


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_long_scans_errors_and_ids_never_push_the_console_sideways(
    chromium: Browser, stack: Stack, size: tuple[int, int]
) -> None:
    stack.scan("6901234567892")
    stack.scan(GARBAGE)
    printed = stack.api.post("/v1/printer/test-page")
    assert printed.status_code == 200, printed.text

    context = chromium.new_context(viewport={"width": size[0], "height": size[1]}, locale="zh-CN")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.route(re.compile(r"/v1/(devices|printer/jobs)$"), lengthen)
    try:
        check_nothing_runs_off(page, stack)
    finally:
        page.unroute_all(behavior="ignoreErrors")
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def check_nothing_runs_off(page: Page, stack: Stack) -> None:
    open_console(page, stack)
    expect(page.locator("#scans tr")).to_have_count(2)
    expect(page.locator('#jobs li[data-status="printed"] img')).to_have_count(1)  # the test page's preview
    expect(page.locator("#jobs li .reason")).to_have_count(1)
    expect(page.locator("#scanners .reason")).to_have_count(1)
    expect(page.locator("#printer .reason")).to_have_count(1)

    # The long texts are cut on screen, and whole where the pointer rests on them.
    shown = next(scan["value"] for scan in stack.api.get("/v1/scans").json() if scan["value"].startswith(GARBAGE[:32]))
    garbage = page.locator("#scans td", has_text=GARBAGE[:32])
    assert garbage.get_attribute("title") == shown, "the scan as the agent tells it is not whole in the cell's title"
    assert garbage.bounding_box()["height"] < 48  # one line, not a wall of text
    expect(page.locator("#jobs .reason")).to_have_attribute("title", LONG_ERROR)
    expect(page.locator("#scanners .reason")).to_have_attribute("title", LONG_REASON)

    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    misfits = page.evaluate(
        """() => [...document.querySelectorAll("table")].flatMap((table) => {
             // A table's box is the scrolling box around it; that box must lie within its section and the
             // window, and a table wider than its box scrolls inside it.
             const box = table.closest(".table-box") || table;
             const section = box.closest("section");
             const b = box.getBoundingClientRect(), s = section.getBoundingClientRect();
             const problems = [];
             if (b.left < s.left - 0.5 || b.right > s.right + 0.5) problems.push(`${table.id || "table"} wider than its section`);
             if (b.right > window.innerWidth + 0.5) problems.push(`${table.id || "table"} beyond the window`);
             const wider = table.getBoundingClientRect().width > box.clientWidth + 0.5;
             if (wider && !["auto", "scroll"].includes(getComputedStyle(box).overflowX)) problems.push(`${table.id || "table"} spills out of its box`);
             return problems;
           })"""
    )
    assert misfits == []
    beyond = page.evaluate(
        """() => [...document.querySelectorAll("body *")]
             .filter((n) => !n.closest(".table-box") && n.getClientRects().length)
             .filter((n) => n.getBoundingClientRect().right > window.innerWidth + 0.5)
             .map((n) => n.id || n.className || n.tagName)"""
    )
    assert beyond == []
