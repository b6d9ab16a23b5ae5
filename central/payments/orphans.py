"""Payments reconciliation: every code payment belongs to a sale the store pushed, or to a recorded void.

Day-end reconciliation of transactions compares sales only; a customer charged by a payment that belongs to no
sale (the till gave up but the charge landed, or the till cancelled the sale and the reversal never happened)
would go unnoticed. Here, for a store and a day (China time, by the payment's creation, as `PaymentDay` and the
providers' bills count days), every provider payment — central's `payment` rows, and the bill's
`charged_not_paid_at_store` issues where a bill was checked — is matched by `out_trade_no` to the tenders of the
store's `sale` and `void` transactions:

- SUCCESS and a sale holds it: matched (a tender whose amount differs is an `amount_mismatch`);
- FAILED, REVERSED or REVERSING (a recorded void or not-paid outcome, including a number the till voided before
  central saw it, `FAILED`/`VOIDED`): nothing to match; PENDING, USERPAYING, UNKNOWN: still being decided;
- SUCCESS (at central or on the bill) and no sale holds it: an `orphan_charge`, or `orphan_after_void` when only a
  void holds it — but only once it is *safe to say so* (`Rules`, `_Chain`), else it is counted as `awaiting`;
- a sale of the day holds a payment central has not paid, or never saw: `tender_not_paid`.

Nothing is stored: a check is recomputed from the tables each time (the day summary, the CLI, the periodic
watch), so running it again gives the same answer. An automatic refund (setting `payments_orphan_refund`) goes
through the gateway's refund path with an `out_refund_no` derived from the `out_trade_no` (`refund_number`): the
gateway answers a known number with the refund it already is and the provider refunds a number once, so a rerun,
or two central processes at once, never refund twice; and the refund row itself then shows in the next check.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from central import contract
from central.clock import utcnow
from central.config import Settings
from central.db import read_session
from central.errors import CentralError
from central.jobs import Periodic
from central.leases import Leases
from central.models import BillIssue, Payment, PaymentRefund, Transaction
from central.payments.reconcile import CHINA, day_bounds

log = logging.getLogger(__name__)

GENESIS = "0" * 64  # the prev_hash of a station's first journal row (agent/journal.py)
CHECK_DAYS = 7  # the periodic watch looks at today and the 6 days before (a store closed for days is caught up)
REFUND_PREFIX = "ORPH"
REFUND_REASON = "未找到对应的销售，自动退款"  # shown to the payer by the provider
ORPHANS = ("orphan_charge", "orphan_after_void")
NOT_PAID = ("FAILED", "REVERSED", "REVERSING")
_CHUNK = 200  # out_trade_nos per IN (...) query


def refund_number(out_trade_no: str) -> str:
    """The automatic refund's `out_refund_no`: the same for the same payment on every run, 32 characters."""
    return REFUND_PREFIX + hashlib.sha256(out_trade_no.encode("utf-8")).hexdigest()[:28]


@dataclass(frozen=True)
class Rules:
    """When a paid payment with no sale may be called an orphan (see `_Chain` for why both are needed):

    - `grace`: at least this long after central recorded it paid;
    - and the payment's station has pushed a sale or void journaled after it — by the till's clock at least
      `clock_margin` after the payment, received by central after it — with every row before that one at central.
    """

    grace: timedelta
    clock_margin: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> Rules:
        return cls(
            grace=timedelta(seconds=settings.payments_orphan_grace_seconds),
            clock_margin=timedelta(seconds=settings.payments_orphan_clock_margin_seconds),
        )


@dataclass(frozen=True)
class _Holder:
    """A sale or void transaction's tender that names an `out_trade_no`."""

    transaction_id: str
    kind: str
    station_id: str
    business_day: date
    tender_kind: str
    amount_fen: int


# --- the check -------------------------------------------------------------------------------------------------


