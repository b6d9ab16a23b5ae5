"""Classification of raw scanner text: every kind, the near misses, cleaning, masking, and that it never raises."""

from __future__ import annotations

import sys
import time
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.codes import (
    MAX_CODE_LEN,
    PAYMENT_CODES,
    Classification,
    CodeRules,
    Kind,
    _strip_table,
    classify,
    clean,
    validate_pattern,
)
from agent.pii import mask_code
from central.member_code import generate_signing_key, sign_member_code

WECHAT = "134512345678901234"
ALIPAY_16 = "2812345678901234"
ALIPAY_24 = "301234567890123456789012"
UNIONPAY = "6212345678901234567"
MEMBER_CARD = "163652150534672204"  # WeChat member-card dynamic code: never a payment
MEMBER_CODE = sign_member_code(generate_signing_key(), 1, "M0012345", 1_764_547_200)
DIGIT_HEAVY_MEMBER_CODE = sign_member_code(generate_signing_key(), 0, "0123456789012345", 0)

RULES = CodeRules(
    card_patterns=("16[0-9]{16}", "VIP[0-9]{6}"),
    coupon_pattern="CP[0-9]{8}",
    guide_pattern="G[0-9]{4}",
)

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.mark.parametrize(
    ("raw", "kind", "provider"),
    [
        # payment: WeChat 18 digits prefix 10-15
        ("104512345678901234", Kind.PAYMENT, "wechat"),
        (WECHAT, Kind.PAYMENT, "wechat"),
        ("154512345678901234", Kind.PAYMENT, "wechat"),
        ("13451234567890123", Kind.UNKNOWN, None),  # 17 digits
        ("1345123456789012345", Kind.UNKNOWN, None),  # 19 digits
        ("164512345678901234", Kind.UNKNOWN, None),  # prefix 16: member card, not payment
        ("094512345678901234", Kind.UNKNOWN, None),
        ("194512345678901234", Kind.UNKNOWN, None),
        # payment: Alipay 16-24 digits prefix 25-30
        (ALIPAY_16, Kind.PAYMENT, "alipay"),
        (ALIPAY_24, Kind.PAYMENT, "alipay"),
        ("251234567890123456", Kind.PAYMENT, "alipay"),
        ("281234567890123", Kind.UNKNOWN, None),  # 15 digits
        ("2812345678901234567890123", Kind.UNKNOWN, None),  # 25 digits
        ("241234567890123456", Kind.UNKNOWN, None),
        ("311234567890123456", Kind.UNKNOWN, None),
        # payment: UnionPay 19 digits prefix 62
        (UNIONPAY, Kind.PAYMENT, "unionpay"),
        ("621234567890123456", Kind.UNKNOWN, None),  # 18 digits
        ("62123456789012345678", Kind.UNKNOWN, None),  # 20 digits
        ("6112345678901234567", Kind.UNKNOWN, None),  # prefix 61
        # products with a GS1 check digit
        ("4006381333931", Kind.PRODUCT, "ean13"),
        ("5901234123457", Kind.PRODUCT, "ean13"),
        ("4006381333932", Kind.UNKNOWN, None),  # wrong check digit
        ("96385074", Kind.PRODUCT, "ean8"),
        ("73513537", Kind.PRODUCT, "ean8"),
        ("96385075", Kind.UNKNOWN, None),
        ("036000291452", Kind.PRODUCT, "upca"),
        ("012345678905", Kind.PRODUCT, "upca"),
        ("036000291453", Kind.UNKNOWN, None),
        ("00012345600012", Kind.UNKNOWN, None),  # GTIN-14 is not in the table
        # member-card dynamic code: unknown without a card pattern
        (MEMBER_CARD, Kind.UNKNOWN, None),
        # non-ASCII digits are never codes
        (WECHAT.translate(ARABIC_INDIC), Kind.UNKNOWN, None),
        (WECHAT.translate(FULLWIDTH), Kind.UNKNOWN, None),
        (WECHAT[:-1] + "٤", Kind.UNKNOWN, None),
        ("4006381333931".translate(ARABIC_INDIC), Kind.UNKNOWN, None),
        # member codes
        (MEMBER_CODE, Kind.MEMBER_CODE, None),
        (DIGIT_HEAVY_MEMBER_CODE, Kind.MEMBER_CODE, None),
        (MEMBER_CODE[:-5], Kind.MEMBER_CODE, None),  # still syntactically plausible; verification refuses it
        ("M1." + "A" * 91, Kind.UNKNOWN, None),  # too short
        ("M1.AAAA", Kind.UNKNOWN, None),
        ("m1." + MEMBER_CODE[3:], Kind.UNKNOWN, None),
        # nothing
        ("", Kind.UNKNOWN, None),
        ("hello", Kind.UNKNOWN, None),
        ("https://example.com/qr?x=1", Kind.UNKNOWN, None),
        ("CP12345678", Kind.UNKNOWN, None),  # coupon without a coupon pattern
    ],
)
def test_table_default_rules(raw: str, kind: Kind, provider: str | None) -> None:
    result = classify(raw)
    assert (result.kind, result.provider) == (kind, provider)
    assert result.value == raw.strip()


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (MEMBER_CARD, Kind.CARD),
        ("VIP123456", Kind.CARD),
        ("VIP12345", Kind.UNKNOWN),
        ("CP12345678", Kind.COUPON),
        ("CP1234567", Kind.UNKNOWN),
        ("G0042", Kind.GUIDE),
        ("g0042", Kind.UNKNOWN),
        ("G0042 ", Kind.GUIDE),
        (WECHAT, Kind.PAYMENT),  # settings patterns never take payments
        ("4006381333931", Kind.PRODUCT),
        (MEMBER_CODE, Kind.MEMBER_CODE),
        (MEMBER_CARD.translate(ARABIC_INDIC), Kind.UNKNOWN),
    ],
)
def test_table_store_rules(raw: str, kind: Kind) -> None:
    assert classify(raw, RULES).kind == kind


