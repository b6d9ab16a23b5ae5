"""Dynamic member codes: wire format and offline verification at the edge.

Central signs member codes with Ed25519; the agent only holds public keys, so a compromised till cannot mint
a code. The format is specified in docs/member-code.md. This module deliberately imports nothing from
`central`: a merchant may run their own central service that only shares the wire format.

Wire format (all integers big-endian):

    text      = "M1." + base64url_nopad(payload || signature)
    payload   = kid (uint16) || issued_at (uint32, unix seconds UTC) || member_id (ASCII [A-Za-z0-9_-]{1,16})
    signature = Ed25519(SIGNING_CONTEXT || payload), 64 bytes
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

PREFIX = "M1."
# Domain separation: the key signs only messages starting with this, so a signature made for anything
# else (another protocol, another version) can never verify as a member code.
SIGNING_CONTEXT = b"pos-edge member code v1\x00"

_HEADER = struct.Struct(">HI")  # kid, issued_at
HEADER_LEN = _HEADER.size  # 6
SIGNATURE_LEN = 64
MEMBER_ID_MIN_LEN = 1
MEMBER_ID_MAX_LEN = 16
MIN_RAW_LEN = HEADER_LEN + MEMBER_ID_MIN_LEN + SIGNATURE_LEN  # 71
MAX_RAW_LEN = HEADER_LEN + MEMBER_ID_MAX_LEN + SIGNATURE_LEN  # 86


def _b64_len(n: int) -> int:
    """Length of base64 without padding for n bytes."""
    return (n * 4 + 2) // 3


MIN_TEXT_LEN = len(PREFIX) + _b64_len(MIN_RAW_LEN)  # 98
MAX_TEXT_LEN = len(PREFIX) + _b64_len(MAX_RAW_LEN)  # 118, within the 120 the QR layout allows

# `[A-Za-z0-9_-]` on str patterns is ASCII only (unlike \w or \d).
_BODY_RE = re.compile(r"[A-Za-z0-9_-]+")
_MEMBER_ID_RE = re.compile(rb"[A-Za-z0-9_-]{1,16}")

DEFAULT_WINDOW_S = 120
DEFAULT_SKEW_S = 30


class MemberCodeError(Exception):
    """A member code was refused. The message says what the cashier or customer should do."""

    what = "member code refused"
    advice = "ask the customer to refresh the code in the app, or identify them by card or phone"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail
        suffix = f" ({detail})" if detail else ""
        super().__init__(f"{self.what}{suffix}: {self.advice}")


class MalformedMemberCode(MemberCodeError):
    """The text is not a well-formed member code."""

    what = "not a valid member code"
    advice = "ask the customer to refresh the member code in the app and scan it again"


class UnknownSigningKey(MemberCodeError):
    """Signed with a key id this agent does not know (key rotation not synced yet, or another system)."""

    what = "member code signed with a key this till does not know"
    advice = "sync the member-code keys from central (or wait for the next sync); meanwhile identify by card or phone"


class BadSignature(MemberCodeError):
    """The signature does not match: forged or damaged code."""

    what = "member code signature is invalid"
    advice = "do not accept it; ask the customer to refresh the code in the app, or identify them by card or phone"


class ExpiredMemberCode(MemberCodeError):
    """Issued longer ago than the validity window allows."""

    what = "member code has expired"
    advice = "ask the customer to refresh the code in the app"


class MemberCodeFromFuture(MemberCodeError):
    """Issued later than this till's clock allows: usually the till's (or phone's) clock is wrong."""

    what = "member code is dated in the future"
    advice = "check this till's clock (NTP); ask the customer to refresh the code in the app"


class ReplayedMemberCode(MemberCodeError):
    """Raised by the storage layer when the code's fingerprint was seen before."""

    what = "member code was already used"
    advice = "ask the customer to refresh the code in the app (each code works once)"


@dataclass(frozen=True)
class ParsedMemberCode:
    """Structure of a member code before its signature is checked (nothing here is trusted yet)."""

    kid: int
    issued_at: int
    member_id: str
    payload: bytes
    signature: bytes


@dataclass(frozen=True)
class MemberCodeClaim:
    """A verified member code.

    `fingerprint` (hex SHA-256 of the code text) is the replay key: store it, never the code itself.
    """

    member_id: str
    issued_at: datetime
    kid: int
    fingerprint: str


def looks_like_member_code(text: str) -> bool:
    """Cheap syntactic check used by classification: prefix, base64url alphabet, plausible length.

    Says nothing about authenticity; never raises.
    """
    if not isinstance(text, str) or not (MIN_TEXT_LEN <= len(text) <= MAX_TEXT_LEN):
        return False
    if not text.startswith(PREFIX):
        return False
    body = text[len(PREFIX) :]
    # A base64 body of length 4k+1 cannot be produced by any byte string.
    return len(body) % 4 != 1 and _BODY_RE.fullmatch(body) is not None


def _decode_body(body: str) -> bytes:
    """Strict base64url-without-padding decoding; raises MalformedMemberCode.

    Strict matters for replay protection: Python's decoder ignores stray characters and non-zero trailing
    bits, so a lenient decoder would let one code be re-spelled with a different fingerprint.
    """
    if not _BODY_RE.fullmatch(body) or len(body) % 4 == 1:
        raise MalformedMemberCode("not base64url")
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise MalformedMemberCode("not base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != body:
        raise MalformedMemberCode("non-canonical base64url")
    return raw


def parse_member_code(text: str) -> ParsedMemberCode:
    """Split a member code into its fields without checking the signature; raises MalformedMemberCode."""
    if not isinstance(text, str):
        raise MalformedMemberCode("not text")
    if not text.startswith(PREFIX):
        raise MalformedMemberCode(f"does not start with {PREFIX}")
    if not (MIN_TEXT_LEN <= len(text) <= MAX_TEXT_LEN):
        raise MalformedMemberCode("wrong length")
    raw = _decode_body(text[len(PREFIX) :])
    if not (MIN_RAW_LEN <= len(raw) <= MAX_RAW_LEN):
        raise MalformedMemberCode("wrong length")
    payload, signature = raw[:-SIGNATURE_LEN], raw[-SIGNATURE_LEN:]
    kid, issued_at = _HEADER.unpack_from(payload)
    member_id = payload[HEADER_LEN:]
    if not _MEMBER_ID_RE.fullmatch(member_id):
        raise MalformedMemberCode("bad member id")
    return ParsedMemberCode(kid, issued_at, member_id.decode("ascii"), payload, signature)


def load_public_key(b64: str) -> Ed25519PublicKey:
    """Load a raw 32-byte Ed25519 public key given as base64url (padding optional).

    Raises ValueError (a settings/sync problem, not a scan problem).
    """
    if not isinstance(b64, str):
        raise ValueError("member-code public key must be a base64url string")
    body = b64.strip().rstrip("=")
    if not _BODY_RE.fullmatch(body) or len(body) % 4 == 1:
        raise ValueError("member-code public key is not base64url: copy it again from central")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    if len(raw) != 32:
        raise ValueError(f"member-code public key must be 32 bytes, got {len(raw)}: copy it again from central")
    return Ed25519PublicKey.from_public_bytes(raw)


def fingerprint(text: str) -> str:
    """Replay key of a code: hex SHA-256 of its text (the text is ASCII once parsed)."""
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def verify_member_code(
    text: str,
    keys: Mapping[int, Ed25519PublicKey],
    now: datetime,
    window_s: int = DEFAULT_WINDOW_S,
    skew_s: int = DEFAULT_SKEW_S,
) -> MemberCodeClaim:
    """Verify a member code offline and return who it identifies.

    Accepted when the signature is good and `issued_at - skew_s <= now <= issued_at + window_s + skew_s`.
    Any problem with `text` raises a MemberCodeError subclass and nothing else; the time checks run only after
    the signature, so "expired" is never said about a forged code. Replay is the caller's job (storage keeps
    `fingerprint`). Pass the exact text that was scanned after cleaning (Classification.value).
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")
    if window_s < 0 or skew_s < 0:
        raise ValueError("window_s and skew_s must not be negative")
    parsed = parse_member_code(text)
    key = keys.get(parsed.kid)
    if key is None:
        raise UnknownSigningKey(f"key id {parsed.kid}")
    try:
        key.verify(parsed.signature, SIGNING_CONTEXT + parsed.payload)
    except InvalidSignature:
        raise BadSignature() from None
    issued = datetime.fromtimestamp(parsed.issued_at, UTC)
    if issued - timedelta(seconds=skew_s) > now:
        ahead = int((issued - now).total_seconds())
        raise MemberCodeFromFuture(f"{ahead} s ahead of this till's clock")
    if now > issued + timedelta(seconds=window_s + skew_s):
        age = int((now - issued).total_seconds())
        raise ExpiredMemberCode(f"issued {age} s ago, valid for {window_s} s")
    return MemberCodeClaim(
        member_id=parsed.member_id,
        issued_at=issued,
        kid=parsed.kid,
        fingerprint=fingerprint(text),
    )
