"""The payment gateway: one state machine for every provider, persisted per `out_trade_no`, driven by asyncio tasks
in the central process and resumed at start-up. The machine's moves are a table (central/payments/transitions.py):
each move here names the event that happened, and the table gives the states it may leave and the one it leads to;
the move is one conditional UPDATE … WHERE state IN (those states), so a cancel and an answer racing never both win.

    POST /v1/payments ─► PENDING ──charge──► SUCCESS                              (paid)
                            │                FAILED                               (not paid; reason zh/en)
                            │                USERPAYING ─┐ query every `poll` s
                            │                UNKNOWN ────┤ (SYSTEMERROR, BANKERROR, timeout, bad answer)
                            │                            ├─► SUCCESS | FAILED | REVERSED (closed at the provider)
                            │                            └─► `limit` s after the charge: REVERSING
      till cancels (or the provider refused the request) ──► REVERSING ──reverse, retried until confirmed──► REVERSED

Rules that keep a customer from paying for nothing (WeChat's micropay guidance; docs/PAYMENTS.md):
- an answer that is not a definite failure is never taken as one: the gateway asks again with the same
  `out_trade_no` (query), and never charges again under a new number;
- a reverse is sent no earlier than `reverse_not_before` s after the charge's answer came back (an in-flight
  charge must have landed, or the reverse would miss it), and is repeated until the provider confirms it (`recall`);
- a second POST with the same `out_trade_no` answers the first payment: one charge at the provider, ever;
- a till that gives up a number central has not seen voids it: the number is recorded as given up and its late
  POST refused, so it is never charged (`void`).

Refunds of a paid payment (whole, or in parts that never add up to more than was paid) are rows of their own,
keyed by the store's `out_refund_no`, which is also the refund's number at the provider; their moves are the second
table of central/payments/transitions.py:

    POST .../refunds ─► PENDING ──refund──► SUCCESS (the money is back)
                           │                FAILED (refused: reason zh/en)
                           │                PROCESSING ─┐ refund_query, at growing intervals (poll … retry_max)
                           │                            ├─► SUCCESS | FAILED
                           │                            └─► NOT_FOUND: the provider never got it → send the same refund again
                           └─ no answer, an error ──► PROCESSING (unknown), then as above

The providers refund an `out_refund_no` once however often it is sent, so sending it again after a lost answer
can never refund twice; a refund is only ever FAILED on the provider's definite word.

Times come from an injectable clock and sleep, so tests can run the 5 s / 15 s / 30 s rules without waiting.

Several central processes may share one PostgreSQL database: each unfinished payment and refund is driven by the
one process holding its lease (central/leases.py). The process that takes a payment's request creates it with
the lease and sends its charge; every third of the lease it renews what it drives and takes over the payments and
refunds whose holder stopped renewing (a replica that died), which it follows by query and reverse, never by a new
charge. A clean stop gives the leases up at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from central import contract, feed, identity
from central.clock import utcnow
from central.config import Settings
from central.contract import FINAL_PAYMENT_STATES, PaymentState
from central.db import CentralSession, read_session, write_session
from central.errors import Conflict, Invalid, NotFound, ProviderUnavailable
from central.leases import Kind, Leases, instance_name
from central.models import Payment, PaymentEvent, PaymentRefund
from central.payments.provider import (
    Charge,
    Outcome,
    Provider,
    ProviderError,
    ProviderRejected,
    RefundOrder,
    RefundResult,
    RefundStatus,
    Result,
)
from central.payments.transitions import (
    CHARGE_ANSWERS,
    DRIVEN_STATES,
    QUERY_ANSWERS,
    REFUND_ANSWERS,
    REFUND_FINAL_STATES,
    REFUND_OPEN_STATES,
    WAITING_STATES,
    PaymentTrigger,
    RefundState,
    RefundTrigger,
    next_payment_state,
    next_refund_state,
    payment_move,
    refund_move,
)

if TYPE_CHECKING:
    from central.metrics import CentralMetrics
    from central.payments.brand_cards import JoinOnPayment, JoinPlan

log = logging.getLogger(__name__)

# The state sets of central/payments/transitions.py as the database's strings, in declared order (SQL `IN`;
# tests/chaos reads FINAL and REFUND_FINAL).
WAITING = tuple(s.value for s in PaymentState if s in WAITING_STATES)  # the outcome is still open
ACTIVE = tuple(s.value for s in PaymentState if s in DRIVEN_STATES)  # a task must be driving it
FINAL = tuple(s.value for s in PaymentState if s in FINAL_PAYMENT_STATES)
REFUND_OPEN = tuple(s.value for s in RefundState if s in REFUND_OPEN_STATES)  # a task follows it
REFUND_FINAL = tuple(s.value for s in RefundState if s in REFUND_FINAL_STATES)

# Payment codes by prefix (docs/ARCHITECTURE.md): WeChat Pay 18 digits 10–15; Alipay 16–24 digits 25–30.
CODE_PATTERNS: dict[str, re.Pattern[str]] = {
    "wechat": re.compile(r"^1[0-5]\d{16}$"),
    "alipay": re.compile(r"^(2[5-9]|30)\d{14,22}$"),
}
PROVIDER_LABELS = {"wechat": "WeChat Pay", "alipay": "Alipay"}

REASONS: dict[str, tuple[str, str]] = {
    "TIMEOUT": (
        "顾客未在规定时间内完成支付，订单已撤销（如已扣款将原路退回）",
        "The customer did not confirm in time; the payment is reversed (any money taken goes back)",
    ),
    "CANCELLED": (
        "收银台已取消该笔支付，订单已撤销（如已扣款将原路退回）",
        "Cancelled at the till; the payment is reversed (any money taken goes back)",
    ),
    "REJECTED": (
        "支付服务拒绝了该请求，未扣款，请使用其他方式付款",
        "The payment service refused the request; nothing was charged, pay another way",
    ),
    "PENDING": ("正在等待支付结果", "Waiting for the payment service's answer"),
    "UNKNOWN": ("正在确认支付结果，请稍候", "Confirming the payment with the payment service; please wait"),
    "VOIDED": (
        "收银台已放弃该笔支付，未扣款，请重新出示付款码",
        "Given up at the till before the payment reached central; nothing was charged",
    ),
}
# The code of a payment the till gave up before central received its request (`Gateway.void`).
VOIDED = "VOIDED"
REFUND_REASONS: dict[str, tuple[str, str]] = {
    "PENDING": ("正在提交退款", "Sending the refund to the payment service"),
    "UNKNOWN": ("正在向支付服务确认退款结果", "Confirming the refund with the payment service"),
    "REJECTED": (
        "支付服务拒绝了该退款请求（未退款），请联系管理员，或用其他方式退款",
        "The payment service refused the refund request (nothing refunded); tell the store manager, or refund another way",
    ),
}

REVERSE_PAID_WITHIN = timedelta(hours=24)

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[Any]]


def provider_of(auth_code: str) -> str | None:
    """Which provider a payment code belongs to, by its prefix; None when it is no payment code we know."""
    return next((name for name, pattern in CODE_PATTERNS.items() if pattern.match(auth_code)), None)


@dataclass(frozen=True)
class Timings:
    poll: float = 5.0  # between two queries
    limit: float = 30.0  # after the charge, give up waiting for the customer and reverse
    reverse_not_before: float = 15.0  # no reverse earlier than this after the charge
    answer: float = 8.0  # POST /v1/payments waits this long for the provider's first answer
    retry_max: float = 60.0  # longest pause between two tries of a failing reverse

    @classmethod
    def from_settings(cls, settings: Settings) -> Timings:
        return cls(
            poll=settings.payments_poll_seconds,
            limit=settings.payments_limit_seconds,
            reverse_not_before=settings.payments_reverse_not_before_seconds,
            answer=settings.payments_answer_seconds,
            retry_max=settings.payments_retry_max_seconds,
        )


class Gateway:
    """Charges, identifies, polls and reverses; the web routes and the CLI call it, never a provider directly."""

    def __init__(
        self,
        settings: Settings,
        engine: sa.Engine,
        providers: dict[str, Provider],
        *,
        timings: Timings | None = None,
        clock: Clock = utcnow,
        sleep: Sleep = asyncio.sleep,
        metrics: CentralMetrics | None = None,
        card_join: JoinOnPayment | None = None,
        leases: Leases | None = None,
    ):
        self.settings = settings
        self.engine = engine
        self.providers = providers
        self.timings = timings or Timings.from_settings(settings)
        self.clock = clock
        self.sleep = sleep
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._events: dict[str, asyncio.Event] = {}
        self._again: set[str] = set()
        self._stopping = False
        self.metrics = metrics  # counts payments by outcome (central/metrics.py)
        # 下单同步入会: the member card join fields a WeChat charge carries in `attach` (central/payments/brand_cards.py)
        self.card_join = card_join
        self.leases = leases or Leases(engine, instance_name(settings.port), settings.lease_seconds, clock)
        configured = list(providers)
        # What a sweep may take over: unfinished, of a provider this process can call.
        self.payments = Kind(
            Payment.__table__, "out_trade_no", open=lambda t: t.c.state.in_(ACTIVE) & t.c.provider.in_(configured)
        )
        self.refunds = Kind(
            PaymentRefund.__table__,
            "out_refund_no",
            open=lambda t: t.c.state.in_(REFUND_OPEN) & t.c.provider.in_(configured),
        )
        self.leases.every_third(self.keep)

    # --- lifecycle -------------------------------------------------------------------------------------------

    async def start(self) -> int:
        """Take over every unfinished payment and refund no live process drives (after a restart, a crash, or
        another replica's death); how many."""
        for kind, states, what in ((self.payments, ACTIVE, "payment"), (self.refunds, REFUND_OPEN, "refund")):
            for key, provider in await asyncio.to_thread(self._unconfigured, kind, states):
                log.error(
                    "%s %s is unfinished but %s is not configured here; another process or a restart with "
                    "it configured takes it",
                    what,
                    key,
                    provider,
                )
        return await self.sweep(ours_too=True, limit=100_000)

    async def sweep(self, *, ours_too: bool = False, limit: int = 500) -> int:
        """Take the unfinished payments and refunds whose lease is free or expired (`ours_too`: or held under this
        process's name, at start), and drive them; how many."""
        payments = await asyncio.to_thread(self.leases.take_expired, self.payments, limit, ours_too=ours_too)
        for out_trade_no in payments:
            self._spawn(out_trade_no, None)
        refunds = await asyncio.to_thread(self.leases.take_expired, self.refunds, limit, ours_too=ours_too)
        for out_refund_no in refunds:
            self._spawn_refund(out_refund_no, send=False)  # it may have been sent: ask before sending again
        if payments or refunds:
            log.info("took over %d unfinished payments and %d refunds", len(payments), len(refunds))
        return len(payments) + len(refunds)

    async def keep(self) -> None:
        """Every third of the lease: renew the leases of what this process drives, stop driving what another
        process took over (this one was too slow to renew), and take over what a dead one left."""
        if self._stopping:
            return
        driven = [key for key in self._tasks if not key.startswith("refund:")]
        followed = [key.removeprefix("refund:") for key in self._tasks if key.startswith("refund:")]
        lost = set(driven) - await asyncio.to_thread(self.leases.renew, self.payments, driven)
        lost |= {
            _refund_key(k) for k in set(followed) - await asyncio.to_thread(self.leases.renew, self.refunds, followed)
        }
        for key in lost:
            task = self._tasks.get(key)
            if task is not None:
                log.warning("%s: another process has taken it over; this one stops driving it", key)
                task.cancel()
        await self.sweep()

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:  # another process takes them over at once, not after the lease
            for kind in (self.payments, self.refunds):
                await asyncio.to_thread(self.leases.release_all, kind)
        except sa.exc.OperationalError as exc:
            log.warning("could not give the payments' leases up (%s); they are taken over when they expire", exc.orig)
        for provider in self.providers.values():
            close = getattr(provider, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:  # noqa: BLE001 - closing must not stop the shutdown
                    log.exception("closing the %s client", getattr(provider, "name", "?"))

    async def settle(self, out_trade_no: str) -> None:
        """Wait until no task drives this payment (tests and the CLI)."""
        task = self._tasks.get(out_trade_no)
        if task is not None:
            await asyncio.shield(task)

    async def settle_refund(self, out_refund_no: str) -> None:
        """Wait until no task follows this refund (tests and the CLI)."""
        await self.settle(_refund_key(out_refund_no))

    # --- what the routes call --------------------------------------------------------------------------------

    def route(self, auth_code: str, chosen: str | None = None) -> str:
        """The configured provider for a payment code; Invalid (422) with what to do otherwise."""
        name = provider_of(auth_code)
        if name is None:
            raise Invalid(
                "this is not a WeChat Pay or Alipay payment code; scan the code on the customer's payment screen",
                code="not_a_payment_code",
            )
        if chosen is not None and chosen != name:
            raise Invalid(
                f"this is a {PROVIDER_LABELS[name]} code, not {PROVIDER_LABELS[chosen]}; choose {PROVIDER_LABELS[name]} or scan the right code",
                code="wrong_provider",
            )
        if name not in self.providers:
            raise Invalid(
                f"{PROVIDER_LABELS[name]} is not configured at this central service; take another tender",
                code="provider_not_configured",
            )
        return name

    def payer_kind(self, provider: str) -> str | None:
        """The member identifier kind payer ids of this provider are stored under (`openid:<appid>`)."""
        kind = getattr(self.providers.get(provider), "payer_id_kind", None)
        if kind:
            return kind
        if provider == "wechat" and self.settings.wechat_appid:
            return f"openid:{self.settings.wechat_appid}"
        if provider == "alipay" and self.settings.alipay_app_id:
            return f"openid:{self.settings.alipay_app_id}"
        return None

    async def identify(self, store_id: str, auth_code: str) -> contract.IdentifyResult:
        name = self.route(auth_code)
        try:
            payer_id = await self.providers[name].identify(auth_code)
        except ProviderError as exc:
            raise ProviderUnavailable(
                f"{PROVIDER_LABELS[name]} could not identify the payer ({exc}); charge without it, or try again"
            ) from exc
        kind = self.payer_kind(name)
        if payer_id is None or kind is None:
            message = (
                "the provider names the payer only with the charge"
                if payer_id is None and name == "alipay"
                else "the code does not name a payer (expired or invalid?)"
            )
            return contract.IdentifyResult(provider=name, message=message)
        member = await asyncio.to_thread(self._member_of, kind, payer_id)
        payer = contract.OpenId(appid=kind.split(":", 1)[1], openid=payer_id)
        message = None if member else "no member holds this payer's openid"
        return contract.IdentifyResult(provider=name, payer=payer, member=member, may_redeem=False, message=message)

    async def pay(
        self, store_id: str, request: contract.PaymentRequest, device_ip: str | None = None
    ) -> tuple[contract.Payment, bool]:
        """Start a payment, or answer the one this `out_trade_no` already is. (payment, created). `device_ip`: the
        till's address as the request came in (WeChat Pay v3 reports it with the charge)."""
        name = self.route(request.auth_code, request.provider)
        fingerprint = self._fingerprint(store_id, request)
        now = self.clock()
        join = None
        if self.card_join is not None:
            join = await asyncio.to_thread(self.card_join.plan, name, request.out_trade_no, request.member_id)
        row, created = await asyncio.to_thread(self._create, store_id, name, request, fingerprint, now, join)
        if not created:
            if row.store_id != store_id:
                raise Conflict("this out_trade_no is another store's payment; use a new one", code="out_trade_no_taken")
            if row.code == VOIDED and row.request_hash == "":
                # The till gave this number up before it arrived here (a late copy of a request whose answer it
                # lost): refused, so it can never be charged.
                raise Conflict(
                    "the till gave up this payment before it reached central; nothing was charged: scan a new payment code",
                    code="payment_voided",
                )
            if row.request_hash != fingerprint:
                raise Conflict(
                    "this out_trade_no was used for a different payment (other code, amount or till); a new auth code needs a new out_trade_no",
                    code="out_trade_no_reused",
                )
        else:
            charge = Charge(
                out_trade_no=request.out_trade_no,
                auth_code=request.auth_code,
                amount_fen=request.amount_fen,
                description=request.description or "门店消费",
                store_id=store_id,
                station_id=request.station_id,
                expires_at=now + timedelta(seconds=self.timings.limit),  # the provider closes it when we give up
                device_ip=device_ip,
                attach=join.attach if join is not None else None,
            )
            self._spawn(request.out_trade_no, charge)
        if row.state == PaymentState.PENDING and self.timings.answer > 0:
            return await self.wait(
                store_id, request.out_trade_no, self.timings.answer, since=PaymentState.PENDING
            ), created
        return _wire(row, self), created

    async def get(self, store_id: str, out_trade_no: str) -> contract.Payment:
        row = await asyncio.to_thread(self._load, out_trade_no)
        if row is None or row.store_id != store_id:
            raise NotFound(f"no payment {out_trade_no} at this store")
        return _wire(row, self)

    async def wait(
        self, store_id: str, out_trade_no: str, seconds: float, since: str | None = None
    ) -> contract.Payment:
        """The payment once its state differs from `since` (default: its state now), or after `seconds`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            event = self._event(out_trade_no)  # taken before reading, so a change in between is not missed
            payment = await self.get(store_id, out_trade_no)
            since = since or payment.state
            remaining = deadline - loop.time()
            if payment.state != since or payment.final or remaining <= 0:
                return payment
            try:
                # At least every second from the database too: another process may be the one changing it.
                await asyncio.wait_for(event.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass

    async def cancel(self, store_id: str, out_trade_no: str) -> contract.Payment:
        """The till gives up on (or takes back) a payment: reverse it, unless it is already not paid."""
        row = await asyncio.to_thread(self._load, out_trade_no)
        if row is None or row.store_id != store_id:
            raise NotFound(f"no payment {out_trade_no} at this store")
        if next_payment_state(row.state, PaymentTrigger.TILL_CANCELS) is None:
            return _wire(row, self)  # not paid, or being reversed already
        if row.provider not in self.providers:
            raise Invalid(
                f"{PROVIDER_LABELS.get(row.provider, row.provider)} is not configured any more; cannot reverse",
                code="provider_not_configured",
            )
        if (
            row.state == PaymentState.SUCCESS
            and self.clock() - (row.paid_at or row.charge_sent_at) > REVERSE_PAID_WITHIN
        ):
            # Providers reverse a paid order only for a while (Alipay 24 h, WeChat 7 days); later is a refund.
            raise Conflict(
                "this payment was made more than 24 hours ago; refund it instead (POST .../refunds)",
                code="too_late_to_reverse",
            )
        changed = await asyncio.to_thread(
            self._transition,
            out_trade_no,
            PaymentTrigger.TILL_CANCELS,
            "cancel",
            code="CANCELLED",
            cancel_requested=True,
            unless_refunded=True,
        )
        if changed:
            self._notify(out_trade_no)
            self._spawn(out_trade_no, None)  # a SUCCESS has no task any more; a waiting one keeps its own
        elif row.state == PaymentState.SUCCESS and await asyncio.to_thread(self._refunded_fen, out_trade_no):
            raise Conflict(
                "part of this payment is refunded or being refunded; refund the rest instead of reversing it",
                code="refunded",
            )
        return await self.get(store_id, out_trade_no)

    async def void(self, store_id: str, out_trade_no: str, request: contract.PaymentVoid) -> contract.Payment:
        """The till gives this payment up, whether central has seen it or not (`contract.PaymentVoid`): a payment
        central holds is reversed like `cancel`; an unknown number is recorded as given up, which refuses the
        charge should its request still arrive. Either way the answer is final on "not charged", or REVERSING."""
        row, created = await asyncio.to_thread(self._create_void, store_id, out_trade_no, request, self.clock())
        if row.store_id != store_id:
            raise NotFound(f"no payment {out_trade_no} at this store")
        if created:
            self._notify(out_trade_no)
            self._ended(row, row.state, row.code)
            return _wire(row, self)
        return await self.cancel(store_id, out_trade_no)

    # --- refunds -----------------------------------------------------------------------------------------------

    async def refund(
        self, store_id: str, out_trade_no: str, request: contract.RefundRequest
    ) -> tuple[contract.Refund, bool]:
        """Refund part or all of a paid payment, or answer the refund this `out_refund_no` already is.
        (refund, created). Answers once the provider's first answer is in, or after `answer` s as PROCESSING."""
        row, created = await asyncio.to_thread(self._create_refund, store_id, out_trade_no, request, self.clock())
        if created:
            self._spawn_refund(request.out_refund_no, send=True)
        if row.state == RefundState.PENDING and self.timings.answer > 0:
            return await self.wait_refund(
                store_id, out_trade_no, request.out_refund_no, self.timings.answer, since=RefundState.PENDING
            ), created
        return _wire_refund(row), created

    async def get_refund(self, store_id: str, out_trade_no: str, out_refund_no: str) -> contract.Refund:
        return _wire_refund(await self._refund_of(store_id, out_trade_no, out_refund_no))

    async def wait_refund(
        self, store_id: str, out_trade_no: str, out_refund_no: str, seconds: float, since: str | None = None
    ) -> contract.Refund:
        """The refund once its state differs from `since` (default: its state now), or after `seconds`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        key = _refund_key(out_refund_no)
        while True:
            event = self._event(key)  # taken before reading, so a change in between is not missed
            row = await self._refund_of(store_id, out_trade_no, out_refund_no)
            since = since or row.state
            remaining = deadline - loop.time()
            if row.state != since or row.state in REFUND_FINAL or remaining <= 0:
                return _wire_refund(row)
            try:
                await asyncio.wait_for(event.wait(), min(remaining, 1.0))
            except TimeoutError:
                pass

    async def _refund_of(self, store_id: str, out_trade_no: str, out_refund_no: str) -> sa.Row:
        row = await asyncio.to_thread(self._load_refund, out_refund_no)
        if row is None or row.out_trade_no != out_trade_no or row.store_id != store_id:
            raise NotFound(f"no refund {out_refund_no} of payment {out_trade_no} at this store")
        return row

    def _spawn_refund(self, out_refund_no: str, *, send: bool) -> None:
        key = _refund_key(out_refund_no)
        if self._stopping or key in self._tasks:
            return
        task = asyncio.get_running_loop().create_task(self._drive_refund(out_refund_no, send), name=key)
        self._tasks[key] = task
        task.add_done_callback(lambda _t: self._tasks.pop(key, None))

    async def _drive_refund(self, out_refund_no: str, send: bool) -> None:
        if not send and not await asyncio.to_thread(self.leases.take, self.refunds, out_refund_no):
            return  # another live process follows it
        failures = 0
        while True:
            try:
                if send:
                    send = False
                    await self._send_refund(out_refund_no)
                await self._follow_refund(out_refund_no)
                await asyncio.to_thread(self.leases.release, self.refunds, out_refund_no)
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or the database: the state is persisted, so ask again a little later
                failures += 1
                log.exception("refund %s: unexpected error (try %d); continuing", out_refund_no, failures)
                await self.sleep(min(self.timings.retry_max, self.timings.poll * failures))

    async def _send_refund(self, out_refund_no: str) -> None:
        """Send the refund (the first time, or again after the provider said it never got it)."""
        row = await asyncio.to_thread(self._load_refund, out_refund_no)
        if row is None or row.state in REFUND_FINAL:
            return
        otn = row.out_trade_no
        order = RefundOrder(
            out_trade_no=otn,
            out_refund_no=out_refund_no,
            total_fen=row.paid_fen,
            amount_fen=row.amount_fen,
            reason=row.reason,
        )
        try:
            result = await self.providers[row.provider].refund(order)
        except ProviderRejected as exc:
            # Refused before any processing. Not yet FAILED: the query decides (a refusal of a refund the provider
            # holds all the same must not make the till pay the customer a second time).
            await self._record(otn, "refund", "REJECTED", None, str(exc), out_refund_no=out_refund_no)
            await self._move_refund(
                out_refund_no, RefundTrigger.SEND_REFUSED, "refund", code="REJECTED", reasons=REFUND_REASONS["UNKNOWN"]
            )
            return
        except ProviderError as exc:
            await self._record(otn, "refund", "ERROR", type(exc).__name__, str(exc), out_refund_no=out_refund_no)
            await self._move_refund(
                out_refund_no,
                RefundTrigger.SEND_UNANSWERED,
                "refund",
                code=type(exc).__name__,
                reasons=REFUND_REASONS["UNKNOWN"],
            )
            return
        await self._apply_refund(row, result, "refund")

    async def _follow_refund(self, out_refund_no: str) -> None:
        """Query until the refund is final, at growing intervals (a WeChat refund to a bank card takes days)."""
        tries = 0
        key = _refund_key(out_refund_no)
        while True:
            row = await asyncio.to_thread(self._load_refund, out_refund_no)
            if row is None or row.state in REFUND_FINAL:
                return
            tries += 1
            await self._pause(key, self._backoff(tries))
            row = await asyncio.to_thread(self._load_refund, out_refund_no)
            if row.state in REFUND_FINAL:
                return
            try:
                result = await self.providers[row.provider].refund_query(row.out_trade_no, out_refund_no)
            except ProviderError as exc:
                await self._record(
                    row.out_trade_no, "refund_query", "ERROR", type(exc).__name__, str(exc), out_refund_no=out_refund_no
                )
                if tries == 1 or tries % 10 == 0:
                    log.warning("refund %s: query failed (%s), try %d; trying again", out_refund_no, exc, tries)
                continue
            if result.status is not RefundStatus.NOT_FOUND:
                await self._apply_refund(row, result, "refund_query")
                continue
            await self._record(
                row.out_trade_no, "refund_query", "NOT_FOUND", result.code, None, out_refund_no=out_refund_no
            )
            if row.code == "REJECTED":
                # Refused before processing, and the provider holds no such refund: definitely not refunded.
                await self._move_refund(
                    out_refund_no,
                    RefundTrigger.REFUSAL_CONFIRMED,
                    "refund_query",
                    code="REJECTED",
                    reasons=REFUND_REASONS["REJECTED"],
                )
            else:
                # It never arrived (or the provider lost it): the same out_refund_no again, refunded at most once.
                await self._send_refund(out_refund_no)

    async def _apply_refund(self, row: sa.Row, result: RefundResult, action: str) -> None:
        orn = row.out_refund_no
        await self._record(row.out_trade_no, action, result.status.value, result.code, None, out_refund_no=orn)
        if result.amount_fen is not None and result.amount_fen != row.amount_fen:
            log.error(
                "refund %s: %s reports %d fen, %d fen were asked", orn, row.provider, result.amount_fen, row.amount_fen
            )
        event = REFUND_ANSWERS[result.status]
        reasons = (result.reason_zh, result.reason_en)
        if result.status is RefundStatus.SUCCESS:
            await self._move_refund(
                orn,
                event,
                action,
                code=result.code,
                reasons=reasons,
                provider_refund_no=result.provider_refund_no,
                refunded_at=result.refunded_at or self.clock(),
            )
        elif result.status is RefundStatus.FAILED:
            await self._move_refund(
                orn, event, action, code=result.code, reasons=reasons, provider_refund_no=result.provider_refund_no
            )
        elif result.status is RefundStatus.PROCESSING:
            if (
                row.state != RefundState.PROCESSING
                or row.code != result.code
                or (result.provider_refund_no and not row.provider_refund_no)
            ):
                await self._move_refund(
                    orn, event, action, code=result.code, reasons=reasons, provider_refund_no=result.provider_refund_no
                )
        elif next_refund_state(row.state, event) is not None:  # UNKNOWN to a refund just sent: ask again later
            await self._move_refund(orn, event, action, code=result.code, reasons=REFUND_REASONS["UNKNOWN"])

    async def _move_refund(
        self,
        out_refund_no: str,
        event: RefundTrigger,
        action: str,
        *,
        code: str | None = None,
        reasons: tuple[str | None, str | None] | None = None,
        provider_refund_no: str | None = None,
        refunded_at: datetime | None = None,
    ) -> bool:
        changed = await asyncio.to_thread(
            self._refund_transition,
            out_refund_no,
            event,
            action,
            code=code,
            reasons=reasons,
            provider_refund_no=provider_refund_no,
            refunded_at=refunded_at,
        )
        if changed:
            self._notify(_refund_key(out_refund_no))
        return changed

    # --- the state machine -----------------------------------------------------------------------------------

    def _spawn(self, out_trade_no: str, charge: Charge | None) -> None:
        if self._stopping:
            return
        if out_trade_no in self._tasks:
            # Its task may be on its way out, having read the state before this change: look again after it.
            self._again.add(out_trade_no)
            return
        task = asyncio.get_running_loop().create_task(self._drive(out_trade_no, charge), name=f"payment:{out_trade_no}")
        self._tasks[out_trade_no] = task
        task.add_done_callback(lambda _t: self._finished(out_trade_no))

    def _finished(self, out_trade_no: str) -> None:
        self._tasks.pop(out_trade_no, None)
        if out_trade_no in self._again:
            self._again.discard(out_trade_no)
            self._spawn(out_trade_no, None)

    async def _drive(self, out_trade_no: str, charge: Charge | None) -> None:
        # A new payment is created with its lease; any other is driven only by the process that holds it.
        if charge is None and not await asyncio.to_thread(self.leases.take, self.payments, out_trade_no):
            return  # another live process drives it; it sees any change at its next look
        failures = 0
        while True:
            try:
                if charge is not None:
                    await self._charge(charge)
                    charge = None
                await self._follow(out_trade_no)
                await asyncio.to_thread(self.leases.release, self.payments, out_trade_no)
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug or the database: the state is persisted, so try again a little later
                failures += 1
                log.exception("payment %s: unexpected error (try %d); continuing", out_trade_no, failures)
                charge = None  # never send a charge twice: from here on, query and reverse only
                await self.sleep(min(self.timings.retry_max, self.timings.poll * failures))

    async def _charge(self, charge: Charge) -> None:
        # Stamped right before sending (the limit counts from here); a payment cancelled before it was sent is
        # never sent.
        row = await asyncio.to_thread(self._stamp_sent, charge.out_trade_no)
        if row is None:
            return
        provider = self.providers[row.provider]
        try:
            result: Result | ProviderError = await provider.charge(charge)
        except ProviderError as exc:
            result = exc
        # The 15 s before a reverse count from here, whatever came back (answer, error, timeout): a charge held up
        # behind a burst's database writes and signing has landed by then.
        await asyncio.to_thread(self._stamp_sent, charge.out_trade_no, answered_at=self.clock())
        if isinstance(result, ProviderRejected):
            # Refused before processing: nothing was charged, but close the order anyway (after the 15 s) so
            # that nothing can ever be charged on it.
            await self._record(charge.out_trade_no, "charge", "REJECTED", None, str(result))
            await self._move(
                charge.out_trade_no, PaymentTrigger.CHARGE_REFUSED, "charge", code="REJECTED", detail=str(result)
            )
            return
        if isinstance(result, ProviderError):
            await self._record(charge.out_trade_no, "charge", "ERROR", type(result).__name__, str(result))
            await self._move(
                charge.out_trade_no,
                PaymentTrigger.CHARGE_UNANSWERED,
                "charge",
                code=type(result).__name__,
                detail=str(result),
            )
            return
        await self._apply(row, result, "charge", CHARGE_ANSWERS)

    async def _follow(self, out_trade_no: str) -> None:
        """Query until the outcome is known or the limit passes, then reverse until confirmed."""
        while True:
            row = await asyncio.to_thread(self._load, out_trade_no)
            if row is None or row.state in FINAL:
                return
            provider = self.providers[row.provider]
            if row.state == PaymentState.REVERSING:
                await self._reverse(row, provider)
                return
            deadline = row.charge_sent_at + timedelta(seconds=self.timings.limit)
            left = (deadline - self.clock()).total_seconds()
            if left <= 0:
                await self._move(out_trade_no, PaymentTrigger.LIMIT_PASSED, "state", code="TIMEOUT")
                continue
            await self._pause(out_trade_no, min(self.timings.poll, left))
            row = await asyncio.to_thread(self._load, out_trade_no)
            if row.state not in WAITING:
                continue
            try:
                result = await provider.query(out_trade_no)
            except ProviderError as exc:
                await self._record(out_trade_no, "query", "ERROR", type(exc).__name__, str(exc))
                continue
            await self._apply(row, result, "query", QUERY_ANSWERS)

    async def _apply(self, row: sa.Row, result: Result, action: str, answers: Mapping[Outcome, PaymentTrigger]) -> None:
        """Take a provider's answer about `row` (from charge or query: `answers` says which event each is) into its
        state."""
        otn = row.out_trade_no
        await self._record(otn, action, result.outcome.value, result.code, None)
        event = answers[result.outcome]
        if result.outcome is Outcome.SUCCESS:
            await asyncio.to_thread(self._succeed, otn, result, event)
            self._notify(otn)
            return
        state = next_payment_state(row.state, event)
        if state is None or state == row.state:
            return  # no news (USERPAYING again), or nothing to change (UNKNOWN, NOT_FOUND to one asking already)
        if await self._move(otn, event, action, code=result.code, reasons=(result.reason_zh, result.reason_en)):
            if state.final:
                self._ended(row, state, result.code)

    async def _reverse(self, row: sa.Row, provider: Provider) -> None:
        otn = row.out_trade_no
        # Counted from the charge's answer; without one (central stopped while the charge was out), from now, the
        # moment the reverse is decided: the charge may still be on its way.
        since = row.charge_answered_at or self.clock()
        not_before = since + timedelta(seconds=self.timings.reverse_not_before)
        wait = (not_before - self.clock()).total_seconds()
        if wait > 0:
            await self.sleep(wait)
        failures = 0
        while True:
            try:
                answer = await provider.reverse(otn)
            except ProviderError as exc:
                failures += 1
                await self._record(otn, "reverse", "ERROR", type(exc).__name__, str(exc))
                if failures == 1 or failures % 10 == 0:
                    log.warning("payment %s: reverse failed (%s), try %d; trying again", otn, exc, failures)
                await self.sleep(self._backoff(failures))
                continue
            if answer.done:
                await self._record(otn, "reverse", "DONE", answer.code, None)
                cause = row.code if row.code in REASONS else None
                if await self._move(
                    otn,
                    PaymentTrigger.REVERSE_CONFIRMED,
                    "reverse",
                    code=cause or answer.code,
                    reasons=REASONS.get(cause or "CANCELLED"),
                ):
                    self._ended(row, PaymentState.REVERSED, cause or answer.code)
                return
            if answer.recall:
                await self._record(otn, "reverse", "RECALL", answer.code, None)
                await self.sleep(min(1.0, self.timings.poll / 5))  # the provider asks for another call: soon
                continue
            failures += 1
            await self._record(otn, "reverse", "NOT_DONE", answer.code, None)
            log.warning("payment %s: reverse not done (%s), try %d; trying again", otn, answer.code, failures)
            await self.sleep(self._backoff(failures))

    def _ended(self, row: sa.Row, state: str, code: str | None) -> None:
        """Count a payment this process just moved to a final state."""
        if self.metrics is not None:
            self.metrics.payment_ended(row.provider, state, code, row.charge_sent_at, self.clock())

    def _backoff(self, failures: int) -> float:
        return min(self.timings.retry_max, self.timings.poll * 2 ** min(failures - 1, 16))

    async def _pause(self, out_trade_no: str, seconds: float) -> None:
        """Sleep, but wake at once when the payment changes (e.g. the till cancels)."""
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        woken = asyncio.ensure_future(self._event(out_trade_no).wait())
        try:
            await asyncio.wait({sleeper, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            woken.cancel()

    def _event(self, out_trade_no: str) -> asyncio.Event:
        return self._events.setdefault(out_trade_no, asyncio.Event())

    def _notify(self, out_trade_no: str) -> None:
        event = self._events.pop(out_trade_no, None)
        if event is not None:
            event.set()

    async def _move(
        self,
        out_trade_no: str,
        event: PaymentTrigger,
        action: str,
        *,
        code: str | None = None,
        reasons: tuple[str | None, str | None] | None = None,
        detail: str | None = None,
    ) -> bool:
        changed = await asyncio.to_thread(
            self._transition, out_trade_no, event, action, code=code, reasons=reasons, detail=detail
        )
        if changed:
            self._notify(out_trade_no)
        return changed

    async def _record(
        self,
        out_trade_no: str,
        action: str,
        outcome: str,
        code: str | None,
        detail: str | None,
        *,
        out_refund_no: str | None = None,
    ) -> None:
        await asyncio.to_thread(self._event_row, out_trade_no, action, outcome, code, detail, out_refund_no)

    # --- the database (blocking; called through asyncio.to_thread) --------------------------------------------

    def _fingerprint(self, store_id: str, request: contract.PaymentRequest) -> str:
        # Keyed: the request holds the auth code, and the hash of an 18-digit code would be easy to reverse.
        canonical = json.dumps(
            [store_id, request.model_dump(mode="json", exclude={"provider"})], sort_keys=True
        ).encode()
        return hmac.new(self.settings.key_bytes(), canonical, hashlib.sha256).hexdigest()

    def _unconfigured(self, kind: Kind, states: tuple[str, ...]) -> list[tuple[str, str]]:
        """Rows of `kind` in `states` (unfinished) whose provider this process cannot call: (key, provider)."""
        table = kind.table
        with read_session(self.engine) as session:
            return [
                (r[0], r[1])
                for r in session.execute(
                    sa.select(table.c[kind.key], table.c.provider).where(
                        table.c.state.in_(states), table.c.provider.not_in(list(self.providers))
                    )
                )
            ]

    def _load(self, out_trade_no: str) -> sa.Row | None:
        table = Payment.__table__
        with read_session(self.engine) as session:
            return session.execute(sa.select(table).where(table.c.out_trade_no == out_trade_no)).first()

    def _create(
        self,
        store_id: str,
        provider: str,
        request: contract.PaymentRequest,
        fingerprint: str,
        now: datetime,
        join: JoinPlan | None = None,
    ) -> tuple[sa.Row, bool]:
        table = Payment.__table__
        with write_session(self.engine) as session:
            existing = session.execute(sa.select(table).where(table.c.out_trade_no == request.out_trade_no)).first()
            if existing is not None:
                return existing, False
            member_id = None
            if request.member_id is not None:
                member = identity.resolve(session, request.member_id)
                if member is None:
                    raise Invalid(f"central has no member {request.member_id}", code="unknown_member")
                member_id = member.id
            state = payment_move(PaymentTrigger.REQUESTED).target
            try:  # the same out_trade_no sent twice at once (to two replicas): the primary key lets one in
                self._insert_payment(session, request, store_id, provider, member_id, fingerprint, state, now)
                if join is not None:
                    join.record(session, store_id, now)  # with the payment: a charge with the join fields is followed
                session.commit()
            except sa.exc.IntegrityError:
                session.rollback()  # the other one won
                return session.execute(
                    sa.select(table).where(table.c.out_trade_no == request.out_trade_no)
                ).first(), False
            return session.execute(sa.select(table).where(table.c.out_trade_no == request.out_trade_no)).first(), True

    def _insert_payment(
        self,
        session: CentralSession,
        request: contract.PaymentRequest,
        store_id: str,
        provider: str,
        member_id: str | None,
        fingerprint: str,
        state: PaymentState,
        now: datetime,
    ) -> None:
        """A new payment, leased to this process (it sends the charge and drives it), and its first event."""
        zh, en = REASONS[state]
        table = Payment.__table__
        session.execute(
            sa.insert(table).values(
                out_trade_no=request.out_trade_no,
                store_id=store_id,
                station_id=request.station_id,
                provider=provider,
                amount_fen=request.amount_fen,
                description=request.description or "",
                member_id=member_id,
                request_hash=fingerprint,
                state=state.value,
                reason_zh=zh,
                reason_en=en,
                cancel_requested=False,
                charge_sent_at=now,
                created_at=now,
                updated_at=now,
                **self.leases.held(self.payments),  # this process sends the charge and drives it
            )
        )
        session.execute(
            sa.insert(PaymentEvent.__table__).values(
                out_trade_no=request.out_trade_no, at=now, action="state", outcome=state.value
            )
        )

    def _create_void(
        self, store_id: str, out_trade_no: str, request: contract.PaymentVoid, now: datetime
    ) -> tuple[sa.Row, bool]:
        """The payment row of this number, or a new one recording it as given up before central saw it. The
        primary key decides a race with the payment's own late request: whichever is inserted first stands."""
        table = Payment.__table__
        with write_session(self.engine) as session:
            existing = session.execute(sa.select(table).where(table.c.out_trade_no == out_trade_no)).first()
            if existing is not None:
                return existing, False
            state = payment_move(PaymentTrigger.VOIDED_BEFORE_ARRIVAL).target
            zh, en = REASONS[VOIDED]
            try:  # the primary key decides a race with the payment's own request, on any replica
                session.execute(
                    sa.insert(table).values(
                        out_trade_no=out_trade_no,
                        store_id=store_id,
                        station_id=request.station_id,
                        provider=request.provider,
                        amount_fen=request.amount_fen,
                        description="",
                        member_id=None,
                        request_hash="",
                        state=state.value,
                        code=VOIDED,
                        reason_zh=zh,
                        reason_en=en,
                        cancel_requested=True,
                        charge_sent_at=now,
                        finished_at=now,
                        created_at=now,
                        updated_at=now,
                    )
                )
                session.execute(
                    sa.insert(PaymentEvent.__table__).values(
                        out_trade_no=out_trade_no, at=now, action="void", outcome=state.value, code=VOIDED
                    )
                )
                session.commit()
            except sa.exc.IntegrityError:
                session.rollback()  # the payment's own request was stored at the same moment: it stands
                return session.execute(sa.select(table).where(table.c.out_trade_no == out_trade_no)).first(), False
            log.info("payment %s voided before central received it", out_trade_no)
            return session.execute(sa.select(table).where(table.c.out_trade_no == out_trade_no)).first(), True

    def _stamp_sent(self, out_trade_no: str, *, answered_at: datetime | None = None) -> sa.Row | None:
        """Set `charge_sent_at` to now if the payment is still PENDING; the row then, or None. With `answered_at`:
        record when the charge's answer (or error, or timeout) came instead, whatever the state is now."""
        table = Payment.__table__
        if answered_at is not None:
            with write_session(self.engine) as session:
                session.execute(
                    sa.update(table)
                    .where(table.c.out_trade_no == out_trade_no, table.c.charge_answered_at.is_(None))
                    .values(charge_answered_at=answered_at)
                )
                session.commit()
            return None
        with write_session(self.engine) as session:
            done = session.execute(
                sa.update(table)
                .where(table.c.out_trade_no == out_trade_no, table.c.state == PaymentState.PENDING.value)
                .values(charge_sent_at=self.clock())
            ).rowcount
            session.commit()
            if not done:
                return None
            return session.execute(sa.select(table).where(table.c.out_trade_no == out_trade_no)).first()

    def _transition(
        self,
        out_trade_no: str,
        event: PaymentTrigger,
        action: str,
        *,
        code: str | None = None,
        reasons: tuple[str | None, str | None] | None = None,
        cancel_requested: bool | None = None,
        detail: str | None = None,
        unless_refunded: bool = False,
    ) -> bool:
        """Make the move `event` makes in the table, if the payment is in one of the states it leaves (atomically: a
        cancel and an answer can race). `unless_refunded`: not if any of its refunds is not FAILED (checked under the
        payment's row lock)."""
        move = payment_move(event)
        state = move.target
        now = self.clock()
        zh, en = reasons if reasons and reasons[0] else REASONS.get(code or "", REASONS.get(state, (None, None)))
        values: dict[str, Any] = {
            "state": state.value,
            "updated_at": now,
            "code": code and code[:64],
            "reason_zh": zh and zh[:128],
            "reason_en": en and en[:256],
        }
        if state.final:
            values["finished_at"] = now
        if cancel_requested is not None:
            values["cancel_requested"] = cancel_requested
        table = Payment.__table__
        with write_session(self.engine) as session:
            if unless_refunded:
                session.execute(
                    sa.select(table.c.out_trade_no).where(table.c.out_trade_no == out_trade_no).with_for_update()
                )
                if self._refunded_fen(out_trade_no, session):
                    session.rollback()
                    return False
            done = session.execute(
                sa.update(table)
                .where(table.c.out_trade_no == out_trade_no, table.c.state.in_([s.value for s in move.sources]))
                .values(**values)
            ).rowcount
            if done:
                session.execute(
                    sa.insert(PaymentEvent.__table__).values(
                        out_trade_no=out_trade_no,
                        at=now,
                        action=action,
                        outcome=state.value,
                        code=code,
                        detail=_clip(detail),
                    )
                )
            session.commit()
        if done:
            log.info("payment %s → %s (%s)", out_trade_no, state, code or action)
        return bool(done)

    def _succeed(self, out_trade_no: str, result: Result, event: PaymentTrigger) -> None:
        """Paid (`event` is the answer that says so): record the provider's ids, and link the payer to the member (or
        learn the member from it)."""
        move = payment_move(event)
        now = self.clock()
        table = Payment.__table__
        with write_session(self.engine) as session:
            row = session.execute(sa.select(table).where(table.c.out_trade_no == out_trade_no)).first()
            if row is None or row.state not in move.sources:
                session.rollback()
                return
            member_id = row.member_id
            kind = self.payer_kind(row.provider)
            if result.payer_id and kind and member_id:
                # Linking the payer's openid changes a member: the feed's lock, before any row is locked or
                # written (the read above locks nothing). A payment without a member changes none and waits
                # for no other payment.
                feed.lock(session)
            if result.payer_id and kind:
                holder = identity.owner(session, kind, result.payer_id)
                member = identity.resolve(session, member_id) if member_id else None
                if member is not None and holder is None:
                    identity.attach(session, member.id, kind, result.payer_id, now)
                    log.info("payment %s: payer linked to member %s", out_trade_no, member.id)
                elif member is not None and holder != member.id:
                    # Two members would be one only on a payment's word: leave it to a person (member merge).
                    log.warning(
                        "payment %s: the payer's openid belongs to member %s, not %s; not linked",
                        out_trade_no,
                        holder,
                        member.id,
                    )
                elif member is None and holder is not None:
                    member_id = holder
            if result.amount_fen is not None and result.amount_fen != row.amount_fen:
                log.error(
                    "payment %s: %s reports %d fen paid, %d fen were asked",
                    out_trade_no,
                    row.provider,
                    result.amount_fen,
                    row.amount_fen,
                )
            session.execute(
                sa.update(table)
                .where(table.c.out_trade_no == out_trade_no)
                .values(
                    state=move.target.value,
                    code=(result.code or "SUCCESS")[:64],
                    reason_zh=(result.reason_zh or "支付成功")[:128],
                    reason_en=(result.reason_en or "Paid")[:256],
                    provider_trade_no=result.provider_trade_no,
                    payer_id=result.payer_id,
                    paid_amount_fen=result.amount_fen,
                    paid_at=result.paid_at or now,
                    finished_at=now,
                    updated_at=now,
                    member_id=member_id,
                )
            )
            session.execute(
                sa.insert(PaymentEvent.__table__).values(
                    out_trade_no=out_trade_no, at=now, action="state", outcome=move.target.value, code=result.code
                )
            )
            session.commit()
        self._ended(row, move.target, result.code)
        log.info("payment %s → %s", out_trade_no, move.target)

    def _event_row(
        self,
        out_trade_no: str,
        action: str,
        outcome: str,
        code: str | None,
        detail: str | None,
        out_refund_no: str | None = None,
    ) -> None:
        with write_session(self.engine) as session:
            session.execute(
                sa.insert(PaymentEvent.__table__).values(
                    out_trade_no=out_trade_no,
                    at=self.clock(),
                    action=action,
                    outcome=outcome[:24],
                    code=(code or None) and code[:64],
                    detail=_clip(detail),
                    out_refund_no=out_refund_no,
                )
            )
            session.commit()

    # --- refunds in the database ---

    def _load_refund(self, out_refund_no: str) -> sa.Row | None:
        """The refund, with its payment's `store_id` and `paid_fen` (what the payment was paid)."""
        refunds, payments = PaymentRefund.__table__, Payment.__table__
        with read_session(self.engine) as session:
            return session.execute(
                sa.select(
                    refunds,
                    payments.c.store_id,
                    sa.func.coalesce(payments.c.paid_amount_fen, payments.c.amount_fen).label("paid_fen"),
                )
                .join(payments, payments.c.out_trade_no == refunds.c.out_trade_no)
                .where(refunds.c.out_refund_no == out_refund_no)
            ).first()

    def _refunded_fen(self, out_trade_no: str, session: CentralSession | None = None) -> int:
        """What the payment's refunds that are not FAILED add up to (refunded, or being refunded)."""
        table = PaymentRefund.__table__
        query = sa.select(sa.func.coalesce(sa.func.sum(table.c.amount_fen), 0)).where(
            table.c.out_trade_no == out_trade_no, table.c.state != RefundState.FAILED.value
        )
        if session is not None:
            return int(session.execute(query).scalar_one())
        with read_session(self.engine) as own:
            return int(own.execute(query).scalar_one())

    def _create_refund(
        self, store_id: str, out_trade_no: str, request: contract.RefundRequest, now: datetime
    ) -> tuple[sa.Row, bool]:
        payments, refunds = Payment.__table__, PaymentRefund.__table__
        with write_session(self.engine) as session:
            # Locked (PostgreSQL; SQLite's writers queue anyway): two refunds of one payment are summed one after
            # the other, and a reverse cannot slip in between.
            payment = session.execute(
                sa.select(payments).where(payments.c.out_trade_no == out_trade_no).with_for_update()
            ).first()
            if payment is None or payment.store_id != store_id:
                raise NotFound(f"no payment {out_trade_no} at this store")
            existing = session.execute(
                sa.select(refunds.c.out_refund_no).where(refunds.c.out_refund_no == request.out_refund_no)
            ).first()
            if existing is not None:
                session.rollback()
                return self._replay_refund(store_id, out_trade_no, request), False
            if payment.state != PaymentState.SUCCESS:
                raise Conflict(
                    f"payment {out_trade_no} is {payment.state}, not paid: there is nothing to refund", code="not_paid"
                )
            if payment.provider not in self.providers:
                raise Invalid(
                    f"{PROVIDER_LABELS.get(payment.provider, payment.provider)} is not configured any more; cannot refund",
                    code="provider_not_configured",
                )
            paid = payment.paid_amount_fen if payment.paid_amount_fen is not None else payment.amount_fen
            taken = self._refunded_fen(out_trade_no, session)
            if taken + request.amount_fen > paid:
                raise Conflict(
                    f"refunds of payment {out_trade_no} would add up to more than was paid: {paid} fen paid, {taken} fen "
                    f"refunded or being refunded, {paid - taken} fen left",
                    code="refund_exceeds_payment",
                )
            state = refund_move(RefundTrigger.REQUESTED).target
            zh, en = REFUND_REASONS[state]
            session.execute(
                sa.insert(refunds).values(
                    out_refund_no=request.out_refund_no,
                    out_trade_no=out_trade_no,
                    provider=payment.provider,
                    amount_fen=request.amount_fen,
                    reason=request.reason,
                    state=state.value,
                    reason_zh=zh,
                    reason_en=en,
                    created_at=now,
                    updated_at=now,
                    **self.leases.held(self.refunds),  # this process sends the refund and follows it
                )
            )
            session.execute(
                sa.insert(PaymentEvent.__table__).values(
                    out_trade_no=out_trade_no,
                    at=now,
                    action="refund_state",
                    outcome=state.value,
                    out_refund_no=request.out_refund_no,
                )
            )
            try:
                session.commit()
            except sa.exc.IntegrityError:
                session.rollback()  # the same out_refund_no, sent twice at once: the other one won
                return self._replay_refund(store_id, out_trade_no, request), False
        log.info("refund %s of payment %s: %d fen", request.out_refund_no, out_trade_no, request.amount_fen)
        return self._load_refund(request.out_refund_no), True

    def _replay_refund(self, store_id: str, out_trade_no: str, request: contract.RefundRequest) -> sa.Row:
        """The refund this `out_refund_no` already is, if it is this request's (else 409)."""
        row = self._load_refund(request.out_refund_no)
        if row.out_trade_no != out_trade_no or row.store_id != store_id or row.amount_fen != request.amount_fen:
            raise Conflict(
                f"refund number {request.out_refund_no} was used for another refund (other payment or amount); "
                "a new refund needs a new out_refund_no"
            )
        return row

    def _refund_transition(
        self,
        out_refund_no: str,
        event: RefundTrigger,
        action: str,
        *,
        code: str | None = None,
        reasons: tuple[str | None, str | None] | None = None,
        provider_refund_no: str | None = None,
        refunded_at: datetime | None = None,
    ) -> bool:
        """Make the move `event` makes in the refund table, if the refund is in one of the states it leaves, with its
        audit event, atomically."""
        move = refund_move(event)
        state = move.target
        now = self.clock()
        zh, en = reasons if reasons and reasons[0] else (None, None)
        values: dict[str, Any] = {
            "state": state.value,
            "updated_at": now,
            "code": code and code[:64],
            "reason_zh": zh and zh[:128],
            "reason_en": en and en[:256],
        }
        if provider_refund_no:
            values["provider_refund_no"] = provider_refund_no[:64]
        if refunded_at is not None:
            values["refunded_at"] = refunded_at
        if state in REFUND_FINAL_STATES:
            values["finished_at"] = now
        table = PaymentRefund.__table__
        with write_session(self.engine) as session:
            otn = session.execute(
                sa.select(table.c.out_trade_no).where(table.c.out_refund_no == out_refund_no)
            ).scalar_one_or_none()
            done = session.execute(
                sa.update(table)
                .where(table.c.out_refund_no == out_refund_no, table.c.state.in_([s.value for s in move.sources]))
                .values(**values)
            ).rowcount
            if done:
                session.execute(
                    sa.insert(PaymentEvent.__table__).values(
                        out_trade_no=otn,
                        at=now,
                        action="refund_state",
                        outcome=state.value,
                        code=code and code[:64],
                        out_refund_no=out_refund_no,
                    )
                )
            session.commit()
        if done:
            log.info("refund %s → %s (%s)", out_refund_no, state, code or action)
        return bool(done)

    def _member_of(self, kind: str, payer_id: str) -> contract.MemberChange | None:
        with read_session(self.engine) as session:
            member_id = identity.owner(session, kind, payer_id)
            return feed.snapshot(session, member_id, self.clock()) if member_id else None


def _clip(text: str | None) -> str | None:
    return None if text is None else text[:256]


def _refund_key(out_refund_no: str) -> str:
    """A refund's key among the gateway's tasks and events (an out_trade_no never holds a colon)."""
    return f"refund:{out_refund_no}"


def _wire_refund(row: sa.Row) -> contract.Refund:
    return contract.Refund(
        out_refund_no=row.out_refund_no,
        out_trade_no=row.out_trade_no,
        provider=row.provider,
        state=RefundState.PROCESSING.value if row.state == RefundState.PENDING else row.state,
        final=row.state in REFUND_FINAL,
        amount_fen=row.amount_fen,
        provider_refund_no=row.provider_refund_no,
        code=row.code,
        reason_zh=row.reason_zh,
        reason_en=row.reason_en,
        created_at=row.created_at,
        updated_at=row.updated_at,
        refunded_at=row.refunded_at,
    )


def _wire(row: sa.Row, gateway: Gateway) -> contract.Payment:
    kind = gateway.payer_kind(row.provider)
    payer = contract.OpenId(appid=kind.split(":", 1)[1], openid=row.payer_id) if row.payer_id and kind else None
    return contract.Payment(
        out_trade_no=row.out_trade_no,
        provider=row.provider,
        state=row.state,
        paid=row.state == PaymentState.SUCCESS,
        final=row.state in FINAL,
        amount_fen=row.amount_fen,
        station_id=row.station_id,
        member_id=row.member_id,
        payer=payer,
        provider_trade_no=row.provider_trade_no,
        code=row.code,
        reason_zh=row.reason_zh,
        reason_en=row.reason_en,
        created_at=row.created_at,
        updated_at=row.updated_at,
        paid_at=row.paid_at,
    )
