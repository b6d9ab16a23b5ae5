"""The merchant member card (商家名片会员) of WeChat Pay's Brand API: which member holds which card code, joining on
payment (下单同步入会), and points changes pushed to the card as user feeds. The calls are central/payments/brand_api.py;
the legacy 卡券 member card is central/payments/cards.py (`wechat_member_card = "legacy"`).

- **Cards.** A member's card is a row of `wechat_brand_card` (template, code, the holder's openid of `wechat_appid`)
  and the member's identifier `card_no` = code, so every store sees it in the change feed and a till finds the
  member by the code the card shows in WeChat (`identifier_kind`).
- **Join on payment.** With `wechat_card_join_on_payment`, a WeChat Pay v3 code payment whose payer is not known to
  hold the card carries `card_id` and a `user_card_code` central allocates (`card_code`: derived from the
  `out_trade_no`, so a payment's join fields never change) in its attach, and a `wechat_card_join` row is written
  with the payment row. WeChat Pay enrols a payer who holds no card of the template once the payment succeeds.
  Then the worker asks the Brand API which card the payer holds (their openid is the payment's) and links its
  code to the member holding that openid — or to a new member: taking the card in WeChat is the customer's
  consent, recorded as `member_consent` purpose `wechat_card` with the card template as the notice.
- **Points.** Every ledger entry booked by transaction ingestion for a member holding a card queues a
  `brand_card_push` row in the entry's own transaction (unique per entry and card); the worker pushes them in
  order as user feeds whose `out_request_no` is derived from the entry and the code, so a retry is the same
  request. Points earned use `wechat_card_points_cell`, points spent `wechat_card_spend_cell` (skipped when not set).
- **Limits.** One rate limit (`brand_api.RateLimit`, `wechat_brand_calls_per_second`: 5) paces every Brand API call
  of the process; a 429 `FREQUENCY_LIMITED` holds every call for a second and the call is retried with growing
  pauses, in order.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session

from central import feed, identity
from central.clock import utcnow
from central.config import Settings
from central.contract import PaymentState
from central.db import read_session, write_session
from central.errors import NotFound
from central.identity import IdentifierTaken
from central.jobs import Periodic
from central.leases import Leases
from central.models import (
    BrandCardPush,
    LedgerEntry,
    MemberConsent,
    MemberIdentifier,
    Payment,
    WechatBrandCard,
    WechatCardJoin,
)
from central.payments.brand_api import BrandApiError, BrandCardClient, feed_cell, join_attach
from central.payments.providers import ProviderSetupError

log = logging.getLogger(__name__)

BATCH = 50
MAX_PAUSE_SECONDS = 3600
RATE_LIMIT_HOLD_SECONDS = 1.0  # after a 429, no Brand API call for this long
JOIN_TRIES = 5  # a paid payment whose payer holds no card after this many looks: not enrolled
CONSENT_PURPOSE = "wechat_card"


def identifier_kind(card_id: str) -> str:
    """The member identifier a card code is held under: `card_no`, the kind a till already looks a scanned card
    up by (its codes.card_patterns must match the codes). Not a kind of its own: the identifier kinds are part of
    the stores' contract (`contract.IDENTIFIER_KIND_PATTERN`), which running tills check every feed page against.
    Which template a code is of is `wechat_brand_card`'s."""
    return "card_no"


def card_code(key: bytes, prefix: str, length: int, out_trade_no: str) -> str:
    """The user_card_code a payment offers its payer: `prefix` and digits derived from the out_trade_no under the
    phone-hash key (not guessable from the number, the same for the same payment)."""
    digits = length - len(prefix)
    number = int.from_bytes(hmac.new(key, f"wxcard:{out_trade_no}".encode(), hashlib.sha256).digest(), "big")
    return prefix + str(number % 10**digits).zfill(digits)


# --- cards (called inside other transactions) -----------------------------------------------------------------


