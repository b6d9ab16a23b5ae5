"""The cashier's till screen in a real browser, against a whole store: agent, central, WeChat Pay simulator."""

from __future__ import annotations

import re
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.checkout_stack import Stack
from tests.support.credentials import SUPERVISOR_CARD, SUPERVISOR_ID, SUPERVISOR_PIN

BASKET = [
    {"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 2, "unit_price_fen": 1290},
    {"sku": "6920202888883", "name": "方便面", "qty": 1, "unit_price_fen": 450},
]  # ¥30.30


def open_till(page: Page, stack: Stack) -> None:
    page.goto(f"{stack.url}/till/#token={stack.token}")
    expect(page.locator("body")).to_have_attribute("data-live", "true")
    expect(page.locator("#status-online")).to_contain_text("在线 Online")


def set_basket(stack: Stack, session_id: str) -> dict:
    answer = stack.api.put(f"/v1/sessions/{session_id}/basket", json={"lines": BASKET})
    assert answer.status_code == 200, answer.text
    return answer.json()


def cash_sale(stack: Stack) -> dict:
    """A sale rung up and paid in cash through the API, as the store's POS software would."""
    session = stack.open_session()
    set_basket(stack, session["id"])
    answer = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "tendered_fen": 5000})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_member_card_typed_then_cash_with_the_change_shown_large(page: Page, stack: Stack) -> None:
    stack.add_member(points=120, display_name="赵*六", card_no="8800123456789")
    open_till(page, stack)
    expect(page.locator("#sale-empty")).to_be_visible()

    page.locator("#new-sale").click()
    expect(page.locator("#sale-state")).to_have_text("新交易 New")
    page.locator("#code").fill("8800123456789")  # the customer's card, typed
    page.locator("#code-form button[type=submit]").click()
    expect(page.locator("#sale-member")).to_contain_text("赵*六")
    expect(page.locator("#sale-member")).to_contain_text("积分 120")
    expect(page.locator("#code")).to_be_empty()
    session = stack.api.get("/v1/sessions/current").json()
    set_basket(stack, session["id"])  # the POS sends the basket
    expect(page.locator("#sale-lines")).to_contain_text("方便面")
    expect(page.locator("#remaining")).to_have_text("¥30.30")

    page.locator("#cash").fill("50")
    page.locator("#cash-form button[type=submit]").click()
    change = page.locator("#change")
    expect(change).to_be_visible()
    expect(change).to_have_text("¥19.70")
    assert float(change.evaluate("node => getComputedStyle(node).fontSize").removesuffix("px")) >= 40
    expect(page.locator("#sale-state")).to_have_text("已完成 Done")
    expect(page.locator("#sale-tenders")).to_contain_text("现金 Cash")
    receipt_no = stack.api.get(f"/v1/sessions/{session['id']}").json()["receipt_no"]
    expect(page.locator("#sale-receipt")).to_contain_text(receipt_no)
    expect(page.locator("#transactions")).to_contain_text(receipt_no)


def test_an_unknown_code_shows_the_agents_message(page: Page, stack: Stack) -> None:
    open_till(page, stack)
    page.locator("#code").fill("hello-not-a-code")
    page.locator("#code-form button[type=submit]").click()

    message = page.locator("#message")
    expect(message).to_be_visible()
    expect(message).to_have_attribute("data-code", "unknown_code")
    session = stack.api.get("/v1/sessions/current").json()
    refused = stack.api.post(f"/v1/sessions/{session['id']}/codes", json={"text": "hello-not-a-code"})
    assert refused.status_code == 422
    expect(message).to_contain_text(refused.json()["message"])
    expect(message).to_contain_text(refused.json()["message_zh"])


def test_refusals_are_shown_to_the_cashier(page: Page, stack: Stack) -> None:
    session = stack.open_session()
    set_basket(stack, session["id"])
    open_till(page, stack)
    expect(page.locator("#remaining")).to_have_text("¥30.30")

    page.locator("#cash").fill("abc")
    page.locator("#cash-form button[type=submit]").click()
    expect(page.locator("#message")).to_contain_text("Enter the cash handed over")

    page.locator("#card-amount").fill("99")  # more than is left: only cash may exceed it
    page.locator("#card-reference").fill("TRACE0001")
    page.locator("#card-form button[type=submit]").click()
    card = {"kind": "card", "amount_fen": 9900, "reference": "TRACE0001"}
    refused = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=card)
    assert 400 <= refused.status_code < 500
    expect(page.locator("#message")).to_have_class(re.compile(r"\berror\b"))
    expect(page.locator("#message")).to_contain_text(refused.json()["message"])
    expect(page.locator("#remaining")).to_have_text("¥30.30")