def test_member_card_code_is_never_payment() -> None:
    for rules in (CodeRules(), RULES, CodeRules(card_patterns=("[0-9]{18}",))):
        assert classify(MEMBER_CARD, rules).kind != Kind.PAYMENT
    assert classify(MEMBER_CARD, CodeRules(card_patterns=("16[0-9]{16}",))).kind == Kind.CARD


def test_loose_patterns_never_take_payment_or_member_codes() -> None:
    greedy = CodeRules(card_patterns=("[0-9]+", r"[A-Za-z0-9._-]+"), coupon_pattern=".+", guide_pattern=".+")
    assert classify(WECHAT, greedy).kind == Kind.PAYMENT
    assert classify(UNIONPAY, greedy).kind == Kind.PAYMENT
    assert classify(MEMBER_CODE, greedy).kind == Kind.MEMBER_CODE
    assert classify(DIGIT_HEAVY_MEMBER_CODE, greedy).kind == Kind.MEMBER_CODE
    # ...but they do come before products: the order is the table's.
    assert classify("4006381333931", greedy).kind == Kind.CARD


def test_order_coupon_before_guide() -> None:
    rules = CodeRules(coupon_pattern="X[0-9]+", guide_pattern="X[0-9]{3}")
    assert classify("X123", rules).kind == Kind.COUPON


def test_user_patterns_are_ascii() -> None:
    # \d in settings means [0-9]: a card pattern must not accept Arabic-Indic digits.
    rules = CodeRules(card_patterns=(r"16\d{16}",))
    assert classify(MEMBER_CARD, rules).kind == Kind.CARD
    assert classify(MEMBER_CARD.translate(ARABIC_INDIC), rules).kind == Kind.UNKNOWN


@pytest.mark.parametrize(
    ("raw", "kind", "value", "symbology"),
    [
        ("]C0134512345678901234", Kind.PAYMENT, WECHAT, "code128"),
        ("]Q1" + MEMBER_CODE, Kind.MEMBER_CODE, MEMBER_CODE, "qr"),
        ("]E04006381333931", Kind.PRODUCT, "4006381333931", "ean"),
        ("]E496385074", Kind.PRODUCT, "96385074", "ean"),
        ("]d2" + ALIPAY_16, Kind.PAYMENT, ALIPAY_16, "datamatrix"),
        ("]A0hello", Kind.UNKNOWN, "hello", "code39"),
        ("]I0hello", Kind.UNKNOWN, "hello", "itf"),
        ("]e0hello", Kind.UNKNOWN, "hello", "databar"),
        ("]L2hello", Kind.UNKNOWN, "hello", "pdf417"),
        ("]X9hello", Kind.UNKNOWN, "hello", "X"),
        ("]Q1 " + WECHAT + " ", Kind.PAYMENT, WECHAT, "qr"),
        ("\r\n]Q1\t" + WECHAT, Kind.PAYMENT, WECHAT, "qr"),
        ("]Q1", Kind.UNKNOWN, "", "qr"),
        ("]Q", Kind.UNKNOWN, "]Q", None),  # not a complete identifier
        ("]1Q" + WECHAT, Kind.UNKNOWN, "]1Q" + WECHAT, None),
        ("x]Q1" + WECHAT, Kind.UNKNOWN, "x]Q1" + WECHAT, None),
    ],
)
def test_aim_identifier(raw: str, kind: Kind, value: str, symbology: str | None) -> None:
    result = classify(raw)
    assert (result.kind, result.value, result.symbology) == (kind, value, symbology)


