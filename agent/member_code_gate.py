"""Accepting member codes at the till: offline signature check with central's cached public keys, and a
persistent replay guard, so a screenshot of a member code works once and a restart does not reopen it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.clock import from_storage, to_storage, utcnow
from agent.db import reader
from agent.member_code import MemberCodeClaim, ReplayedMemberCode, load_public_key, verify_member_code


@dataclass(frozen=True)
class PublicKeyRecord:
    kid: int
    public_key: str  # raw Ed25519 key, base64url
    not_after: datetime | None = None  # a rotated-out key stays valid until then


class MemberCodeGate:
    def __init__(self, engine: sa.Engine, window_s: int = 120, skew_s: int = 30):
        self.engine = engine
        self.window_s = window_s
        self.skew_s = skew_s

    def replace_keys(self, keys: Iterable[PublicKeyRecord], now: datetime | None = None) -> None:
        """Store central's current key set (from GET /v1/keys/member-code); keys not in it are dropped."""
        keys = list(keys)
        for key in keys:
            load_public_key(key.public_key)  # refuse a bad key before it replaces a good one
        stamp = to_storage(now or utcnow())
        with self.engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM member_code_key")
            if keys:
                connection.exec_driver_sql(
                    "INSERT INTO member_code_key (kid, public_key, not_after, updated_at) VALUES (?, ?, ?, ?)",
                    [(k.kid, k.public_key, k.not_after and to_storage(k.not_after), stamp) for k in keys],
                )

    def keys(self, now: datetime) -> dict[int, Ed25519PublicKey]:
        with reader(self.engine) as connection:
            rows = connection.exec_driver_sql("SELECT kid, public_key, not_after FROM member_code_key").all()
        return {
            kid: load_public_key(public_key)
            for kid, public_key, not_after in rows
            if not_after is None or from_storage(not_after) >= now
        }

    async def aaccept(self, text: str, now: datetime | None = None) -> MemberCodeClaim:
        """`accept` from the event loop: the replay guard writes SQLite, which may wait up to the busy timeout."""
        return await asyncio.to_thread(self.accept, text, now)

    def accept(self, text: str, now: datetime | None = None) -> MemberCodeClaim:
        """Verify a scanned member code and record it as used; raises a MemberCodeError subclass if refused."""
        now = now or utcnow()
        claim = verify_member_code(text, self.keys(now), now, self.window_s, self.skew_s)
        expires = claim.issued_at + timedelta(seconds=self.window_s + self.skew_s)
        with self.engine.begin() as connection:
            # Codes past their window can never verify again: their fingerprints need not be kept.
            connection.exec_driver_sql("DELETE FROM seen_member_code WHERE expires_at < ?", (to_storage(now),))
            inserted = connection.exec_driver_sql(
                "INSERT INTO seen_member_code (fingerprint, member_id, accepted_at, expires_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (fingerprint) DO NOTHING",
                (claim.fingerprint, claim.member_id, to_storage(now), to_storage(expires)),
            )
            if inserted.rowcount == 0:
                raise ReplayedMemberCode()
        return claim