def test_reprint_and_refund_from_the_recent_transactions(page: Page, stack: Stack) -> None:
    sale = cash_sale(stack)
    open_till(page, stack)
    row = page.locator(f'#transactions tr[data-receipt="{sale["receipt_no"]}"]')
    expect(row).to_contain_text("销售 Sale")
    expect(row).to_contain_text("¥30.30")

    row.get_by_role("button", name="重打 Reprint").click()
    expect(page.locator("#message")).to_contain_text("已重打小票")
    expect(page.locator("#message")).to_contain_text(sale["receipt_no"])

    # One bottle of water, damaged: quantities per line, and no refund without a reason.
    row.get_by_role("button", name="退款 Refund").click()
    confirm = page.get_by_role("button", name="确认退款 Confirm refund")
    expect(confirm).to_be_disabled()
    page.get_by_label("矿泉水 550ml 退货数量 quantity to refund").fill("1")
    page.get_by_label("方便面 退货数量 quantity to refund").fill("0")
    expect(confirm).to_be_disabled()  # no reason yet
    page.get_by_label("退款原因 reason").select_option("商品破损")
    confirm.click()
    expect(page.locator("#message")).to_contain_text("退款完成")
    expect(page.locator("#message")).to_contain_text("Refunded ¥12.90")
    refund = page.locator('#transactions tr[data-kind="refund"]').first
    expect(refund).to_contain_text(sale["receipt_no"])
    expect(refund).to_contain_text("-¥12.90")
    first = stack.api.get(f"/v1/transactions/{sale['id']}").json()["refunds"][0]
    assert first["body"]["reason"] == "商品破损" and [(x["line"], x["qty"]) for x in first["body"]["lines"]] == [(0, 1)]

    # The rest, for the cashier's own reason: the form offers only what is left.
    row.get_by_role("button", name="退款 Refund").click()
    expect(page.get_by_label("矿泉水 550ml 退货数量 quantity to refund")).to_have_value("1")
    page.get_by_label("退款原因 reason").select_option("other")
    page.get_by_placeholder("原因 reason").fill("顾客不想要了")
    page.get_by_role("button", name="确认退款 Confirm refund").click()
    expect(page.locator("#message")).to_contain_text("Refunded ¥17.40")

    # Everything is refunded now: nothing is left to pick, so nothing can be confirmed.
    row.get_by_role("button", name="退款 Refund").click()
    expect(page.get_by_label("矿泉水 550ml 退货数量 quantity to refund")).to_be_disabled()
    expect(page.get_by_role("button", name="确认退款 Confirm refund")).to_be_disabled()
    refunds = stack.api.get(f"/v1/transactions/{sale['id']}").json()["refunds"]
    assert sum(r["total_fen"] for r in refunds) == 3030 and refunds[-1]["body"]["reason"] == "顾客不想要了"