def register(
    session: Session,
    member_id: str,
    card_id: str,
    code: str,
    now: datetime,
    *,
    openid: str | None = None,
    source: str = "admin",
    out_trade_no: str | None = None,
) -> bool:
    """Record that a member holds merchant member card `card_id` with `code`; True when it is new to them.
    IdentifierTaken when another member holds that code. The caller holds the feed lock."""
    member = identity.resolve(session, member_id)
    if member is None:
        raise NotFound(f"no member {member_id}")
    identity.attach(session, member.id, identifier_kind(card_id), code, now)  # IdentifierTaken: another's
    existing = session.get(WechatBrandCard, (card_id, code))
    if existing is not None:
        if existing.member_id != member.id:  # merged since: the survivor holds it now
            existing.member_id = member.id
        if openid and not existing.openid:
            existing.openid = openid
        return False
    session.add(
        WechatBrandCard(
            card_id=card_id,
            code=code,
            member_id=member.id,
            openid=openid,
            source=source,
            out_trade_no=out_trade_no,
            created_at=now,
        )
    )
    return True


def holds_card(session: Session, member_id: str, card_id: str) -> bool:
    member = identity.resolve(session, member_id)
    if member is None:
        return False
    table = WechatBrandCard.__table__
    return (
        session.execute(
            sa.select(table.c.code).where(table.c.member_id == member.id, table.c.card_id == card_id).limit(1)
        ).first()
        is not None
    )


def out_request_no(ledger_entry_id: int, code: str) -> str:
    """The feed's out_request_no (≤ 64: digits, letters, - and _): one per entry and card code, ever."""
    return f"pts-{ledger_entry_id}-{code}"


def enqueue(session: Session, sources: Iterable[str], now: datetime) -> None:
    """Queue a feed for every ledger entry of these sources (transaction ids) whose member holds a member card."""
    ids = list(dict.fromkeys(sources))
    if not ids:
        return
    entry, card, push = LedgerEntry.__table__, WechatBrandCard.__table__, BrandCardPush.__table__
    already = sa.select(push.c.id).where(
        push.c.ledger_entry_id == entry.c.id, push.c.card_id == card.c.card_id, push.c.code == card.c.code
    )
    chosen = session.execute(
        sa.select(entry.c.id, card.c.card_id, card.c.code, entry.c.member_id)
        .select_from(entry.join(card, card.c.member_id == entry.c.member_id))
        .where(entry.c.transaction_id.in_(ids), ~sa.exists(already))
        .order_by(entry.c.id)
    ).all()
    if chosen:
        session.execute(
            sa.insert(push),
            [
                dict(
                    ledger_entry_id=row.id,
                    card_id=row.card_id,
                    code=row.code,
                    member_id=row.member_id,
                    out_request_no=out_request_no(row.id, row.code),
                    state="pending",
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                )
                for row in chosen
            ],
        )


# --- join on payment (the gateway calls these) ----------------------------------------------------------------