@pytest.mark.parametrize(
    "wrapped",
    [
        f" {WECHAT} ",
        f"{WECHAT}\r\n",
        f"{WECHAT}\n",
        f"\t{WECHAT}\r",
        f"\x00{WECHAT}\x00",
        f"\u200b{WECHAT}\u200b",
        f"\ufeff{WECHAT}",
        f"\u3000{WECHAT}\u00a0",
        f"\x02{WECHAT}\x03",  # STX/ETX framing from serial scanners
        "1345\u200d12345678\x0090\u2060 1234".replace(" ", ""),  # controls inside are removed too
        f"\x1b{WECHAT}\x7f",
    ],
)
def test_cleaning_around_codes(wrapped: str) -> None:
    result = classify(wrapped)
    assert (result.kind, result.provider, result.value) == (Kind.PAYMENT, "wechat", WECHAT)


def test_bytes_input() -> None:
    assert classify(WECHAT.encode() + b"\r\n").value == WECHAT
    assert classify(b"\x00" + WECHAT.encode() + b"\x00").kind == Kind.PAYMENT
    assert classify(b"\xef\xbb\xbf4006381333931").kind == Kind.PRODUCT  # UTF-8 BOM
    bad = classify(b"\xff\xfe" + WECHAT.encode())
    assert bad.kind == Kind.UNKNOWN and bad.value == "\ufffd\ufffd" + WECHAT
    assert classify(bytearray(b"96385074")).kind == Kind.PRODUCT
    assert classify(b"").kind == Kind.UNKNOWN


def test_lone_surrogates_become_replacement_characters() -> None:
    result = classify("\ud800" + WECHAT)
    assert result.kind == Kind.UNKNOWN
    result.value.encode("utf-8")  # printable as JSON/UTF-8 downstream


@pytest.mark.parametrize("raw", ["", " ", "\r\n", "\x00\x00", "\u200b", "\ufeff \t"])
def test_empty_is_unknown(raw: str) -> None:
    assert classify(raw) == Classification(Kind.UNKNOWN, None, "", None)


def test_long_input_is_unknown_and_cheap() -> None:
    started = time.perf_counter()
    huge = classify("1" * 2_000_000)
    assert huge.kind == Kind.UNKNOWN and len(huge.value) == MAX_CODE_LEN + 1
    # A pathological pattern is never run on over-long input.
    slow = CodeRules(coupon_pattern="(a+)+b")
    assert classify("a" * (MAX_CODE_LEN + 1), slow).kind == Kind.UNKNOWN
    assert classify(b"\x00" * 1_000_000).value == ""
    assert time.perf_counter() - started < 2
    assert classify("9" * MAX_CODE_LEN, CodeRules(card_patterns=("9+",))).kind == Kind.CARD


def test_masking_in_public_form_and_repr() -> None:
    payment = classify("]C0" + WECHAT)
    assert payment.to_public() == {
        "kind": "payment",
        "provider": "wechat",
        "value": mask_code(WECHAT),
        "symbology": "code128",
    }
    member = classify(MEMBER_CODE)
    assert member.to_public()["value"] == mask_code(MEMBER_CODE)
    for result, secret in ((payment, WECHAT), (member, MEMBER_CODE)):
        assert result.is_secret
        assert secret not in repr(result)
        assert secret not in str(result)
        assert secret not in f"{result}"
        assert secret not in str(result.to_public())
        assert result.value == secret  # the clear value is still there for the code that charges it
    card = classify(MEMBER_CARD, RULES)
    assert card.to_public() == {"kind": "card", "provider": None, "value": MEMBER_CARD, "symbology": None}
    assert MEMBER_CARD in repr(card)
    product = classify("4006381333931")
    assert product.to_public()["value"] == "4006381333931"
    assert product.to_public()["provider"] == "ean13"


def test_kind_is_a_string_enum() -> None:
    assert Kind.MEMBER_CODE == "member_code"
    assert {k.value for k in Kind} == {
        "payment",
        "member_code",
        "card",
        "coupon",
        "product",
        "guide",
        "unknown",
    }


# --- settings patterns ----------------------------------------------------------------------------------------


# "16[0-9]{16" is accepted: Python reads an unclosed "{16" as literal text, so it is valid (it just never
# matches a real card); settings examples and tests are what catch that kind of typo.
@pytest.mark.parametrize("pattern", ["16[0-9]{16}", r"VIP\d{6}", "CP[0-9]{8}", "G[0-9]{4}", ".", "16[0-9]{16"])
def test_validate_pattern_accepts(pattern: str) -> None:
    assert validate_pattern(pattern) is None


