"""Personal data at the edge: phone numbers are kept only as a keyed hash and a display mask.

Auth codes and member codes are bearer secrets while they are valid, so anything printed or logged shows
them masked.
"""

from __future__ import annotations

import hashlib
import hmac

import phonenumbers


class InvalidPhoneNumber(ValueError):
    """The text is not a valid mainland China mobile number."""


def normalize_cn_mobile(text: str) -> str:
    """Return the number as E.164 (`+8613812345678`); raise InvalidPhoneNumber when it is not a CN mobile."""
    try:
        number = phonenumbers.parse(text, "CN")
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"not a phone number: {exc}") from exc
    if (
        number.country_code != 86
        or not phonenumbers.is_valid_number(number)
        or phonenumbers.number_type(number) != phonenumbers.PhoneNumberType.MOBILE
    ):
        raise InvalidPhoneNumber("not a valid mainland China mobile number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def phone_hash(key: bytes, phone: str) -> str:
    """Keyed hash used to look a member up by phone: HMAC-SHA256 over the E.164 form, hex.

    The key is per deployment and shared with the central service, so both compute the same value.
    """
    e164 = normalize_cn_mobile(phone)
    return hmac.new(key, e164.encode("ascii"), hashlib.sha256).hexdigest()


def mask_phone(phone: str) -> str:
    """`13812345678` -> `138****5678` (the form receipts and kiosk screens show)."""
    national = normalize_cn_mobile(phone)[3:]
    return f"{national[:3]}****{national[-4:]}"


def mask_code(text: str) -> str:
    """Mask a secret code for printing or logging, keeping just enough to tell two codes apart.

    Shows the first 4 and last 4 characters of codes longer than 12, otherwise only the last 2.
    """
    if len(text) > 12:
        return f"{text[:4]}{'*' * (len(text) - 8)}{text[-4:]}"
    if len(text) > 4:
        return f"{'*' * (len(text) - 2)}{text[-2:]}"
    return "*" * len(text)
