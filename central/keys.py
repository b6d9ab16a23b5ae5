"""Member-code signing keys: one current Ed25519 key signs; rotated keys keep verifying for a grace period.

Agents fetch the public keys (`GET /v1/keys/member-code`) and keep each until its `not_after`, so codes
signed just before a rotation, and tills that have not synced since, keep working through the grace period.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlmodel import Session

from central import contract, identity
from central.errors import CentralError, NotFound
from central.member_code import generate_signing_key, public_key_b64, sign_member_code
from central.models import SigningKey

MAX_KID = 0xFFFF


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _private(row: SigningKey) -> Ed25519PrivateKey:
    seed = base64.urlsafe_b64decode(row.private_key + "=" * (-len(row.private_key) % 4))
    return Ed25519PrivateKey.from_private_bytes(seed)


def current(session: Session) -> SigningKey | None:
    return session.execute(
        sa.select(SigningKey).where(SigningKey.retired_at.is_(None)).order_by(SigningKey.kid.desc()).limit(1)
    ).scalar()


def _add(session: Session, kid: int, now: datetime) -> SigningKey:
    key = generate_signing_key()
    seed = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    row = SigningKey(kid=kid, private_key=_b64(seed), public_key=public_key_b64(key), created_at=now)
    session.add(row)
    session.flush()
    return row


def ensure_key(session: Session, now: datetime) -> SigningKey:
    """The current signing key, made on first use."""
    return current(session) or _add(session, 1, now)


def rotate(session: Session, now: datetime, grace: timedelta) -> SigningKey:
    """Make a new key current; the old one verifies until now + grace. Returns the new key."""
    top = session.execute(sa.select(sa.func.max(SigningKey.kid))).scalar() or 0
    if top >= MAX_KID:
        raise CentralError(f"key ids are exhausted (kid {MAX_KID} in use); start a new key table")
    for row in session.execute(sa.select(SigningKey).where(SigningKey.retired_at.is_(None))).scalars():
        row.retired_at = now
        row.not_after = now + grace
    return _add(session, top + 1, now)


def public_keys(session: Session, now: datetime) -> contract.PublicKeys:
    """The current key first, then rotated keys still inside their grace period, newest first."""
    rows = session.execute(
        sa.select(SigningKey)
        .where(sa.or_(SigningKey.not_after.is_(None), SigningKey.not_after > now))
        .order_by(SigningKey.retired_at.is_not(None), SigningKey.kid.desc())
    ).scalars()
    return contract.PublicKeys(
        keys=[contract.PublicKey(kid=r.kid, public_key=r.public_key, not_after=r.not_after) for r in rows]
    )


def member_code(session: Session, member_id: str, now: datetime) -> str:
    """A fresh member code for a live member, signed with the current key (what the member app shows)."""
    member = identity.resolve(session, member_id)
    if member is None or member.id != member_id:
        raise NotFound(f"no member {member_id}" + (f" (merged into {member.id})" if member else ""))
    key = ensure_key(session, now)
    return sign_member_code(_private(key), key.kid, member_id, int(now.timestamp()))
