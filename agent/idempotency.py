"""Idempotency keys for the local API: a POS that sends a request again after a timeout gets the first answer, and
the till acts once (Stripe's convention: an `Idempotency-Key` header on any non-GET `/v1` request).

- A key is taken when its request arrives, with a fingerprint of method, path and body. The same key with another
  fingerprint is `409 idempotency_mismatch`; the same key while its request is still being answered is
  `409 idempotency_in_progress` (try again in a moment).
- The answer is written in the same SQLite transaction as the request's effect — the sale saved or journaled, the
  refund started or journaled — by `kept()`, which the stores call with the answer the request would give. So a
  till killed between the effect and its answer still answers a retry with what it did, and never acts twice.
  When the request has answered, its real answer replaces that one.
- A request that acted on nothing (refused, or failed before any effect) leaves no trace: its key may be sent again
  and the request is decided again.
- Keys expire after `KEEP` (24 h); retention drops them.

A request without a key keeps the old behaviour and is not safe to send again (docs/checkout.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from starlette.requests import Request
from starlette.responses import Response

from agent.clock import utcnow
from agent.errors import IdempotencyInProgress, IdempotencyMismatch, InvalidRequest
from agent.models import IdempotentRequest

HEADER = "Idempotency-Key"
KEEP = timedelta(hours=24)
KEY_MAX = 255
_table = IdempotentRequest.metadata.tables["idempotent_request"]


@dataclass
class Taken:
    """The key of the request being answered; closed once it has answered, so a task it started (a payment's
    follower) that keeps a later step does not write over the answer."""

    key: str
    open: bool = True


CURRENT: contextvars.ContextVar[Taken | None] = contextvars.ContextVar("idempotency_key", default=None)


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: str


def kept(connection: sa.Connection, body: Any, status_code: int = 200) -> None:
    """In the transaction that keeps an effect: the answer the current request gives (nothing without a key)."""
    taken = CURRENT.get()
    if taken is None or not taken.open:
        return
    connection.execute(
        sa.update(_table)
        .where(_table.c.key == taken.key)
        .values(status_code=status_code, response=json.dumps(body, ensure_ascii=False, separators=(",", ":")))
    )


class IdempotencyStore:
    """The one owner of `idempotent_request`."""

    def __init__(self, engine: sa.Engine, keep: timedelta = KEEP):
        self.engine = engine
        self.keep = keep
        self._answering: set[str] = set()  # keys whose request this process is answering now

    async def take(self, key: str, fingerprint: str) -> Answer | None:
        """The stored answer to give again, or None: take the key and act. Raises for a reused or busy key."""
        if key in self._answering:
            raise IdempotencyInProgress(
                "a request with this Idempotency-Key is still being answered: send it again in a moment",
                "请求正在处理中，请稍后重试",
            )
        self._answering.add(key)  # before the thread hop: a second copy arriving meanwhile must wait, not act
        try:
            answer = await asyncio.to_thread(self._take, key, fingerprint, utcnow())
        except BaseException:
            self._answering.discard(key)
            raise
        if answer is not None:
            self._answering.discard(key)
        return answer

    async def answered(self, key: str, status_code: int, body: bytes) -> None:
        """The request's own answer; kept when it acted (or succeeded), dropped with the key when it did not."""
        try:
            await asyncio.to_thread(self._answered, key, status_code, body.decode())
        finally:
            self._answering.discard(key)

    async def abandoned(self, key: str) -> None:
        """The request ended without an answer (a bug, a cancelled task): keep what its effect wrote, if anything."""
        try:
            await asyncio.to_thread(self._answered, key, None, None)
        finally:
            self._answering.discard(key)

    def purge_expired(self, now: datetime) -> int:
        with self.engine.begin() as connection:
            return connection.execute(sa.delete(_table).where(_table.c.expires_at < now)).rowcount

    def _take(self, key: str, fingerprint: str, now: datetime) -> Answer | None:
        with self.engine.begin() as connection:
            row = connection.execute(sa.select(_table).where(_table.c.key == key)).first()
            if row is not None and row.expires_at < now:
                connection.execute(sa.delete(_table).where(_table.c.key == key))
                row = None
            if row is None:
                connection.execute(
                    sqlite_insert(_table).values(
                        key=key, fingerprint=fingerprint, done=False, created_at=now, expires_at=now + self.keep
                    )
                )
                return None
            if row.fingerprint != fingerprint:
                raise IdempotencyMismatch(
                    "this Idempotency-Key was used with another request: use a new key for a new request",
                    "该请求标识已用于另一请求",
                )
            if row.response is not None:  # answered, or acted just before a stop: the same answer again
                return Answer(row.status_code or 200, row.response)
            return None  # left by a stop before it acted on anything: decide it again

    def _answered(self, key: str, status_code: int | None, body: str | None) -> None:
        with self.engine.begin() as connection:
            row = connection.execute(sa.select(_table.c.response).where(_table.c.key == key)).first()
            if row is None:
                return
            acted = row.response is not None
            if status_code is not None and (acted or 200 <= status_code < 300):
                values = {"status_code": status_code, "response": body, "done": True}
                connection.execute(sa.update(_table).where(_table.c.key == key).values(**values))
            elif not acted:
                connection.execute(sa.delete(_table).where(_table.c.key == key))


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"\0".join([method.encode(), path.encode(), body])).hexdigest()


async def answer_once(request: Request, call_next: Any, store: IdempotencyStore) -> Response:
    """The local API's middleware step: give a stored answer again, or answer and keep the answer."""
    key = request.headers.get(HEADER)
    if key is None or request.method in ("GET", "HEAD", "OPTIONS") or not request.url.path.startswith("/v1/"):
        response: Response = await call_next(request)
        return response
    if not key or len(key) > KEY_MAX or not key.isprintable():
        raise InvalidRequest(f"{HEADER} must be 1 to {KEY_MAX} printable characters (a UUID per user action)")
    stored = await store.take(key, fingerprint(request.method, request.url.path, await request.body()))
    if stored is not None:
        return Response(
            stored.body,
            status_code=stored.status_code,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    taken = Taken(key)
    token = CURRENT.set(taken)
    try:
        response = await call_next(request)
        body = b"".join([chunk async for chunk in response.body_iterator])  # type: ignore[attr-defined]
    except BaseException:
        taken.open = False
        await store.abandoned(key)
        raise
    finally:
        CURRENT.reset(token)
    taken.open = False
    await store.answered(key, response.status_code, body)
    return Response(body, status_code=response.status_code, headers=dict(response.headers))
