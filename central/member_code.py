"""Signing side of dynamic member codes (format: docs/member-code.md).

Only central holds the private key. This module shares the wire format with `agent.member_code` but no code:
the agent must not depend on central, and a merchant's own central service implements the same few lines.
"""

from __future__ import annotations

import base64
import re
import struct

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PREFIX = "M1."
SIGNING_CONTEXT = b"pos-edge member code v1\x00"
MAX_TEXT_LEN = 120

_HEADER = struct.Struct(">HI")  # kid (uint16), issued_at (uint32), big-endian
_MEMBER_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,16}")  # ASCII only: [0-9] is not \d


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def generate_signing_key() -> Ed25519PrivateKey:
    """A fresh Ed25519 key for signing member codes."""
    return Ed25519PrivateKey.generate()


def public_key_b64(private_key: Ed25519PrivateKey) -> str:
    """The raw 32-byte public key as base64url without padding: what agents are given to verify with."""
    return _b64url(private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))


def sign_member_code(private_key: Ed25519PrivateKey, kid: int, member_id: str, issued_at: int) -> str:
    """Return the member code text for `member_id` issued at `issued_at` (unix seconds UTC).

    `kid` names the key so agents can hold several during a rotation. Raises ValueError on bad input.
    """
    if isinstance(kid, bool) or not isinstance(kid, int) or not 0 <= kid <= 0xFFFF:
        raise ValueError("kid must be an integer in 0..65535")
    if isinstance(issued_at, bool) or not isinstance(issued_at, int) or not 0 <= issued_at <= 0xFFFFFFFF:
        raise ValueError("issued_at must be unix seconds in 0..4294967295")
    if not isinstance(member_id, str) or not _MEMBER_ID_RE.fullmatch(member_id):
        raise ValueError("member_id must be 1..16 characters of [A-Za-z0-9_-]")
    payload = _HEADER.pack(kid, issued_at) + member_id.encode("ascii")
    signature = private_key.sign(SIGNING_CONTEXT + payload)
    text = PREFIX + _b64url(payload + signature)
    assert len(text) <= MAX_TEXT_LEN  # guaranteed by the member_id limit; QR layout depends on it
    return text
