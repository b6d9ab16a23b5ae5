"""What must hold after a chaos run, checked from the parties' own records once everything has drained: central's
database, the payment simulators' ledgers (`GET /_sim/records`), the agent's database (read-only) and what the
driver was told. Each failed rule is one `Violation` of a kind named in `KINDS`."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.driver import Driver
from tests.chaos.stack import STATION_ID, Stack

KINDS = {
    "told_paid_not_at_central": "a sale the till said was paid is not at central exactly once, as told",
    "kept_payment_without_sale": "the provider kept a payment that no journaled sale holds",
    "charged_twice": "a customer charged twice for one sale",
    "kept_differs_from_journal": "what the provider kept differs from the sale's tender less journaled refunds",
    "refund_without_record": "the provider refunded money that no journaled refund holds",
    "orphan_charge_refunded_later": "a payment no sale holds, refunded afterwards (charged without a sale meanwhile)",
    "journaled_refund_not_made": "a journaled code refund the provider never made",
    "points_mismatch": "a member's points at central differ from the points of the ingested sales and refunds",
    "journal_broken": "`pos-edge journal verify` failed",
    "receipt_missing": "a journaled sale or refund without exactly one receipt printed or waiting for a person",
    "outbox_not_drained": "journal rows still waiting for central (or rejected) after the drain",
    "payments_not_final": "payments or refunds still in progress at central after the drain",
    "till_work_unfinished": "sales, refunds or receipts still in progress at the till after the drain",
    "reconcile_different": "`pos-edge reconcile` does not match for a business day",
    "reconcile_payment_problems": "`pos-edge reconcile` reports code payments that do not add up with the sales",
    "secret_leaked": "an auth code, token or phone number in a log line, receipt or unhashed database column",
    "agent_answered_5xx": "the agent answered 500 to a request of the driver",
    "run_failed": "a process would not start again, or the run itself failed",
}
CODE_TENDERS = ("wechat", "alipay")


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str


@dataclass
class Findings:
    violations: list[Violation] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)

    def add(self, kind: str, detail: str) -> None:
        assert kind in KINDS, kind
        self.violations.append(Violation(kind, detail))

    def count(self, kind: str) -> int:
        return sum(1 for v in self.violations if v.kind == kind)


@contextmanager
def read_only(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection that can only read (the processes may still be writing), closed after use."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    connection.row_factory = sqlite3.Row
    try:
        yield connection
    finally:
        connection.close()


def open_at_central(central_db: Path) -> list[str]:
    """Payments and refunds central still drives: not in a state the gateway itself calls final."""
    from central.payments.gateway import FINAL, REFUND_FINAL

    with read_only(central_db) as db:
        payments = db.execute(
            f"SELECT out_trade_no, state FROM payment WHERE state NOT IN ({','.join('?' * len(FINAL))})", FINAL
        ).fetchall()
        refunds = db.execute(
            f"SELECT out_refund_no, state FROM payment_refund WHERE state NOT IN ({','.join('?' * len(REFUND_FINAL))})",
            REFUND_FINAL,
        ).fetchall()
    return [f"payment {r[0]} {r[1]}" for r in payments] + [f"refund {r[0]} {r[1]}" for r in refunds]


# --- the providers' side ---------------------------------------------------------------------------------------


@dataclass
class ProviderOrder:
    provider: str
    out_trade_no: str
    auth_code: str
    amount_fen: int
    charged: bool  # the customer paid it at some point
    reversed_fen: int  # given back by a reversal (cancel) of a paid order
    refunds: dict[str, int] = field(default_factory=dict)  # out_refund_no -> fen

    @property
    def kept_fen(self) -> int:
        """What the provider holds of the customer's money now."""
        return (self.amount_fen if self.charged else 0) - self.reversed_fen - sum(self.refunds.values())


def provider_orders(wechat: dict, alipay: dict) -> dict[str, ProviderOrder]:
    orders: dict[str, ProviderOrder] = {}
    for o in wechat["orders"]:
        paid_then_reversed = o["state"] == "REVOKED" and o["paid_before_reverse"]
        orders[o["out_trade_no"]] = ProviderOrder(
            "wechat",
            o["out_trade_no"],
            o["auth_code"],
            o["amount_fen"],
            o["state"] == "SUCCESS" or paid_then_reversed,
            o["amount_fen"] if paid_then_reversed else 0,
        )
    for r in wechat["refunds"]:
        orders[r["out_trade_no"]].refunds[r["out_refund_no"]] = r["amount_fen"]
    for o in alipay["orders"]:
        cancelled_after_paying = o["cancel_action"] == "refund" or o["refunded_at"] is not None
        orders[o["out_trade_no"]] = ProviderOrder(
            "alipay",
            o["out_trade_no"],
            o["auth_code"],
            o["amount_fen"],
            o["paid_at"] is not None,
            o["amount_fen"] if cancelled_after_paying else 0,
        )
    for r in alipay["refunds"]:
        orders[r["out_trade_no"]].refunds[r["out_request_no"]] = r["amount_fen"]
    return orders


