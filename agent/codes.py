"""Classification of raw scanner text: pure and table-driven (docs/ARCHITECTURE.md, "Conventions").

One table (`_CLASSIFIERS`) decides the order; the first kind that matches wins, and a scan that matches
nothing is `unknown`, never guessed. Member codes are only checked syntactically here: verifying them needs
keys and the clock (agent.member_code).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from typing import NamedTuple

from agent.member_code import looks_like_member_code
from agent.pii import mask_code

# Longest text we run patterns on: member codes are <= 120 chars, payment codes <= 24 digits. Anything longer
# is unknown without touching user-supplied regexes (bounds the cost of a bad pattern on garbage input).
MAX_CODE_LEN = 512


class Kind(StrEnum):
    PAYMENT = "payment"
    MEMBER_CODE = "member_code"
    CARD = "card"
    COUPON = "coupon"
    PRODUCT = "product"
    GUIDE = "guide"
    UNKNOWN = "unknown"


# Bearer secrets while valid: never printed or logged in clear.
SECRET_KINDS = frozenset({Kind.PAYMENT, Kind.MEMBER_CODE})

# Payment auth codes: (provider, pattern). `[0-9]` on purpose: `\d` also matches e.g. Arabic-Indic digits.
# The prefixes are disjoint, so order inside this table does not matter. WeChat member-card dynamic codes
# (18 digits, prefix 16) are deliberately outside the WeChat range.
PAYMENT_CODES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("wechat", re.compile(r"1[0-5][0-9]{16}")),  # 18 digits, prefix 10-15
    ("alipay", re.compile(r"(?:2[5-9]|30)[0-9]{14,22}")),  # 16-24 digits, prefix 25-30
    ("unionpay", re.compile(r"62[0-9]{17}")),  # 19 digits, prefix 62
)

# Product codes with a GS1 mod-10 check digit: digit count -> provider name.
PRODUCT_CODES: dict[int, str] = {13: "ean13", 8: "ean8", 12: "upca"}
_DIGITS_RE = re.compile(r"[0-9]+")

# AIM symbology identifier: "]" + code letter + modifier character, prefixed by scanners configured for it.
_AIM_RE = re.compile(r"\][A-Za-z][0-9A-Za-z]")
AIM_SYMBOLOGIES: dict[str, str] = {
    "Q": "qr",
    "C": "code128",
    "E": "ean",
    "d": "datamatrix",
    "A": "code39",
    "I": "itf",
    "e": "databar",
    "L": "pdf417",
}


def validate_pattern(pattern: object) -> str | None:
    """Check a code pattern from settings; return what is wrong (and how to fix it) or None when fine.

    Patterns must match the whole scan and are compiled with re.ASCII, so `\\d` means `[0-9]`.
    """
    if not isinstance(pattern, str):
        return "must be a string holding a regular expression, e.g. '16[0-9]{16}'"
    if not pattern.strip():
        return "is empty: give a regular expression the whole code must match, e.g. '16[0-9]{16}'"
    try:
        compiled = re.compile(pattern, re.ASCII)
    except re.error as exc:
        return (
            f"is not a valid regular expression ({exc.msg} at position {exc.pos}); check brackets and escapes, "
            "and prefer TOML literal strings ('...') so backslashes arrive as written"
        )
    except (OverflowError, RecursionError):
        # What re raises instead of re.error for a count over its limit (a{4294967295}) or very deep nesting.
        return "is too big for the regular-expression engine (a repeat count in the billions, or groups nested hundreds deep); write it smaller"
    if compiled.fullmatch(""):
        return "matches an empty scan: require at least one character, e.g. '16[0-9]{16}' rather than '[0-9]*'"
    return None


def _compile(name: str, pattern: str) -> re.Pattern[str]:
    error = validate_pattern(pattern)
    if error is not None:
        raise ValueError(f"{name} {error}")
    return re.compile(pattern, re.ASCII)


@dataclass(frozen=True)
class CodeRules:
    """Store-specific patterns (from settings). Each is a full-match regular expression, compiled once."""

    card_patterns: tuple[str, ...] = ()
    coupon_pattern: str | None = None
    guide_pattern: str | None = None
    _card: tuple[re.Pattern[str], ...] = field(init=False, repr=False, compare=False)
    _coupon: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _guide: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # A lone string would otherwise be iterated character by character.
        if isinstance(self.card_patterns, str):
            raise ValueError("card_patterns must be a list of patterns, not a single string")
        cards = tuple(self.card_patterns)
        object.__setattr__(self, "card_patterns", cards)
        object.__setattr__(self, "_card", tuple(_compile(f"card_patterns[{i}]", p) for i, p in enumerate(cards)))
        object.__setattr__(
            self, "_coupon", None if self.coupon_pattern is None else _compile("coupon_pattern", self.coupon_pattern)
        )
        object.__setattr__(
            self, "_guide", None if self.guide_pattern is None else _compile("guide_pattern", self.guide_pattern)
        )


@dataclass(frozen=True, repr=False)
class Classification:
    """What a scan is. `value` is the cleaned text; it is a secret for payment and member codes."""

    kind: Kind
    provider: str | None
    value: str
    symbology: str | None = None

    @property
    def is_secret(self) -> bool:
        return self.kind in SECRET_KINDS

    @property
    def display_value(self) -> str:
        """The value as it may be printed or logged."""
        return mask_code(self.value) if self.is_secret else self.value

    def to_public(self) -> dict[str, str | None]:
        """JSON-ready form with secrets masked (what the CLI prints)."""
        return {
            "kind": self.kind.value,
            "provider": self.provider,
            "value": self.display_value,
            "symbology": self.symbology,
        }

    def __repr__(self) -> str:
        return (
            f"Classification(kind={self.kind.value!r}, provider={self.provider!r}, "
            f"value={self.display_value!r}, symbology={self.symbology!r})"
        )

    __str__ = __repr__


@cache
def _strip_table() -> dict[int, int | None]:
    """str.translate table: drop control (Cc) and format (Cf) characters, replace lone surrogates.

    Built on first use. Format characters live in planes 0, 1 and 14 only (a test checks this against the
    running Python's Unicode database), so scanning those is enough.
    """
    table: dict[int, int | None] = {}
    for start, stop in ((0, 0x20000), (0xE0000, 0xF0000)):
        for cp in range(start, stop):
            category = unicodedata.category(chr(cp))
            if category in ("Cc", "Cf"):
                table[cp] = None
            elif category == "Cs":
                # Lone surrogates cannot be encoded as UTF-8 (JSON output, SQLite) downstream.
                table[cp] = 0xFFFD
    return table


def clean(raw: str | bytes) -> tuple[str, str | None]:
    """Return (text, symbology): controls and zero-width characters removed, whitespace and AIM prefix stripped.

    Never raises for str or bytes input. Bytes are decoded as UTF-8, bad bytes becoming U+FFFD.
    """
    if isinstance(raw, (bytes, bytearray, memoryview)):
        text = bytes(raw).decode("utf-8", errors="replace")
    else:
        text = str(raw)
    text = text.translate(_strip_table()).strip()
    symbology: str | None = None
    # Repeat so that cleaning is idempotent; the outermost identifier is the one the scanner added.
    while (aim := _AIM_RE.match(text)) is not None:
        if symbology is None:
            letter = aim.group()[1]
            symbology = AIM_SYMBOLOGIES.get(letter, letter)
        text = text[aim.end() :].strip()
    return text, symbology


def gs1_check_digit_ok(digits: str) -> bool:
    """GS1 mod-10: from the right, excluding the check digit, weights alternate 3, 1, 3, ..."""
    body, check = digits[:-1], int(digits[-1])
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return (10 - total % 10) % 10 == check


class _Hit(NamedTuple):
    provider: str | None = None


_Classifier = Callable[[str, CodeRules], "_Hit | None"]


def _member_code(text: str, rules: CodeRules) -> _Hit | None:
    return _Hit() if looks_like_member_code(text) else None


def _payment(text: str, rules: CodeRules) -> _Hit | None:
    for provider, pattern in PAYMENT_CODES:
        if pattern.fullmatch(text):
            return _Hit(provider)
    return None


def _card(text: str, rules: CodeRules) -> _Hit | None:
    return _Hit() if any(p.fullmatch(text) for p in rules._card) else None


def _coupon(text: str, rules: CodeRules) -> _Hit | None:
    return _Hit() if rules._coupon is not None and rules._coupon.fullmatch(text) else None


def _guide(text: str, rules: CodeRules) -> _Hit | None:
    return _Hit() if rules._guide is not None and rules._guide.fullmatch(text) else None


def _product(text: str, rules: CodeRules) -> _Hit | None:
    provider = PRODUCT_CODES.get(len(text))
    if provider and _DIGITS_RE.fullmatch(text) and gs1_check_digit_ok(text):
        return _Hit(provider)
    return None


# The order of classification, first match wins. Member codes first (their base64url body may contain
# digits); payment before the settings patterns so a loose card pattern can never turn an auth code into a
# card number that would be shown in clear.
_CLASSIFIERS: tuple[tuple[Kind, _Classifier], ...] = (
    (Kind.MEMBER_CODE, _member_code),
    (Kind.PAYMENT, _payment),
    (Kind.CARD, _card),
    (Kind.COUPON, _coupon),
    (Kind.GUIDE, _guide),
    (Kind.PRODUCT, _product),
)

_DEFAULT_RULES = CodeRules()


def classify(raw: str | bytes, rules: CodeRules = _DEFAULT_RULES) -> Classification:
    """Classify one scan. Never raises for str or bytes input."""
    text, symbology = clean(raw)
    if not text:
        return Classification(Kind.UNKNOWN, None, "", symbology)
    if len(text) > MAX_CODE_LEN:
        # Truncated for display; the ellipsis keeps it over the limit so re-classifying gives unknown again.
        return Classification(Kind.UNKNOWN, None, text[:MAX_CODE_LEN] + "\u2026", symbology)
    for kind, matches in _CLASSIFIERS:
        hit = matches(text, rules)
        if hit is not None:
            return Classification(kind, hit.provider, text, symbology)
    return Classification(Kind.UNKNOWN, None, text, symbology)
