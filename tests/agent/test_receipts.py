"""Receipt layout: what the customer reads on 58 mm and 80 mm paper."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from agent import receipts
from agent.receipts import (
    CouponUse,
    MemberInfo,
    Points,
    Receipt,
    ReceiptLine,
    StoreHeader,
    Tender,
    Totals,
    display_width,
    e_receipt_url,
    format_fen,
    layout,
    truncate,
    wrap,
)
from drivers.document import Barcode, Cut, DrawerKick, Feed, Qr, Text

SHANGHAI = ZoneInfo("Asia/Shanghai")
TRANSACTION_ID = "0190f5c2-7a3b-7c4d-8e9f-0123456789ab"
URL_TEMPLATE = "https://r.example.com/e/{transaction_id}"
LONG_NAME = "特价：新疆阿克苏冰糖心苹果（约1.5kg装），产地直发，坏果包赔。"


def sale_receipt(**changes: object) -> Receipt:
    receipt = Receipt(
        kind="sale",
        store=StoreHeader("好邻居便利店（中关村店）", "01号收银台", "北京市海淀区中关村大街1号"),
        transaction_id=TRANSACTION_ID,
        created_at=datetime(2024, 3, 11, 16, 30, 5, tzinfo=UTC),
        lines=(
            ReceiptLine("农夫山泉饮用天然水550ml", 2, 200, 400),
            ReceiptLine(LONG_NAME, 1, 2990, 2490, discount_fen=500),
            ReceiptLine("Coca-Cola Zero 330ml", 1, 350, 350),
            ReceiptLine("散装大米", Decimal("2.350"), 598, 1405),
        ),
        totals=Totals(subtotal_fen=5145, discount_fen=500, total_fen=4645),
        tenders=(Tender("微信支付", 2000), Tender("现金", 3000, change_fen=355)),
        member=MemberInfo("张*", "138****5678", "金卡会员"),
        points=Points(earned=46, redeemed=100, balance=1234, provisional=True),
        coupons=(CouponUse("满30减5元", 500),),
        e_receipt_url=e_receipt_url(URL_TEMPLATE, TRANSACTION_ID),
        footer=("谢谢惠顾，欢迎再来。", "退换货请凭小票在7日内办理，生鲜商品除外。"),
    )
    return replace(receipt, **changes) if changes else receipt


def texts(document) -> list[Text]:
    return [block for block in document.blocks if isinstance(block, Text)]


def all_text(document) -> str:
    return "\n".join(receipts.document_text(document))


def test_cjk_and_fullwidth_characters_take_two_columns():
    assert display_width("abc") == 3
    assert display_width("中文") == 4
    assert display_width("，。：￥（）") == 12
    assert display_width("¥12.34") == 6  # the yen sign of format_fen is narrow
    assert display_width("“引号”…") == 10  # ambiguous width prints double-byte on Chinese printers


@pytest.mark.parametrize("width", [5, 7, 10, 15, 32])
def test_wrapping_never_splits_a_wide_character_nor_exceeds_the_width(width):
    lines = wrap(LONG_NAME, width)
    assert all(display_width(line) <= width for line in lines)
    assert "".join(lines) == LONG_NAME
    if width >= 10:  # on realistic widths closing punctuation never starts a line
        assert not any(line[0] in "，。）" for line in lines[1:])


def test_truncation_stops_before_a_wide_character_that_would_straddle_the_edge():
    assert truncate("ab中文", 3) == "ab"
    assert truncate("ab中文", 4) == "ab中"
    assert truncate("abc", 10) == "abc"


def test_latin_words_move_to_the_next_line_whole():
    assert wrap("Coca-Cola Zero Sugar 330ml", 12) == ["Coca-Cola", "Zero Sugar", "330ml"]


@pytest.mark.parametrize(
    ("fen", "text"),
    [(1234, "¥12.34"), (5, "¥0.05"), (0, "¥0.00"), (-100, "-¥1.00"), (-5, "-¥0.05"), (123456789, "¥1234567.89")],
)
def test_money_is_formatted_from_integer_fen(fen, text):
    assert format_fen(fen) == text


def test_money_refuses_floats():
    with pytest.raises(TypeError):
        format_fen(12.34)  # type: ignore[arg-type]


@pytest.mark.parametrize("columns", [32, 48])
def test_every_line_fits_the_paper(columns):
    document = layout(sale_receipt(), columns, SHANGHAI)
    assert document.columns == columns
    for block in texts(document):
        used = display_width(block.text) * (2 if block.double else 1)
        assert used <= columns, f"{block.text!r} takes {used} of {columns} columns"


@pytest.mark.parametrize("columns", [32, 48])
def test_amounts_end_at_the_last_column(columns):
    document = layout(sale_receipt(), columns, SHANGHAI)
    lines = [block.text for block in texts(document)]
    for amount in ("¥4.00", "¥24.90", "¥3.50", "¥14.05", "¥51.45", "-¥5.00", "¥46.45", "¥20.00", "¥30.00", "¥3.55"):
        holding = [line for line in lines if line.endswith(" " + amount) and " x " not in line]  # not unit prices
        assert holding, f"no line ends with {amount}"
        assert all(display_width(line) == columns for line in holding)


@pytest.mark.parametrize("columns", [32, 48])
def test_a_long_chinese_item_name_wraps_whole_onto_the_next_lines(columns):
    document = layout(sale_receipt(), columns, SHANGHAI)
    lines = [block.text for block in texts(document)]
    first = next(i for i, line in enumerate(lines) if line.startswith("特价"))
    assert lines[first].endswith("¥24.90")
    name = lines[first][: -len("¥24.90")].rstrip()
    i = first + 1
    while not lines[i].startswith("  1 x"):
        name += lines[i]
        i += 1
    assert name == LONG_NAME
    assert i > first + 1  # it did need more than one line


def test_quantity_and_unit_price_are_shown_under_the_item():
    lines = [block.text for block in texts(layout(sale_receipt(), 48, SHANGHAI))]
    assert "  2 x ¥2.00" in lines
    assert "  2.35 x ¥5.98" in lines  # a weighed item: decimal quantity


def test_time_is_printed_in_the_stores_time_zone():
    # 16:30 UTC on the 11th is half past midnight on the 12th in Shanghai.
    text = all_text(layout(sale_receipt(), 48, SHANGHAI))
    assert "2024-03-12 00:30:05" in text
    assert "2024-03-11" not in text


def test_naive_times_are_refused():
    with pytest.raises(ValueError, match="aware"):
        sale_receipt(created_at=datetime(2024, 3, 11, 16, 30))


def test_provisional_points_carry_a_mark_and_confirmed_points_do_not():
    provisional = all_text(layout(sale_receipt(), 32, SHANGHAI))
    confirmed = all_text(layout(sale_receipt(points=Points(46, 100, 1234, provisional=False)), 32, SHANGHAI))
    assert "积分以会员中心为准 (provisional)" in provisional
    assert "积分余额" in confirmed and "1234" in confirmed
    assert "provisional" not in confirmed


def test_only_a_masked_phone_number_reaches_paper():
    # Some members' nicknames are their phone number.
    receipt = sale_receipt(member=MemberInfo("13812345678", "138****5678", "普通会员"))
    for columns in (32, 48):
        text = all_text(layout(receipt, columns, SHANGHAI))
        assert "13812345678" not in text
        assert "138****5678" in text
    with pytest.raises(ValueError, match="mask_phone"):
        MemberInfo("张*", "13812345678")


def test_member_and_points_blocks_show_what_the_member_gets():
    text = all_text(layout(sale_receipt(), 48, SHANGHAI))
    for expected in (
        "会员",
        "张*",
        "金卡会员",
        "本次积分",
        "+46",
        "使用积分",
        "-100",
        "积分余额",
        "1234",
        "满30减5元",
        "找零",
    ):
        assert expected in text


def test_no_member_block_for_a_guest():
    text = all_text(layout(sale_receipt(member=None, points=None), 48, SHANGHAI))
    assert "会员" not in text and "积分" not in text


def test_the_qr_code_carries_the_e_receipt_url():
    document = layout(sale_receipt(), 32, SHANGHAI)
    qrs = [block for block in document.blocks if isinstance(block, Qr)]
    assert [qr.payload for qr in qrs] == [f"https://r.example.com/e/{TRANSACTION_ID}"]


def test_the_e_receipt_url_comes_from_the_settings_template():
    key = b"a-phone-hash-key-that-is-secret"
    url = e_receipt_url("https://central.example.com/e/{token}?s=1", TRANSACTION_ID, key)
    assert url is not None and url.startswith("https://central.example.com/e/") and url.endswith("?s=1")
    assert TRANSACTION_ID not in url and TRANSACTION_ID.replace("-", "") not in url
    assert e_receipt_url("https://central.example.com/e/{token}", TRANSACTION_ID, None) is None  # no key, no link
    assert (  # an older settings file's template
        e_receipt_url("https://r.example.com/e/{transaction_id}?s=1", "a/b c")
        == "https://r.example.com/e/a%2Fb%20c?s=1"
    )
    with pytest.raises(ValueError, match="token"):
        e_receipt_url("https://r.example.com/e/", TRANSACTION_ID)


def test_transaction_id_is_printed_as_text_and_as_a_barcode():
    for columns in (32, 48):
        document = layout(sale_receipt(), columns, SHANGHAI)
        assert [b.data for b in document.blocks if isinstance(b, Barcode)] == [TRANSACTION_ID]
        assert TRANSACTION_ID.replace("-", "") in all_text(document).replace("-", "").replace("\n", "").replace(" ", "")


def test_the_paper_is_fed_and_cut_last_and_the_drawer_opens_only_when_asked():
    plain = layout(sale_receipt(), 48, SHANGHAI)
    assert isinstance(plain.blocks[-1], Cut) and isinstance(plain.blocks[-2], Feed)
    assert not any(isinstance(block, DrawerKick) for block in plain.blocks)
    cash = layout(sale_receipt(), 48, SHANGHAI, open_drawer=True)
    assert isinstance(cash.blocks[0], DrawerKick)


def test_a_refund_says_so_and_shows_negative_amounts():
    refund = sale_receipt(
        kind="refund",
        original_transaction_id="0190f5c2-0000-7000-8000-000000000001",
        original_receipt_no="T012611230042",
        reason="商品破损",
    )
    lines = [block.text for block in texts(layout(refund, 48, SHANGHAI))]
    text = "\n".join(lines)
    assert "退货 REFUND" in text
    assert any(line.startswith("退款金额") and line.endswith("-¥46.45") for line in lines)
    assert any(line.startswith("农夫山泉") and line.endswith("-¥4.00") for line in lines)
    assert any(line.startswith("微信支付") and line.endswith("-¥20.00") for line in lines)
    assert any(line.startswith("原小票号") and line.endswith("T012611230042") for line in lines)  # not the id
    assert "0190f5c2-0000-7000" not in text and any(
        line.startswith("退款原因") and line.endswith("商品破损") for line in lines
    )
    assert "扣回积分" in text and "-46" in text  # points the sale earned are taken back
    assert "应付" not in text


def test_the_header_is_centred_with_the_store_name_in_double_size():
    blocks = texts(layout(sale_receipt(), 48, SHANGHAI))
    assert blocks[0] == Text("好邻居便利店（中关村店）", "center", bold=True, double=True)
    assert blocks[1].text == "北京市海淀区中关村大街1号" and blocks[1].align == "center"


@pytest.mark.parametrize("columns", [32, 48])
def test_print_test_page_has_chinese_punctuation_a_qr_code_and_a_barcode(columns):
    document = receipts.test_page("好邻居便利店", columns)
    text = all_text(document)
    for ch in "，。：￥（）":
        assert ch in text
    assert any(isinstance(block, Qr) for block in document.blocks)
    assert any(isinstance(block, Barcode) for block in document.blocks)
    assert all(display_width(b.text) * (2 if b.double else 1) <= columns for b in texts(document))
