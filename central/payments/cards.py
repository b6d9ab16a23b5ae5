"""WeChat member-card points sync: when a member's points change, the card in their WeChat wallet shows it.

Every ledger entry booked by transaction ingestion for a member who holds a WeChat member card
(`wechat_member_card`) puts one job in `card_sync_job`, in the same database transaction as the entry (so no
change is lost, and the unique key (entry, card) makes a replayed batch add nothing). A worker task pushes the
jobs in order with `card/membercard/updateuser`, sending both `add_bonus` (this entry's change, for the card's
history and the member's notification) and `bonus` (the absolute balance, read when the job is pushed, so a late
retry or a lost push never leaves an old balance on the card), plus `record_bonus` text. A failed push is
retried with growing pauses; a card WeChat says does not exist is marked failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import datetime, timedelta

import httpx
import sqlalchemy as sa
from sqlmodel import Session

from central import feed, identity
from central.clock import utcnow
from central.config import Settings
from central.db import read_session, write_session
from central.errors import NotFound
from central.identity import IdentifierTaken
from central.jobs import Periodic
from central.leases import Leases
from central.models import CardSyncJob, LedgerEntry, WechatMemberCard

log = logging.getLogger(__name__)

BATCH = 50
MAX_PAUSE_SECONDS = 3600
# WeChat errcodes that mean the access token must be fetched again.
TOKEN_ERRORS = {40001, 40014, 42001}
# ... and those that no retry will fix (the card or code is unknown to WeChat).
PERMANENT_ERRORS = {40056, 40127, 40099, 40075}
RECORDS = {"earn": "消费获得积分", "redeem": "积分抵扣消费", "merge_in": "会员合并转入", "merge_out": "会员合并转出"}


class CardSyncError(Exception):
    """A push failed; `permanent` when retrying cannot help."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


# --- the queue (called inside other transactions) -------------------------------------------------------------


def register_card(session: Session, member_id: str, card_id: str, code: str, now: datetime) -> None:
    """Record that a member holds WeChat member card `card_id` with `code` (e.g. from the card activation event)."""
    member = identity.resolve(session, member_id)
    if member is None:
        raise NotFound(f"no member {member_id}")
    existing = session.get(WechatMemberCard, (card_id, code))
    if existing is not None:
        if existing.member_id != member.id:
            raise IdentifierTaken(f"card {card_id} code {code} already belongs to member {existing.member_id}")
        return
    session.add(WechatMemberCard(card_id=card_id, code=code, member_id=member.id, created_at=now))


def enqueue(session: Session, sources: Iterable[str], now: datetime) -> None:
    """Queue a push for every ledger entry of these sources (transaction ids) whose member holds a card."""
    ids = list(dict.fromkeys(sources))
    if not ids:
        return
    entry, card, job = LedgerEntry.__table__, WechatMemberCard.__table__, CardSyncJob.__table__
    already = sa.select(job.c.id).where(
        job.c.ledger_entry_id == entry.c.id, job.c.card_id == card.c.card_id, job.c.code == card.c.code
    )
    chosen = (
        sa.select(
            entry.c.id,
            card.c.card_id,
            card.c.code,
            entry.c.member_id,
            sa.literal("pending"),
            sa.literal(0),
            sa.literal(now, type_=job.c.next_attempt_at.type),
            sa.literal(now, type_=job.c.created_at.type),
        )
        .select_from(entry.join(card, card.c.member_id == entry.c.member_id))
        .where(entry.c.transaction_id.in_(ids), ~sa.exists(already))
        .order_by(entry.c.id)
    )
    session.execute(
        sa.insert(job).from_select(
            ["ledger_entry_id", "card_id", "code", "member_id", "state", "attempts", "next_attempt_at", "created_at"],
            chosen,
        )
    )


# --- the card API ---------------------------------------------------------------------------------------------