@dataclass(frozen=True)
class JoinPlan:
    """The join fields one code payment carries, and the row that follows it."""

    out_trade_no: str
    card_id: str
    code: str
    attach: str

    def record(self, session: Session, store_id: str, now: datetime) -> None:
        """Written in the payment row's own transaction: a charge with join fields is always followed."""
        session.add(
            WechatCardJoin(
                out_trade_no=self.out_trade_no,
                store_id=store_id,
                card_id=self.card_id,
                code=self.code,
                state="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )


class JoinOnPayment:
    """Decides which WeChat code payments carry the join fields (`wechat_card_join_on_payment`)."""

    def __init__(self, engine: sa.Engine, card_id: str, key: bytes, prefix: str, length: int, cell: str | None):
        self.engine = engine
        self.card_id = card_id
        self._key = key
        self.prefix = prefix
        self.length = length
        self.cell = cell

    @classmethod
    def from_settings(cls, settings: Settings, engine: sa.Engine) -> JoinOnPayment | None:
        if not settings.wechat_card_join_on_payment or settings.wechat_member_card != "brand":
            return None
        return cls(
            engine,
            settings.wechat_brand_card_id or "",
            settings.key_bytes(),
            settings.wechat_card_code_prefix,
            settings.wechat_card_code_length,
            settings.wechat_card_join_cell,
        )

    def plan(self, provider: str, out_trade_no: str, member_id: str | None) -> JoinPlan | None:
        """The join fields of this payment; None for another provider, or a member who holds the card already."""
        if provider != "wechat":
            return None
        if member_id is not None:
            with read_session(self.engine) as session:
                if holds_card(session, member_id, self.card_id):
                    return None
        code = card_code(self._key, self.prefix, self.length, out_trade_no)
        return JoinPlan(out_trade_no, self.card_id, code, join_attach(self.card_id, code, self.cell))


# --- the worker -----------------------------------------------------------------------------------------------


def client_from_settings(settings: Settings) -> BrandCardClient:
    """The Brand API client; ProviderSetupError (stopping `pos-central serve` with the reason) when its keys
    cannot be used."""
    try:
        return BrandCardClient.from_settings(settings)
    except ValueError as exc:
        raise ProviderSetupError(f"WeChat Pay Brand API: {exc}") from exc


class BrandCardSync:
    """Links the card codes of paid joins and pushes the feed queue every `interval` seconds (sooner after `wake()`),
    in the one process running the job (central/jobs.py); every call goes through the client's one rate limit."""

    def __init__(
        self,
        engine: sa.Engine,
        api: BrandCardClient,
        settings: Settings,
        interval: float = 5.0,
        clock=utcnow,
        leases: Leases | None = None,
    ):
        self.engine = engine
        self.api = api
        self.settings = settings
        self.appid = settings.wechat_appid or ""
        self.interval = interval
        self.clock = clock
        self._job = Periodic("brand-card-sync", self.run_once, interval, leases)

    @classmethod
    def from_settings(
        cls, settings: Settings, engine: sa.Engine, api: BrandCardClient | None = None, leases: Leases | None = None
    ) -> BrandCardSync | None:
        if settings.wechat_member_card != "brand":
            return None
        return cls(
            engine, api or client_from_settings(settings), settings, settings.wechat_card_sync_seconds, leases=leases
        )

    def start(self) -> None:
        self._job.start()

    async def stop(self) -> None:
        await self._job.stop()
        await self.api.aclose()

    def wake(self) -> None:
        """Work soon; callable from any thread (the ingestion route runs in a worker thread)."""
        self._job.wake()

    async def run_once(self) -> tuple[int, int]:
        """Link due joins, then push due feeds: (linked, pushed). A rate limit ends the round early."""
        linked = await self.link_joins()
        pushed = await self.push_due()
        return linked, pushed

    def _pause(self, attempts: int) -> float:
        return min(MAX_PAUSE_SECONDS, self.interval * 2 ** min(attempts - 1, 20))

    def _limited(self, exc: BrandApiError) -> None:
        if exc.rate_limited:
            self.api.limit.hold(RATE_LIMIT_HOLD_SECONDS)

    # -- joins --

    async def link_joins(self) -> int:
        linked = 0
        for join, payment in await asyncio.to_thread(self._due_joins):
            if payment.state != PaymentState.SUCCESS and not payment.payer_id:  # never paid (a payer is a payment's)
                await asyncio.to_thread(self._finish_join, join, "not_paid", None, None, None)
                continue
            if not payment.payer_id:
                await asyncio.to_thread(
                    self._finish_join, join, "not_enrolled", None, None, "the payment names no payer"
                )
                continue
            try:
                cards = await self.api.user_cards(payment.payer_id)
            except BrandApiError as exc:
                self._limited(exc)
                await asyncio.to_thread(self._retry_join, join, str(exc))
                if exc.rate_limited or exc.retryable:
                    return linked  # WeChat Pay is busy or failing: the rest next round
                continue
            held = [card for card in cards if card.card_id == join.card_id]
            if not held:
                if join.attempts + 1 >= JOIN_TRIES:
                    log.warning(
                        "payment %s: the payer holds no member card %s after %d looks; not linked",
                        join.out_trade_no,
                        join.card_id,
                        JOIN_TRIES,
                    )
                    await asyncio.to_thread(
                        self._finish_join, join, "not_enrolled", None, None, "the payer holds no card of the template"
                    )
                else:
                    await asyncio.to_thread(self._retry_join, join, "the payer holds no card yet")
                continue
            # The card WeChat Pay gave with this payment, else the one the payer took earlier.
            card = next((c for c in held if c.code == join.code), None) or next(
                (c for c in held if c.state == "EFFECTIVE"), held[0]
            )
            if await asyncio.to_thread(self._link, join, payment, card.code):
                linked += 1
        return linked

    def _due_joins(self) -> list[tuple[sa.Row, _PaymentView]]:
        join, payment = WechatCardJoin.__table__, Payment.__table__
        final = [s.value for s in (PaymentState.SUCCESS, PaymentState.FAILED, PaymentState.REVERSED)]
        with read_session(self.engine) as session:
            rows = session.execute(
                sa.select(
                    join, payment.c.state.label("p_state"), payment.c.payer_id, payment.c.member_id.label("p_member")
                )
                .select_from(join.join(payment, payment.c.out_trade_no == join.c.out_trade_no))
                .where(join.c.state == "pending", join.c.next_attempt_at <= self.clock(), payment.c.state.in_(final))
                .order_by(join.c.created_at)
                .limit(BATCH)
            ).all()
        return [(row, _PaymentView(row.p_state, row.payer_id, row.p_member)) for row in rows]

    def _link(self, join: sa.Row, payment: _PaymentView, code: str) -> bool:
        """Link the payer's card code to the member holding their openid, or to a new member who joined by taking
        the card; True when linked."""
        now = self.clock()
        openid = payment.payer_id
        with write_session(self.engine) as session:
            feed.lock(session)
            kind = identity.openid_kind(self.appid)
            member_id = identity.owner(session, kind, openid)
            if member_id is None and payment.member_id:
                member = identity.resolve(session, payment.member_id)
                member_id = member.id if member else None
            taken = identity.owner(session, identifier_kind(join.card_id), code)
            if taken is not None and member_id is not None and taken != member_id:
                session.rollback()
                return self._conflict(join, code, taken, member_id)
            member_id = member_id or taken  # else the card's holder, whose openid central had not heard of
            try:
                consented = False
                if member_id is None:
                    joined = identity.join_wechat(
                        session,
                        self.appid,
                        openid,
                        now,
                        purpose=CONSENT_PURPOSE,
                        notice_version=join.card_id,
                        store_id=join.store_id,
                        welcome_points=self.settings.welcome_points,
                        card_no_prefix=self.settings.card_no_prefix,
                    )
                    member_id, consented = joined.member_id, True
                elif identity.owner(session, kind, openid) is None:
                    identity.attach(session, member_id, kind, openid, now)
                new_card = register(
                    session,
                    member_id,
                    join.card_id,
                    code,
                    now,
                    openid=openid,
                    source="payment",
                    out_trade_no=join.out_trade_no,
                )
                if new_card and not consented:  # taking the card in WeChat is consenting to it
                    session.add(
                        MemberConsent(
                            member_id=member_id,
                            purpose=CONSENT_PURPOSE,
                            notice_version=join.card_id,
                            store_id=join.store_id,
                            given_at=now,
                        )
                    )
            except IdentifierTaken as exc:
                session.rollback()
                return self._conflict(join, code, str(exc), member_id)
            _update_join(session, join, "linked", member_id, code, None, now)
            session.commit()
        log.info("payment %s: member card %s linked to member %s", join.out_trade_no, code, member_id)
        return True

    def _conflict(self, join: sa.Row, code: str, holder: str, member_id: str | None) -> bool:
        log.warning(
            "payment %s: member card code %s belongs to %s, not the payer's member %s; not linked",
            join.out_trade_no,
            code,
            holder,
            member_id,
        )
        self._finish_join(join, "conflict", member_id, code, f"the code belongs to {holder}")
        return False

    def _finish_join(
        self, join: sa.Row, state: str, member_id: str | None, code: str | None, error: str | None
    ) -> None:
        with write_session(self.engine) as session:
            _update_join(session, join, state, member_id, code, error, self.clock())
            session.commit()

    def _retry_join(self, join: sa.Row, error: str) -> None:
        attempts = join.attempts + 1
        table = WechatCardJoin.__table__
        with write_session(self.engine) as session:
            session.execute(
                sa.update(table)
                .where(table.c.out_trade_no == join.out_trade_no)
                .values(
                    attempts=attempts,
                    last_error=error[:256],
                    next_attempt_at=self.clock() + timedelta(seconds=self._pause(attempts)),
                )
            )
            session.commit()

    # -- feeds --

    async def push_due(self) -> int:
        """Push every feed that is due, in order; how many were pushed."""
        pushed = 0
        while True:
            jobs = await asyncio.to_thread(self._due_pushes)
            if not jobs:
                return pushed
            for job in jobs:
                body = await asyncio.to_thread(self._feed, job)
                if isinstance(body, str):  # nothing to push, or no openid to push it to
                    await asyncio.to_thread(self._push_ended, job, "skipped" if body == "" else "failed", body or None)
                    continue
                try:
                    await self.api.user_feed(**body)
                except BrandApiError as exc:
                    self._limited(exc)
                    permanent = not (exc.rate_limited or exc.retryable)
                    await asyncio.to_thread(self._push_failed, job, str(exc), permanent)
                    if not permanent:
                        return pushed  # limited or failing: the rest next round, in order
                    continue
                await asyncio.to_thread(self._push_ended, job, "done", None)
                pushed += 1

    def _due_pushes(self) -> list[sa.Row]:
        """The pending feeds from the head of the queue up to the first that waits for its retry: a feed that
        WeChat Pay refused for now holds the later ones back, so a card's feeds arrive in order."""
        push = BrandCardPush.__table__
        now = self.clock()
        with read_session(self.engine) as session:
            pending = session.execute(
                sa.select(push).where(push.c.state == "pending").order_by(push.c.id).limit(BATCH)
            ).all()
        waiting = next((n for n, job in enumerate(pending) if job.next_attempt_at > now), len(pending))
        return pending[:waiting]

    def _feed(self, job: sa.Row) -> dict[str, str] | str:
        """The user feed of a job, or why there is none: "" nothing to say (no cell for this change), else an error."""
        entry, card = LedgerEntry.__table__, WechatBrandCard.__table__
        with read_session(self.engine) as session:
            (points,) = session.execute(sa.select(entry.c.points).where(entry.c.id == job.ledger_entry_id)).one()
            member = identity.resolve(session, job.member_id)
            member_id = member.id if member else job.member_id
            balance = feed.balances(session, [member_id])[member_id]
            openid = session.execute(
                sa.select(card.c.openid).where(card.c.card_id == job.card_id, card.c.code == job.code)
            ).scalar() or _openid_of(session, member_id, self.appid)
        template = self.settings.wechat_card_points_cell if points > 0 else self.settings.wechat_card_spend_cell
        if not template:
            return ""
        if not openid:
            return f"member {member_id} has no openid of {self.appid}: the Brand API needs it"
        return {
            "card_id": job.card_id,
            "code": job.code,
            "openid": openid,
            "out_request_no": job.out_request_no,
            "cell": feed_cell(template, points=points, balance=balance),
        }

    def _push_ended(self, job: sa.Row, state: str, error: str | None) -> None:
        table = BrandCardPush.__table__
        with write_session(self.engine) as session:
            session.execute(
                sa.update(table)
                .where(table.c.id == job.id)
                .values(
                    state=state,
                    attempts=job.attempts + int(state == "done"),
                    done_at=self.clock(),
                    last_error=error and error[:256],
                )
            )
            session.commit()
        if state == "failed":
            log.warning("member card %s/%s: feed %s not pushed (%s)", job.card_id, job.code, job.out_request_no, error)

    def _push_failed(self, job: sa.Row, error: str, permanent: bool) -> None:
        attempts = job.attempts + 1
        table = BrandCardPush.__table__
        with write_session(self.engine) as session:
            session.execute(
                sa.update(table)
                .where(table.c.id == job.id)
                .values(
                    state="failed" if permanent else "pending",
                    attempts=attempts,
                    last_error=error[:256],
                    next_attempt_at=self.clock() + timedelta(seconds=self._pause(attempts)),
                )
            )
            session.commit()
        if attempts == 1 or permanent:
            log.warning(
                "member card %s/%s: feed %s failed (%s)%s",
                job.card_id,
                job.code,
                job.out_request_no,
                error,
                "; not retried" if permanent else "; will retry",
            )


@dataclass(frozen=True)
class _PaymentView:
    state: str
    payer_id: str | None
    member_id: str | None


def _update_join(
    session: Session,
    join: sa.Row,
    state: str,
    member_id: str | None,
    code: str | None,
    error: str | None,
    now: datetime,
) -> None:
    table = WechatCardJoin.__table__
    session.execute(
        sa.update(table)
        .where(table.c.out_trade_no == join.out_trade_no)
        .values(
            state=state,
            attempts=join.attempts + 1,
            member_id=member_id,
            linked_code=code,
            last_error=error and error[:256],
            done_at=now,
        )
    )


def _openid_of(session: Session, member_id: str, appid: str) -> str | None:
    return session.execute(
        sa.select(MemberIdentifier.value).where(
            MemberIdentifier.member_id == member_id, MemberIdentifier.kind == identity.openid_kind(appid)
        )
    ).scalar()
