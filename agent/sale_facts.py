"""The facts a sale's step needs beyond the sale itself, read just before the rules decide (agent/sale_rules.py):
whether central is reachable, the coupons the cache holds, and how many points a member may still spend offline
today. Reads only: from the member cache and the journal (each off the event loop) and the connectivity view."""

from __future__ import annotations

from collections.abc import Sequence

from agent import sale_rules as rules
from agent.benefits import usable_now
from agent.clock import Clock, utcnow
from agent.connectivity import Connectivity
from agent.identify import Identification
from agent.journal import Journal
from agent.member_cache import MemberCache
from agent.member_records import CachedCoupon
from agent.sale import Sale
from agent.settings import Settings


class SaleFacts:
    def __init__(
        self, settings: Settings, members: MemberCache, journal: Journal, connectivity: Connectivity, clock: Clock
    ):
        self.settings = settings
        self.clock = clock
        self.members = members
        self.journal = journal
        self.connectivity = connectivity

    async def pricing(
        self,
        sale: Sale,
        priced: bool | None = None,
        member_id: str | None = None,
        codes: Sequence[str] | None = None,
        online: bool | None = None,
    ) -> rules.PricingFacts | None:
        """What pricing the sale needs to know now; None when nothing is priced (`priced`, by default: the sale has
        lines). `member_id`: the member the step identifies (default: the sale's); `codes`: its coupons (default:
        the sale's); `online`: when the step has already asked."""
        if not (sale.lines if priced is None else priced):
            return None
        online = await self.connectivity.online() if online is None else online
        member_id = member_id or (sale.member.id if sale.member else None)
        found = await self.members.acoupons_by_code([c.code for c in sale.coupons] if codes is None else codes)
        left = None
        if member_id is not None and not online:  # the offline cap counts the day's points spent offline
            spent = await self.journal.aoffline_points_spent(member_id, utcnow())
            left = max(0, self.settings.offline.redeem_cap_points_per_day - spent)
        coupons = {code: coupon for code, (_, coupon) in found.items()}
        held = await self.held(member_id, online) if member_id is not None else ()
        limit = self.settings.checkout.coupons_per_sale
        return rules.PricingFacts(self.settings.points, online, coupons, left, held, limit)

    async def held(self, member_id: str, online: bool = True) -> tuple[CachedCoupon, ...]:
        """The member's own coupons usable now (offline: only those that work offline)."""
        now = self.clock.now()
        return tuple(c for c in await self.members.acoupons(member_id) if usable_now(c, now, online))

    async def identified(self, sale: Sale, found: Identification, save: bool = True) -> rules.Step:
        """The rules' step for an identification, with what it needs: who holds the sale's coupons, and the new
        member's prices."""
        member_id = found.member.id if found.member is not None else None
        coupons = await self.members.acoupons_by_code([c.code for c in sale.coupons])
        owners = {code: owner for code, (owner, _) in coupons.items()}
        facts = await self.pricing(sale, member_id=member_id) if member_id is not None else None
        held = facts.held if facts is not None else await self.held(member_id) if member_id is not None else ()
        tier_name = self.settings.points.tier_name(found.member.tier) if found.member is not None else ""
        member = rules.Found(found.member, found.via, found.may_redeem, held, tier_name)
        return rules.identified(sale, member, owners, facts, save)
