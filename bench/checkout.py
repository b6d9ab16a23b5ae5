"""Scan-to-paid latency through the agent's local API, against the bare round trip of the same HTTP calls.

A whole store on 127.0.0.1 (tests/checkout_stack.py): the real central service (SQLite), the WeChat Pay
simulator behind it answering SUCCESS at once (auth codes ending in 00), and the agent with a simulated scanner
and printer serving its API on a real socket. Per sale, through the agent: `POST /v1/sessions`,
`PUT /v1/sessions/{id}/basket` (3 lines), then `POST /v1/sessions/{id}/codes` with a fresh payment code: the
scan, timed; it returns with the session closed (journaled, receipt queued). Half the sales are paid by a
member (central knows the payer's openid: the agent asks `POST /v1/payments/identify`, reprices, then
`POST /v1/payments`), half by a payer who is no member (the agent makes the same two calls: it asks who pays
before every code payment of a sale without a member).

The baseline, interleaved with the agent's sales so machine noise hits both alike: the same central calls made
directly to central with the store's token, plus one bare round trip to the agent (`GET /healthz`) per agent
call, standing for the local HTTP hop. The agent's own part is agent minus baseline.

At a till's pace: before each timed step the agent has finished with the sale before (its receipt printed, the
sale pushed to central), as when the next customer steps up; central handles the push in this very process.
`--back-to-back` starts the next step at once instead, so both overlap it.

    python bench/checkout.py [--sales 1000] [--quick] [--back-to-back] [--separate-process]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/ is not an installed package; the stack lives there

from agent.ids import uuid7  # noqa: E402
from tests.checkout_stack import Stack, wechat_code  # noqa: E402

TARGET_MS = 50.0
WARMUP = 10  # sales of each kind, and as many baselines, before timing
QUICK_SALES, QUICK_WARMUP = 10, 2  # --quick: a smoke test that the benchmark still runs, not a measurement
MEMBER_PAYER = "0001"  # the simulated customer whose openid central links to the member
OTHER_PAYER = "0002"  # a customer no member is linked to
BASKET = [
    {"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 2, "unit_price_fen": 200, "category": "drinks"},
    {"sku": "6920152400012", "name": "全麦面包", "qty": 1, "unit_price_fen": 850, "category": "bakery"},
    {"sku": "6907992500133", "name": "纯牛奶 250ml", "qty": 3, "unit_price_fen": 390, "category": "dairy"},
]
PUSH = "/v1/transactions:batch"
AMOUNT_FEN = sum(line["qty"] * line["unit_price_fen"] for line in BASKET)


class BenchError(Exception):
    """A call answered something else than a sale going through: the figures would mean nothing."""


@dataclass
class Samples:
    scan: list[int] = field(default_factory=list)  # ns
    full: list[int] = field(default_factory=list)


def expect(answer: httpx.Response, status: int, what: str) -> dict:
    if answer.status_code != status:
        raise BenchError(f"{what}: {answer.status_code} {answer.text[:300]}")
    return answer.json()


def agent_sale(stack: Stack, member_id: str | None) -> tuple[int, int]:
    """One sale through the agent; (scan ns, full sale ns)."""
    api = stack.api
    payer = MEMBER_PAYER if member_id else OTHER_PAYER
    code = wechat_code("00", customer=payer)
    started = time.perf_counter_ns()
    session = expect(api.post("/v1/sessions"), 201, "POST /v1/sessions")
    expect(api.put(f"/v1/sessions/{session['id']}/basket", json={"lines": BASKET}), 200, "PUT basket")
    scanned = time.perf_counter_ns()
    paid = expect(api.post(f"/v1/sessions/{session['id']}/codes", json={"text": code}), 200, "POST codes")
    done = time.perf_counter_ns()
    if paid["state"] != "closed" or paid["remaining_fen"] != 0 or not paid["transaction_id"]:
        raise BenchError(f"the scan did not close the sale: state {paid['state']}, {paid.get('message')!r}")
    got = paid["member"]["id"] if paid["member"] else None
    if got != member_id:
        raise BenchError(f"sale paid as member {got}, expected {member_id}")
    return done - scanned, done - started


def baseline(stack: Stack, central: httpx.Client, member_id: str | None) -> tuple[int, int]:
    """The same central calls, directly, plus a bare local round trip per agent call; (scan ns, full ns)."""
    payer = MEMBER_PAYER if member_id else OTHER_PAYER
    code = wechat_code("00", customer=payer)
    request = {
        "out_trade_no": uuid7().hex,
        "auth_code": code,
        "amount_fen": AMOUNT_FEN,
        "station_id": "T01",
        "description": "测试门店",
        "member_id": member_id,
        "provider": "wechat",
    }
    if member_id is None:
        del request["member_id"]
    started = time.perf_counter_ns()
    expect(stack.api.get("/healthz"), 200, "GET /healthz")  # stands for POST /v1/sessions
    expect(stack.api.get("/healthz"), 200, "GET /healthz")  # stands for PUT basket
    scanned = time.perf_counter_ns()
    found = expect(central.post("/v1/payments/identify", json={"auth_code": code}), 200, "central identify")
    paid = expect(central.post("/v1/payments", json=request), 201, "central pay")
    expect(stack.api.get("/healthz"), 200, "GET /healthz")  # stands for POST codes
    done = time.perf_counter_ns()
    if paid["state"] != "SUCCESS":
        raise BenchError(f"central's payment is {paid['state']}, not SUCCESS")
    got = found["member"]["member_id"] if found.get("member") else None
    if got != member_id:
        raise BenchError(f"central identified member {got}, expected {member_id}")
    return done - scanned, done - started


def settle(stack: Stack, deadline_s: float = 30) -> int:
    """Wait until the agent has no receipt left to print and no sale left to push; ns waited."""
    started = time.perf_counter_ns()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        jobs = expect(stack.api.get("/v1/printer/jobs"), 200, "GET /v1/printer/jobs")
        if not any(job["status"] in ("queued", "sending") for job in jobs):
            if expect(stack.api.get("/v1/sync"), 200, "GET /v1/sync")["outbox_pending"] == 0:
                return time.perf_counter_ns() - started
        time.sleep(0.005)
    raise BenchError(f"the agent did not print and push the sale within {deadline_s:.0f} s")


def percentile(samples: list[int], q: float) -> float:
    """Nearest rank, in ms."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered))) - 1))] / 1e6


