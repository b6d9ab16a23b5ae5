"""Member codes: central signs, the agent verifies offline; the documented example must keep verifying."""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

import agent.member_code as agent_mc
import central.member_code as central_mc
from agent.member_code import (
    BadSignature,
    ExpiredMemberCode,
    MalformedMemberCode,
    MemberCodeClaim,
    MemberCodeError,
    MemberCodeFromFuture,
    ReplayedMemberCode,
    UnknownSigningKey,
    load_public_key,
    looks_like_member_code,
    parse_member_code,
    verify_member_code,
)
from central.member_code import generate_signing_key, public_key_b64, sign_member_code

DOC = Path(__file__).resolve().parents[2] / "docs" / "member-code.md"

# A fixed key keeps failures reproducible (RFC 8032 TEST 1; never a real key).
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
KEY = Ed25519PrivateKey.from_private_bytes(SEED)
KID = 7
KEYS = {KID: load_public_key(public_key_b64(KEY))}
ISSUED = 1_764_547_200
ISSUED_DT = datetime.fromtimestamp(ISSUED, UTC)
WINDOW, SKEW = 120, 30


def _code(member_id: str = "M0012345", issued_at: int = ISSUED, kid: int = KID, key: Ed25519PrivateKey = KEY) -> str:
    return sign_member_code(key, kid, member_id, issued_at)