def check_day(
    session, store_id: str, day: date, now: datetime, rules: Rules, station_id: str | None = None
) -> contract.PaymentsCheck:
    """The store's code payments of `day` against its sales (only `station_id`'s when given)."""
    start, end = day_bounds(day)
    payments_table = Payment.__table__
    ours = lambda station: station_id is None or station is None or station == station_id  # noqa: E731
    payments = {
        row.out_trade_no: row
        for row in session.execute(
            sa.select(payments_table).where(
                payments_table.c.store_id == store_id,
                payments_table.c.created_at >= start,
                payments_table.c.created_at < end,
            )
        )
    }
    issues = BillIssue.__table__
    billed = {
        row.out_trade_no: row
        for row in session.execute(
            sa.select(issues).where(
                issues.c.store_id == store_id, issues.c.day == day, issues.c.kind == "charged_not_paid_at_store"
            )
        )
        if row.out_trade_no not in payments or payments[row.out_trade_no].state != "SUCCESS"
    }
    rows = _transactions(session, store_id, day - timedelta(days=1), day + timedelta(days=1))
    holders = _holders(rows)

    # Paid payments and bill charges no sale of the nearby days holds: look further (a sale finished days later).
    loose = [otn for otn, p in payments.items() if p.state == "SUCCESS" and not _sales(holders.get(otn))]
    loose += [otn for otn in billed if not _sales(holders.get(otn))]
    if loose:
        for otn, found in _holders(_transactions_naming(session, store_id, day + timedelta(days=2), loose)).items():
            holders.setdefault(otn, []).extend(found)

    known = dict(payments)
    for otn in billed:
        if otn not in known and (row := _payment(session, otn)) is not None and row.store_id == store_id:
            known[otn] = row
    tendered = {otn for otn, found in holders.items() if _by_sale(found, day)}  # held by sales of the day
    missing = [otn for otn in tendered if otn not in known]
    for chunk in _chunks(missing):
        for row in session.execute(sa.select(payments_table).where(payments_table.c.out_trade_no.in_(chunk))):
            if row.store_id == store_id:
                known[row.out_trade_no] = row

    refunds = _refunds(session, [otn for otn, p in known.items() if p.state == "SUCCESS"])
    chains: dict[str, _Chain] = {}

    def safe_to_declare(payment) -> bool:
        settled = payment.finished_at or payment.updated_at
        if now - settled < rules.grace:
            return False
        chain = chains.get(payment.station_id)
        if chain is None:
            chain = chains[payment.station_id] = _Chain(session, store_id, payment.station_id, day - timedelta(days=1))
        return chain.pushed_past(settled, rules.clock_margin)

    paid: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    matched = awaiting = 0
    problems: list[contract.PaymentProblem] = []
    for otn, payment in sorted(payments.items()):
        if payment.state != "SUCCESS" or not ours(payment.station_id):
            continue
        totals = paid[payment.provider]
        totals[0] += 1
        totals[1] += payment.amount_fen
        found = holders.get(otn, [])
        if _sales(found):
            matched += 1
        elif not safe_to_declare(payment):
            awaiting += 1
        else:
            problems.append(_orphan(payment, found, refunds.get(otn, []), None))

    for otn, issue in sorted(billed.items()):
        found = holders.get(otn, [])
        payment = known.get(otn)
        if payment is not None and payment.state == "SUCCESS":
            continue  # paid at central since the bill was checked: checked as central's, on its own day
        if _sales(found) or not ours(payment.station_id if payment is not None else None):
            continue  # a sale holds it: a tender_not_paid below, when the sale is of this day
        # A payment central never saw was never answered paid, so no till can have a sale holding it: it is an
        # orphan at once. One central has (not paid now) waits like any other.
        if payment is not None and not safe_to_declare(payment):
            awaiting += 1
            continue
        problems.append(_orphan(payment, found, [], issue))

    problems += _tender_problems(holders, tendered, known, day, ours)
    problems.sort(key=lambda p: (p.station_id or "", p.out_trade_no, p.kind))
    return contract.PaymentsCheck(
        day=day,
        checked_at=now,
        grace_seconds=int(rules.grace.total_seconds()),
        paid={name: contract.ProviderPayments(count=c, paid_fen=f) for name, (c, f) in sorted(paid.items())},
        matched=matched,
        awaiting=awaiting,
        problems=problems,
    )