def central_calls(stack: Stack) -> Counter:
    return Counter(stack.central.faults.hits)


def describe(calls: Counter) -> str:
    named = {PUSH: f"{PUSH} (the outbox push, after the answer)"}
    return (
        ", ".join(
            f"{n} x {named.get(path, path)}" if n != 1 else named.get(path, path) for path, n in sorted(calls.items())
        )
        or "none"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sales", type=int, default=1000, help="timed sales, half as member (default 1000)")
    parser.add_argument(
        "--quick", action="store_true", help=f"a smoke test: {QUICK_SALES} sales after {QUICK_WARMUP} to warm up"
    )
    parser.add_argument("--back-to-back", action="store_true", help="do not wait for the last sale's receipt and push")
    parser.add_argument(
        "--separate-process", action="store_true", help="run the agent as `pos-edge run`, its own process"
    )
    args = parser.parse_args()
    sales = QUICK_SALES if args.quick else args.sales
    if sales < 2:
        parser.error("--sales must be at least 2")

    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(Path(tmp), separate_process=args.separate_process)
        try:
            run(stack.start(), sales, args)
        finally:
            # Central's shutdown writes (its leases released) must end before the directory is removed.
            stack.stop()
            stack.central.stop()
            stack.close()


def run(stack: Stack, sales: int, args: argparse.Namespace) -> None:
    warmup = QUICK_WARMUP if args.quick else WARMUP
    member_id = stack.add_member(points=1000, tier="gold", payer=wechat_code("00", customer=MEMBER_PAYER))
    central = stack.central.client(stack.store, timeout=15)
    agent = {True: Samples(), False: Samples()}
    bare = {True: Samples(), False: Samples()}
    background: list[int] = []  # ns from a sale's answer until its receipt printed and it reached central

    # Warm up both paths (connections, caches, first-call imports); learn which central calls a sale makes.
    per_sale = {}
    for as_member in (True, False):
        who = member_id if as_member else None
        for _ in range(warmup):
            agent_sale(stack, who)
            baseline(stack, central, who)
        settle(stack)
        before = central_calls(stack)
        for _ in range(warmup):
            agent_sale(stack, who)
            settle(stack)
        per_sale[as_member] = +Counter({path: n // warmup for path, n in (central_calls(stack) - before).items()})
    load_before = os.getloadavg()[0]
    before = central_calls(stack)

    started = time.monotonic()
    for n in range(sales):
        as_member = n % 2 == 0
        who = member_id if as_member else None
        # Alternate which goes first, so neither always follows the other.
        order = (True, False) if n % 4 < 2 else (False, True)
        for through_agent in order:
            if through_agent:
                scan_ns, full_ns = agent_sale(stack, who)
                samples = agent[as_member]
            else:
                scan_ns, full_ns = baseline(stack, central, who)
                samples = bare[as_member]
            samples.scan.append(scan_ns)
            samples.full.append(full_ns)
            if not args.back_to_back:
                waited = settle(stack)
                if through_agent:
                    background.append(waited)
    elapsed = time.monotonic() - started
    central.close()
    if args.back_to_back:
        settle(stack)
    # Whatever else reached central during the run (beyond the sales' own calls and the baseline's).
    others = central_calls(stack) - before
    for as_member in (True, False):
        for path, count in per_sale[as_member].items():
            others[path] -= count * len(agent[as_member].scan)
    others["/v1/payments/identify"] -= sales
    others["/v1/payments"] -= sales
    others = +others

    where = "its own process (pos-edge run)" if args.separate_process else "in this process, on its own thread"
    pace = "back to back"
    if not args.back_to_back:
        pace = "at a till's pace (each step after the last sale's receipt printed and push done)"
    printer = "simulated printer (keeps the bytes; previews drawn on request)"
    print(
        f"scan-to-paid through the agent's API: {sales} sales ({len(agent[True].scan)} as member, "
        f"{len(agent[False].scan)} without), {pace}; agent {where}, {printer}"
    )
    load_after = os.getloadavg()[0]
    print(
        f"run: {elapsed:.1f} s with the baseline; load average {load_before:.2f} before, {load_after:.2f} after, {os.cpu_count()} CPUs"
    )
    print(f"agent -> central per sale, as member: {describe(per_sale[True])}")
    print(f"agent -> central per sale, no member: {describe(per_sale[False])}")
    print(f"agent -> central besides: {describe(others)}")
    if background:
        p50, p99 = percentile(background, 0.5), percentile(background, 0.99)
        print(f"after each sale, receipt printed and sale pushed in p50 {p50:.0f} ms, p99 {p99:.0f} ms")
    print(
        "baseline: POST /v1/payments/identify + POST /v1/payments direct to central, GET /healthz on the agent per agent call"
    )
    print()
    header = f"{'ms':<24}{'agent p50':>10}{'p99':>8}{'baseline p50':>14}{'p99':>8}{'own p50':>9}{'p99':>8}{'ratio p50':>11}{'p99':>6}"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for what in ("scan", "full"):
        for as_member in (True, False):
            a, b = getattr(agent[as_member], what), getattr(bare[as_member], what)
            a50, a99, b50, b99 = percentile(a, 0.5), percentile(a, 0.99), percentile(b, 0.5), percentile(b, 0.99)
            label = f"{'scan-to-paid' if what == 'scan' else 'full sale'}, {'member' if as_member else 'no member'}"
            print(
                f"{label:<24}{a50:>10.1f}{a99:>8.1f}{b50:>14.1f}{b99:>8.1f}{a50 - b50:>9.1f}{a99 - b99:>8.1f}"
                f"{a50 / b50:>11.2f}{a99 / b99:>6.2f}"
            )
            if what == "scan":
                worst = max(worst, a99 - b99)
    print()
    print("own = agent - baseline (difference of the percentiles); ratio = agent / baseline")
    verdict = "met" if worst < TARGET_MS else "NOT met"
    print(
        f"verdict: agent's own part of scan-to-paid at p99 is {worst:.1f} ms at worst (target < {TARGET_MS:.0f} ms): {verdict}"
    )


if __name__ == "__main__":
    os.environ.setdefault("POS_CENTRAL_LOG_LEVEL", "WARNING")
    try:
        main()
    except BenchError as exc:
        sys.exit(f"checkout bench failed: {exc}")
