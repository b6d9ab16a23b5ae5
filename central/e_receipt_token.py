"""The e-receipt token: what a receipt's QR code carries instead of the sale's id. Pure (cryptography only), shared
by the agent, which mints a token offline at print time, and central, which reads it without having the sale yet.

Both sides already share one secret, the phone hash key (`privacy.phone_hash_key` on the agent, `phone_hash_key`
on central). Two keys are derived from it with HKDF-SHA256 under a label of their own, so a token and a phone hash
never use the same key: a 256-bit AES key and a 256-bit HMAC key.

    token = base64url( AES-256(enc_key, id) || HMAC-SHA256(mac_key, AES-256(enc_key, id))[:8] )   (no padding)

`id` is the 16 bytes of the sale's UUIDv7, a single AES block: encrypting it alone (the block cipher itself,
ECB of one block) hides the id and the time it holds, and a sale's id is unique, so no two tokens share a block.
The same sale always gives the same token, so a reprint's QR code is the one the customer already has. The tag
(encrypt-then-MAC, 64 bits) is what makes a token unguessable: without the key, each guess passes with
probability 2^-64. 24 bytes: 32 characters, a small QR code.

`read_token` always does the same work: a malformed token is replaced by a fixed dummy of the right length, its
tag is computed and compared in constant time (`hmac.compare_digest`) and its block decrypted, whether it turns
out genuine or not; it returns the candidate id with the verdict, and the caller looks the candidate up either
way (see central/e_receipts.py), so a forged token takes as long as a genuine one.

Why not simpler: the id itself (or the id with a MAC) in the link is guessable or tells the time of the sale and
its order at the till; a random token would need central to hear of it before the customer scans, which an
offline till cannot promise; AES-SIV would do both jobs in one call but takes 32 bytes (43 characters).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from functools import lru_cache
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

LABEL = b"pos-edge-agent e-receipt token v1"  # HKDF info: these keys are for this and nothing else
TAG_BYTES = 8
TOKEN_BYTES = 16 + TAG_BYTES
TOKEN_LENGTH = 32  # base64url characters of TOKEN_BYTES, no padding
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")
_DUMMY = bytes(TOKEN_BYTES)  # stands in for a malformed token, so it costs the same as a well-formed one


class TokenKeys(NamedTuple):
    encryption: bytes
    mac: bytes


class TokenRead(NamedTuple):
    transaction_id: str  # the decrypted candidate: a real sale's id only when `genuine`
    genuine: bool


@lru_cache(maxsize=8)
def derive_keys(secret: bytes) -> TokenKeys:
    """The token's two keys from the shared secret (the phone hash key's UTF-8 bytes)."""
    if not secret:
        raise ValueError("the e-receipt token needs the shared phone hash key")
    material = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=LABEL).derive(secret)
    return TokenKeys(material[:32], material[32:])


def mint_token(secret: bytes, transaction_id: str) -> str:
    """The token of a sale (its id is a UUID, as every journal id is)."""
    keys = derive_keys(secret)
    block = _aes(keys.encryption).encryptor().update(uuid.UUID(transaction_id).bytes)
    return base64.urlsafe_b64encode(block + _tag(keys.mac, block)).rstrip(b"=").decode("ascii")


def read_token(secret: bytes, token: str) -> TokenRead:
    """The sale a token names, and whether the token is genuine (made with this key, unaltered). Same work for any
    input: never an early return."""
    keys = derive_keys(secret)
    well_formed = _TOKEN.fullmatch(token) is not None
    raw = base64.urlsafe_b64decode(token) if well_formed else _DUMMY
    block, tag = raw[:16], raw[16:]
    genuine = hmac.compare_digest(tag, _tag(keys.mac, block)) and well_formed
    candidate = _aes(keys.encryption).decryptor().update(block)
    return TokenRead(str(uuid.UUID(bytes=candidate)), genuine)


def _aes(key: bytes) -> Cipher[modes.ECB]:
    return Cipher(algorithms.AES(key), modes.ECB())


def _tag(key: bytes, block: bytes) -> bytes:
    return hmac.new(key, block, hashlib.sha256).digest()[:TAG_BYTES]