# --- the checks ------------------------------------------------------------------------------------------------


@dataclass
class JournalRow:
    id: str
    kind: str
    business_day: str
    member_id: str | None
    total_fen: int
    points_earned: int
    points_redeemed: int
    body: dict


def journal_rows(agent_db: Path) -> list[JournalRow]:
    with read_only(agent_db) as db:
        rows = db.execute(
            "SELECT id, kind, business_day, member_id, total_fen, points_earned, points_redeemed, body FROM journal ORDER BY seq"
        ).fetchall()
    return [JournalRow(*row[:7], json.loads(row[7])) for row in rows]


def check_all(stack: Stack, driver: Driver, findings: Findings) -> None:
    journal = journal_rows(stack.agent_db)
    orders = provider_orders(stack.sim_records("wechat"), stack.sim_records("alipay"))
    findings.figures["provider_orders"] = len(orders)
    findings.figures["provider_refunds"] = sum(len(o.refunds) for o in orders.values())
    timings = {}
    for check, args in (
        (check_told, (stack, driver, journal)),
        (check_money, (driver, journal, orders)),
        (check_points, (stack,)),
        (check_journal_verifies, (stack,)),
        (check_receipts, (stack, journal)),
        (check_reconcile, (stack, journal)),
        (check_secrets, (stack, driver)),
    ):
        started = time.monotonic()
        check(*args, findings)
        timings[check.__name__] = round(time.monotonic() - started, 1)
    findings.figures["check_seconds"] = timings
    for error in driver.server_errors:
        findings.add("agent_answered_5xx", error)
    payer_sales = [
        (s, row)
        for s in driver.sales
        if s.payer and s.outcome == "told_paid"
        for row in journal
        if row.id == s.transaction_id
    ]
    findings.figures["payer_identified"] = (
        sum(1 for s, row in payer_sales if row.member_id == stack.payer_members.get(s.payer)),
        len(payer_sales),
    )


def check_told(stack: Stack, driver: Driver, journal: list[JournalRow], findings: Findings) -> None:
    """Every sale (and refund) the till said was done is journaled and at central exactly once, as told."""
    ours = {row.id: row for row in journal}
    with read_only(stack.central_db) as db:
        theirs = {row["id"]: row for row in db.execute("SELECT id, kind, total_fen FROM store_transaction")}
    for sale in driver.sales:
        if sale.outcome != "told_paid":
            continue
        central = theirs.get(sale.transaction_id)
        if sale.transaction_id not in ours:
            findings.add(
                "told_paid_not_at_central",
                f"sale #{sale.n} {sale.transaction_id}: told paid, but not in the till's journal",
            )
        elif central is None:
            findings.add("told_paid_not_at_central", f"sale #{sale.n} {sale.transaction_id}: told paid, not at central")
        elif central["kind"] != "sale" or central["total_fen"] != sale.amount_due_fen:
            findings.add(
                "told_paid_not_at_central",
                f"sale #{sale.n} {sale.transaction_id}: told {sale.amount_due_fen} fen, central holds "
                f"a {central['kind']} of {central['total_fen']} fen",
            )
    for refund in driver.refunds:
        if refund.outcome == "told_refunded" and (refund.refund_id not in ours or refund.refund_id not in theirs):
            where = "the till's journal" if refund.refund_id not in ours else "central"
            findings.add(
                "told_paid_not_at_central", f"refund #{refund.n} {refund.refund_id}: told refunded, not in {where}"
            )


