"""The shopper's kiosk screen in a real browser, against a whole store: agent, central, WeChat Pay simulator."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from playwright.sync_api import Page, expect

from tests.checkout_stack import Stack, wechat_code
from tests.support.poll import eventually

WATER = {"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 2, "unit_price_fen": 1000}


def open_kiosk(page: Page, stack: Stack, **options: object) -> None:
    """The kiosk at idle, following the station's events (so the next scan shows)."""
    fragment = "&".join([f"token={stack.token}", *(f"{name}={value}" for name, value in options.items())])
    page.goto(f"{stack.url}/kiosk/#{fragment}")
    expect(page.locator("body")).to_have_attribute("data-live", "true")
    expect(page.locator("#screen-idle")).to_be_visible()
    expect(page.locator("#screen-idle")).to_contain_text("请扫描会员码或付款码")


def set_basket(stack: Stack, *lines: dict) -> dict:
    """What the store's POS software does: send the basket of the sale open at the station."""
    session = stack.api.get("/v1/sessions/current").json()
    answer = stack.api.put(f"/v1/sessions/{session['id']}/basket", json={"lines": list(lines)})
    assert answer.status_code == 200, answer.text
    return answer.json()


def hold_customer(stack: Stack) -> datetime:
    """Stop the simulated customer's clock: a USERPAYING payment stays unconfirmed until `release_customer`."""
    held = datetime.now(UTC)
    stack.wechat.clock = lambda: held
    return held


def release_customer(stack: Stack) -> None:
    stack.wechat.clock = lambda: datetime.now(UTC) + timedelta(minutes=1)


def wait_for_failed_pull(stack: Stack, within_s: float = 10) -> None:
    """Until the agent's start-up member pull has failed: from then on it knows central is unreachable."""
    eventually(
        lambda: stack.api.get("/v1/sync").json()["pull"]["failures"], within=within_s, what="a failed member pull"
    )