def _tender_problems(holders, tendered: set[str], known: dict, day: date, ours) -> list[contract.PaymentProblem]:
    """Sales of the day whose code tender central does not have paid, or paid for another amount."""
    problems = []
    for otn in sorted(tendered):
        for sale_id, tenders in _by_sale(holders[otn], day).items():
            first = tenders[0]
            if not ours(first.station_id):
                continue
            payment = known.get(otn)
            tender_fen = sum(t.amount_fen for t in tenders)
            if payment is None or payment.state != "SUCCESS":
                where = "central never saw this payment" if payment is None else f"central has it {payment.state}"
                problems.append(
                    contract.PaymentProblem(
                        kind="tender_not_paid",
                        out_trade_no=otn,
                        provider=payment.provider if payment else first.tender_kind,
                        station_id=first.station_id,
                        amount_fen=payment.amount_fen if payment else tender_fen,
                        tender_fen=tender_fen,
                        payment_state=payment.state if payment else None,
                        source="central",
                        transaction_id=sale_id,
                        reason=f"sale {sale_id} counts {tender_fen} fen paid by {first.tender_kind}, but {where}: "
                        "the store thinks it was paid; check the payment, take the money another way or undo the sale",
                    )
                )
            elif tender_fen != (charged := _charged(payment)):
                problems.append(
                    contract.PaymentProblem(
                        kind="amount_mismatch",
                        out_trade_no=otn,
                        provider=payment.provider,
                        station_id=first.station_id,
                        amount_fen=charged,
                        tender_fen=tender_fen,
                        payment_state=payment.state,
                        source="central",
                        transaction_id=sale_id,
                        reason=f"sale {sale_id} counts {tender_fen} fen, the customer was charged {charged} fen",
                    )
                )
    return problems


def _orphan(payment, found: list[_Holder], refunds: list[Any], issue) -> contract.PaymentProblem:
    """An orphan charge: `payment` central holds paid, or `issue`, the bill's charge central does not hold paid."""
    voids = [h for h in found if h.kind == "void"]
    kind = "orphan_after_void" if voids else "orphan_charge"
    via = f" (sale cancelled: void {voids[0].transaction_id})" if voids else ""
    if issue is None:
        amount = _charged(payment)
        ours = next((r for r in refunds if r.out_refund_no == refund_number(payment.out_trade_no)), None)
        refunded = sum(r.amount_fen for r in refunds if r.state != "FAILED")
        done = sum(r.amount_fen for r in refunds if r.state == "SUCCESS")
        if ours is not None and ours.state != "FAILED":
            refund_no, refund_state = ours.out_refund_no, ("PROCESSING" if ours.state == "PENDING" else ours.state)
        elif refunded >= amount:  # refunded in full some other way (a person, through the refund API)
            refund_no = [r for r in refunds if r.state != "FAILED"][-1].out_refund_no
            refund_state = "SUCCESS" if done >= amount else "PROCESSING"
        elif ours is not None:
            refund_no, refund_state = ours.out_refund_no, "FAILED"
        else:
            refund_no, refund_state = None, None
        if refund_state == "SUCCESS":
            then = "refunded to the customer"
        elif refund_state == "PROCESSING":
            then = "being refunded to the customer"
        elif refund_state == "FAILED":
            then = "the automatic refund was refused: refund it another way"
        elif refunded:
            then = f"{refunded} fen of it refunded: refund the rest, or find the sale"
        else:
            then = "refund it, or find the sale"
        what = "the reversal never happened" if voids else "no sale holds this payment"
        return contract.PaymentProblem(
            kind=kind,
            out_trade_no=payment.out_trade_no,
            provider=payment.provider,
            station_id=payment.station_id,
            amount_fen=amount,
            payment_state=payment.state,
            source="central",
            transaction_id=voids[0].transaction_id if voids else None,
            out_refund_no=refund_no,
            refund_state=refund_state,
            refunded_fen=refunded,
            reason=f"the customer was charged {amount} fen and {what}{via}: {then}",
        )
    where = "central never saw it" if payment is None else f"central has it {payment.state}"
    return contract.PaymentProblem(
        kind=kind,
        out_trade_no=issue.out_trade_no,
        provider=issue.provider,
        station_id=payment.station_id if payment is not None else None,
        amount_fen=issue.bill_amount_fen or 0,
        payment_state=payment.state if payment is not None else None,
        source="bill",
        transaction_id=voids[0].transaction_id if voids else None,
        reason=f"the {issue.provider} bill shows the customer charged {issue.bill_amount_fen} fen, {where} and no sale "
        f"holds it{via}: refund it at the provider",
    )