def check_money(
    driver: Driver, journal: list[JournalRow], orders: dict[str, ProviderOrder], findings: Findings
) -> None:
    """Money at the providers against the journal: what each payment kept, each refund, each customer."""
    sold: dict[str, int] = defaultdict(int)  # out_trade_no -> fen in journaled sales
    refunded: dict[str, int] = defaultdict(int)  # out_trade_no -> fen in journaled refunds
    journaled_refunds: dict[str, tuple[str, str]] = {}  # out_refund_no -> (refund id, out_trade_no)
    sale_tenders: dict[str, set[str]] = defaultdict(set)  # sale id -> its out_trade_nos
    for row in journal:
        for tender in row.body.get("tenders", []):
            if tender.get("kind") not in CODE_TENDERS or not tender.get("out_trade_no"):
                continue
            if row.kind == "sale":
                sold[tender["out_trade_no"]] += tender["amount_fen"]
                sale_tenders[row.id].add(tender["out_trade_no"])
            elif row.kind == "refund":
                refunded[tender["out_trade_no"]] += tender["amount_fen"]
                journaled_refunds[tender.get("out_refund_no", "")] = (row.id, tender["out_trade_no"])
    for out_trade_no in sorted(set(orders) | set(sold)):
        order = orders.get(out_trade_no)
        kept = order.kept_fen if order else 0
        if out_trade_no in sold:
            expected = sold[out_trade_no] - refunded[out_trade_no]
            if kept != expected:
                findings.add(
                    "kept_differs_from_journal",
                    f"{out_trade_no}: the provider keeps {kept} fen, the journal says {expected} "
                    f"({sold[out_trade_no]} sold, {refunded[out_trade_no]} refunded)",
                )
        elif kept > 0:
            findings.add(
                "kept_payment_without_sale", f"{order.provider} {out_trade_no}: {kept} fen kept, in no journaled sale"
            )
    made_refunds = set()
    for order in orders.values():
        for out_refund_no, fen in order.refunds.items():
            made_refunds.add(out_refund_no)
            if out_refund_no in journaled_refunds:
                continue
            kind = "refund_without_record" if order.out_trade_no in sold else "orphan_charge_refunded_later"
            findings.add(
                kind,
                f"{order.provider} refund {out_refund_no} of {order.out_trade_no}: {fen} fen, in no journaled refund",
            )
    for out_refund_no, (refund_id, out_trade_no) in journaled_refunds.items():
        if out_refund_no not in made_refunds:
            findings.add(
                "journaled_refund_not_made",
                f"refund {refund_id}: {out_refund_no} of {out_trade_no} is not at the provider",
            )
    by_code = {order.auth_code: order for order in orders.values() if order.auth_code}
    journaled = {row.id for row in journal if row.kind == "sale"}
    for sale in driver.sales:
        kept = [by_code[code] for code in sale.auth_codes if code in by_code and by_code[code].kept_fen > 0]
        extra = [order for order in kept if order.out_trade_no not in sale_tenders.get(sale.session_id or "", set())]
        if extra and (sale.session_id in journaled or len(kept) > 1):
            paid = "journaled" if sale.session_id in journaled else "not journaled"
            findings.add(
                "charged_twice",
                f"sale #{sale.n} ({sale.kind}, {paid}, {sale.outcome}): {len(kept)} payment(s) kept, "
                + ", ".join(f"{o.out_trade_no} {o.kept_fen} fen" for o in extra)
                + " beyond the sale",
            )


def check_points(stack: Stack, findings: Findings) -> None:
    """Each member's ledger at central against the points of the transactions central ingested."""
    with read_only(stack.central_db) as db:
        rows = db.execute(
            "SELECT id, kind, member_id, points_earned, points_redeemed FROM store_transaction WHERE member_id IS NOT NULL"
        ).fetchall()
        ledger = db.execute("SELECT member_id, kind, points, transaction_id FROM ledger_entry").fetchall()
    expected: dict[str, int] = defaultdict(int)
    ids = set()
    for row in rows:
        ids.add(row["id"])
        if row["kind"] == "sale":
            expected[row["member_id"]] += row["points_earned"] - row["points_redeemed"]
        else:  # a refund or void gives points back the other way
            expected[row["member_id"]] += -abs(row["points_earned"]) + abs(row["points_redeemed"])
    booked: dict[str, int] = defaultdict(int)
    for entry in ledger:
        if entry["transaction_id"] in ids:
            booked[entry["member_id"]] += entry["points"]
        elif entry["kind"] in ("earn", "redeem"):
            findings.add(
                "points_mismatch",
                f"ledger entry {entry['kind']} {entry['points']} for {entry['member_id']}: transaction "
                f"{entry['transaction_id']} is not at central",
            )
    for member in sorted(set(expected) | set(booked)):
        if expected[member] != booked[member]:
            findings.add(
                "points_mismatch", f"member {member}: ledger {booked[member]:+d}, transactions {expected[member]:+d}"
            )
    findings.figures["members_with_points_moved"] = len(expected)


def check_journal_verifies(stack: Stack, findings: Findings) -> None:
    done = stack.cli("pos-edge", "journal", "verify", "--config", str(stack.agent_config))
    findings.figures["journal_verify"] = (done.stdout or done.stderr).strip()
    if done.returncode != 0:
        findings.add("journal_broken", (done.stderr or done.stdout).strip()[:300])


