"""The official account's followers, linked to members by UnionID: a scheduled job.

A walk lists the followers page by page (`cgi-bin/user/get`, up to 10,000 openids a page, resumed with
`next_openid`), asks WeChat the UnionID of those central cannot already place (`cgi-bin/user/info/batchget`, 100 a
call), and links each follower's official-account openid to the member holding that UnionID
(`identity.link_openid`: the openid is attached; when the openid was another member's, the two are merged, as
everywhere). Every change reaches the stores through the change feed.

Openids already held by a member who has a UnionID are not asked again. The cursor (`wechat_follower_sync`) moves
after each page, so a walk stopped by WeChat's quota (45009, 45011), an outage or a restart resumes where it
stopped at the next run; a finished walk starts again from the first follower at the next one.

`sync_followers(engine, api)` is a plain blocking function of the database and a client: today `FollowerSync`
runs it in a thread of the central process every `wechat_follower_sync_seconds` (one process: a chain's replicas
would each run it; the job moves to a worker role later). It never holds a database transaction across a call to
WeChat.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from central import feed, identity
from central.clock import utcnow
from central.db import read_session, write_session
from central.jobs import Periodic
from central.leases import Leases
from central.models import MemberIdentifier, WechatFollowerSync
from central.wechat import links
from central.wechat.api_client import WeChatApi, WeChatApiError, WeChatError

log = logging.getLogger(__name__)

BATCHGET_SIZE = 100  # WeChat's most openids per user/info/batchget
LOOKUP_CHUNK = 1000


@dataclass
class FollowerSyncReport:
    pages: int = 0
    followers: int = 0  # openids listed
    asked: int = 0  # openids whose UnionID was asked
    linked: int = 0  # openids newly linked to a member
    finished: bool = False  # the walk reached the last follower
    stopped: str | None = None  # why it stopped early


def sync_followers(
    engine: sa.Engine,
    api: WeChatApi,
    *,
    clock: Callable[[], datetime] = utcnow,
    max_pages: int | None = None,
    stop: threading.Event | None = None,
) -> FollowerSyncReport:
    """Walk the followers of `api`'s official account from the kept cursor to the end (or `max_pages` pages)."""
    appid, kind = api.appid, identity.openid_kind(api.appid)
    cursor = _cursor(engine, appid, clock())
    report = FollowerSyncReport()
    try:
        while max_pages is None or report.pages < max_pages:
            if stop is not None and stop.is_set():
                report.stopped = "the service is stopping"
                return report
            page = api.call("GET", "cgi-bin/user/get", params={"next_openid": cursor} if cursor else {})
            openids = _openids(page)
            report.pages += 1
            if not openids:
                _finish(engine, appid, clock())
                report.finished = True
                break
            report.followers += len(openids)
            for chunk in _chunks(_to_ask(engine, kind, openids), BATCHGET_SIZE):
                answer = api.call(
                    "POST",
                    "cgi-bin/user/info/batchget",
                    json={"user_list": [{"openid": openid, "lang": "zh_CN"} for openid in chunk]},
                )
                report.asked += len(chunk)
                report.linked += _link(engine, appid, _unionids(answer, set(chunk)), clock())
            next_openid = page.get("next_openid")
            cursor = next_openid if isinstance(next_openid, str) else ""
            _advance(engine, appid, cursor, len(openids), clock())
            if not cursor:
                _finish(engine, appid, clock())
                report.finished = True
                break
    except WeChatApiError as exc:
        report.stopped = str(exc)
        _failed(engine, appid, str(exc), clock())
        quota = isinstance(exc, WeChatError) and exc.quota
        log.warning(
            "official account %s: follower sync stopped after %d page(s), %d linked: %s%s",
            appid,
            report.pages,
            report.linked,
            exc,
            " (WeChat's call quota); it resumes from there at the next run"
            if quota
            else "; it resumes from there at the next run",
        )
        return report
    if report.finished:
        log.log(
            logging.INFO if report.linked else logging.DEBUG,  # a walk that changed nothing is not news every hour
            "official account %s: follower walk finished: %d follower(s) listed, %d asked, %d linked",
            appid,
            report.followers,
            report.asked,
            report.linked,
        )
    return report


def _openids(page: dict[str, Any]) -> list[str]:
    data = page.get("data")
    found = data.get("openid") if isinstance(data, dict) else None
    return [o for o in found if isinstance(o, str) and 0 < len(o) <= 128] if isinstance(found, list) else []


