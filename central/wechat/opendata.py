"""The user data a mini program hands over encrypted (开放数据校验与解密): `encryptedData` and `iv` from WeChat,
decrypted with the user's session key, which only central holds.

AES-128-CBC: the key is the base64-decoded `session_key` (16 bytes), the IV the base64-decoded `iv` (16 bytes), the
plaintext JSON in UTF-8 with PKCS#7 padding. Only a pad of 1 to 16 bytes, all equal to their count, is accepted
(WeChat's own sample code also takes up to 32; AES blocks never need more than 16). The JSON carries `watermark`
`{appid, timestamp}`: data made for another app, or made too long ago, is refused.

Every failure is an `OpenDataError` with a code for the client; none is an exception of the cipher. A failure to
decrypt (bad padding, not UTF-8, not a JSON object) is one error whatever the cause, so an answer never tells
which of them a forged ciphertext tripped.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from central.errors import Invalid

BLOCK = 16


class OpenDataError(Invalid):
    code = "invalid_encrypted_data"


def _b64(name: str, text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise OpenDataError(f"{name} is not base64") from None


def decrypt(session_key: str, encrypted_data: str, iv: str) -> dict[str, Any]:
    """The JSON object inside `encrypted_data`; OpenDataError when it is not one sealed with this session key."""
    key, vector, data = _b64("session_key", session_key), _b64("iv", iv), _b64("encrypted_data", encrypted_data)
    if len(key) != BLOCK:
        raise OpenDataError("the session key is not 16 bytes: log in again")
    if len(vector) != BLOCK:
        raise OpenDataError("iv must be 16 bytes (24 base64 characters)")
    if not data or len(data) % BLOCK:
        raise OpenDataError("encrypted_data must be a whole number of 16-byte blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(vector)).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    failed = OpenDataError(
        "encrypted_data does not decrypt with this session's key (altered, or sealed for an earlier login): "
        "call wx.login, log in again, then send the data again",
        code="decryption_failed",
    )
    pad = padded[-1]
    if not 1 <= pad <= BLOCK or padded[-pad:] != bytes([pad]) * pad:
        raise failed
    try:
        found = json.loads(padded[:-pad].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise failed from None
    if not isinstance(found, dict):
        raise failed
    return found


def check_watermark(data: dict[str, Any], appid: str, now: datetime, max_age_seconds: float) -> None:
    """The data was made for `appid`, at most `max_age_seconds` before `now` (and not in the future, give or take
    a minute of clock difference)."""
    watermark = data.get("watermark")
    if not isinstance(watermark, dict):
        raise OpenDataError("the decrypted data has no watermark", code="watermark_missing")
    if watermark.get("appid") != appid:
        raise OpenDataError(
            "the data was sealed for another app (watermark.appid is not this mini program's)",
            code="watermark_appid_mismatch",
        )
    stamp = watermark.get("timestamp")
    if not isinstance(stamp, int) or isinstance(stamp, bool):
        raise OpenDataError("the watermark has no timestamp", code="watermark_missing")
    try:
        made = datetime.fromtimestamp(stamp, UTC)
    except (OverflowError, OSError, ValueError):
        raise OpenDataError("the watermark's timestamp is not a time", code="watermark_missing") from None
    age = (now - made).total_seconds()
    if age > max_age_seconds or age < -60:
        raise OpenDataError(
            f"the data was sealed {age:.0f} s from now, not within {max_age_seconds:.0f} s: get it again in the "
            "mini program and send it at once",
            code="watermark_stale",
        )


def encrypt(session_key: str, plaintext: bytes, iv: bytes) -> str:
    """What WeChat does (for the simulator and the tests): PKCS#7-pad, AES-128-CBC, base64."""
    pad = BLOCK - len(plaintext) % BLOCK
    encryptor = Cipher(algorithms.AES(base64.b64decode(session_key)), modes.CBC(iv)).encryptor()
    return base64.b64encode(encryptor.update(plaintext + bytes([pad]) * pad) + encryptor.finalize()).decode()
