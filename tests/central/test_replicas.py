"""Several central processes on one PostgreSQL database, as a chain runs them (docs/DEPLOYING-CENTRAL.md): real
`pos-central serve` and `pos-central worker` processes, the WeChat Pay simulator at the wire, `kill -9`.

- two replicas racing to take the same payments and the same batches: each charge and each sale once;
- a replica killed while it drives a payment: the other takes it over once the lease expires and resolves it;
- the periodic jobs started in three workers: once per period, and on after the holder is killed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from agent.journal import GENESIS
from central import feed, identity
from central.db import open_database, write_session
from central.models import JobLease, LedgerEntry, Payment, Transaction
from central.payments.simulators import serve_in_thread
from central.payments.simulators.wechat import WeChatSimulator
from central.stores import add_store
from tests.central.rows import journal_row
from tests.support.credentials import APPID, MCH_ID, PHONE_KEY, WECHAT_KEY

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "replica-test-store-token-0123456789"
LEASE = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eventually(check: Callable[[], object], within: float = 30.0, what: str = "the condition") -> object:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {within} s")
        time.sleep(0.05)


@dataclass
class Process:
    popen: subprocess.Popen
    url: str | None = None

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)


class Chain:
    """One PostgreSQL database, the WeChat Pay simulator, and any number of central processes on them."""

    def __init__(self, database_url: str, sim_url: str, folder: Path):
        self.database_url = database_url
        self.config = folder / "central.toml"
        self.config.write_text(
            "\n".join(
                f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}"
                for key, value in {
                    "environment": "development",
                    "database_url": database_url,
                    "phone_hash_key": PHONE_KEY,
                    "wechat_base_url": sim_url,
                    "wechat_appid": APPID,
                    "wechat_mch_id": MCH_ID,
                    "wechat_api_key": WECHAT_KEY,
                    "lease_seconds": LEASE,
                    "payments_poll_seconds": 0.1,
                    "payments_limit_seconds": 4.0,
                    "payments_reverse_not_before_seconds": 0.3,
                    "payments_answer_seconds": 1.0,
                    "payments_retry_max_seconds": 0.2,
                    "payments_orphan_check_seconds": 0.5,
                    "wechat_timeout_seconds": 1.0,
                    "log_level": "WARNING",
                }.items()
            ).replace("True", "true")
            + "\n",
            encoding="utf-8",
        )
        self.folder = folder
        self.processes: list[Process] = []
        self.engine = open_database(database_url)
        with write_session(self.engine) as session:
            add_store(session, "S1", datetime.now(UTC), token=TOKEN)
            session.commit()

    def _start(self, *args: str, instance: str) -> subprocess.Popen:
        env = {**os.environ, "POS_CENTRAL_INSTANCE": instance}
        popen = subprocess.Popen(
            [sys.executable, "-m", "central", *args, "--config", str(self.config)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / f"{instance}.log", "wb"),  # noqa: SIM115 - the process holds it
        )
        return popen

    def replica(self, name: str, *, jobs: bool = False) -> Process:
        port = free_port()
        popen = self._start("serve", "--port", str(port), "--jobs" if jobs else "--no-jobs", instance=name)
        process = Process(popen, f"http://127.0.0.1:{port}")
        self.processes.append(process)

        def healthy() -> bool:
            if popen.poll() is not None:
                log = (self.folder / f"{name}.log").read_text(encoding="utf-8")
                raise AssertionError(f"replica {name} exited: {log[-2000:]}")
            try:
                return httpx.get(f"{process.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(healthy, within=60, what=f"replica {name} answering")
        return process

    def worker(self, name: str) -> Process:
        process = Process(self._start("worker", instance=name))
        self.processes.append(process)
        return process

    def client(self, process: Process) -> httpx.Client:
        return httpx.Client(
            base_url=process.url, headers={"Authorization": f"Bearer {TOKEN}", "X-Store-Id": "S1"}, timeout=30
        )

    def rows(self, query: sa.Select) -> list[sa.Row]:
        with write_session(self.engine) as session:
            return session.execute(query).all()

    def stop(self) -> None:
        for process in self.processes:
            if process.popen.poll() is None:
                process.popen.terminate()
        for process in self.processes:
            try:
                process.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.engine.dispose()


@pytest.fixture
def sim() -> Iterator[WeChatSimulator]:
    simulator = WeChatSimulator(appid=APPID, mch_id=MCH_ID, api_key=WECHAT_KEY, userpaying_seconds=0.5)
    served = serve_in_thread(simulator.app())
    simulator.url = served.url
    yield simulator
    served.stop()


@pytest.fixture
def chain(postgres_cluster, sim, tmp_path) -> Iterator[Chain]:
    made = Chain(postgres_cluster.new_database(), sim.url, tmp_path)
    yield made
    made.stop()


_serial = iter(range(10**9))


def auth_code(scenario: str) -> str:
    return f"13{'0001'}{next(_serial):010d}{scenario}"


def payment_body(scenario: str, out_trade_no: str) -> dict:
    return {"out_trade_no": out_trade_no, "auth_code": auth_code(scenario), "amount_fen": 1234, "station_id": "T01"}


def at_once(calls: list[Callable[[], httpx.Response]]) -> list[httpx.Response]:
    """Send every call at the same moment (a barrier, then all together)."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], httpx.Response]) -> httpx.Response:
        barrier.wait()
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def chained(prev_hash: str, totals: range, **fields: object) -> list[dict]:
    """Sales of these totals as one station's journal after `prev_hash`, each row hashed on the one before."""
    rows = []
    for total in totals:
        rows.append(journal_row(total, prev_hash=prev_hash, **fields))
        prev_hash = rows[-1]["hash"]
    return rows