@pytest.mark.parametrize(
    ("pattern", "needle"),
    [
        ("[0-9", "not a valid regular expression"),
        ("(", "not a valid regular expression"),
        ("", "empty"),
        ("   ", "empty"),
        ("[0-9]*", "empty scan"),
        ("a|", "empty scan"),
        (16, "string"),
        (None, "string"),
    ],
)
def test_validate_pattern_rejects(pattern: object, needle: str) -> None:
    error = validate_pattern(pattern)
    assert error is not None and needle in error


def test_code_rules_validation() -> None:
    with pytest.raises(ValueError, match=r"card_patterns\[1\]"):
        CodeRules(card_patterns=("16[0-9]{16}", "[0-9"))
    with pytest.raises(ValueError, match="coupon_pattern"):
        CodeRules(coupon_pattern="(")
    with pytest.raises(ValueError, match="guide_pattern"):
        CodeRules(guide_pattern="")
    with pytest.raises(ValueError, match="list"):
        CodeRules(card_patterns="16[0-9]{16}")  # type: ignore[arg-type]
    from_list = CodeRules(card_patterns=["16[0-9]{16}"])  # type: ignore[arg-type]
    assert from_list.card_patterns == ("16[0-9]{16}",)
    assert from_list == CodeRules(card_patterns=("16[0-9]{16}",))
    assert hash(from_list) == hash(CodeRules(card_patterns=("16[0-9]{16}",)))
    assert "_card" not in repr(from_list)


# --- tables and cleaning internals --------------------------------------------------------------------------


def test_payment_table_prefixes_are_disjoint() -> None:
    samples = [WECHAT, ALIPAY_16, ALIPAY_24, UNIONPAY]
    for sample in samples:
        assert sum(bool(p.fullmatch(sample)) for _, p in PAYMENT_CODES) == 1


def test_strip_table_covers_every_control_and_format_character() -> None:
    # _strip_table scans planes 0, 1 and 14 only; fail loudly if a new Unicode version puts Cc/Cf elsewhere.
    table = _strip_table()
    for cp in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(cp))
        if category in ("Cc", "Cf"):
            assert table.get(cp, 0) is None, hex(cp)
        elif category == "Cs":
            assert table[cp] == 0xFFFD
        else:
            assert cp not in table


def test_clean_returns_symbology() -> None:
    assert clean(" ]Q1 abc \r\n") == ("abc", "qr")
    assert clean(b"abc") == ("abc", None)


# --- properties -----------------------------------------------------------------------------------------------

_DIGITISH = st.text(
    alphabet=st.sampled_from(list("0123456789") + ["٣", "５", "߂", " ", "\x00", "\u200b", "\r", "\n", "]", "Q", "1"]),
    max_size=30,
)
_PAYMENTISH = st.from_regex(r"\A\s?(\]Q1)?(1[0-6]|2[4-9]|30|31|62)[0-9]{14,22}\s?\Z")
# Payment-shaped, with some non-ASCII decimal digits mixed in (Arabic-Indic, fullwidth, Devanagari).
_PAYMENTISH_UNICODE = st.from_regex(r"\A(1[0-5]|2[5-9]|30|62)[0-9٠-٩０-９०-९]{14,22}\Z")


def _check(result: Classification) -> None:
    assert isinstance(result.kind, Kind)
    result.value.encode("utf-8")
    if result.kind == Kind.PAYMENT:
        assert result.value.isascii() and result.value.isdigit()
        assert result.provider in {"wechat", "alipay", "unionpay"}
    if result.kind == Kind.PRODUCT:
        assert result.value.isascii() and result.value.isdigit()


@given(st.text())
def test_classify_never_raises_on_text(raw: str) -> None:
    _check(classify(raw))
    _check(classify(raw, RULES))


@given(st.binary())
def test_classify_never_raises_on_bytes(raw: bytes) -> None:
    _check(classify(raw))
    _check(classify(raw, RULES))


@given(st.one_of(_DIGITISH, _PAYMENTISH, _PAYMENTISH_UNICODE))
def test_payment_values_are_ascii_digits(raw: str) -> None:
    _check(classify(raw))
    _check(classify(raw, RULES))


@given(st.one_of(st.text(), _DIGITISH, _PAYMENTISH, _PAYMENTISH_UNICODE, st.binary()))
def test_classification_is_idempotent(raw: str | bytes) -> None:
    for rules in (CodeRules(), RULES):
        first = classify(raw, rules)
        again = classify(first.value, rules)
        assert again.kind == first.kind
        assert again.value == first.value


@given(st.from_regex(r"\A[0-9]{12}\Z"))
def test_exactly_one_check_digit_makes_an_ean13(body: str) -> None:
    kinds = [classify(body + d).kind for d in "0123456789"]
    assert kinds.count(Kind.PRODUCT) == 1