def _charged(payment) -> int:
    return payment.paid_amount_fen if payment.paid_amount_fen is not None else payment.amount_fen


def _sales(found: list[_Holder] | None) -> bool:
    return any(h.kind == "sale" for h in found or ())


def _by_sale(found: list[_Holder], day: date) -> dict[str, list[_Holder]]:
    sales: dict[str, list[_Holder]] = defaultdict(list)
    for holder in found:
        if holder.kind == "sale" and holder.business_day == day:
            sales[holder.transaction_id].append(holder)
    return sales


_HOLDER_COLUMNS = ("id", "kind", "station_id", "business_day", "body")


def _transactions(session, store_id: str, first: date, last: date) -> list[sa.Row]:
    table = Transaction.__table__
    return session.execute(
        sa.select(*(table.c[name] for name in _HOLDER_COLUMNS)).where(
            table.c.store_id == store_id,
            table.c.business_day >= first,
            table.c.business_day <= last,
            table.c.kind.in_(("sale", "void")),
        )
    ).all()


def _transactions_naming(session, store_id: str, since: date, otns: list[str]) -> list[sa.Row]:
    """Sales and voids from `since` on whose body mentions one of `otns` (then read properly by `_holders`)."""
    table = Transaction.__table__
    text = sa.cast(table.c.body, sa.Text)
    found: list[sa.Row] = []
    for chunk in _chunks(otns, 50):
        found += session.execute(
            sa.select(*(table.c[name] for name in _HOLDER_COLUMNS)).where(
                table.c.store_id == store_id,
                table.c.business_day >= since,
                table.c.kind.in_(("sale", "void")),
                sa.or_(*(text.contains(otn, autoescape=True) for otn in chunk)),
            )
        ).all()
    return found


def _holders(rows: Iterable[sa.Row]) -> dict[str, list[_Holder]]:
    holders: dict[str, list[_Holder]] = defaultdict(list)
    for row in rows:
        # Stored as sent, after ingestion read it as this same model: it reads again (a failure here is loud, never
        # a sale silently missing, which would make its payment look like an orphan).
        for tender in contract.TransactionBody.model_validate(row.body).tenders:
            if tender.out_trade_no:
                holders[tender.out_trade_no].append(
                    _Holder(row.id, row.kind, row.station_id, row.business_day, tender.kind, tender.amount_fen)
                )
    return holders


def _payment(session, out_trade_no: str) -> sa.Row | None:
    table = Payment.__table__
    return session.execute(sa.select(table).where(table.c.out_trade_no == out_trade_no)).first()


def _refunds(session, otns: list[str]) -> dict[str, list[sa.Row]]:
    table = PaymentRefund.__table__
    found: dict[str, list[sa.Row]] = defaultdict(list)
    for chunk in _chunks(otns):
        for row in session.execute(
            sa.select(table.c.out_trade_no, table.c.out_refund_no, table.c.state, table.c.amount_fen)
            .where(table.c.out_trade_no.in_(chunk))
            .order_by(table.c.created_at)
        ):
            found[row.out_trade_no].append(row)
    return found


def _chunks(items: list[str], size: int = _CHUNK) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --- is it safe to say no sale will come? ----------------------------------------------------------------------