def test_member_scans_then_pays_by_code_and_sees_points_and_receipt_number(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk")
    member = stack.add_member(points=1000, tier="gold", display_name="王*明")
    stack.sync_now()  # the store learns the member and central's member-code key
    open_kiosk(page, stack)

    stack.scan(stack.member_code(member))
    card = page.locator("#member")
    expect(card).to_contain_text("王*明")
    expect(card).to_contain_text("金卡会员")
    expect(card).to_contain_text("1000")
    expect(page.locator("#no-lines")).to_be_visible()

    sale = set_basket(stack, WATER)
    due = sale["pricing"]["amount_due_fen"]
    assert sale["pricing"]["tier_discount_fen"] > 0
    expect(page.locator("#lines")).to_contain_text("矿泉水 550ml")
    expect(page.locator("#pricing")).to_contain_text("会员折扣")
    expect(page.locator("#due")).to_have_text(f"¥{due // 100}.{due % 100:02d}")
    expect(page.locator("#pay-prompt")).to_contain_text("请出示付款码")
    expect(page.locator("#earn")).to_contain_text(f"本单可得 {sale['points']['earned']} 积分")

    stack.scan(wechat_code())
    success = page.locator("#screen-success")
    expect(success).to_be_visible()
    expect(success).to_contain_text("支付成功")
    expect(page.locator("#success-points")).to_contain_text(f"+{sale['points']['earned']}")
    expect(page.locator("#success-points")).to_contain_text(str(1000 + sale["points"]["earned"]))
    receipt_no = page.locator("#receipt-no")
    expect(receipt_no).to_have_text(re.compile(r"^T01\d{10}$"))
    # The number on the screen is the one on the paper.
    assert receipt_no.text_content() in stack.printed(sale["id"])


def test_customer_confirms_on_the_phone_then_paid(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk")
    open_kiosk(page, stack, final=0.5)
    stack.scan(WATER["sku"])  # the kiosk prices it from its catalog
    expect(page.locator("#lines")).to_contain_text("矿泉水 550ml")

    hold_customer(stack)
    stack.scan(wechat_code("10"))  # USERPAYING, then paid once the customer confirms
    waiting = page.locator("#screen-waiting")
    expect(waiting).to_be_visible()
    expect(waiting).to_contain_text("请在手机上确认支付")
    expect(page.locator("#waiting-amount")).to_have_text("¥2.00")

    release_customer(stack)
    expect(page.locator("#screen-success")).to_be_visible()
    expect(page.locator("#receipt-no")).to_have_text(re.compile(r"^T01\d{10}$"))
    # A short while on the final screen, then idle for the next shopper.
    expect(page.locator("#screen-idle")).to_be_visible()


def test_shopper_cancels_while_the_phone_waits(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk")
    open_kiosk(page, stack, final=0.5)
    stack.scan(WATER["sku"])
    expect(page.locator("#pay-prompt")).to_be_visible()

    stack.scan(wechat_code("12"))  # USERPAYING until reversed: the customer never confirms
    expect(page.locator("#screen-waiting")).to_be_visible()
    page.locator("#payment-cancel").click()

    expect(page.locator("#notice")).to_contain_text("支付已取消")
    expect(page.locator("#screen-sale")).to_be_visible()
    expect(page.locator("#pay-prompt")).to_be_visible()
    sale = stack.api.get("/v1/sessions/current").json()
    assert sale["payment"]["cancel_requested"] and not sale["tenders"]

    page.locator("#sale-cancel").click()
    expect(page.locator("#screen-cancelled")).to_contain_text("交易已取消")
    expect(page.locator("#screen-idle")).to_be_visible()
    assert stack.api.get("/v1/sessions/current").status_code == 404


def test_not_enough_money_shows_why_in_chinese(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk")
    open_kiosk(page, stack)
    stack.scan(WATER["sku"])
    expect(page.locator("#pay-prompt")).to_be_visible()

    stack.scan(wechat_code("32"))  # NOTENOUGH
    failure = page.locator("#screen-failure")
    expect(failure).to_be_visible()
    expect(page.locator("#failure-zh")).to_contain_text("余额不足")

    page.locator("#failure-retry").click()
    expect(page.locator("#pay-prompt")).to_be_visible()


def test_phone_keypad_shows_only_the_masked_number(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk")
    phone = "13812345678"
    stack.add_member(points=500, tier="gold", display_name="李*华", phone=phone)
    open_kiosk(page, stack)

    page.locator("#use-phone").click()
    for digit in phone:
        page.locator(f'#keypad [data-key="{digit}"]').click()
    expect(page.locator("#phone-display")).to_have_text("138****5678")
    assert phone not in page.content() and "1234" not in page.locator("body").inner_text()
    expect(page.locator("#phone-ok")).to_be_disabled()  # not before "this is my number"

    page.locator("#phone-mine").check()
    page.locator("#phone-ok").click()
    expect(page.locator("#member")).to_contain_text("李*华")
    expect(page.locator("#member")).to_contain_text("500")
    assert phone not in page.content()

    # Identified by a confirmed phone: points may be spent.
    set_basket(stack, WATER)
    use = page.locator("#redeem-use")
    expect(use).to_contain_text("使用 500 积分")
    use.click()
    expect(page.locator("#pricing")).to_contain_text("积分抵扣 500")
    expect(page.locator("#redeem-none")).to_be_visible()


def test_offline_banner_when_central_is_down(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk")
    stack.central.stop()  # the WAN is down when the kiosk starts in the morning
    stack.stop()
    stack.start()
    wait_for_failed_pull(stack)
    open_kiosk(page, stack)
    banner = page.locator("#offline")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("网络中断：仅支持现金/银行卡")

    stack.scan(WATER["sku"])
    expect(page.locator("#lines")).to_contain_text("矿泉水 550ml")
    expect(banner).to_be_visible()
    expect(page.locator("#pay-offline")).to_contain_text("请到人工收银台用现金或银行卡付款")
    expect(page.locator("#pay-prompt")).to_be_hidden()


def test_abandoned_sale_is_cancelled_after_the_idle_timeout(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk")
    open_kiosk(page, stack, idle=1, final=0.5)
    stack.scan(WATER["sku"])
    expect(page.locator("#lines")).to_contain_text("矿泉水 550ml")

    expect(page.locator("#cancelled-reason")).to_contain_text("长时间无操作")
    expect(page.locator("#screen-idle")).to_be_visible()
    assert stack.api.get("/v1/sessions/current").status_code == 404
