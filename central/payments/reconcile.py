"""Settlement-bill reconciliation: a provider's bill for one day against the payments central holds.

The bill is the provider's truth about money that moved. Each of its orders is matched to a payment by
`out_trade_no`, and three differences are flagged for a person to settle:

- `charged_not_paid_at_store`: the bill shows the customer charged, central has the payment as not paid (or
  has never heard of it). The classic loss of code payment: the customer paid after the till gave up. Refund it
  at the provider, or settle the sale.
- `missing_from_bill`: central has it paid, the bill does not (not on it, or shown reversed).
- `amount_mismatch`: both have it paid, for different amounts.

Refund rows are not matched against central's refunds. An order with only refund rows on the day (a refund of
an earlier day's payment) is left out; an order whose refund rows give back all it was charged, and that central
does not have paid, counts as given back (that is how Alipay books the cancel of a paid trade).

The day is the provider's: a Beijing (UTC+8) calendar day, by payment time. Every run replaces the previous
result for that provider and day, so it can run again once a late bill is complete. Works for any provider
whose client returns `BillRow`s (WeChat's downloadbill; Alipay's bill where its client provides it).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

import sqlalchemy as sa

from central import contract
from central.db import write_session
from central.models import BillCheck, BillIssue, Payment, Store
from central.payments.provider import BillRow, Provider

CHINA = timezone(timedelta(hours=8))


@dataclass(frozen=True)
class Reconciliation:
    provider: str
    day: date
    bill_rows: int
    matched: int
    issues: list[contract.BillIssue]


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(), CHINA)
    return start, start + timedelta(days=1)


async def reconcile(engine: sa.Engine, name: str, provider: Provider, day: date, now: datetime) -> Reconciliation:
    """Fetch `provider`'s bill for `day`, compare, store the result; ProviderError when the bill cannot be had."""
    import asyncio

    rows = await provider.bill(day)
    return await asyncio.to_thread(check, engine, name, day, rows, now)


def check(engine: sa.Engine, name: str, day: date, rows: list[BillRow], now: datetime) -> Reconciliation:
    bill: dict[str, list[BillRow]] = defaultdict(list)
    for row in rows:
        bill[row.out_trade_no].append(row)
    bill = {otn: lines for otn, lines in bill.items() if any(line.status != "REFUND" for line in lines)}
    start, end = day_bounds(day)
    table = Payment.__table__
    issues: list[contract.BillIssue] = []
    matched = 0
    with write_session(engine) as session:
        known = {
            row.out_trade_no: row
            for row in session.execute(
                sa.select(table).where(
                    table.c.provider == name,
                    sa.or_(
                        table.c.out_trade_no.in_(list(bill)) if bill else sa.false(),
                        sa.and_(
                            sa.func.coalesce(table.c.paid_at, table.c.created_at) >= start,
                            sa.func.coalesce(table.c.paid_at, table.c.created_at) < end,
                        ),
                    ),
                )
            )
        }
        stores = set(session.execute(sa.select(Store.__table__.c.id)).scalars())

        def issue(
            otn: str,
            kind: str,
            detail: str,
            payment=None,
            billed: int | None = None,
            trade_no: str | None = None,
            device: str | None = None,
        ) -> None:
            store_id = payment.store_id if payment is not None else _store_of(device, stores)
            issues.append(
                contract.BillIssue(
                    provider=name,
                    day=day,
                    out_trade_no=otn,
                    kind=kind,
                    store_state=payment.state if payment is not None else None,
                    store_amount_fen=payment.amount_fen if payment is not None else None,
                    bill_amount_fen=billed,
                    provider_trade_no=trade_no,
                    detail=detail,
                )
            )
            issue_stores[otn] = store_id

        issue_stores: dict[str, str | None] = {}
        for otn, lines in sorted(bill.items()):
            payment = known.get(otn)
            paid = [line for line in lines if line.status == "SUCCESS"]
            reversed_ = any(line.status == "REVOKED" for line in lines)
            billed = sum(line.amount_fen for line in paid) if paid else None
            given_back = (
                billed is not None and sum(line.amount_fen for line in lines if line.status == "REFUND") >= billed
            )
            charged = (
                bool(paid) and not reversed_ and not (given_back and (payment is None or payment.state != "SUCCESS"))
            )
            first = lines[0]
            if charged and (payment is None or payment.state != "SUCCESS"):
                where = "central has no such payment" if payment is None else f"central has it {payment.state}"
                issue(
                    otn,
                    "charged_not_paid_at_store",
                    f"the customer was charged but {where}: refund it, or settle the sale",
                    payment,
                    billed,
                    first.provider_trade_no,
                    first.device,
                )
            elif charged and billed != payment.amount_fen:
                issue(
                    otn,
                    "amount_mismatch",
                    f"the bill shows {billed} fen paid, central {payment.amount_fen} fen",
                    payment,
                    billed,
                    first.provider_trade_no,
                )
            elif not charged and payment is not None and payment.state == "SUCCESS":
                issue(
                    otn,
                    "missing_from_bill",
                    "the bill shows this order reversed, central has it paid",
                    payment,
                    None,
                    first.provider_trade_no,
                )
            else:
                matched += 1
        for otn, payment in sorted(known.items()):
            if (
                otn not in bill
                and payment.state == "SUCCESS"
                and payment.paid_at is not None
                and start <= payment.paid_at < end
            ):
                issue(
                    otn,
                    "missing_from_bill",
                    "central has it paid, the bill does not show it: ask the provider",
                    payment,
                    None,
                    payment.provider_trade_no,
                )

        checks, problems = BillCheck.__table__, BillIssue.__table__
        session.execute(sa.delete(problems).where(problems.c.provider == name, problems.c.day == day))
        session.execute(sa.delete(checks).where(checks.c.provider == name, checks.c.day == day))
        session.execute(
            sa.insert(checks).values(
                provider=name, day=day, checked_at=now, bill_rows=len(rows), matched=matched, issues=len(issues)
            )
        )
        if issues:
            session.execute(
                sa.insert(problems),
                [
                    dict(
                        provider=name,
                        day=day,
                        out_trade_no=i.out_trade_no,
                        store_id=issue_stores.get(i.out_trade_no),
                        kind=i.kind,
                        store_state=i.store_state,
                        store_amount_fen=i.store_amount_fen,
                        bill_amount_fen=i.bill_amount_fen,
                        provider_trade_no=i.provider_trade_no,
                        detail=i.detail[:256],
                    )
                    for i in issues
                ],
            )
        session.commit()
    return Reconciliation(name, day, len(rows), matched, issues)


