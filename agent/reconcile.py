"""Day-end reconciliation: does central hold exactly the transactions this station journaled for a business day,
and does every code payment of the day belong to a sale?

The store's side is computed from the journal with the same digest central uses (central/contract.py,
DaySummary): SHA-256 over "id:total_fen" lines sorted by id. What central lacks is queued again (unless the
row was rejected, which needs a person); what central has that the store lacks, and rows whose amounts or points
differ, are reported. Central's summary also carries its check of the station's code payments (`payments`): a
customer charged with no sale holding the payment (an orphan charge), a void whose payment is still paid, a sale
whose payment central does not have paid, an amount that differs — each reported, and the day is not matched.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import date

import sqlalchemy as sa

from agent import journal
from agent.central_client import CentralClient
from agent.clock import utcnow
from agent.db import reader
from central.contract import DaySummary, PaymentsCheck

COMPARED = ("total_fen", "points_earned", "points_redeemed")


def day_digest(rows: list[tuple[str, int]]) -> str:
    """The digest of a day's (id, total_fen) rows, as central computes it."""
    return hashlib.sha256("\n".join(f"{i}:{total}" for i, total in sorted(rows)).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Mismatch:
    id: str
    field: str
    store: int
    central: int


@dataclass(frozen=True)
class PaymentIssue:
    """A code payment that does not add up with the sales (contract.PaymentProblem): what, which, how much, why."""

    kind: str
    out_trade_no: str
    provider: str
    amount_fen: int
    reason: str
    tender_fen: int | None = None
    payment_state: str | None = None
    transaction_id: str | None = None
    out_refund_no: str | None = None
    refund_state: str | None = None


@dataclass
class Reconciliation:
    business_day: date
    station_id: str
    store_count: int
    central_count: int
    store_total_fen: int
    central_total_fen: int
    store_digest: str
    central_digest: str
    missing_at_central: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    awaiting_push: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    missing_at_store: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    payments_checked: bool = False  # false against a central that does not check payments
    payments_paid: dict[str, dict[str, int]] = field(default_factory=dict)  # provider -> {count, paid_fen}
    payments_awaiting: int = 0  # paid, no sale yet, still within central's grace: not a problem (yet)
    payment_problems: list[PaymentIssue] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return (
            self.store_digest == self.central_digest
            and not self.mismatched
            and not self.missing_at_store
            and not self.payment_problems
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "business_day": self.business_day.isoformat(), "matched": self.matched}


async def reconcile(engine: sa.Engine, client: CentralClient, station_id: str, business_day: date) -> Reconciliation:
    central = await client.day_summary(business_day, station_id)
    return compare_and_requeue(engine, station_id, business_day, central)


def compare_and_requeue(engine: sa.Engine, station_id: str, business_day: date, central: DaySummary) -> Reconciliation:
    with reader(engine) as connection:
        rows = journal.day_rows(connection, station_id, business_day)
    store = {row.id: row for row in rows}
    theirs = {t.id: t for t in central.transactions}
    result = Reconciliation(
        business_day=business_day,
        station_id=station_id,
        store_count=len(store),
        central_count=central.count,
        store_total_fen=sum(row.total_fen for row in rows),
        central_total_fen=central.total_fen,
        store_digest=day_digest([(row.id, row.total_fen) for row in rows]),
        central_digest=central.digest,
        missing_at_store=sorted(set(theirs) - set(store)),
    )
    if central.payments is not None:
        _take_payments(result, central.payments)
    for transaction_id in sorted(set(store) - set(theirs)):
        result.missing_at_central.append(transaction_id)
        status = store[transaction_id].status
        {"pending": result.awaiting_push, "rejected": result.rejected}.get(status, result.requeued).append(
            transaction_id
        )
    for transaction_id in sorted(set(store) & set(theirs)):
        for name in COMPARED:
            ours, central_value = getattr(store[transaction_id], name), getattr(theirs[transaction_id], name)
            if ours != central_value:
                result.mismatched.append(Mismatch(transaction_id, name, ours, central_value))
    if result.requeued:
        # Central lost rows it had accepted (a restore, say): send them again; it answers them on their merits.
        with engine.begin() as connection:
            journal.requeue(connection, result.requeued, utcnow())
    return result


def _take_payments(result: Reconciliation, check: PaymentsCheck) -> None:
    result.payments_checked = True
    result.payments_paid = {name: {"count": p.count, "paid_fen": p.paid_fen} for name, p in check.paid.items()}
    result.payments_awaiting = check.awaiting
    result.payment_problems = [
        PaymentIssue(
            kind=p.kind,
            out_trade_no=p.out_trade_no,
            provider=p.provider,
            amount_fen=p.amount_fen,
            reason=p.reason,
            tender_fen=p.tender_fen,
            payment_state=p.payment_state,
            transaction_id=p.transaction_id,
            out_refund_no=p.out_refund_no,
            refund_state=p.refund_state,
        )
        for p in check.problems
    ]