def pushed_to_both(to_a: httpx.Client, to_b: httpx.Client, rows: list[dict]) -> list[str]:
    """The same batch pushed to both replicas at the same moment: every row's status from both answers, sorted."""
    answers = at_once(
        [
            lambda: to_a.post("/v1/transactions:batch", json={"transactions": rows}),
            lambda: to_b.post("/v1/transactions:batch", json={"transactions": rows}),
        ]
    )
    assert [answer.status_code for answer in answers] == [200, 200]
    return sorted(r["status"] for answer in answers for r in answer.json()["results"])


def test_two_replicas_racing_for_the_same_payments_and_batches_do_each_once(chain, sim):
    a, b = chain.replica("replica-a"), chain.replica("replica-b")
    with chain.client(a) as to_a, chain.client(b) as to_b:
        # The same payment sent to both replicas at the same moment (a till retrying through a load balancer).
        numbers = [f"S1T01RACE{n:04d}" for n in range(12)]
        for out_trade_no in numbers:
            body = payment_body("10" if out_trade_no.endswith(("3", "7")) else "00", out_trade_no)
            first, second = at_once(
                [
                    lambda body=body: to_a.post("/v1/payments", json=body),
                    lambda body=body: to_b.post("/v1/payments", json=body),
                ]
            )
            assert first.status_code in (200, 201) and second.status_code in (200, 201)
        for out_trade_no in numbers:
            eventually(
                lambda n=out_trade_no: to_a.get(f"/v1/payments/{n}").json()["state"] == "SUCCESS",
                what=f"{out_trade_no} paid",
            )
            assert sim.count("micropay", out_trade_no) == 1  # one charge, whichever replica took it

        # The same batch of sales pushed to both at once: every sale stored and its points booked once.
        with write_session(chain.engine) as session:
            feed.lock(session)
            member = identity.create_member(session, datetime.now(UTC)).id
            session.commit()
        rows = chained(GENESIS, range(100, 140), member_id=member, points_earned=1)
        assert pushed_to_both(to_a, to_b, rows) == ["accepted"] * 40 + ["duplicate"] * 40
        # Sales without a member take no feed lock, only the store's: the same race, the same answer.
        cash = chained(rows[-1]["hash"], range(500, 520))
        assert pushed_to_both(to_a, to_b, cash) == ["accepted"] * 20 + ["duplicate"] * 20
    stored = chain.rows(sa.select(sa.func.count()).select_from(Transaction).where(Transaction.store_id == "S1"))
    points = chain.rows(sa.select(sa.func.sum(LedgerEntry.points)).where(LedgerEntry.member_id == member))
    assert stored[0][0] == 60 and points[0][0] == 40


def test_a_replica_killed_while_driving_payments_has_them_finished_by_the_other(chain, sim):
    a, b = chain.replica("replica-a"), chain.replica("replica-b")
    waiting = {"S1T01KILL0001": "12", "S1T01KILL0002": "10"}  # never confirmed (reversed) / confirmed later (paid)
    with chain.client(a) as to_a, chain.client(b) as to_b:
        for out_trade_no, scenario in waiting.items():
            answer = to_a.post("/v1/payments", json=payment_body(scenario, out_trade_no))
            assert answer.json()["state"] == "USERPAYING"
        owners = chain.rows(sa.select(Payment.out_trade_no, Payment.lease_owner).where(Payment.state == "USERPAYING"))
        assert {owner for _, owner in owners} == {"replica-a"}
        a.kill()  # mid-poll, holding both leases: no clean stop gives them up
        killed = time.monotonic()
        assert eventually(
            lambda: to_b.get("/v1/payments/S1T01KILL0001").json()["state"] == "REVERSED", what="the reversal"
        )
        assert eventually(lambda: to_b.get("/v1/payments/S1T01KILL0002").json()["state"] == "SUCCESS", what="paid")
        assert time.monotonic() - killed >= LEASE * 0.5  # taken over after the lease, not before
    for out_trade_no in waiting:
        assert sim.count("micropay", out_trade_no) == 1  # never charged again by the replica taking over
    assert sim.orders["S1T01KILL0001"].state == "REVOKED"
    finished = chain.rows(sa.select(Payment.lease_owner).where(Payment.out_trade_no.in_(list(waiting))))
    assert [owner for (owner,) in finished] == [None, None]  # finished and given up by replica-b


def test_jobs_started_in_three_workers_run_once_per_period_and_survive_the_holder(chain):
    workers = {name: chain.worker(name) for name in ("worker-1", "worker-2", "worker-3")}
    job = sa.select(JobLease.owner, JobLease.runs, JobLease.last_run_at).where(JobLease.name == "payment-orphans")
    first = eventually(lambda: (rows := chain.rows(job)) and rows[0].runs >= 2 and rows[0], what="the job running")
    started = time.monotonic()
    eventually(lambda: time.monotonic() - started >= 4, what="4 s")
    second = chain.rows(job)[0]
    elapsed = time.monotonic() - started
    # 0.5 s rounds: one process's worth in 4 s (three processes each on their own would be three times as many).
    assert second.runs - first.runs <= elapsed / 0.5 + 2
    assert second.runs - first.runs >= 4
    holder = second.owner
    workers[holder].kill()
    took_over = eventually(
        lambda: (row := chain.rows(job)[0]).owner not in (holder, None) and row.runs > second.runs + 2 and row,
        within=LEASE * 10,
        what="another worker taking the job over",
    )
    assert took_over.owner in workers and took_over.owner != holder