class _Chain:
    """What central holds of one station's journal, to tell "no sale holds this payment" from "its sale has not
    arrived yet".

    Why a later row is not enough on its own. The agent pushes its outbox oldest first by journal `seq`
    (agent/sync.py `_next_batch`), a batch is one database transaction at central, and the next batch is read only
    after the answer to the previous one; so a row journaled later normally arrives with or after every earlier
    one. But not strictly: a row central *rejects* (or the agent finds unreadable) stays behind as `rejected` and
    the rows after it are sent all the same, and a till's `created_at` is its own clock. So a later row counts only
    when central holds the station's whole hash chain up to it: every journal row carries the hash of the previous
    row of its station (agent/journal.py), and here each `prev_hash` must be found at central back to the first
    row of the days looked at, whose predecessor must be at central too (or be the journal's start). A row missing
    anywhere in between — rejected, or not pushed yet — keeps every payment of the station `awaiting`.

    Why a later *sale or void* journaled after the payment means the payment's own sale is in that chain: a
    station holds one open sale at a time (agent/checkout.py), so the sale the payment was for ended (journaled as
    a sale, as a void, or not at all) before any sale opened after it could be journaled. A till clock running
    ahead could make an earlier row look later: `clock_margin` covers that, and the row must also have reached
    central after the payment was settled there (central's own clock).
    """

    def __init__(self, session, store_id: str, station_id: str, since: date):
        self.session = session
        self.store_id = store_id
        self.station_id = station_id
        self.since = since
        self.rows: list[sa.Row] = []
        self.by_hash: dict[str, sa.Row] = {}
        self.complete: dict[str, bool] = {GENESIS: True}  # hash -> every row up to and including it is at central
        # The days around the payment first (the later row is nearly always there), the rest only when needed.
        self._load(since, since + timedelta(days=2))
        self._loaded_all = False

    def _load(self, first: date, last: date | None) -> None:
        table = Transaction.__table__
        query = sa.select(table.c.kind, table.c.created_at, table.c.received_at, table.c.prev_hash, table.c.hash).where(
            table.c.store_id == self.store_id, table.c.station_id == self.station_id, table.c.business_day >= first
        )
        if last is not None:
            query = query.where(table.c.business_day <= last)
        rows = self.session.execute(query).all()
        self.rows = sorted([*self.rows, *rows], key=lambda row: row.created_at)
        self.by_hash.update((row.hash, row) for row in rows)

    def pushed_past(self, settled: datetime, margin: timedelta) -> bool:
        while True:
            for row in self.rows:
                if row.kind in ("sale", "void") and row.created_at >= settled + margin and row.received_at >= settled:
                    if self._complete(row):
                        return True
            if self._loaded_all:
                return False
            self._load(self.since + timedelta(days=3), None)
            self._loaded_all = True

    def _complete(self, row) -> bool:
        path: list[str] = []
        current = row
        while True:
            if current.hash in self.complete:
                answer = self.complete[current.hash]
                break
            path.append(current.hash)
            previous = current.prev_hash
            if previous in self.complete:
                answer = self.complete[previous]
                break
            before = self.by_hash.get(previous)
            if before is None or before.hash in path:
                answer = before is None and self._held_earlier(previous)
                self.complete[previous] = answer
                break
            current = before
        for link in path:
            self.complete[link] = answer
        return answer

    def _held_earlier(self, row_hash: str) -> bool:
        """The row before the first one looked at is at central (from a day before `since`)."""
        table = Transaction.__table__
        return (
            self.session.execute(
                sa.select(table.c.id)
                .where(
                    table.c.store_id == self.store_id,
                    table.c.station_id == self.station_id,
                    table.c.business_day < self.since,
                    table.c.hash == row_hash,
                )
                .limit(1)
            ).first()
            is not None
        )


# --- acting on it ------------------------------------------------------------------------------------------------


def refundable(problem: contract.PaymentProblem) -> bool:
    """An orphan central holds paid, with no refund of any kind yet: the one case refunded automatically."""
    return (
        problem.kind in ORPHANS
        and problem.source == "central"
        and problem.payment_state == "SUCCESS"
        and problem.out_refund_no is None
        and problem.refunded_fen == 0
    )


async def refund_orphans(gateway, store_id: str, check: contract.PaymentsCheck) -> int:
    """Refund every refundable orphan of `check` through the gateway; how many refunds were asked for."""
    asked = 0
    for problem in check.problems:
        if not refundable(problem):
            continue
        request = contract.RefundRequest(
            out_refund_no=refund_number(problem.out_trade_no), amount_fen=problem.amount_fen, reason=REFUND_REASON
        )
        try:
            refund, created = await gateway.refund(store_id, problem.out_trade_no, request)
        except CentralError as exc:  # reversed or refunded meanwhile, provider gone: the next check shows it
            log.warning("orphan charge %s of store %s: not refunded (%s)", problem.out_trade_no, store_id, exc.message)
            continue
        asked += 1
        log.warning(
            "orphan charge %s of store %s: %d fen %s (refund %s, %s)",
            problem.out_trade_no,
            store_id,
            problem.amount_fen,
            "refund asked" if created else "refund already asked",
            refund.out_refund_no,
            refund.state,
        )
    return asked


