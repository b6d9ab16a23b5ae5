"""The shopper's kiosk screen in a real browser, against a whole store: agent, central, WeChat Pay simulator.

Every test here fails on an error in the browser's console (a request the agent refuses is one). The screen's
idle timer runs on Playwright's clock, which the tests move forward instead of waiting."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
import zxingcpp
from playwright.sync_api import ConsoleMessage, Page, expect

from tests.checkout_stack import Stack, wechat_code
from tests.support.credentials import SUPERVISOR_PIN
from tests.support.poll import eventually

STATIC = Path(__file__).resolve().parents[2] / "kiosk_ui" / "static"
README_PICTURES = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def readme_picture(name: str) -> Path:
    """Where a picture of the README goes: into docs/screenshots when `make screenshots` runs these tests
    (UPDATE_SCREENSHOTS=1), else a temporary folder, so a test run leaves the working tree as it was."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        return README_PICTURES / name
    folder = Path(tempfile.gettempdir()) / "pos-edge-screenshots"
    folder.mkdir(exist_ok=True)
    return folder / name


WATER = {"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 2, "unit_price_fen": 1000}
JUICE = "6901234567908"
APPLES = "6901234567915"  # sold by weight: the kiosk sends the customer to a cashier
MORE_GOODS = f"""
[[checkout.catalog]]
gtin = "{JUICE}"
name = "鲜榨橙汁 1L"
price_fen = 1290

[[checkout.catalog]]
gtin = "{APPLES}"
name = "红富士苹果（散装）"
price_fen = 990
weighed = true
"""


IDLE_MS = 120_000  # the kiosk's defaults: "still there?" after two minutes without a touch ...
COUNTDOWN_MS = 20_000  # ... and the next shopper's screen twenty seconds later


@pytest.fixture(autouse=True)
def no_console_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    if "page" not in request.fixturenames:
        yield
        return
    page: Page = request.getfixturevalue("page")
    errors: list[str] = []

    def seen(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(f"{message.text} at {message.location.get('url')}")

    page.on("console", seen)
    yield
    assert not errors, f"errors in the browser's console: {errors}"


def caught_up(page: Page, stack: Stack) -> None:
    """The screen shows the agent's latest version of the open sale. A late event would count as the shopper's
    activity and restart the idle count a test is about to run out."""
    open_session = stack.api.get("/v1/status").json()["checkout"]["open_session"]
    version = str(stack.session(open_session)["version"]) if open_session else ""
    expect(page.locator("body")).to_have_attribute("data-version", version)


def open_kiosk(page: Page, stack: Stack, *, stop_clock: bool = False, **options: object) -> None:
    """The kiosk at idle, following the station's events (so the next scan shows), on a clock the test can move.

    `stop_clock`: the page's time then moves only when the test moves it, so a countdown reads exactly."""
    fragment = "&".join([f"token={stack.token}", *(f"{name}={value}" for name, value in options.items())])
    page.clock.install()
    page.goto(f"{stack.url}/kiosk/#{fragment}")
    expect(page.locator("body")).to_have_attribute("data-live", "true")
    expect(page.locator("#screen-idle")).to_be_visible()
    expect(page.locator("#screen-idle")).to_contain_text("请扫描会员码或付款码")
    if stop_clock:
        page.clock.pause_at(page.evaluate("Date.now()") + 1_000)


def set_basket(stack: Stack, *lines: dict) -> dict:
    """What the store's POS software does: send the basket of the sale open at the station (once a scan opened it)."""
    session = stack.wait_session_current(done=lambda _: True)
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
    expect(page.locator("#failure-reason")).to_contain_text("余额不足")

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

    # Identified by a confirmed phone: points may be spent, as many as the shopper chooses and confirms.
    set_basket(stack, WATER)
    use = page.locator("#redeem-use")
    expect(use).to_contain_text("使用积分（最多 500）")
    use.click()
    expect(page.locator("#redeem-amount")).to_have_text("0")  # nothing is spent by the tap that opens it
    page.locator("#redeem-more").click()
    page.locator("#redeem-more").click()
    page.locator("#redeem-next").click()
    expect(page.locator("#redeem-question")).to_have_text("确认使用 200 积分抵扣本单？")
    assert stack.api.get("/v1/sessions/current").json()["pricing"]["points_redeemed"] == 0
    page.locator("#redeem-confirm").click()
    expect(page.locator("#pricing")).to_contain_text("积分抵扣 200")
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


# --- self-checkout: the basket, help, points -------------------------------------------------------------------


def read_qr(page: Page, selector: str) -> list[str]:
    """The QR codes in the element as a phone's camera would read them off the screen."""
    shot = cv2.imdecode(np.frombuffer(page.locator(selector).screenshot(), np.uint8), cv2.IMREAD_COLOR)
    return [found.text for found in zxingcpp.read_barcodes(shot)]


def test_self_checkout_changes_quantities_takes_a_line_off_and_pays_as_member_with_an_e_receipt(
    page: Page, stack_factory
) -> None:
    stack = stack_factory(kind="kiosk", extra_toml=MORE_GOODS)
    member = stack.add_member(points=300, tier="gold", display_name="王*明")
    stack.add_coupon(member, "满20减3", amount_off_fen=300, threshold_fen=2000)
    stack.sync_now()
    page.set_viewport_size({"width": 1280, "height": 800})
    open_kiosk(page, stack, final=60)
    stack.scan(stack.member_code(member))
    stack.scan(WATER["sku"])
    stack.scan(JUICE)
    rows = page.locator("#lines tr")
    expect(rows).to_have_count(2)
    water, juice = rows.nth(0), rows.nth(1)
    expect(water.locator('[data-focus="less-0"]')).to_be_disabled()  # one left: it comes off with ✕

    water.locator('[data-focus="more-0"]').click()
    expect(water.locator(".qty-value")).to_have_text("2")
    expect(page.locator("#coupons")).to_be_empty()  # ¥16.90 of goods: 满20减3 not yet
    juice.locator('[data-focus="more-1"]').click()
    expect(juice.locator(".qty-value")).to_have_text("2")
    coupon = page.locator("#coupons")
    expect(coupon).to_contain_text("满20减3")  # the member's own coupon, applied by the agent
    expect(coupon).to_contain_text("已自动使用")
    water.locator('[data-focus="remove-0"]').click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("鲜榨橙汁 1L")
    sale = stack.api.get("/v1/sessions/current").json()
    assert [(line["sku"], line["qty"]) for line in sale["lines"]] == [(JUICE, 2)]
    assert sale["pricing"]["tier_discount_fen"] > 0 and sale["coupons"][0]["auto"]
    expect(page.locator("#pricing")).to_contain_text("会员折扣")
    page.screenshot(path=readme_picture("kiosk-self-checkout.png"))

    stack.scan(APPLES)  # weighed goods: not sold here, and said so where the shopper is looking
    expect(page.locator("#sale-alert")).to_have_text("称重或店内标价商品请到人工收银台结算")
    expect(rows).to_have_count(1)

    stack.scan(wechat_code())
    expect(page.locator("#screen-success")).to_be_visible()
    paid = stack.wait_session(sale["id"], lambda sale: sale["paid"])
    expect(page.locator("#success-points")).to_contain_text(f"+{paid['points']['earned']}")
    expect(page.locator("#receipt-no")).to_have_text(paid["receipt_no"])
    expect(page.locator("#receipt-printed")).to_have_text("小票已打印，请取走")
    expect(page.locator("#e-receipt")).to_contain_text("扫码查看电子小票")
    expect(page.locator("#pay-join")).to_be_hidden()  # a member already
    # The QR on the screen opens the sale's e-receipt page, as the one on the paper does.
    link = stack.session(sale["id"])["e_receipt_url"]
    assert link and read_qr(page, "#e-receipt-qr") == [link]
    preview = stack.api.get(f"/v1/printer/jobs/{sale['id']}-receipt/preview.png")
    assert preview.status_code == 200, preview.text
    readme_picture("receipt.png").write_bytes(preview.content)


def test_the_help_button_calls_the_staff_at_the_till(page: Page, stack_factory) -> None:
    till = stack_factory()
    stack = stack_factory(kind="kiosk", extra_toml=f'\n[help]\ntill_url = "{till.url}"\ntill_token = "{till.token}"\n')
    open_kiosk(page, stack)
    stack.scan(WATER["sku"])
    page.locator("#sale-help").click()
    expect(page.locator("#notice")).to_have_text("已呼叫店员，请稍候")
    expect(page.locator("#sale-help")).to_be_disabled()  # one call, not one per impatient tap
    sale_id = stack.api.get("/v1/status").json()["checkout"]["open_session"]
    heard = till.station_event(lambda event: event["type"] == "help")
    assert heard["call"]["session_id"] == sale_id

    till.stop()  # the till does not answer: the kiosk says what to do instead
    page.clock.fast_forward(10_000)
    expect(page.locator("#sale-help")).to_be_enabled()
    page.locator("#sale-help").click()
    expect(page.locator("#notice")).to_have_text("请向附近的店员示意")


def test_points_are_spent_only_as_chosen_and_confirmed(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk", extra_toml=MORE_GOODS)
    member = stack.add_member(points=250, tier="gold", display_name="王*明")
    stack.sync_now()
    open_kiosk(page, stack)
    stack.scan(stack.member_code(member))  # a member code: points may be spent
    stack.scan(JUICE)
    use = page.locator("#redeem-use")
    expect(use).to_be_visible()
    most = stack.api.get("/v1/sessions/current").json()["pricing"]["max_redeemable_points"]
    assert 0 < most <= 250
    expect(use).to_have_text(f"使用积分（最多 {most}）")
    use.click()
    amount = page.locator("#redeem-amount")
    expect(amount).to_have_text("0")
    expect(page.locator("#redeem-next")).to_be_disabled()
    page.locator("#redeem-all").click()
    expect(amount).to_have_text(str(most))
    expect(page.locator("#redeem-more")).to_be_disabled()  # never more than the agent allows
    page.locator("#redeem-less").click()
    expect(amount).to_have_text(str((most - 1) // 100 * 100))
    page.locator("#redeem-next").click()
    chosen = (most - 1) // 100 * 100
    expect(page.locator("#redeem-question")).to_have_text(f"确认使用 {chosen} 积分抵扣本单？")

    page.locator("#redeem-back").click()  # second thoughts: nothing was spent
    page.locator("#redeem-cancel").click()
    expect(use).to_be_visible()
    assert stack.api.get("/v1/sessions/current").json()["pricing"]["points_redeemed"] == 0

    use.click()
    page.locator("#redeem-more").click()
    page.locator("#redeem-next").click()
    page.locator("#redeem-confirm").click()
    expect(page.locator("#pricing")).to_contain_text("积分抵扣 100")
    assert stack.api.get("/v1/sessions/current").json()["pricing"]["points_redeemed"] == 100
    page.locator("#redeem-none").click()
    expect(page.locator("#pricing")).not_to_contain_text("积分抵扣")
    expect(use).to_be_visible()


# --- idle: "still there?" ------------------------------------------------------------------------------------


def shoppers_data_left(page: Page) -> list[str]:
    """The elements that showed a shopper's data and still hold some."""
    return page.evaluate(
        """() => [...document.querySelectorAll("[data-customer]")]
             .filter((node) => node.textContent.trim())
             .map((node) => `${node.id}: ${node.textContent.trim()}`)"""
    )


def storage(page: Page) -> dict:
    return page.evaluate(
        """() => ({session: Object.keys(sessionStorage).sort(), local: Object.keys(localStorage).sort()})"""
    )


def test_nobody_answers_still_there_so_the_sale_is_cancelled_and_nothing_of_the_shopper_stays(
    page: Page, stack_factory
) -> None:
    stack = stack_factory(kind="kiosk")
    member = stack.add_member(points=1000, tier="gold", display_name="王*明")
    stack.sync_now()
    open_kiosk(page, stack, stop_clock=True)
    stack.scan(stack.member_code(member))
    stack.scan(WATER["sku"])
    expect(page.locator("#member")).to_contain_text("王*明")
    expect(page.locator("#lines")).to_contain_text("矿泉水 550ml")
    sale_id = stack.api.get("/v1/status").json()["checkout"]["open_session"]
    # What a screen of the shopper's might have left in the browser.
    page.evaluate(
        """() => { sessionStorage.setItem("draft", "13812345678"); localStorage.setItem("last", "王*明"); }"""
    )

    prompt = page.locator("#idle-prompt")
    caught_up(page, stack)
    page.clock.fast_forward(IDLE_MS - 5_000)
    expect(prompt).to_be_hidden()
    page.clock.fast_forward(5_000)
    expect(prompt).to_be_visible()
    expect(prompt).to_contain_text("还在吗？")
    expect(page.locator("#idle-seconds")).to_have_text("20")
    expect(page.locator("#idle-continue")).to_be_focused()

    page.locator("#idle-continue").click()  # still there: nothing is lost
    expect(prompt).to_be_hidden()
    expect(page.locator("#lines")).to_contain_text("矿泉水 550ml")

    caught_up(page, stack)
    page.clock.fast_forward(IDLE_MS)
    expect(prompt).to_be_visible()
    page.clock.fast_forward(COUNTDOWN_MS // 2)
    expect(page.locator("#idle-seconds")).to_have_text("10")  # counting down where the shopper sees it
    page.clock.fast_forward(COUNTDOWN_MS // 2)

    expect(page.locator("#screen-idle")).to_be_visible()
    expect(prompt).to_be_hidden()
    assert stack.wait_session(sale_id, lambda sale: sale["state"] == "cancelled")["state"] == "cancelled"
    assert stack.api.get("/v1/status").json()["checkout"]["open_session"] is None
    assert shoppers_data_left(page) == []
    html = page.content()
    assert "王*明" not in html and "矿泉水" not in html and "13812345678" not in html
    assert storage(page) == {"session": ["pos-edge-api-token"], "local": []}

    # The token stayed: the next shopper's scan shows, with none of the last one's.
    stack.scan(WATER["sku"])
    expect(page.locator("#lines")).to_contain_text("矿泉水 550ml")
    expect(page.locator("#member")).to_be_hidden()


def test_a_number_half_typed_and_left_is_wiped(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk")
    open_kiosk(page, stack, stop_clock=True)
    page.locator("#use-phone").click()
    page.keyboard.type("1391234")
    expect(page.locator("#phone-display")).to_have_text("139****____")

    caught_up(page, stack)
    page.clock.fast_forward(IDLE_MS)
    expect(page.locator("#idle-prompt")).to_be_visible()
    page.clock.fast_forward(COUNTDOWN_MS)
    expect(page.locator("#screen-idle")).to_be_visible()
    assert shoppers_data_left(page) == []
    assert "139" not in page.locator("body").inner_text()
    page.locator("#use-phone").click()  # the next shopper starts with an empty number
    expect(page.locator("#phone-display")).to_have_text("___________")


def test_the_idle_count_stands_still_while_the_customer_confirms_on_the_phone(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk")
    open_kiosk(page, stack, stop_clock=True)
    stack.scan(WATER["sku"])
    expect(page.locator("#pay-prompt")).to_be_visible()
    expect(page.locator("body")).to_have_attribute("data-idle", "counting")

    hold_customer(stack)
    stack.scan(wechat_code("11"))  # USERPAYING, then the customer cancels on the phone
    expect(page.locator("#screen-waiting")).to_contain_text("请在手机上确认支付")
    expect(page.locator("body")).to_have_attribute("data-idle", "paused")
    page.clock.fast_forward(10 * IDLE_MS)
    expect(page.locator("body")).to_have_attribute("data-idle", "paused")
    expect(page.locator("#idle-prompt")).to_be_hidden()
    sale = stack.api.get("/v1/sessions/current").json()
    assert sale["state"] != "cancelled" and sale["payment"]["state"] == "USERPAYING"

    release_customer(stack)
    expect(page.locator("#screen-failure")).to_be_visible()
    expect(page.locator("body")).to_have_attribute("data-idle", "counting")
    # The count starts again when the payment has ended, not from the last touch before it.
    page.clock.fast_forward(IDLE_MS - 10_000)
    expect(page.locator("#idle-prompt")).to_be_hidden()
    page.clock.fast_forward(10_000)
    expect(page.locator("#idle-prompt")).to_be_visible()


def test_a_part_paid_sale_left_behind_waits_for_the_staff(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk", approval=("void",))
    open_kiosk(page, stack)
    stack.scan(WATER["sku"])  # handled after its 202: the screen shows when it was
    expect(page.locator("#lines")).to_contain_text("矿泉水 550ml")
    sale = stack.api.get("/v1/sessions/current").json()
    paid = stack.api.post(f"/v1/sessions/{sale['id']}/tenders", json={"kind": "cash", "amount_fen": 100})
    assert paid.status_code == 200, paid.text
    expect(page.locator("#pricing")).to_contain_text("已付")

    caught_up(page, stack)
    page.clock.fast_forward(IDLE_MS)
    expect(page.locator("#idle-prompt")).to_be_visible()
    page.clock.fast_forward(COUNTDOWN_MS)
    staff = page.locator("#screen-staff")
    expect(staff).to_contain_text("请联系店员")
    assert shoppers_data_left(page) == []
    assert "矿泉水" not in page.content()
    assert stack.session(sale["id"])["state"] != "cancelled"  # a void needs the supervisor

    # The staff void it with the supervisor's PIN; the kiosk is ready for the next shopper.
    voided = stack.api.post(f"/v1/sessions/{sale['id']}/cancel", json={"approval": {"pin": SUPERVISOR_PIN}})
    assert voided.status_code == 200, voided.text
    expect(page.locator("#screen-cancelled")).to_be_visible()
    page.clock.fast_forward(10_000)
    expect(page.locator("#screen-idle")).to_be_visible()


# --- language, keyboard ----------------------------------------------------------------------------------------

CJK = re.compile(r"[\u3400-\u9fff]")


def test_english_at_one_tap_and_chinese_again_for_the_next_shopper(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk")
    open_kiosk(page, stack)
    html = page.locator("html")
    switch = page.locator("#lang")
    expect(html).to_have_attribute("lang", "zh-CN")
    expect(switch).to_have_text("English")

    switch.click()
    expect(html).to_have_attribute("lang", "en")
    expect(page.locator("#screen-idle h2")).to_have_text("Scan your member code or payment code")
    expect(switch).to_have_text("中文")
    assert not CJK.search(page.locator("main").inner_text())  # one language at a time
    assert page.title() == "Self checkout"

    stack.scan(WATER["sku"])
    # Visible, not only its text: the prompt's text is on the page, hidden, before the scan (answered 202) is handled.
    expect(page.locator("#pay-prompt")).to_be_visible()
    expect(page.locator("#pay-prompt")).to_contain_text("Show your payment code")
    expect(page.locator(".due")).to_contain_text("To pay")
    # Only the goods' own names stay as the store wrote them.
    assert not CJK.search(page.locator("main").inner_text().replace("矿泉水", ""))

    caught_up(page, stack)
    page.clock.fast_forward(IDLE_MS)
    expect(page.locator("#idle-prompt")).to_contain_text("Are you still there?")
    expect(page.locator("#idle-continue")).to_have_text("Continue")
    page.clock.fast_forward(COUNTDOWN_MS)
    expect(page.locator("#screen-idle h2")).to_have_text("请扫描会员码或付款码")
    expect(html).to_have_attribute("lang", "zh-CN")
    expect(switch).to_have_text("English")


def assert_focus_ring(page: Page) -> None:
    ring = page.evaluate(
        """() => { const style = getComputedStyle(document.activeElement);
                   return {id: document.activeElement.id, style: style.outlineStyle, width: parseFloat(style.outlineWidth)}; }"""
    )
    assert ring["style"] == "solid" and ring["width"] >= 3, f"no visible focus ring: {ring}"


def test_the_kiosk_works_from_a_keyboard(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk")
    phone = "13812345678"
    stack.add_member(points=500, tier="gold", display_name="李*华", phone=phone)
    open_kiosk(page, stack)

    page.keyboard.press("Tab")  # from the screen's title
    expect(page.locator("#use-phone")).to_be_focused()
    assert_focus_ring(page)
    page.keyboard.press("Shift+Tab")
    expect(page.locator("#lang")).to_be_focused()
    assert_focus_ring(page)
    page.keyboard.press("Tab")
    page.keyboard.press("Space")
    expect(page.locator("#screen-phone")).to_be_visible()

    # Tab goes through the keypad in reading order, then the checkbox and Back (Confirm waits for a number).
    order = []
    for _ in range(14):
        page.keyboard.press("Tab")
        order.append(page.evaluate("() => document.activeElement.dataset.key || document.activeElement.id"))
    assert order == [*"123456789", "clear", "0", "back", "phone-mine", "phone-cancel"]

    page.keyboard.type(phone + "9")  # digits from the keyboard; a twelfth is not taken
    expect(page.locator("#phone-display")).to_have_text("138****5678")
    page.keyboard.press("Backspace")
    expect(page.locator("#phone-display")).to_have_text("138****567_")
    page.keyboard.press("8")
    page.locator("#phone-mine").focus()
    page.keyboard.press("Space")
    expect(page.locator("#phone-mine")).to_be_checked()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.locator("#phone-ok")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#member")).to_contain_text("李*华")


def test_the_kiosk_loads_nothing_from_outside_the_station() -> None:
    files = [*(STATIC / "kiosk").iterdir(), STATIC / "shared" / "api.js"]
    outside = [
        f"{file.name}: {match.group(0)}"
        for file in files
        for match in re.finditer(r"https?://\S+|@import|url\(", file.read_text(encoding="utf-8"))
    ]
    assert outside == []


# --- layout: three screens, every step of a sale ---------------------------------------------------------------

SIZES = [(1080, 1920), (1920, 1080), (1280, 800)]

# What a shopper must be able to read and touch, measured in the page as drawn: elements inside the window (or,
# inside a box that scrolls, not past its sides), touch targets of 48 px, amounts of 24 px, and text contrast
# of 4.5:1 against the colours behind it (faded text counts as faded).
LAYOUT_PROBLEMS = """() => {
  const problems = [];
  const W = window.innerWidth, H = window.innerHeight;
  const root = document.documentElement;
  if (root.scrollWidth > W || root.scrollHeight > H) problems.push(`the page scrolls: ${root.scrollWidth}x${root.scrollHeight}`);
  const name = (n) => n.id ? `#${n.id}` : `${n.tagName.toLowerCase()}.${n.className}` + (n.textContent ? ` "${n.textContent.trim().slice(0, 20)}"` : "");
  const shown = [...document.querySelectorAll("body *")].filter(
    (n) => n.getClientRects().length && getComputedStyle(n).visibility !== "hidden" && !n.closest("[inert]"));
  const scroller = (n) => {
    for (let p = n.parentElement; p && p !== document.body; p = p.parentElement) {
      if (["auto", "scroll"].includes(getComputedStyle(p).overflowY)) return p;
    }
    return null;
  };
  for (const n of shown) {
    const r = n.getBoundingClientRect(), box = scroller(n);
    if (box) {
      const b = box.getBoundingClientRect();
      if (r.left < b.left - 0.5 || r.right > b.right + 0.5) problems.push(`${name(n)} sticks out of its box`);
    } else if (r.left < -0.5 || r.top < -0.5 || r.right > W + 0.5 || r.bottom > H + 0.5) {
      problems.push(`${name(n)} is outside the window`);
    }
  }
  for (const n of shown.filter((n) => n.matches("button, input, select, a[href], [role=button]"))) {
    const r = n.getBoundingClientRect();
    if (r.width < 48 || r.height < 48) problems.push(`${name(n)} is a small target: ${r.width}x${r.height}`);
  }
  const money = ".money, #lines td.num:last-child, #pricing dd:not(.provisional), .coupon .discount, #success-points dd:not(.provisional)";
  for (const n of shown.filter((n) => n.matches(money))) {
    const size = parseFloat(getComputedStyle(n).fontSize);
    if (size < 24) problems.push(`${name(n)}: an amount in ${size}px`);
  }
  const rgba = (text) => { const v = text.match(/[\\d.]+/g).map(Number); return [v[0], v[1], v[2], v.length > 3 ? v[3] : 1]; };
  const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat(1);
  const luminance = (c) => {
    const [r, g, b] = c.slice(0, 3).map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  for (const n of shown) {
    if (![...n.childNodes].some((c) => c.nodeType === Node.TEXT_NODE && c.textContent.trim())) continue;
    if (n.closest("button:disabled")) continue;  // a control that cannot be used need not be read (WCAG 1.4.3)
    const chain = [];
    let opacity = 1;
    for (let p = n; p; p = p.parentElement) {
      chain.unshift(p);
      opacity *= parseFloat(getComputedStyle(p).opacity);
    }
    let back = [255, 255, 255, 1];
    for (const p of chain) {
      const colour = rgba(getComputedStyle(p).backgroundColor);
      if (colour[3] > 0) back = over(colour, back);
    }
    const ink = rgba(getComputedStyle(n).color);
    const fore = over([ink[0], ink[1], ink[2], ink[3] * opacity], back);
    const [a, b] = [luminance(fore), luminance(back)];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) problems.push(`${name(n)}: contrast ${ratio.toFixed(2)}`);
  }
  return problems;
}"""


def check_layout(page: Page, shots: Path, step: str) -> None:
    page.screenshot(path=shots / f"{step}.png")
    assert page.evaluate(LAYOUT_PROBLEMS) == [], f"{step}: see {shots / step}.png"


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_every_step_fits_the_screen_and_reads_well(
    page: Page, stack_factory, tmp_path: Path, size: tuple[int, int]
) -> None:
    stack = stack_factory(kind="kiosk")
    member = stack.add_member(points=800, tier="gold", display_name="欧阳*明", phone="13812345678")
    stack.add_coupon(member, "满30减5", threshold_fen=3000)
    stack.sync_now()
    page.set_viewport_size({"width": size[0], "height": size[1]})
    shots = tmp_path / f"{size[0]}x{size[1]}"
    shots.mkdir()
    open_kiosk(page, stack)
    check_layout(page, shots, "1-idle")

    page.locator("#use-phone").click()
    page.keyboard.type("1381234")
    check_layout(page, shots, "2-phone")
    page.locator("#phone-cancel").click()

    stack.scan(stack.member_code(member))
    long_name = "ExtraVirginOliveOilFamilyPack1Lx2_进口特级初榨"  # 40 characters, the most a line takes
    lines = [WATER, {"sku": "6900000000011", "name": long_name, "qty": 1, "unit_price_fen": 12_345}]
    lines += [{"sku": f"69000000001{i:02d}", "name": f"商品 {i}", "qty": 1, "unit_price_fen": 990} for i in range(12)]
    set_basket(stack, *lines)
    expect(page.locator("#lines tr")).to_have_count(len(lines))
    expect(page.locator("#redeem-use")).to_be_visible()
    stack.scan("2000123000008")  # an in-store price label: a cashier's, said in the basket
    expect(page.locator("#sale-alert")).to_be_visible()
    check_layout(page, shots, "3-sale")
    page.locator("#redeem-use").click()
    page.locator("#redeem-more").click()
    check_layout(page, shots, "3b-points")
    page.locator("#redeem-next").click()
    check_layout(page, shots, "3c-points-confirm")
    page.locator("#redeem-back").click()
    page.locator("#redeem-cancel").click()

    stack.scan(wechat_code("32"))  # NOTENOUGH
    expect(page.locator("#screen-failure")).to_be_visible()
    check_layout(page, shots, "4-failure")
    page.locator("#failure-retry").click()

    caught_up(page, stack)
    page.clock.fast_forward(IDLE_MS)
    expect(page.locator("#idle-prompt")).to_be_visible()
    check_layout(page, shots, "5-still-there")
    page.locator("#idle-continue").click()

    page.locator("#lang").click()
    hold_customer(stack)
    stack.scan(wechat_code("10"))
    expect(page.locator("#screen-waiting")).to_contain_text("Confirm the payment on your phone")
    check_layout(page, shots, "6-waiting-en")
    release_customer(stack)
    expect(page.locator("#screen-success")).to_be_visible()
    expect(page.locator("#receipt-no")).to_have_text(re.compile(r"^T01\d{10}$"))
    check_layout(page, shots, "7-success-en")
