"""Fuzzing the classifier (agent/codes.py) beyond tests/agent/test_codes.py, which already checks that it never raises
on any text or bytes, that payment values are ASCII digits and that classifying is idempotent. Here: every
well-formed code survives any noise a scanner or a keyboard layout puts around it; no store pattern, however
loose, takes a payment or member code; a secret never shows in clear; and a pattern from settings is either
accepted or refused with a reason, never an exception.
"""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st

from agent.codes import AIM_SYMBOLOGIES, CodeRules, Kind, classify, gs1_check_digit_ok, validate_pattern
from central.member_code import generate_signing_key, sign_member_code

FAST = settings(max_examples=150, deadline=None)
KEY = generate_signing_key()

# --- well-formed codes of every kind ---------------------------------------------------------------------

payment = st.one_of(
    st.from_regex(r"\A1[0-5][0-9]{16}\Z").map(lambda c: (c, Kind.PAYMENT, "wechat")),
    st.from_regex(r"\A(2[5-9]|30)[0-9]{14,22}\Z").map(lambda c: (c, Kind.PAYMENT, "alipay")),
    st.from_regex(r"\A62[0-9]{17}\Z").map(lambda c: (c, Kind.PAYMENT, "unionpay")),
)
member_code = st.builds(
    lambda kid, member, issued: (sign_member_code(KEY, kid, member, issued), Kind.MEMBER_CODE, None),
    st.integers(min_value=0, max_value=0xFFFF),
    st.from_regex(r"\A[A-Za-z0-9_-]{1,16}\Z"),
    st.integers(min_value=0, max_value=2**32 - 1),
)


def with_check_digit(body: str) -> str:
    return next(body + d for d in "0123456789" if gs1_check_digit_ok(body + d))


product = st.sampled_from([(12, "ean13"), (7, "ean8"), (11, "upca")]).flatmap(
    lambda spec: st.from_regex(rf"\A[0-9]{{{spec[0]}}}\Z").map(
        lambda body: (with_check_digit(body), Kind.PRODUCT, spec[1])
    )
)
RULES = CodeRules(card_patterns=("8800[0-9]{9}",), coupon_pattern="CP[0-9A-Z]{10}", guide_pattern="G[0-9]{5}")
store_code = st.one_of(
    st.from_regex(r"\A8800[0-9]{9}\Z").map(lambda c: (c, Kind.CARD, None)),
    st.from_regex(r"\ACP[0-9A-Z]{10}\Z").map(lambda c: (c, Kind.COUPON, None)),
    st.from_regex(r"\AG[0-9]{5}\Z").map(lambda c: (c, Kind.GUIDE, None)),
)
secret = st.one_of(payment, member_code)
any_code = st.one_of(payment, member_code, product, store_code)

# --- what comes around a code -------------------------------------------------------------------------------

# Control and format characters: NULs, STX/ETX framing, zero-width joiners, BOMs, bidi marks. The cleaner
# removes them anywhere; whitespace (any Unicode space) only at either end.
invisible = st.characters(categories=["Cc", "Cf"])
space = st.one_of(st.characters(categories=["Zs", "Zl", "Zp"]), st.sampled_from("\t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85"))
around = st.text(alphabet=st.one_of(invisible, space), max_size=6)
aim = st.one_of(
    st.just(""),
    st.builds(
        lambda letter, mod: f"]{letter}{mod}", st.sampled_from(sorted(AIM_SYMBOLOGIES)), st.sampled_from("0123456789")
    ),
)


@st.composite
def noisy(draw, codes):
    """(the code as a scanner may deliver it, the code, its kind, provider, AIM letter or None)."""
    code, kind, provider = draw(codes)
    inside = list(code)
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        inside.insert(draw(st.integers(min_value=0, max_value=len(inside))), draw(invisible))
    prefix = draw(aim)
    wrapped = draw(around) + prefix + draw(around) + "".join(inside) + draw(around)
    return wrapped, code, kind, provider, prefix[1] if prefix else None