def test_a_refund_a_void_and_a_second_reprint_ask_for_the_supervisor(page: Page, stack_factory) -> None:
    stack = stack_factory(approval=("refund", "void", "reprint"))
    sale = cash_sale(stack)
    open_till(page, stack)
    row = page.locator(f'#transactions tr[data-receipt="{sale["receipt_no"]}"]')
    dialog = page.locator("#approval")

    # A partial refund: the agent asks for a supervisor; a wrong PIN says how many tries are left.
    row.get_by_role("button", name="退款 Refund").click()
    page.get_by_label("方便面 退货数量 quantity to refund").fill("0")
    page.get_by_label("退款原因 reason").select_option("质量问题")
    page.get_by_role("button", name="确认退款 Confirm refund").click()
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("退款需要主管授权")
    for key in "1111":
        dialog.get_by_role("button", name=key, exact=True).click()
    dialog.get_by_role("button", name="授权 Approve").click()
    expect(page.locator("#approval-error")).to_contain_text("还可再试 4 次")
    for key in SUPERVISOR_PIN:
        dialog.get_by_role("button", name=key, exact=True).click()
    dialog.get_by_role("button", name="授权 Approve").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#message")).to_contain_text("Refunded ¥25.80")
    refund = stack.api.get(f"/v1/transactions/{sale['id']}").json()["refunds"][0]
    assert refund["body"]["approved_by"] == SUPERVISOR_ID and refund["body"]["reason"] == "质量问题"

    # The first reprint is free; the second takes the supervisor's card, scanned into the dialog.
    row.get_by_role("button", name="重打 Reprint").click()
    expect(page.locator("#message")).to_contain_text("已重打小票")
    row.get_by_role("button", name="重打 Reprint").click()
    expect(dialog).to_contain_text("再次重打小票需要主管授权")
    page.keyboard.type(SUPERVISOR_CARD)
    page.keyboard.press("Enter")
    expect(dialog).to_be_hidden()
    expect(page.locator("#message")).to_contain_text("已重打小票")

    # A sale with cash taken, cancelled: a void; the cashier gives up at the dialog and nothing happens.
    session = stack.open_session()
    set_basket(stack, session["id"])
    stack.api.post(f"/v1/sessions/{session['id']}/tenders", json={"kind": "cash", "amount_fen": 1000})
    expect(page.locator("#sale-state")).to_contain_text("收款中 Paying")
    page.get_by_role("button", name="取消交易 Cancel sale").click()
    page.get_by_role("button", name="确认取消 Confirm cancel").click()
    expect(dialog).to_contain_text("撤销已付款的交易需要主管授权")
    dialog.get_by_role("button", name="取消 Cancel").click()
    expect(page.locator("#message")).to_contain_text("未获授权")
    assert stack.session(session["id"])["state"] == "tender"


def test_a_cash_tender_whose_answer_is_lost_is_sent_again_and_taken_once(page: Page, stack: Stack) -> None:
    """The network drops the answer to the cashier's tender after the till took it: the screen sends the request
    again with the same Idempotency-Key, and the sale is paid once, with the change shown."""
    open_till(page, stack)
    page.locator("#new-sale").click()
    expect(page.locator("#sale-state")).to_have_text("新交易 New")
    session = stack.api.get("/v1/sessions/current").json()
    set_basket(stack, session["id"])
    expect(page.locator("#remaining")).to_have_text("¥30.30")

    sent: list[str] = []

    def lose_the_first_answer(route) -> None:
        sent.append(route.request.headers["idempotency-key"])
        if len(sent) == 1:
            route.fetch()  # it reaches the till, which takes the cash ...
            route.abort("connectionreset")  # ... and the answer never comes back
        else:
            route.continue_()

    page.route(re.compile(r".*/v1/sessions/[^/]+/tenders$"), lose_the_first_answer)
    page.locator("#cash").fill("50")
    with page.expect_response(re.compile(r".*/v1/sessions/[^/]+/tenders$")) as answered:
        page.locator("#cash-form button[type=submit]").click()  # the first answer is lost; the second arrives

    assert answered.value.headers["idempotent-replayed"] == "true"  # the till's first answer, given again
    assert len(sent) == 2 and sent[0] == sent[1]  # the same request, sent again under its key
    expect(page.locator("#change")).to_have_text("¥19.70")
    expect(page.locator("#sale-state")).to_have_text("已完成 Done")
    paid = stack.api.get(f"/v1/sessions/{session['id']}").json()
    assert len(paid["tenders"]) == 1 and len(stack.api.get("/v1/transactions").json()) == 1


def test_a_kiosk_customers_call_for_staff_shows_on_the_till_until_a_cashier_takes_it(page: Page, stack_factory) -> None:
    till = stack_factory()
    kiosk = stack_factory(kind="kiosk", extra_toml=f'\n[help]\ntill_url = "{till.url}"\ntill_token = "{till.token}"\n')
    open_till(page, till)
    assert kiosk.api.post("/v1/help", json={}).json()["delivered"] is True
    call = page.locator("#help-calls li")
    expect(call).to_contain_text("需要帮助")
    expect(call).to_contain_text("T01 needs staff")
    call.get_by_role("button", name="我去处理 On my way").click()
    expect(page.locator("#help-calls")).to_be_hidden()


