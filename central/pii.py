"""Personal data at central: phone numbers are kept only as a keyed hash and a mask, names only masked.

The hash is the one agents compute (HMAC-SHA256 over the E.164 number, hex, with the deployment's shared
key), so a till can find a member by phone offline. Central does not import the agent's code for it: a
merchant's own central service implements the same few lines from this description.
"""

from __future__ import annotations

import hashlib
import hmac

import phonenumbers


class InvalidPhoneNumber(ValueError):
    """The text is not a valid mainland China mobile number."""


def normalize_cn_mobile(text: str) -> str:
    """`138 1234 5678` -> `+8613812345678`; InvalidPhoneNumber for anything but a mainland China mobile."""
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
    return hash_e164(key, normalize_cn_mobile(phone))


def mask_phone(phone: str) -> str:
    """`13812345678` -> `138****5678`."""
    return mask_e164(normalize_cn_mobile(phone))


def hash_e164(key: bytes, e164: str) -> str:
    """The phone hash of a number already in E.164 form (`normalize_cn_mobile`)."""
    return hmac.new(key, e164.encode("ascii"), hashlib.sha256).hexdigest()


def mask_e164(e164: str) -> str:
    national = e164[3:]
    return f"{national[:3]}****{national[-4:]}"


def mask_name(name: str) -> str:
    """`王小明` -> `王*明`, `李雷` -> `李*`, `欧阳娜娜` -> `欧**娜`: the first and (from three characters) last
    character stay, so a cashier can greet the customer without the screen showing the whole name."""
    name = name.strip()
    if len(name) <= 1:
        return name
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]