def _raw(code: str) -> bytes:
    body = code[3:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _text(raw: bytes) -> str:
    return "M1." + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _verify(code: str, now: datetime = ISSUED_DT + timedelta(seconds=10)) -> MemberCodeClaim:
    return verify_member_code(code, KEYS, now, window_s=WINDOW, skew_s=SKEW)


def test_roundtrip() -> None:
    code = _code()
    claim = _verify(code)
    assert claim == MemberCodeClaim(
        member_id="M0012345",
        issued_at=ISSUED_DT,
        kid=KID,
        fingerprint=hashlib.sha256(code.encode()).hexdigest(),
    )
    assert claim.issued_at.tzinfo is not None and claim.issued_at.utcoffset() == timedelta(0)
    assert looks_like_member_code(code)


def test_roundtrip_with_generated_key_and_rotation() -> None:
    old, new = generate_signing_key(), generate_signing_key()
    keys = {1: load_public_key(public_key_b64(old)), 2: load_public_key(public_key_b64(new))}
    now = ISSUED_DT
    assert verify_member_code(sign_member_code(old, 1, "a", ISSUED), keys, now).kid == 1
    assert verify_member_code(sign_member_code(new, 2, "b", ISSUED), keys, now).kid == 2
    # The right kid with the wrong key is a bad signature, not an unknown key.
    with pytest.raises(BadSignature):
        verify_member_code(sign_member_code(new, 1, "a", ISSUED), keys, now)


def test_length_bounds() -> None:
    longest = _code("x" * 16, issued_at=2**32 - 1, kid=0xFFFF)
    assert len(longest) == 3 + math.ceil((2 + 4 + 16 + 64) * 4 / 3) == 118 <= 120
    assert len(longest) == agent_mc.MAX_TEXT_LEN
    assert len(_code("x")) == agent_mc.MIN_TEXT_LEN == 98
    assert _verify(_code("A-_z09" + "Z" * 10)).member_id == "A-_z09" + "Z" * 10


def test_central_and_agent_agree_on_wire_constants() -> None:
    assert central_mc.PREFIX == agent_mc.PREFIX
    assert central_mc.SIGNING_CONTEXT == agent_mc.SIGNING_CONTEXT == b"pos-edge member code v1\x00"


@pytest.mark.parametrize(
    ("kid", "member_id", "issued_at"),
    [
        (-1, "m", ISSUED),
        (65536, "m", ISSUED),
        (True, "m", ISSUED),
        (1, "", ISSUED),
        (1, "x" * 17, ISSUED),
        (1, "a b", ISSUED),
        (1, "会员1", ISSUED),
        (1, "a.b", ISSUED),
        (1, "١٢٣", ISSUED),  # Arabic-Indic digits are not [0-9]
        (1, "m", -1),
        (1, "m", 2**32),
    ],
)
def test_sign_rejects_bad_input(kid: int, member_id: str, issued_at: int) -> None:
    with pytest.raises(ValueError):
        sign_member_code(KEY, kid, member_id, issued_at)


def test_central_does_not_import_agent_and_vice_versa() -> None:
    central_src = Path(central_mc.__file__).read_text()
    agent_src = Path(agent_mc.__file__).read_text()
    assert not re.search(r"^\s*(from|import)\s+agent\b", central_src, re.M)
    assert not re.search(r"^\s*(from|import)\s+central\b", agent_src, re.M)


def test_tampered_payload_is_bad_signature() -> None:
    raw = bytearray(_raw(_code("M0012345")))
    raw[6] ^= 0x01  # first member id byte: "M" -> "L", still a valid id
    with pytest.raises(BadSignature):
        _verify(_text(bytes(raw)))
    raw = bytearray(_raw(_code()))
    raw[5] ^= 0x01  # issued_at moved by one second
    with pytest.raises(BadSignature):
        _verify(_text(bytes(raw)))


def test_tampered_signature_is_bad_signature() -> None:
    raw = bytearray(_raw(_code()))
    raw[-1] ^= 0x80
    with pytest.raises(BadSignature):
        _verify(_text(bytes(raw)))


def test_signature_without_domain_separation_is_refused() -> None:
    payload = struct.pack(">HI", KID, ISSUED) + b"M0012345"
    with pytest.raises(BadSignature):
        _verify(_text(payload + KEY.sign(payload)))


def test_unknown_kid() -> None:
    with pytest.raises(UnknownSigningKey) as info:
        _verify(_code(kid=8))
    assert "key" in str(info.value)


def test_expiry_boundary() -> None:
    code = _code()
    assert _verify(code, ISSUED_DT + timedelta(seconds=WINDOW + SKEW)).member_id == "M0012345"
    with pytest.raises(ExpiredMemberCode) as info:
        _verify(code, ISSUED_DT + timedelta(seconds=WINDOW + SKEW + 1))
    assert "refresh the code" in str(info.value)
    # Sub-second precision: one microsecond past the limit is already expired.
    with pytest.raises(ExpiredMemberCode):
        _verify(code, ISSUED_DT + timedelta(seconds=WINDOW + SKEW, microseconds=1))


def test_future_boundary() -> None:
    code = _code()
    assert _verify(code, ISSUED_DT - timedelta(seconds=SKEW)).kid == KID
    with pytest.raises(MemberCodeFromFuture) as info:
        _verify(code, ISSUED_DT - timedelta(seconds=SKEW + 1))
    assert "clock" in str(info.value)


def test_default_window_and_skew() -> None:
    code = _code()
    now = ISSUED_DT + timedelta(seconds=150)
    assert verify_member_code(code, KEYS, now).member_id == "M0012345"
    with pytest.raises(ExpiredMemberCode):
        verify_member_code(code, KEYS, now + timedelta(seconds=1))


def test_now_in_another_time_zone() -> None:
    from zoneinfo import ZoneInfo

    now = (ISSUED_DT + timedelta(seconds=10)).astimezone(ZoneInfo("Asia/Shanghai"))
    assert _verify(_code(), now).member_id == "M0012345"


def test_naive_now_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        verify_member_code(_code(), KEYS, datetime(2025, 12, 1))


def test_forged_old_code_is_bad_signature_not_expired() -> None:
    raw = bytearray(_raw(_code()))
    raw[-2] ^= 0x01
    with pytest.raises(BadSignature):
        _verify(_text(bytes(raw)), ISSUED_DT + timedelta(days=365))


def _non_canonical(code: str) -> str:
    """Same bytes, different spelling: set unused trailing bits of the last base64 character."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(code[-1])
    return code[:-1] + alphabet[last | 1]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "M1.",
        "M1",
        "m1." + "A" * 100,
        "M2." + "A" * 100,
        "M1." + "A" * 91,  # too short
        "M1." + "A" * 116,  # too long
        "M1." + "A" * 97,  # 4k+1 characters cannot be base64
        "M1." + "A" * 95 + "=",
        "M1." + "+" * 96,  # standard, not url-safe, alphabet
        "M1." + "A" * 48 + " " + "A" * 47,
        "M1." + "Ａ" * 96,  # fullwidth letters
        "M1." + "\ud800" * 96,
        "\x00" * 100,
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(MalformedMemberCode) as info:
        _verify(text)
    assert "refresh" in str(info.value)


def test_truncated_and_extended_codes_are_malformed_or_bad() -> None:
    code = _code("x" * 16)
    for cut in range(1, len(code)):
        with pytest.raises(MemberCodeError):
            _verify(code[:cut])
    with pytest.raises(MemberCodeError):
        _verify(code + "A")


def test_non_canonical_spelling_is_refused() -> None:
    # Otherwise one code could be re-spelled with a new fingerprint and slip past the replay check.
    code = _code("M001234")  # body length 103 -> 2 unused bits in the last character
    assert len(code[3:]) % 4 == 3
    variant = _non_canonical(code)
    assert variant != code and _raw(variant) == _raw(code)
    with pytest.raises(MalformedMemberCode):
        _verify(variant)


def test_member_id_charset_checked_even_when_signed() -> None:
    payload = struct.pack(">HI", KID, ISSUED) + "ü".encode()
    text = _text(payload + KEY.sign(agent_mc.SIGNING_CONTEXT + payload))
    with pytest.raises(MalformedMemberCode):
        _verify(text)


def test_parse_exposes_fields_without_trusting_them() -> None:
    parsed = parse_member_code(_code(kid=3))
    assert (parsed.kid, parsed.issued_at, parsed.member_id) == (3, ISSUED, "M0012345")
    assert len(parsed.signature) == 64


def test_error_hierarchy_and_messages() -> None:
    for cls in (
        MalformedMemberCode,
        UnknownSigningKey,
        BadSignature,
        ExpiredMemberCode,
        MemberCodeFromFuture,
        ReplayedMemberCode,
    ):
        assert issubclass(cls, MemberCodeError)
        message = str(cls())
        assert ": " in message and len(message) > 30
    assert "already used" in str(ReplayedMemberCode())


def test_load_public_key_errors() -> None:
    good = public_key_b64(KEY)
    assert load_public_key(good + "=") is not None  # padding tolerated in settings
    for bad in ("", "not base64!", good[:-2], good + "AAAA"):
        with pytest.raises(ValueError):
            load_public_key(bad)


@given(st.text(max_size=200))
def test_verify_only_raises_member_code_errors(text: str) -> None:
    try:
        _verify(text)
    except MemberCodeError:
        pass


@given(st.binary(min_size=0, max_size=100))
def test_verify_random_bodies_only_raises_member_code_errors(raw: bytes) -> None:
    try:
        _verify(_text(raw))
    except MemberCodeError:
        pass


@given(st.integers(0, 85), st.integers(0, 255))
def test_any_single_byte_change_is_refused(position: int, xor: int) -> None:
    code = _code("x" * 16)
    raw = bytearray(_raw(code))
    raw[position] ^= xor or 1
    with pytest.raises(MemberCodeError):
        _verify(_text(bytes(raw)))


# --- the worked example in docs/member-code.md ---------------------------------------------------------------


def _doc_example() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## Worked example", 1)[1]
    block = re.search(r"```text\n(.*?)```", section, re.S)
    assert block, "worked example block missing from docs/member-code.md"
    fields = {}
    for line in block.group(1).splitlines():
        name, _, value = line.partition(": ")
        fields[name.strip()] = value.strip()
    return fields


def _parse_utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_doc_example_verifies() -> None:
    ex = _doc_example()
    key = load_public_key(ex["public key (base64url)"])
    kid = int(ex["kid"])
    claim = verify_member_code(ex["code"], {kid: key}, _parse_utc(ex["verifies at (UTC)"]))
    assert claim.member_id == ex["member_id"]
    assert claim.issued_at == _parse_utc(ex["issued_at (UTC)"])
    assert int(claim.issued_at.timestamp()) == int(ex["issued_at"])
    assert len(ex["code"]) == int(ex["code length"])


def test_doc_example_is_what_central_signs() -> None:
    ex = _doc_example()
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(ex["private key seed (hex)"]))
    assert public_key_b64(private) == ex["public key (base64url)"]
    assert base64.urlsafe_b64decode(ex["public key (base64url)"] + "=") == bytes.fromhex(ex["public key (hex)"])
    code = sign_member_code(private, int(ex["kid"]), ex["member_id"], int(ex["issued_at"]))
    assert code == ex["code"]
    raw = _raw(code)
    assert raw[:-64].hex() == ex["payload (hex)"]
    assert raw[-64:].hex() == ex["signature (hex)"]
    assert (agent_mc.SIGNING_CONTEXT + raw[:-64]).hex() == ex["signed message (hex)"]