@FAST
@given(noisy(any_code))
@example(("\x00]Q1\u200b" + "1345\u2060" + "12345678901234\r\n", "134512345678901234", Kind.PAYMENT, "wechat", "Q"))
def test_a_code_in_any_noise_is_classified_as_itself(case):
    wrapped, code, kind, provider, letter = case
    for raw in (wrapped, wrapped.encode()):
        result = classify(raw, RULES)
        assert (result.kind, result.provider, result.value) == (kind, provider, code), repr(wrapped)
        assert result.symbology == (AIM_SYMBOLOGIES.get(letter, letter) if letter else None)


# --- store patterns: arbitrary, validated like the settings do ------------------------------------------------

# Patterns built from the pieces people write in settings, at the sizes they never should (counts past the
# regular-expression engine's limit, nesting deeper than its parser's recursion).
atom = st.sampled_from(["[0-9]", r"\d", ".", "[A-Z]", "M", "1", "6", "2", r"\w", "[^x]", "(?:a|1)"])
counted = st.builds(
    lambda a, low, high: f"{a}{{{low},{high}}}" if high is not None else f"{a}{{{low}}}",
    atom,
    st.integers(min_value=0, max_value=2**33),
    st.none() | st.integers(min_value=0, max_value=2**33),
)
piece = st.one_of(atom, counted, st.builds(lambda a, q: a + q, atom, st.sampled_from(["*", "+", "?", "*?", "+?"])))
nested = st.builds(
    lambda depth, inner: "(" * depth + inner + ")" * depth, st.integers(min_value=0, max_value=1200), piece
)
pattern = st.one_of(
    st.lists(st.one_of(piece, nested), min_size=1, max_size=5).map("".join),
    st.text(alphabet=st.sampled_from("()[]{}|.*+?^$\\0123456789,dwsAZMx-:<>=!P"), max_size=20),
    st.text(max_size=20),
)


@FAST
@given(pattern)
@example("8800[0-9]{4294967296}")  # more repeats than re allows: OverflowError
@example("(" * 1200 + "[0-9]" + ")" * 1200)  # deeper than re's parser recurses: RecursionError
def test_a_pattern_from_settings_is_accepted_or_refused_with_a_reason(text: str):
    problem = validate_pattern(text)
    if problem is None:
        CodeRules(card_patterns=(text,), coupon_pattern=text, guide_pattern=text)
    else:
        assert isinstance(problem, str) and problem
        try:
            CodeRules(card_patterns=(text,))
        except ValueError as exc:
            assert str(exc).startswith("card_patterns[0] ")
        else:
            raise AssertionError(f"CodeRules took a pattern validate_pattern refused: {problem}")


@FAST
@given(st.lists(pattern, max_size=3), pattern, pattern, noisy(secret), st.text(max_size=12))
def test_no_store_pattern_takes_a_payment_or_member_code(cards, coupon, guide, case, other):
    candidates = {"card_patterns": tuple(p for p in cards if validate_pattern(p) is None)}
    candidates["coupon_pattern"] = coupon if validate_pattern(coupon) is None else None
    candidates["guide_pattern"] = guide if validate_pattern(guide) is None else None
    rules = CodeRules(**candidates)
    wrapped, code, kind, provider, _ = case
    result = classify(wrapped, rules)
    assert (result.kind, result.provider, result.value) == (kind, provider, code)
    classify(other, rules)  # any other text: classified, whatever the store's patterns


@FAST
@given(noisy(secret))
def test_a_secret_code_never_shows_in_clear(case):
    wrapped, code, *_ = case
    result = classify(wrapped)
    assert result.is_secret
    shown = [repr(result), str(result), f"{result}", str(result.to_public()), result.display_value]
    # Not the code, and not enough of it to charge: at most its first and last four characters.
    for text in shown:
        assert code not in text
        assert not re.search(re.escape(code[4:-4]), text)