def check_receipts(stack: Stack, journal: list[JournalRow], findings: Findings) -> None:
    with read_only(stack.agent_db) as db:
        jobs = db.execute("SELECT journal_id, purpose, status FROM print_job").fetchall()
    by_row: dict[tuple[str, str], list[str]] = defaultdict(list)
    for job in jobs:
        by_row[(job["journal_id"], job["purpose"])].append(job["status"])
    for row in journal:
        if row.kind not in ("sale", "refund"):
            continue
        purpose = "receipt" if row.kind == "sale" else "refund"
        statuses = by_row.get((row.id, purpose), [])
        good = [s for s in statuses if s in ("printed", "uncertain")]
        if len(good) != 1 or len(statuses) != 1:
            findings.add("receipt_missing", f"{row.kind} {row.id}: {purpose} print jobs {statuses or 'none'}")
    findings.figures["receipts_uncertain"] = sum(1 for job in jobs if job["status"] == "uncertain")


def check_reconcile(stack: Stack, journal: list[JournalRow], findings: Findings) -> None:
    days = sorted({row.business_day for row in journal})
    findings.figures["business_days"] = ", ".join(days)
    for day in days:
        done = stack.cli("pos-edge", "reconcile", "--day", day, "--json", "--config", str(stack.agent_config))
        try:
            result = json.loads(done.stdout)
        except ValueError:
            findings.add(
                "reconcile_different",
                f"{day}: exit {done.returncode}, no JSON: {(done.stderr or done.stdout).strip()[:300]}",
            )
            continue
        payments = dict(_payment_reports(result))
        for key, value in payments.items():
            for problem in value:
                findings.add(
                    "reconcile_payment_problems", f"{day} {key}: {json.dumps(problem, ensure_ascii=False)[:300]}"
                )
        differences = {k: v for k, v in result.items() if isinstance(v, list) and v and k not in payments}
        if (done.returncode != 0 or not result.get("matched")) and (
            differences or not payments or result.get("store_digest") != result.get("central_digest")
        ):
            findings.add(
                "reconcile_different",
                f"{day} station {STATION_ID}: {json.dumps(differences, ensure_ascii=False)[:400]}",
            )
        findings.figures.setdefault("reconcile_checks_payments", result.get("payments_checked", False))


def _payment_reports(result: dict, prefix: str = "") -> Iterator[tuple[str, list]]:
    """Non-empty lists in which the reconciliation reports code payments that do not add up with the sales
    (`payment_problems`, or orphans), wherever they sit."""
    for key, value in result.items():
        if isinstance(value, dict):
            yield from _payment_reports(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and ("orphan" in key.lower() or "payment_problem" in key.lower()):
            yield prefix + key, value


# --- secrets ---------------------------------------------------------------------------------------------------


def check_secrets(stack: Stack, driver: Driver, findings: Findings) -> None:
    """No auth code used in the run, token, key or member phone number in a log line, a receipt, or a database
    column (the hashed columns cannot match: they hold hashes)."""
    needles: dict[str, str] = {code: "auth code" for code in driver.auth_codes}
    needles |= {value: name for name, value in stack.secrets.all().items() if value}
    for member in stack.members:
        needles[member.phone] = needles[f"+86{member.phone}"] = "member phone"
    pattern = re.compile("|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True)))

    def look(where: str, text: str) -> None:
        for match in pattern.finditer(text):
            findings.add("secret_leaked", f"{needles[match.group()]} in {where}")

    for name in ("agent.log", "central.log"):
        path = stack.logs / name
        if path.exists():
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                look(f"{name}:{number}", line)
    for path in sorted((stack.agent_db.parent / "receipts").glob("*.bin")):
        look(f"receipt file {path.name}", _receipt_text(path.read_bytes()))
    for label, database in (("agent", stack.agent_db), ("central", stack.central_db)):
        for where, text in _columns(database):
            look(f"{label} database {where}", text)
    findings.figures["secrets_searched"] = len(needles)


def _receipt_text(data: bytes) -> str:
    """A receipt's text, barcodes and QR payloads as decoded from its ESC/POS bytes, and the raw bytes too."""
    from drivers.escpos_decode import decode

    parts = [data.decode("gb18030", errors="replace")]
    try:
        for element in decode(data):
            parts.extend(str(getattr(element, name)) for name in ("text", "payload", "data") if hasattr(element, name))
    except ValueError as exc:
        parts.append(f"(undecodable: {exc})")
    return "\n".join(parts)


def _columns(database: Path) -> Iterable[tuple[str, str]]:
    with read_only(database) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in db.execute(f'SELECT * FROM "{table}"'):
                for column in row.keys():
                    value = row[column]
                    if isinstance(value, bytes):
                        yield (
                            f"{table}.{column}",
                            _receipt_text(value) if table == "print_job" else value.decode("latin-1"),
                        )
                    elif isinstance(value, str):
                        yield f"{table}.{column}", value