class CardApi:
    """The two official-account calls the sync needs, against `base_url` (https://api.weixin.qq.com or a stub)."""

    def __init__(self, base_url: str, appid: str, appsecret: str, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.appid = appid
        self._secret = appsecret
        self._timeout = timeout
        self._token: tuple[str, float] | None = None  # (token, monotonic expiry)

    async def update_user(self, client: httpx.AsyncClient, body: dict) -> dict:
        for attempt in (1, 2):
            token = await self._access_token(client, refresh=attempt == 2)
            answer = await self._json(
                client.post(f"{self.base_url}/card/membercard/updateuser", params={"access_token": token}, json=body)
            )
            errcode = answer.get("errcode", 0)
            if errcode == 0:
                return answer
            if errcode in TOKEN_ERRORS and attempt == 1:
                continue  # the token expired early (or another process fetched a new one): fetch again once
            raise CardSyncError(
                f"updateuser: errcode {errcode} {answer.get('errmsg', '')}", permanent=errcode in PERMANENT_ERRORS
            )
        raise CardSyncError("updateuser: the access token was refused twice")

    async def _access_token(self, client: httpx.AsyncClient, refresh: bool = False) -> str:
        if self._token is not None and not refresh and time.monotonic() < self._token[1]:
            return self._token[0]
        answer = await self._json(
            client.get(
                f"{self.base_url}/cgi-bin/token",
                params={"grant_type": "client_credential", "appid": self.appid, "secret": self._secret},
            )
        )
        token = answer.get("access_token")
        if not token:
            raise CardSyncError(f"cgi-bin/token: errcode {answer.get('errcode')} {answer.get('errmsg', '')}")
        # Renewed five minutes early: WeChat gives 7200 s and honours the old token a little after a new one.
        self._token = (token, time.monotonic() + max(60, int(answer.get("expires_in", 7200)) - 300))
        return token

    @staticmethod
    async def _json(request) -> dict:
        try:
            response = await request
        except httpx.HTTPError as exc:
            raise CardSyncError(f"card API unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise CardSyncError(f"card API answered HTTP {response.status_code}")
        try:
            answer = response.json()
        except ValueError:
            raise CardSyncError("card API answered something that is not JSON") from None
        if not isinstance(answer, dict):
            raise CardSyncError("card API answered JSON that is not an object")
        return answer


# --- the worker -----------------------------------------------------------------------------------------------


class CardSync:
    """Pushes the queue every `interval` seconds (sooner after `wake()`), in the one process running the job
    (central/jobs.py)."""

    def __init__(
        self, engine: sa.Engine, api: CardApi, interval: float = 5.0, clock=utcnow, leases: Leases | None = None
    ):
        self.engine = engine
        self.api = api
        self.interval = interval
        self.clock = clock
        self._client: httpx.AsyncClient | None = None
        self._job = Periodic("card-sync", self._round, interval, leases)

    @classmethod
    def from_settings(cls, settings: Settings, engine: sa.Engine, leases: Leases | None = None) -> CardSync | None:
        if not settings.wechat_card_api_base_url:
            return None
        api = CardApi(
            settings.wechat_card_api_base_url,
            settings.wechat_appid or "",
            settings.wechat_card_appsecret.get_secret_value() if settings.wechat_card_appsecret else "",
            timeout=settings.wechat_timeout_seconds,
        )
        return cls(engine, api, settings.wechat_card_sync_seconds, leases=leases)

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.api._timeout, trust_env=False)
        self._job.start()

    async def stop(self) -> None:
        await self._job.stop()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def wake(self) -> None:
        """Push soon; callable from any thread (the ingestion route runs in a worker thread)."""
        self._job.wake()

    async def _round(self) -> None:
        assert self._client is not None
        await self.push_due(self._client)

    async def push_due(self, client: httpx.AsyncClient) -> int:
        """Push every job that is due; how many were pushed successfully."""
        pushed = 0
        while True:
            jobs = await asyncio.to_thread(self._due)
            if not jobs:
                return pushed
            for job in jobs:
                body = await asyncio.to_thread(self._body, job)
                try:
                    await self.api.update_user(client, body)
                except CardSyncError as exc:
                    await asyncio.to_thread(self._failed, job, str(exc), exc.permanent)
                    if not exc.permanent:
                        return pushed  # WeChat is failing: leave the rest for the next round, in order
                    continue
                await asyncio.to_thread(self._done, job, body["bonus"])
                pushed += 1

    def _due(self) -> list[sa.Row]:
        job = CardSyncJob.__table__
        with read_session(self.engine) as session:
            return session.execute(
                sa.select(job)
                .where(job.c.state == "pending", job.c.next_attempt_at <= self.clock())
                .order_by(job.c.id)
                .limit(BATCH)
            ).all()

    def _body(self, job: sa.Row) -> dict:
        entry = LedgerEntry.__table__
        with read_session(self.engine) as session:
            kind, points = session.execute(
                sa.select(entry.c.kind, entry.c.points).where(entry.c.id == job.ledger_entry_id)
            ).one()
            member = identity.resolve(session, job.member_id)
            balance = feed.balances(session, [member.id if member else job.member_id])
            bonus = next(iter(balance.values()))
        return {
            "code": job.code,
            "card_id": job.card_id,
            "bonus": bonus,
            "add_bonus": points,
            "record_bonus": RECORDS.get(kind, "积分调整"),
            "notify_optional": {"is_notify_bonus": True},
        }

    def _done(self, job: sa.Row, bonus: int) -> None:
        table = CardSyncJob.__table__
        with write_session(self.engine) as session:
            session.execute(
                sa.update(table)
                .where(table.c.id == job.id)
                .values(
                    state="done", attempts=job.attempts + 1, bonus_sent=bonus, done_at=self.clock(), last_error=None
                )
            )
            session.commit()

    def _failed(self, job: sa.Row, error: str, permanent: bool) -> None:
        attempts = job.attempts + 1
        pause = min(MAX_PAUSE_SECONDS, self.interval * 2 ** min(attempts - 1, 20))
        table = CardSyncJob.__table__
        with write_session(self.engine) as session:
            session.execute(
                sa.update(table)
                .where(table.c.id == job.id)
                .values(
                    state="failed" if permanent else "pending",
                    attempts=attempts,
                    last_error=error[:256],
                    next_attempt_at=self.clock() + timedelta(seconds=pause),
                )
            )
            session.commit()
        if attempts == 1 or permanent:
            log.warning(
                "member card %s/%s: push failed (%s)%s",
                job.card_id,
                job.code,
                error,
                "; not retried" if permanent else "; will retry",
            )
