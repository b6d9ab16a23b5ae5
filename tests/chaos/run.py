"""One seed of the chaos run: prepare the store, sell under faults for a while, let everything drain, check.

Draining: faults off, central and the agent running, the open sale finished, then `POST /v1/sync` until the
outbox is empty, central has no payment or refund in progress, the printer's queue is idle — and all of that
has stayed unchanged for a while, so that a follower still acting on a payment cannot change the picture
after the checks have looked.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.chaos.checks import (
    Findings,
    check_all,
    check_money,
    journal_rows,
    open_at_central,
    provider_orders,
    read_only,
)
from tests.chaos.disruptions import Disruptions, Pace
from tests.chaos.driver import Driver
from tests.chaos.stack import Stack

# Fault rates per request: background traffic (pushes, pulls, probes, long-polls) and requests that move money.
RATES = {
    "reset_before": 0.02,
    "reset_after_forward": 0.02,
    "reset_after_answer": 0.02,
    "delay": 0.03,
    "blackhole": 0.003,
}
MONEY_RATES = {
    "reset_before": 0.04,
    "reset_after_forward": 0.12,
    "reset_after_answer": 0.04,
    "delay": 0.06,
    "blackhole": 0.01,
}
QUIET_S = 5.0  # the drained state must hold this long unchanged
DRAIN_LIMIT_S = 150.0
LATE_S = 45.0  # how long a money difference found after the drain may take to be repaired before it counts


@dataclass
class SeedResult:
    seed: int
    folder: Path
    findings: Findings = field(default_factory=Findings)
    sales: dict[str, Counter] = field(default_factory=dict)  # kind -> outcome counts
    refunds: Counter = field(default_factory=Counter)
    refund_answers_lost: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    fault_routes: dict[tuple[str, str], int] = field(default_factory=dict)
    agent_kills: int = 0
    central_stops: int = 0
    central_kills: int = 0
    offline_paid: int = 0
    offline_refusals: int = 0
    offline_refusals_central_up: int = 0
    bad_inputs: int = 0
    drive_s: float = 0.0
    drain_s: float | None = None
    late_s: float = 0.0  # waited after the drain for money differences that might still be repaired
    seconds: float = 0.0


def run_seed(seed: int, folder: Path, drive_s: float, pace: Pace = Pace(), say=print) -> SeedResult:
    started = time.monotonic()
    result = SeedResult(seed, folder)
    stack = Stack(folder, seed, say=say)
    driver = None
    try:
        stack.prepare()
        stack.start()
        disruptions = Disruptions(stack, seed, pace, say=say)
        driver = Driver(stack, disruptions, seed, say=say)
        driver.sync_once()  # the members, their coupons and the member-code key at the till before the first sale
        stack.proxy.set_rates(RATES, MONEY_RATES)
        say(f"seed {seed}: selling for {drive_s:.0f} s in {folder}")
        disruptions.start()
        selling = time.monotonic()
        try:
            driver.run(until=selling + drive_s)
        except Exception as exc:  # the driver gave up (the agent would not come back): drain and check all the same
            result.findings.add("run_failed", f"selling: {type(exc).__name__}: {exc}")
            say(traceback.format_exc())
        result.drive_s = time.monotonic() - selling
        say(f"seed {seed}: {len(driver.sales)} sales, {len(driver.refunds)} refunds; draining")
        result.drain_s = drain(stack, driver, disruptions, result.findings, say)
        result.late_s = wait_for_late_repairs(stack, driver, say)
        for error in disruptions.errors:
            result.findings.add("run_failed", f"disruption: {error}")
        check_all(stack, driver, result.findings)
        say(f"seed {seed}: checked in {sum(result.findings.figures['check_seconds'].values()):.1f} s")
    except Exception as exc:  # the run could not finish: say why, and fail
        result.findings.add("run_failed", f"{type(exc).__name__}: {exc}")
        say(traceback.format_exc())
    finally:
        if stack.proxy is not None:
            result.faults = stack.proxy.counts()
            result.fault_routes = stack.proxy.route_counts()
        stack.close()
        result.agent_kills, result.central_stops, result.central_kills = (
            stack.agent_kills,
            stack.central_stops,
            stack.central_kills,
        )
        if driver is not None:
            driver.close()
            (folder / "driver.json").write_text(
                json.dumps(driver.records(), ensure_ascii=False, indent=1), encoding="utf-8"
            )
            for sale in driver.sales:
                result.sales.setdefault(sale.kind, Counter())[sale.outcome] += 1
                result.offline_paid += sale.outcome == "told_paid" and sale.offline
            result.refunds = Counter(refund.outcome for refund in driver.refunds)
            result.refund_answers_lost = sum(refund.answers_lost for refund in driver.refunds)
            result.offline_refusals = driver.offline_refusals
            result.offline_refusals_central_up = driver.offline_refusals_central_up
            result.bad_inputs = driver.bad_inputs
        result.seconds = time.monotonic() - started
    return result


def drain(stack: Stack, driver: Driver, disruptions: Disruptions, findings: Findings, say=print) -> float | None:
    """Seconds from faults off until everything had drained; None if it never did within the limit."""
    started = time.monotonic()
    stack.proxy.off()
    disruptions.stop()
    driver.finish()
    api = driver.api
    drained_at = None
    last, quiet_since = None, None
    problems: list[str] = []
    while time.monotonic() - started < DRAIN_LIMIT_S:
        try:
            api.post("/v1/sync")
            status = api.get("/v1/status").json()
            open_sale = api.get("/v1/sessions/current").status_code == 200
        except httpx.TransportError as exc:
            problems = [f"agent not answering: {exc}"]
            stack.start_agent()
            continue
        if open_sale:
            driver.finish()
        database, checkout = status["database"], status["checkout"]
        problems = (
            [f"{database['outbox_pending']} journal row(s) waiting for central"] if database["outbox_pending"] else []
        )
        problems += [f"till: {checkout['printer_queued']} receipt(s) queued"] if checkout["printer_queued"] else []
        problems += ["till: a sale open"] if open_sale else []
        problems += [f"till: {n} {what} in progress" for what, n in _till_work(stack).items() if n]
        problems += open_at_central(stack.central_db)
        snapshot = (status["database"], checkout["printer_queued"], _money_state(stack))
        now = time.monotonic()
        if snapshot != last:
            last, quiet_since = snapshot, now
        if not problems:
            drained_at = drained_at or now
            if now - quiet_since >= QUIET_S:
                break
        else:
            drained_at = None
        time.sleep(0.5)
    if problems:
        for problem in problems:
            kind = {
                "payment": "payments_not_final",
                "refund": "payments_not_final",
                "till:": "till_work_unfinished",
            }.get(problem.split(" ", 1)[0], "outbox_not_drained")
            findings.add(kind, f"after {DRAIN_LIMIT_S:g} s: {problem}")
        return None
    if last and last[0]["outbox_rejected"]:
        findings.add("outbox_not_drained", f"{last[0]['outbox_rejected']} journal row(s) rejected by central")
    took = drained_at - started
    say(f"drained in {took:.1f} s")
    return took


def wait_for_late_repairs(stack: Stack, driver: Driver, say=print) -> float:
    """Seconds waited for money differences to go away. The till may be about to repair one (a payment to give
    up after a retry interval, a refund to finish): a difference is only reported once it outlasted LATE_S."""
    started = time.monotonic()
    while True:
        trial = Findings()
        check_money(
            driver,
            journal_rows(stack.agent_db),
            provider_orders(stack.sim_records("wechat"), stack.sim_records("alipay")),
            trial,
        )
        waited = time.monotonic() - started
        if not trial.violations or waited >= LATE_S:
            if waited > 0.5:
                say(f"waited {waited:.0f} s for late repairs; {len(trial.violations)} money difference(s) left")
            return waited
        try:
            driver.api.post("/v1/sync")
        except httpx.TransportError:
            stack.start_agent()
        time.sleep(2.0)


def _till_work(stack: Stack) -> dict[str, int]:
    """Work the till itself still has in hand: sales saved as open (a cancelled one still voiding its payments),
    refunds written down before they were sent (where this agent has that table)."""
    with read_only(stack.agent_db) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        return {
            f"{what} ({table})": db.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
            for table, what in (("open_sale", "sale(s)"), ("pending_refund", "refund(s)"))
            if table in tables
        }


def _money_state(stack: Stack) -> str:
    """A digest of every payment's and refund's state at central, and of the agent's journal and print jobs."""
    digest = hashlib.sha256()
    with read_only(stack.central_db) as db:
        for row in db.execute("SELECT out_trade_no, state FROM payment ORDER BY out_trade_no"):
            digest.update(f"{row[0]}:{row[1]};".encode())
        for row in db.execute("SELECT out_refund_no, state FROM payment_refund ORDER BY out_refund_no"):
            digest.update(f"{row[0]}:{row[1]};".encode())
    with read_only(stack.agent_db) as db:
        digest.update(str(tuple(db.execute("SELECT count(*), max(seq) FROM journal").fetchone())).encode())
        digest.update(
            str(
                [tuple(r) for r in db.execute("SELECT status, count(*) FROM print_job GROUP BY status ORDER BY status")]
            ).encode()
        )
    return digest.hexdigest()