def _store_of(device: str | None, stores: set[str]) -> str | None:
    """WeChat's device_info is `<store>-<station>` (see the client): the store of an order central never saw."""
    if not device:
        return None
    candidate = device.rsplit("-", 1)[0]
    return candidate if candidate in stores else None


def payment_day(session, store_id: str, day: date, check: contract.PaymentsCheck | None = None) -> contract.PaymentDay:
    """The store's payments of a (China) day, the issues the bill checks found for it, and `check`, which of them
    match no sale (central/payments/orphans.py)."""
    start, end = day_bounds(day)
    table = Payment.__table__
    counts: dict[str, int] = {}
    paid: dict[str, int] = {}
    for provider, state, count, total in session.execute(
        sa.select(table.c.provider, table.c.state, sa.func.count(), sa.func.sum(table.c.amount_fen))
        .where(table.c.store_id == store_id, table.c.created_at >= start, table.c.created_at < end)
        .group_by(table.c.provider, table.c.state)
    ):
        counts[state] = counts.get(state, 0) + count
        if state == "SUCCESS":
            paid[provider] = paid.get(provider, 0) + int(total)
    checks, problems = BillCheck.__table__, BillIssue.__table__
    bill_checks = [
        contract.BillCheck(
            provider=r.provider,
            day=r.day,
            checked_at=r.checked_at,
            bill_rows=r.bill_rows,
            matched=r.matched,
            issues=r.issues,
        )
        for r in session.execute(sa.select(checks).where(checks.c.day == day).order_by(checks.c.provider))
    ]
    issues = [
        contract.BillIssue(
            provider=r.provider,
            day=r.day,
            out_trade_no=r.out_trade_no,
            kind=r.kind,
            store_state=r.store_state,
            store_amount_fen=r.store_amount_fen,
            bill_amount_fen=r.bill_amount_fen,
            provider_trade_no=r.provider_trade_no,
            detail=r.detail,
        )
        for r in session.execute(
            sa.select(problems)
            .where(problems.c.day == day, problems.c.store_id == store_id)
            .order_by(problems.c.provider, problems.c.out_trade_no)
        )
    ]
    return contract.PaymentDay(
        store_id=store_id,
        business_day=day,
        paid_fen=dict(sorted(paid.items())),
        counts=dict(sorted(counts.items())),
        bill_checks=bill_checks,
        issues=issues,
        check=check,
    )