def stores_to_check(session, days: list[date]) -> list[tuple[str, date]]:
    """(store, day) pairs with code payments or bill charges on those days, oldest day first."""
    payments, issues = Payment.__table__, BillIssue.__table__
    pairs: set[tuple[str, date]] = set()
    for day in days:
        start, end = day_bounds(day)
        for store_id in session.execute(
            sa.select(payments.c.store_id).where(payments.c.created_at >= start, payments.c.created_at < end).distinct()
        ).scalars():
            pairs.add((store_id, day))
    for store_id, day in session.execute(
        sa.select(issues.c.store_id, issues.c.day)
        .where(issues.c.day.in_(days), issues.c.store_id.is_not(None), issues.c.kind == "charged_not_paid_at_store")
        .distinct()
    ):
        pairs.add((store_id, day))
    return sorted(pairs, key=lambda pair: (pair[1], pair[0]))


class OrphanWatch:
    """Checks the last `CHECK_DAYS` days of every store with code payments every `interval` seconds, in the one
    process running the job (central/jobs.py), next to its gateway (whose refund path it uses); refunds orphans when
    `refund` is set, else logs each once for a person (and the day summaries show them)."""

    def __init__(
        self,
        engine: sa.Engine,
        gateway,
        rules: Rules,
        *,
        refund: bool,
        interval: float,
        clock=utcnow,
        leases: Leases | None = None,
    ):
        self.engine = engine
        self.gateway = gateway
        self.rules = rules
        self.refund = refund
        self.interval = interval
        self.clock = clock
        self._job = Periodic("payment-orphans", self.run_once, interval, leases) if interval > 0 else None
        self._told: set[tuple[str, str, str | None]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None  # the gateway's loop (tests run a round on it)

    @classmethod
    def from_settings(cls, settings: Settings, engine: sa.Engine, gateway, leases: Leases | None = None) -> OrphanWatch:
        return cls(
            engine,
            gateway,
            Rules.from_settings(settings),
            refund=settings.payments_orphan_refund,
            interval=settings.payments_orphan_check_seconds,
            leases=leases,
        )

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        if self._job is not None:
            self._job.start()

    async def stop(self) -> None:
        if self._job is not None:
            await self._job.stop()

    async def run_once(self) -> list[tuple[str, contract.PaymentsCheck]]:
        """One round over every store and day to check; the checks, after any refunds it asked for."""
        now = self.clock()
        today = now.astimezone(CHINA).date()
        days = [today - timedelta(days=n) for n in range(CHECK_DAYS)]
        results = []
        for store_id, day in await asyncio.to_thread(self._pairs, days):
            check = await asyncio.to_thread(self._check, store_id, day, now)
            if self.refund and any(refundable(p) for p in check.problems):
                await refund_orphans(self.gateway, store_id, check)
                check = await asyncio.to_thread(self._check, store_id, day, now)
            self._tell(store_id, check)
            results.append((store_id, check))
        return results

    def _pairs(self, days: list[date]) -> list[tuple[str, date]]:
        with read_session(self.engine) as session:
            return stores_to_check(session, days)

    def _check(self, store_id: str, day: date, now: datetime) -> contract.PaymentsCheck:
        with read_session(self.engine) as session:
            return check_day(session, store_id, day, now, self.rules)

    def _tell(self, store_id: str, check: contract.PaymentsCheck) -> None:
        """Log each problem once per process (and again when its refund state changes)."""
        for problem in check.problems:
            key = (problem.out_trade_no, problem.kind, problem.refund_state)
            if key not in self._told:
                self._told.add(key)
                log.warning(
                    "payments reconciliation: store %s %s %s %s, %d fen: %s",
                    store_id,
                    check.day,
                    problem.kind,
                    problem.out_trade_no,
                    problem.amount_fen,
                    problem.reason,
                )
