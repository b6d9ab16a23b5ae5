"""What both screens share: the token, and the Chinese text as drawn."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Page, expect

from tests.checkout_stack import Stack


def test_without_the_token_the_screens_say_what_they_need(page: Page, stack: Stack) -> None:
    for fragment in ("", "#token=not-the-stations-token"):
        page.goto(f"{stack.url}/kiosk/{fragment}")
        locked = page.locator("#screen-locked")
        expect(locked).to_be_visible()
        expect(locked).to_contain_text("此屏幕需要本机的 API 令牌")
        page.locator("#lang").click()  # the kiosk speaks one language at a time
        expect(locked).to_contain_text("This screen needs the station's API token")
        expect(page.locator("#screen-idle")).to_be_hidden()

        page.goto(f"{stack.url}/till/{fragment}")
        message = page.locator("#message")
        expect(message).to_contain_text("This screen needs the station's API token")
        expect(message).to_have_attribute("data-code", "unauthorized")
        expect(page.locator("#cash-form button[type=submit]")).to_be_disabled()


def test_the_token_leaves_the_address_bar_and_survives_a_reload(page: Page, stack: Stack) -> None:
    page.goto(f"{stack.url}/till/#token={stack.token}")
    expect(page.locator("#status-online")).to_contain_text("在线 Online")
    assert stack.token not in page.url
    page.reload()
    expect(page.locator("#status-online")).to_contain_text("在线 Online")
    expect(page.locator("#message")).to_be_hidden()


def test_chinese_text_is_drawn_with_real_glyphs(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk")
    page.goto(f"{stack.url}/kiosk/#token={stack.token}")
    heading = page.locator("#screen-idle h2")
    expect(heading).to_have_text("请扫描会员码或付款码")
    text = heading.text_content()

    box = page.evaluate(
        """(node) => {
             const range = document.createRange();
             range.selectNodeContents(node);
             const r = range.getBoundingClientRect();
             return {x: r.x, y: r.y, width: r.width, height: r.height, em: parseFloat(getComputedStyle(node).fontSize)};
           }""",
        heading.element_handle(),
    )
    fonts = _fonts_drawing(page, "#screen-idle h2")
    # A CJK font draws each character one em wide; the missing-glyph boxes Chromium draws without one are
    # about a third of that.
    assert box["width"] == pytest.approx(len(text) * box["em"], rel=0.05), f"not full-width glyphs; drawn with {fonts}"
    assert sum(font["glyphCount"] for font in fonts) == len(text), fonts

    clip = {name: box[name] for name in ("x", "y", "width", "height")}
    picture = np.asarray(Image.open(io.BytesIO(page.screenshot(clip=clip))).convert("L"))
    cells = np.array_split(picture, len(text), axis=1)
    ink = [int((cell < 128).sum()) for cell in cells]
    assert min(ink) > 0, f"a character left no ink: {ink}"


def _fonts_drawing(page: Page, selector: str) -> list[dict]:
    """The platform fonts Chromium used for the element's text, with how many glyphs each drew."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
    return cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]


def test_data_is_shown_as_text_never_as_markup(page: Page, stack: Stack) -> None:
    name = '<img src=x onerror="window.pwned=1">'
    session = stack.open_session()
    line = {"sku": "X1", "name": name, "qty": 1, "unit_price_fen": 100}
    answer = stack.api.put(f"/v1/sessions/{session['id']}/basket", json={"lines": [line]})
    assert answer.status_code == 200, answer.text
    page.goto(f"{stack.url}/till/#token={stack.token}")
    expect(page.locator("#sale-lines")).to_contain_text(name)
    expect(page.locator("#sale-lines img")).to_have_count(0)
    assert page.evaluate("window.pwned") is None


@pytest.mark.parametrize("which", ["agent", "central"])
def test_the_api_docs_render_with_every_outside_request_blocked(page: Page, stack: Stack, which: str) -> None:
    """A store is often offline: /docs loads Swagger UI from the service itself, nothing from outside."""
    origin = stack.url if which == "agent" else stack.central.url
    outside: list[str] = []

    def only_the_service(route) -> None:
        if route.request.url.startswith(origin):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_service)
    title = "POS Edge Agent" if which == "agent" else "POS Central"
    page.goto(f"{origin}/docs")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text(title.split()[0])
    expect(page.locator(".swagger-ui .opblock").first).to_be_visible()
    assert outside == []