def test_the_online_pill_turns_offline_within_a_second_or_two_of_the_agent_knowing(page: Page, stack: Stack) -> None:
    open_till(page, stack)
    session = stack.open_session()
    set_basket(stack, session["id"])
    stack.central.stop()  # the store's line goes down ...
    tender = {"kind": "code", "auth_code": "134567890123456789"}
    refused = stack.api.post(f"/v1/sessions/{session['id']}/tenders", json=tender)
    assert refused.status_code == 503 and refused.json()["error"] == "offline"  # ... and the agent knows it now
    # Pushed over the event stream (the screen's own status poll is 15 s): seen within the agent's 1 s check.
    expect(page.locator("#status-online")).to_contain_text("离线 Offline", timeout=3000)


@pytest.mark.parametrize("size", [(1024, 768), (1280, 800), (1920, 1080)], ids=lambda size: f"{size[0]}x{size[1]}")
def test_a_touch_till_at_every_size_in_store_time(chromium: Browser, stack: Stack, size: tuple[int, int]) -> None:
    """Big targets, readable amounts, nothing wider than the screen, and times as the store (and its receipts)
    tell them, even on a PC set to another zone."""
    viewport = {"width": size[0], "height": size[1]}
    context = chromium.new_context(viewport=viewport, locale="zh-CN", timezone_id="America/New_York")
    page = context.new_page()
    sale = cash_sale(stack)
    open_till(page, stack)
    row = page.locator(f'#transactions tr[data-receipt="{sale["receipt_no"]}"]')
    journaled = stack.api.get(f"/v1/transactions/{sale['id']}").json()["created_at"]
    store_time = datetime.fromisoformat(journaled).astimezone(ZoneInfo("Asia/Shanghai"))
    expect(row).to_contain_text(store_time.strftime("%H:%M:%S"))

    controls = page.eval_on_selector_all(
        "button, input, select",
        "nodes => nodes.filter(n => n.offsetParent !== null && n.type !== 'hidden')"
        ".map(n => [n.id || n.textContent.trim(), n.getBoundingClientRect().height])",
    )
    assert controls and [name for name, height in controls if height < 48] == []
    amounts = page.eval_on_selector_all(".num", "nodes => nodes.map(n => parseFloat(getComputedStyle(n).fontSize))")
    assert amounts and min(amounts) >= 18
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    context.close()


def test_a_scan_typed_by_a_keyboard_wedge_after_a_button_press_still_reaches_the_code_box(
    page: Page, stack: Stack
) -> None:
    stack.add_member(points=7, display_name="卫*", card_no="8800000000055")
    open_till(page, stack)
    page.locator("#new-sale").click()  # the focus is on a button now
    expect(page.locator("#sale-state")).to_have_text("新交易 New")
    page.keyboard.type("8800000000055\n", delay=5)  # a wedge scanner: keys, then Enter
    expect(page.locator("#sale-member")).to_contain_text("卫*")


def test_a_customer_joins_at_the_till_after_reading_the_notice(page: Page, stack_factory) -> None:
    stack = stack_factory(central_options={"welcome_points": 100, "card_no_prefix": "8800"})
    open_till(page, stack)
    page.get_by_text("隐私说明 Privacy notice").click()
    expect(page.locator("#join-notice-text")).to_contain_text("测试门店会员隐私说明")
    page.get_by_label("办理入会 New member").fill("13900001111")
    page.get_by_role("button", name="入会 Join").click()  # not without the customer's consent
    assert stack.api.post("/v1/wallet", json={"phone": "13900001111"}).json()["found"] is False
    page.get_by_label("顾客已阅读隐私说明并同意入会").check()
    page.get_by_role("button", name="入会 Join").click()
    expect(page.locator("#message")).to_contain_text("欢迎加入会员！ 赠送 100 积分")
    expect(page.locator("#message")).to_contain_text("139****1111")
    expect(page.get_by_label("办理入会 New member")).to_have_value("")
    assert stack.api.post("/v1/wallet", json={"phone": "13900001111"}).json()["wallet"]["member"]["points"] == 100
