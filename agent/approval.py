"""A supervisor's approval of the actions a store keeps under control (docs/checkout.md, "Manager approval").

Refunds, voids of a sale in which money was taken, price overrides and reprints after the first need a supervisor's
PIN or card when `approval.actions` names them. Neither is kept in the clear: the settings hold a salted scrypt hash
of each (`pos-edge hash-secret`), and a try is compared in constant time. After `approval.wrong_tries` wrong tries in a
row, every try is refused for `approval.lockout_minutes` — the right one too, so a PIN cannot be guessed by telling
the two apart. The count lives in memory: restarting the agent needs the box's root, which already bypasses it.

Who approved is recorded with what was done: `approved_by` on the journal row of a refund, a void or a sale with a
price override, and on the reprint's row (`agent/receipt_printing.py`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from agent.clock import SYSTEM_CLOCK, Clock
from agent.errors import ApprovalLocked, ApprovalRefused, ApprovalRequired

if TYPE_CHECKING:
    from agent.settings import ApprovalSettings, SupervisorSettings

log = logging.getLogger(__name__)

# scrypt at the cost OWASP suggests for interactive logins: ~50 ms and 16 MiB on a Raspberry Pi 4, per supervisor tried.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class Action(StrEnum):
    REFUND = "refund"
    VOID = "void"  # cancelling a sale in which money was taken
    PRICE_OVERRIDE = "price_override"  # a line sold at another price than its list price
    REPRINT = "reprint"  # a receipt printed again after its first reprint


def hash_secret(secret: str) -> str:
    """The settings' form of a PIN or card: `scrypt$N$r$p$salt$key`, salt and key in base64."""
    salt = secrets.token_bytes(16)
    key = _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return "$".join(("scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P), _b64(salt), _b64(key)))


def secret_matches(secret: str, hashed: str) -> bool:
    _, n, r, p, salt, key = hashed.split("$")
    expected = base64.b64decode(key)
    return hmac.compare_digest(_scrypt(secret, base64.b64decode(salt), int(n), int(r), int(p), len(expected)), expected)


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int, length: int = 32) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=256 * r * n * p + 2**20, dklen=length
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- the lock-out: pure ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lockout:
    wrong: int = 0  # wrong tries in a row
    until: datetime | None = None  # every try is refused before then

    def locked(self, now: datetime) -> bool:
        return self.until is not None and now < self.until


def after_try(lockout: Lockout, right: bool, now: datetime, tries: int, lock_for: timedelta) -> Lockout:
    """A right try clears the count; the `tries`-th wrong one in a row locks until `now + lock_for`."""
    if right:
        return Lockout()
    wrong = lockout.wrong + 1
    return Lockout(0, now + lock_for) if wrong >= tries else Lockout(wrong)


# --- the shell --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Given:
    """What the request carried: a PIN typed, or the text of a supervisor card scanned."""

    pin: str | None = None
    card: str | None = None


class Approvals:
    """The station's supervisors and their lock-out. `supervisor()` hashes: call it off the event loop."""

    def __init__(self, settings: ApprovalSettings, clock: Clock = SYSTEM_CLOCK):
        self.settings = settings
        self._clock = clock
        self._lockout = Lockout()
        self._lock = threading.Lock()

    def needed(self, action: Action) -> bool:
        return action in self.settings.actions

    def supervisor(self, given: Given) -> SupervisorSettings:
        """The supervisor whose PIN or card this is; `ApprovalRefused` with the tries left, or `ApprovalLocked`."""
        with self._lock:
            now = self._clock.now()
            if self._lockout.locked(now):
                raise self._locked(now)
            found = next((s for s in self.settings.supervisors if _matches(s, given)), None)
            self._lockout = after_try(
                self._lockout,
                found is not None,
                now,
                self.settings.wrong_tries,
                timedelta(minutes=self.settings.lockout_minutes),
            )
            if found is not None:
                log.info("supervisor approval given", extra={"supervisor": found.id})
                return found
            if self._lockout.locked(now):
                log.warning("supervisor approval locked after wrong tries", extra={"until": str(self._lockout.until)})
                raise self._locked(now)
            log.warning("supervisor approval refused: wrong PIN or card", extra={"wrong": self._lockout.wrong})
            left = self.settings.wrong_tries - self._lockout.wrong
            raise ApprovalRefused(
                f"this is not a supervisor's {'PIN' if given.pin is not None else 'card'}: {left} tries left",
                f"主管授权无效，还可再试 {left} 次",
                tries_left=left,
            )

    def checked(self, given: Given | None) -> str | None:
        """The supervisor's id when the request carried an approval (checked: a wrong one is refused), else None."""
        return None if given is None else self.supervisor(given).id

    def approved_by(self, action: Action, given: Given | None) -> str | None:
        """The approving supervisor's id; None when `action` needs nobody. Refused when it needs one and none came."""
        if not self.needed(action):
            return self.checked(given)
        if given is None:
            raise ApprovalRequired.of(action)
        return self.supervisor(given).id

    def _locked(self, now: datetime) -> ApprovalLocked:
        assert self._lockout.until is not None
        seconds = max(1, int((self._lockout.until - now).total_seconds() + 0.999))
        minutes = (seconds + 59) // 60
        return ApprovalLocked(
            f"too many wrong tries: supervisor approval is locked for {minutes} more minute(s)",
            f"输错次数过多，主管授权已锁定，请 {minutes} 分钟后再试",
            retry_after_s=seconds,
        )


def _matches(supervisor: SupervisorSettings, given: Given) -> bool:
    hashed = supervisor.pin_hash if given.pin is not None else supervisor.card_hash
    secret = given.pin if given.pin is not None else given.card
    return hashed is not None and secret is not None and secret_matches(secret, hashed)
