"""The e-receipt page on a phone-sized Chromium: it renders with its own stylesheet (the CSP lets it through), with
no console error and nothing wider than the screen, even for long names."""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import zxingcpp
from playwright.sync_api import Browser, Page

from central.e_receipt_token import mint_token
from tests.central.test_e_receipts import push, row, sale_body
from tests.support.credentials import PHONE_KEY_BYTES

PHONES = [{"width": 320, "height": 640}, {"width": 390, "height": 844}]


@pytest.fixture
def phone(chromium: Browser, request: pytest.FixtureRequest) -> Iterator[tuple[Page, list[str]]]:
    context = chromium.new_context(
        viewport=request.param, device_scale_factor=3, is_mobile=True, has_touch=True, locale="zh-CN"
    )
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text) if message.type in ("error", "warning") else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    yield page, problems
    context.close()


def overflow(page: Page) -> int:
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


@pytest.mark.parametrize("central_database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("phone", PHONES, indirect=True, ids=["320", "390"])
def test_the_e_receipt_fits_a_phone_with_no_console_error(central, phone):
    page, problems = phone
    store = central.add_store("S1")
    member = central.add_member(points=1000, display_name="李*华")
    body = sale_body()
    body["lines"][0]["name"] = "超长商品名称没有空格" * 6 + "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" * 3
    sale = row("sale", body, 1445, member_id=member, points_earned=21)
    push(central, store, sale)

    answer = page.goto(f"{central.url}/e/{mint_token(PHONE_KEY_BYTES, sale['id'])}")
    assert answer is not None and answer.status == 200
    assert page.locator("h1").inner_text() == "S1"
    # The inline stylesheet applied: the CSP's hash is the stylesheet's.
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(238, 240, 243)"
    barcode = page.locator(".barcode svg").bounding_box()
    assert barcode is not None and barcode["width"] > 200 and barcode["height"] == 64
    assert page.locator(".barcode figcaption").inner_text() == "T012611230042"
    # The barcode reads back as the receipt number, as the store's scanner would read it off the phone.
    shot = cv2.imdecode(np.frombuffer(page.locator(".barcode").screenshot(), np.uint8), cv2.IMREAD_COLOR)
    assert [(found.text, found.format.name) for found in zxingcpp.read_barcodes(shot)] == [("T012611230042", "Code128")]
    assert overflow(page) <= 0
    assert problems == []


@pytest.mark.parametrize("central_database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("phone", PHONES[:1], indirect=True, ids=["320"])
def test_the_not_yet_and_not_found_pages_fit_a_phone_too(central, phone):
    page, problems = phone
    answer = page.goto(f"{central.url}/e/{mint_token(PHONE_KEY_BYTES, row('sale', sale_body(), 1445)['id'])}")
    assert answer is not None and answer.status == 200 and page.locator("h1").inner_text() == "尚未收到"
    assert overflow(page) <= 0 and problems == []
    answer = page.goto(f"{central.url}/e/{'A' * 32}")
    assert answer is not None and answer.status == 404 and page.locator("h1").inner_text() == "未找到小票"
    assert overflow(page) <= 0
