"""Who is the customer? From a member code, a card number, a phone number or a payment code.

The offline cache answers first; when it misses and central is reachable, central's online lookup answers and
the member is added to the cache. What a member may do depends on how they were identified: spending points
needs a member code (signed, single use) or a phone number the customer confirmed; a card alone, or a payer
id learnt from a payment code (WeChat forbids it), identifies the member for prices and earning only.

Every read and write of the cache and of the member-code gate goes through their `a…` methods, which hop to a
worker thread: a SQLite call on the event loop could hold every screen for the busy timeout.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from agent.central_client import (
    CentralClient,
    CentralError,
    CentralNotReached,
    CentralServerError,
    CentralTimedOut,
    CentralUnreachable,
)
from agent.member_cache import CachedMember, MemberCache
from agent.member_code_gate import MemberCodeGate
from agent.sync import to_cache_change

Via = Literal["member_code", "card", "phone", "payment_code"]


class MemberNotFound(LookupError):
    """No member holds this identifier (as far as the till can know now); the message says so for the cashier."""


class CentralNeeded(Exception):
    """This needs the central service and it cannot be reached now; the message can be read to the customer."""


@dataclass(frozen=True)
class Identification:
    member: CachedMember | None
    via: Via
    may_redeem: bool
    from_central: bool = False


class Identifier:
    def __init__(
        self, cache: MemberCache, gate: MemberCodeGate, client: CentralClient, online: Callable[[], Awaitable[bool]]
    ):
        self.cache = cache
        self.gate = gate
        self.client = client
        self._online = online

    async def member_code(self, text: str) -> Identification:
        """A scanned member code: verified offline, accepted once (raises a MemberCodeError if refused)."""
        claim = await self.gate.aaccept(text)
        member = await self.cache.aget(claim.member_id)
        if member is None:
            raise MemberNotFound(
                "this member joined after the till's last sync: identify them by card or phone, or wait a minute"
            )
        return await self._seen(Identification(member, "member_code", may_redeem=True))

    async def card(self, card_no: str) -> Identification:
        return await self._by("card_no", card_no, "card", may_redeem=False)

    async def phone(self, phone: str, confirmed: bool = False) -> Identification:
        """A typed mobile number (raises pii.InvalidPhoneNumber). `confirmed`: the customer confirmed it is theirs."""
        return await self._by("phone_hash", self.cache.phone_hash(phone), "phone", may_redeem=confirmed)

    async def payment_code(self, auth_code: str) -> Identification:
        """Pay-as-member: ask central who is about to pay, before charging. Never allows spending points."""
        if not await self._online():
            raise CentralNeeded("code payment needs the network, which is down: please pay in cash or by card")
        try:
            result = await self.client.identify_payer(auth_code)
        except (CentralNotReached, CentralTimedOut):
            raise
        except (CentralUnreachable, CentralServerError):
            # A reset or a 5xx: asking charges nothing, so ask once more rather than charge without the benefits.
            result = await self.client.identify_payer(auth_code)
        member = None
        if result.member is not None:
            await self.cache.aapply([to_cache_change(result.member)])
            member = await self.cache.aget(result.member.member_id)
        return await self._seen(Identification(member, "payment_code", may_redeem=False, from_central=True))

    async def _by(self, kind: str, value: str, via: Via, may_redeem: bool) -> Identification:
        member = await self.cache.alookup(kind, value)
        if member is not None:
            return await self._seen(Identification(member, via, may_redeem))
        if await self._online():
            try:
                change = await self.client.lookup_member(kind, value)
            except CentralError:
                change = None  # the cache already said no; a failing central is not the customer's problem
            if change is not None:
                await self.cache.aapply([to_cache_change(change)])
                return await self._seen(
                    Identification(await self.cache.aget(change.member_id), via, may_redeem, from_central=True)
                )
        raise MemberNotFound(f"no member with this {'card' if kind == 'card_no' else 'phone number'}")

    async def _seen(self, found: Identification) -> Identification:
        # Their personal data stays in the cache for storage.member_retention_days from now (agent/retention.py).
        if found.member is not None:
            await self.cache.amark_seen(found.member.id)
        return found