def _unionids(answer: dict[str, Any], asked: set[str]) -> list[tuple[str, str]]:
    """(openid, unionid) of the followers in the answer that are still following and have a UnionID."""
    found = answer.get("user_info_list")
    pairs = []
    for user in found if isinstance(found, list) else []:
        if not isinstance(user, dict) or user.get("subscribe") != 1:
            continue
        openid, unionid = user.get("openid"), user.get("unionid")
        if openid in asked and isinstance(unionid, str) and 0 < len(unionid) <= 128:
            pairs.append((openid, unionid))
    return pairs


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _to_ask(engine: sa.Engine, kind: str, openids: Iterable[str]) -> list[str]:
    """The openids whose UnionID central does not know: not held by a member who has one."""
    listed = list(dict.fromkeys(openids))
    held = MemberIdentifier.__table__
    union = held.alias("union_id")
    placed: set[str] = set()
    with read_session(engine) as session:
        for chunk in _chunks(listed, LOOKUP_CHUNK):
            placed.update(
                session.execute(
                    sa.select(held.c.value).where(
                        held.c.kind == kind,
                        held.c.value.in_(chunk),
                        sa.exists().where(union.c.member_id == held.c.member_id, union.c.kind == "unionid"),
                    )
                ).scalars()
            )
    return [openid for openid in listed if openid not in placed]


def _link(engine: sa.Engine, appid: str, pairs: list[tuple[str, str]], now: datetime) -> int:
    """Link each follower's openid to the member holding its UnionID; how many openids were newly linked."""
    if not pairs:
        return 0
    kind = identity.openid_kind(appid)
    linked = 0
    with write_session(engine) as session:
        feed.lock(session)
        for openid, unionid in pairs:
            before = identity.owner(session, kind, openid)
            member_id = links.link(session, appid, openid, unionid, now)
            if member_id is not None and before != member_id:
                linked += 1
        table = WechatFollowerSync.__table__
        session.execute(sa.update(table).where(table.c.appid == appid).values(linked=table.c.linked + linked))
        session.commit()
    return linked


def _cursor(engine: sa.Engine, appid: str, now: datetime) -> str:
    with write_session(engine) as session:
        state = session.get(WechatFollowerSync, appid)
        if state is None:
            state = WechatFollowerSync(appid=appid)
            session.add(state)
        state.last_run_at = now
        cursor = state.next_openid
        session.commit()
    return cursor


def _advance(engine: sa.Engine, appid: str, next_openid: str, seen: int, now: datetime) -> None:
    table = WechatFollowerSync.__table__
    with write_session(engine) as session:
        session.execute(
            sa.update(table)
            .where(table.c.appid == appid)
            .values(
                next_openid=next_openid, pass_followers=table.c.pass_followers + seen, last_run_at=now, last_error=None
            )
        )
        session.commit()


def _finish(engine: sa.Engine, appid: str, now: datetime) -> None:
    table = WechatFollowerSync.__table__
    with write_session(engine) as session:
        session.execute(
            sa.update(table)
            .where(table.c.appid == appid)
            .values(next_openid="", passes=table.c.passes + 1, pass_followers=0, last_pass_at=now, last_error=None)
        )
        session.commit()


def _failed(engine: sa.Engine, appid: str, error: str, now: datetime) -> None:
    table = WechatFollowerSync.__table__
    with write_session(engine) as session:
        session.execute(sa.update(table).where(table.c.appid == appid).values(last_error=error[:256], last_run_at=now))
        session.commit()


class FollowerSync:
    """Runs `sync_followers` every `interval` seconds in a worker thread, in the one process running the job
    (central/jobs.py)."""

    def __init__(
        self,
        engine: sa.Engine,
        api: WeChatApi,
        interval: float,
        clock: Callable[[], datetime] = utcnow,
        leases: Leases | None = None,
    ):
        self.engine = engine
        self.api = api
        self.interval = interval
        self.clock = clock
        self.last_report: FollowerSyncReport | None = None
        self.runs = 0
        self._stop = threading.Event()
        self._job = Periodic("wechat-follower-sync", self._round, interval, leases)

    def start(self) -> None:
        self._job.start()

    async def stop(self) -> None:
        self._stop.set()  # the walk stops before its next call to WeChat
        await self._job.stop(grace=30)

    async def _round(self) -> None:
        try:
            self.last_report = await asyncio.to_thread(
                sync_followers, self.engine, self.api, clock=self.clock, stop=self._stop
            )
        finally:
            self.runs += 1
