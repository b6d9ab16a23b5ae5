"""The kiosk's membership screens in a real browser, against a whole store (agent, central, WeChat Pay simulator):
joining with consent to the privacy notice, joining with a payment just made (支付即会员), and the customer's wallet
after a scan or a typed number. Also where they fit on the three screens the kiosk runs on.

The browser's console must stay clean here too (`no_console_errors`). Chromium logs every request the agent refuses
(a 4xx or 5xx answer) as a console error, so the kiosk does not ask what it knows will be refused (no join without
consent, no number that is not a mobile's, no join while the station knows it is offline), and the agent answers a
number that is no member's with `found: false`, not an error."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.checkout_stack import Stack, wechat_code
from tests.ui.test_kiosk import (
    COUNTDOWN_MS,
    IDLE_MS,
    SIZES,
    WATER,
    caught_up,
    check_layout,
    no_console_errors,  # noqa: F401 - autouse: any console error fails these tests too
    open_kiosk,
    readme_picture,
    shoppers_data_left,
    wait_for_failed_pull,
)

JOINING = {"welcome_points": 100, "card_no_prefix": "8800"}
NEW_PHONE = "13912345678"


def type_on_keypad(page: Page, digits: str) -> None:
    for digit in digits:
        page.locator(f'#keypad [data-key="{digit}"]').click()


def start_listening(page: Page) -> None:
    """ "我的会员": the kiosk asks the agent for the next scan; a scan made after this answer is the wallet's."""
    with page.expect_response(lambda response: response.url.endswith("/v1/wallet/listen")) as answer:
        page.locator("#wallet-open").click()
    assert answer.value.ok
    expect(page.locator("#screen-listen")).to_contain_text("请扫描会员码或付款码，或输入手机号")


def wallet_of(stack: Stack, **body: str) -> dict:
    answer = stack.api.post("/v1/wallet", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()["wallet"]


def pay_at_the_kiosk(page: Page, stack: Stack, code: str) -> dict:
    """A shopper scans the water and pays with the payment code `code`; the sale as paid."""
    stack.scan(WATER["sku"])
    expect(page.locator("#pay-prompt")).to_be_visible()
    sale_id = stack.api.get("/v1/status").json()["checkout"]["open_session"]
    stack.scan(code)
    expect(page.locator("#screen-success")).to_be_visible()
    return stack.wait_session(sale_id, lambda sale: sale["paid"])


# --- joining ---------------------------------------------------------------------------------------------------


def test_joining_shows_the_number_while_typed_masks_it_after_and_asks_for_consent_first(
    page: Page, stack_factory
) -> None:
    stack = stack_factory(kind="kiosk", central_options=JOINING)
    open_kiosk(page, stack)
    page.locator("#join-open").click()
    expect(page.locator("#phone-title")).to_have_text("请输入手机号加入会员")
    type_on_keypad(page, NEW_PHONE[:7])
    expect(page.locator("#phone-display")).to_have_text("1391234____")  # every digit, to be checked as typed
    type_on_keypad(page, NEW_PHONE[7:])
    expect(page.locator("#phone-display")).to_have_text(NEW_PHONE)
    page.locator("#phone-ok").click()

    join = page.locator("#screen-join")
    expect(join).to_be_visible()
    expect(page.locator("#join-phone")).to_have_text("139****5678")  # masked once confirmed
    assert NEW_PHONE not in page.content()
    expect(page.locator("#privacy")).to_contain_text("测试门店会员隐私说明")
    expect(page.locator("#privacy")).to_contain_text("如何删除")
    consent = page.locator("#join-consent")
    expect(consent).not_to_be_checked()
    expect(page.locator("#join-submit")).to_be_disabled()  # unticked consent: nothing can be sent
    assert stack.api.post("/v1/wallet", json={"phone": NEW_PHONE}).json()["found"] is False

    consent.check()
    page.locator("#join-submit").click()
    joined = page.locator("#screen-joined")
    expect(joined).to_contain_text("欢迎加入会员！")
    expect(joined).to_contain_text("赠送 100 积分")
    expect(joined).to_contain_text("保存到微信")
    expect(joined.locator(".qr-code img")).to_be_visible()
    expect(joined).to_contain_text("139****5678")
    assert NEW_PHONE not in page.content()
    member = wallet_of(stack, phone=NEW_PHONE)["member"]
    assert member["points"] == 100 and member["card_no"].startswith("8800")

    page.locator("#join-done").click()
    expect(page.locator("#screen-idle")).to_be_visible()
    assert shoppers_data_left(page) == []
    assert "139****5678" not in page.content()


def test_a_number_already_a_member_s_shows_their_wallet_once_they_say_it_is_theirs(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk", central_options=JOINING)
    phone = "13812345678"
    stack.add_member(points=640, tier="gold", display_name="李*华", phone=phone)
    open_kiosk(page, stack)
    page.locator("#join-open").click()
    page.keyboard.type(phone)
    page.keyboard.press("Enter")
    page.locator("#join-consent").check()
    page.locator("#join-submit").click()

    joined = page.locator("#screen-joined")
    expect(joined).to_contain_text("该手机号已是会员")
    expect(joined).not_to_contain_text("李*华")  # nothing of theirs before they say the number is theirs
    show = page.locator("#join-wallet")
    expect(show).to_be_disabled()
    page.locator("#already-mine").check()
    show.click()

    wallet = page.locator("#screen-wallet")
    expect(wallet).to_contain_text("李*华")
    expect(page.locator("#wallet-member")).to_contain_text("金卡会员")
    expect(page.locator("#wallet-member")).to_contain_text("640")
    assert phone not in page.content()


def test_joining_offline_says_so_and_sends_nothing(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk", central_options=JOINING)
    stack.central.stop()
    stack.stop()
    stack.start()
    wait_for_failed_pull(stack)
    open_kiosk(page, stack)
    expect(page.locator("#offline")).to_be_visible()

    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url) if request.method == "POST" else None)
    page.locator("#join-open").click()
    expect(page.locator("#screen-joined")).to_contain_text("网络中断，暂时无法办理入会")
    assert sent == []  # the station knows it is offline: no number is asked for, nothing is sent
    expect(page.locator("#join-done")).to_have_text("返回")
    page.locator("#join-done").click()
    expect(page.locator("#screen-idle")).to_be_visible()


def test_a_payer_who_is_not_a_member_joins_with_the_payment(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk", central_options=JOINING)
    open_kiosk(page, stack, final=60)
    pay_at_the_kiosk(page, stack, wechat_code(customer="0042"))
    offer = page.locator("#pay-join")
    expect(offer).to_contain_text("支付即会员")

    offer.locator("button").click()
    page.keyboard.type(NEW_PHONE)
    page.locator("#phone-ok").click()
    page.locator("#join-consent").check()
    page.locator("#join-submit").click()
    expect(page.locator("#screen-joined")).to_contain_text("欢迎加入会员！")

    # The payer is the new member: their next payment code finds them.
    assert wallet_of(stack, text=wechat_code(customer="0042"))["member"]["phone_masked"] == "139****5678"


# --- the wallet ------------------------------------------------------------------------------------------------


def test_the_wallet_after_a_member_code_scan_then_cleared_when_left(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk")
    member = stack.add_member(points=1000, tier="gold", display_name="王*明", phone="13812345678")
    stack.add_coupon(member, "满30减5", threshold_fen=3000, usable_offline=True)
    stack.sync_now()
    open_kiosk(page, stack, stop_clock=True, final=0.5)
    # A member code is used once: one for the sale, one for the wallet, each of its own second.
    for_sale, for_wallet = (stack.member_code(member, seconds_ago=seconds_ago) for seconds_ago in (0, 1))
    # A sale the member paid here in cash while central was away: its points are not confirmed by central yet.
    stack.central.stop()
    stack.scan(for_sale)
    stack.scan(WATER["sku"])
    expect(page.locator("#lines")).to_contain_text("矿泉水 550ml")
    sale_id = stack.api.get("/v1/status").json()["checkout"]["open_session"]
    cash = stack.api.post(f"/v1/sessions/{sale_id}/tenders", json={"kind": "cash", "tendered_fen": 1000})
    assert cash.status_code == 200, cash.text
    sale = stack.wait_session(sale_id, lambda sale: sale["paid"])
    earned = sale["points"]["earned"]
    expect(page.locator("#screen-success")).to_be_visible()
    page.clock.fast_forward(1_000)
    expect(page.locator("#screen-idle")).to_be_visible()

    start_listening(page)
    stack.scan(for_wallet)
    wallet = page.locator("#screen-wallet")
    expect(wallet).to_contain_text("王*明")
    card = page.locator("#wallet-member")
    expect(card).to_contain_text("138****5678")
    expect(card).to_contain_text("金卡会员")
    expect(card).to_contain_text(str(1000 + earned))
    expect(card).to_contain_text(f"含待确认 {earned} 积分")
    coupons = page.locator("#wallet-coupons")
    expect(coupons).to_contain_text("满30减5")
    expect(coupons).to_contain_text("满¥30.00可用")
    expect(coupons).to_contain_text(re.compile(r"有效期至 \d{4}-\d{2}-\d{2} \d{2}:\d{2}"))
    receipts = page.locator("#wallet-receipts")
    expect(receipts).to_contain_text(sale["receipt_no"])
    expect(receipts).to_contain_text(f"+{earned} 积分")
    expect(receipts).to_contain_text(f"电子小票: {stack.central.url}/e/")
    # The time is the store's (Asia/Shanghai), not the PC's.
    store_time = page.evaluate(
        """(iso) => new Intl.DateTimeFormat("sv-SE", {timeZone: "Asia/Shanghai", dateStyle: "short", timeStyle: "short"})
                      .format(new Date(iso))""",
        stack.api.get(f"/v1/transactions/{sale['id']}").json()["created_at"],
    )
    expect(receipts).to_contain_text(store_time)

    # Walked away: "还在吗？", then the screen is cleared for the next customer.
    caught_up(page, stack)
    page.clock.fast_forward(IDLE_MS)
    expect(page.locator("#idle-prompt")).to_contain_text("秒后将返回首页")
    page.clock.fast_forward(COUNTDOWN_MS)
    expect(page.locator("#screen-idle")).to_be_visible()
    assert shoppers_data_left(page) == []
    assert "王*明" not in page.content() and sale["receipt_no"] not in page.content()


def test_the_wallet_by_card_and_a_typed_number_that_is_no_member_s_offers_to_join(page: Page, stack_factory) -> None:
    stack = stack_factory(kind="kiosk", central_options=JOINING)
    stack.add_member(points=70, display_name="赵*", card_no="8800123456789")
    stack.sync_now()
    open_kiosk(page, stack)
    start_listening(page)
    stack.scan("8800123456789")
    expect(page.locator("#wallet-member")).to_contain_text("赵*")
    expect(page.locator("#wallet-member")).to_contain_text("70")
    expect(page.locator("#wallet-receipts")).to_contain_text("暂无小票")
    page.locator("#wallet-close").click()
    expect(page.locator("#screen-idle")).to_be_visible()
    assert shoppers_data_left(page) == []

    start_listening(page)
    page.locator("#wallet-phone").click()
    expect(page.locator("#phone-title")).to_have_text("请输入手机号查看会员")
    page.keyboard.type(NEW_PHONE)
    expect(page.locator("#phone-display")).to_have_text("139****5678")
    page.locator("#phone-mine").check()
    page.locator("#phone-ok").click()
    expect(page.locator("#phone-error")).to_have_text("未找到会员，可以立即加入")

    page.locator("#phone-join").click()  # the number typed is kept for joining
    expect(page.locator("#join-phone")).to_have_text("139****5678")
    page.locator("#join-consent").check()
    page.locator("#join-submit").click()
    expect(page.locator("#screen-joined")).to_contain_text("赠送 100 积分")


# --- layout, and the README's pictures -------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES, ids=lambda size: f"{size[0]}x{size[1]}")
def test_the_membership_screens_fit_and_read_well(
    page: Page, stack_factory, tmp_path: Path, size: tuple[int, int]
) -> None:
    stack = stack_factory(kind="kiosk", central_options=JOINING)
    member = stack.add_member(points=800, tier="gold", display_name="欧阳*明", phone="13812345678")
    stack.add_coupon(member, "满30减5", threshold_fen=3000)
    stack.add_coupon(member, "会员日9折", kind="percent_off", amount_off_fen=0, percent_off=10, threshold_fen=5000)
    stack.sync_now()
    page.set_viewport_size({"width": size[0], "height": size[1]})
    shots = tmp_path / f"{size[0]}x{size[1]}"
    shots.mkdir()
    open_kiosk(page, stack, stop_clock=True, final=1)
    # A member code is used once: three codes, each of its own second, minted now.
    first, second, third = (stack.member_code(member, seconds_ago=seconds_ago) for seconds_ago in (0, 1, 2))
    for code in (first, second):  # two receipts in the wallet
        stack.scan(code)
        pay_at_the_kiosk(page, stack, wechat_code())
        page.clock.fast_forward(1_500)
        expect(page.locator("#screen-idle")).to_be_visible()

    pay_at_the_kiosk(page, stack, wechat_code(customer="0042"))  # a payer who is no member
    expect(page.locator("#pay-join")).to_be_visible()
    expect(page.locator("#e-receipt img")).to_be_visible()
    check_layout(page, shots, "m0-paid-join-offer")
    page.locator("#pay-join button").click()
    page.keyboard.type(NEW_PHONE)
    check_layout(page, shots, "m1-join-phone")
    page.keyboard.press("Enter")
    expect(page.locator("#privacy")).to_contain_text("如何删除")
    check_layout(page, shots, "m2-join-notice")
    page.locator("#join-consent").check()
    page.locator("#join-submit").click()
    expect(page.locator("#screen-joined .qr-code img")).to_be_visible()
    check_layout(page, shots, "m3-joined")
    page.locator("#join-done").click()

    start_listening(page)
    check_layout(page, shots, "m4-wallet-listen")
    stack.scan(third)
    expect(page.locator("#wallet-receipts li")).to_have_count(2)
    check_layout(page, shots, "m5-wallet")
    if size == (1280, 800):
        page.screenshot(path=readme_picture("kiosk-wallet.png"))
