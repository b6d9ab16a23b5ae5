"""Central under load: thousands of simulated tills against one and two `pos-central serve` replicas on one
PostgreSQL database, then a replica killed mid-run (issue 16).

Everything runs on this machine: a throw-away PostgreSQL cluster (`tests.central.plugin.PostgresCluster`), the
WeChat Pay simulator (`pos-central simulate wechat`), one `pos-central worker` (when this release has it), the
replicas (`pos-central serve`, with `--no-jobs` when this release has it), and this process: one asyncio loop in
which every till is a coroutine that sleeps between actions. Each till, at the mix the flags set:

- sells at its share of the offered rate (exponential gaps: the sales of all tills are a Poisson stream);
  `--code-share` of sales are paid by a WeChat payment code (`--userpaying-share` of those confirmed on the phone
  first: USERPAYING, then paid; `--declined-share` declined, NOTENOUGH, and paid cash instead), the rest cash;
- before `--identify-share` of its code payments asks who pays (`POST /v1/payments/identify`); the simulator's
  customers 1..`--payers` are members, whose sales earn points (and so go into the member change feed);
- follows a payment as the agent does (`GET /v1/payments/{out_trade_no}?wait=5`; a 404 sends the same request
  again; past `--till-limit` seconds it voids the number, and a SUCCESS that comes after that is voided again);
- journals every sale with the agent's own journal (`agent.journal.Journal`, hash-chained, one SQLite file on
  /dev/shm written from one thread) and pushes its rows every `--push-every` sales (`POST /v1/transactions:batch`);
- pulls the member change feed every `--pull-every` seconds (`GET /v1/members/changes`, then the member-code keys).

The load balancer is played here: till i goes to replica i mod N, with at most `--pool` requests in flight per
replica (more wait their turn); a request whose connection is refused goes to the next replica, as a balancer's
health check would send it, and the refusing replica is skipped for a second. A request cut off after it was sent
is not sent elsewhere: the till gets it as the balancer's 502 and acts as the agent does (a payment is followed, a
push or a pull is tried again later).

Each run starts from a fresh copy of the same seeded database. The runs with 1 and 2 replicas offer a rising rate,
`--step` seconds a step, and stop at the first step not sustained (the sales done short of the offered rate by more
than 10 % and more than chance allows, a p99 of the till's calls over `--p99-limit`, or 1 % of calls failed): the
last sustained step is the run's sustained rate, and its latencies are the ones reported. The kill run holds one
replica's sustained rate on 2 replicas, with `--kill-userpaying-share` of the code payments USERPAYING so that
payments are open on a replica when it dies, and kills (SIGKILL) the first replica halfway. After each run the tills
finish their sales and push everything, the run waits (bounded) until central holds every payment final, then checks
in the database and at the simulator: every sale the tills journaled is at central exactly once with its amount;
every code tender is money the provider keeps, and no charge is kept without a sale; every payment is final; every
SUCCESS is held by a sale. It prints "lost 0, doubled 0, unresolved 0" per run, or the violations, and exits 1 on
any. Each step also shows PostgreSQL's side (`pg_stat_activity` sampled every half second) and each run the
statements seen waiting for a lock.

    python bench/central_load.py                   # 500 stores x 4 tills: 1 replica, 2 replicas, the kill
    python bench/central_load.py --quick           # a smoke run: 40 tills, one short step per run
    python bench/central_load.py --runs kill --kill-rate 60 --keep
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/ is not an installed package; the PostgreSQL cluster and the checks live there

from agent.db import open_database as open_agent_database  # noqa: E402
from agent.journal import Journal, JournalEntry, JournalRecord  # noqa: E402
from central import contract, identity  # noqa: E402
from central.cli import cli  # noqa: E402
from central.config import Settings  # noqa: E402
from central.db import open_database, write_session  # noqa: E402
from central.feed import lock as lock_feed  # noqa: E402
from central.models import Member  # noqa: E402
from central.payments.gateway import FINAL  # noqa: E402
from central.payments.simulators.wechat import customer_openid  # noqa: E402
from central.seed import seed_demo  # noqa: E402
from central.stores import add_store  # noqa: E402
from tests.central.plugin import PostgresCluster, start_postgres  # noqa: E402
from tests.chaos.checks import provider_orders  # noqa: E402

PHONE_KEY = "load-phone-hash-key-0123456789"
WECHAT_APPID, WECHAT_MCH_ID = "wx4c0ad10ad0000001", "1900000109"
WECHAT_API_KEY = "load0wechat0pay0api0key000000000"
ZONE = ZoneInfo("Asia/Shanghai")
CUSTOMERS = 9999  # the simulator's customers: the four digits after an auth code's prefix
FOLLOW_WAIT_S = 5  # the agent's long-poll (agent/payment_follower.py)
PAGE = 1000
CATALOG = [
    ("6901234567892", "矿泉水 550ml", 200, "drinks"),
    ("6902538006100", "牛奶 250ml", 450, "dairy"),
    ("6920152400012", "方便面", 550, "food"),
    ("6903148042441", "洗发水 400ml", 3990, "care"),
    ("6921168509256", "饼干", 1290, "food"),
    ("6954767430521", "纸巾 10包", 2590, "household"),
    ("6901028075862", "香烟", 2600, "tobacco"),
    ("6925303721367", "咖啡豆 250g", 8800, "drinks"),
    ("6940188802345", "电饭煲", 29900, "appliances"),
]
ENDPOINTS = (
    "POST /v1/payments/identify",
    "POST /v1/payments",
    "GET /v1/payments/{n}?wait=5",
    "POST /v1/payments/{n}/void",
    "POST /v1/transactions:batch",
    "GET /v1/members/changes",
    "GET /v1/keys/member-code",
    "sale paid by code, scan to journaled",
)


STARTED = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- what a run is -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mix:
    code_share: float
    userpaying_share: float
    declined_share: float
    identify_share: float
    push_every: int
    pull_every_s: float
    till_limit_s: float


class Pace:
    """What every till reads between two sales: the mean gap (tills / offered sales per second), and whether the
    load is over. A change wakes the sleeping tills, which draw their gap again at the new pace: the gaps are
    exponential, so the sales stay a Poisson stream at the new rate from the moment of the change."""

    def __init__(self, gap_s: float):
        self.gap_s = gap_s
        self.stopping = False
        self.changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stopped: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def set(self, gap_s: float | None = None, *, stop: bool = False) -> None:
        self.gap_s = gap_s or self.gap_s
        self.stopping = self.stopping or stop
        if stop and not self.stopped.done():
            self.stopped.set_result(None)
        self.changed.set_result(None)
        self.changed = asyncio.get_running_loop().create_future()

    async def pause(self, rng: random.Random) -> None:
        """Sleep until the next sale (or the stop)."""
        while not self.stopping:
            changed = self.changed
            done, _ = await asyncio.wait([changed], timeout=rng.expovariate(1 / self.gap_s))
            if not done:
                return


@dataclass(frozen=True)
class Plan:
    slug: str  # the run's folder and database
    name: str
    replicas: int
    rates: tuple[float, ...]  # offered sales/s, step by step; the ramp stops at the first step not sustained
    step_s: float
    kill_at_s: float | None = None  # seconds into the run: SIGKILL the first replica (a run of one step)


# --- the central side: database, simulator, worker, replicas ----------------------------------------------------


class Cpu:
    """CPU seconds of processes, read from /proc."""

    TICK = os.sysconf("SC_CLK_TCK")

    @classmethod
    def of(cls, pid: int, children: bool = False) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        ticks = int(fields[11]) + int(fields[12]) + ((int(fields[13]) + int(fields[14])) if children else 0)
        return ticks / cls.TICK

    @classmethod
    def tree(cls, root: int) -> float:
        """A process and its direct children (PostgreSQL: the postmaster and its backends)."""
        total = cls.of(root, children=True)
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == root:
                total += cls.of(int(entry.name))
        return total

    @staticmethod
    def own() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    @staticmethod
    def machine() -> tuple[float, float]:
        """(busy, total) seconds of all CPUs since boot."""
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]
        return (sum(values) - idle) / Cpu.TICK, sum(values) / Cpu.TICK


class Central:
    """The PostgreSQL cluster and a seeded template database; per run a copy of it and the processes on it."""

    def __init__(self, stores: int, stations: int, members: int, payers: int, quick: bool):
        self.stores = [f"S{n:04d}" for n in range(1, stores + 1)]
        self.stations = stations
        self.members = members
        self.payers = payers
        self.quick = quick
        self.cluster: PostgresCluster | None = None
        self.template = ""
        self.head_cursor = "0"
        # What this release of `pos-central` offers.
        self.has_worker = "worker" in cli.commands
        self.has_no_jobs = any("--no-jobs" in getattr(p, "secondary_opts", ()) for p in cli.commands["serve"].params)
        self.has_lease = "lease_seconds" in Settings.model_fields
        self.processes: dict[str, subprocess.Popen] = {}
        self.replica_urls: list[str] = []

    @staticmethod
    def token(store_id: str) -> str:
        return f"load-store-token-{store_id}-0123456789"

    def start_cluster(self) -> None:
        self.cluster = start_postgres()

    def seed_template(self) -> None:
        """Members, the simulator's customers 1..payers linked to members as payers, the stores: once."""
        url = self.cluster.new_database()
        self.template = url.rsplit("/", 1)[1]
        engine = open_database(url)
        try:
            seed_demo(engine, PHONE_KEY.encode(), self.members, 1)
            now = datetime.now(UTC)
            kind = identity.openid_kind(WECHAT_APPID)
            with write_session(engine) as session:
                lock_feed(session)
                ids = session.execute(sa.select(Member.id).order_by(Member.id).limit(self.payers)).scalars().all()
                for customer, member_id in enumerate(ids, start=1):
                    identity.attach(session, member_id, kind, customer_openid(WECHAT_APPID, f"{customer:04d}"), now)
                for store_id in self.stores:
                    add_store(session, store_id, now, name=f"门店 {store_id}", token=self.token(store_id))
                session.commit()
            with engine.connect() as connection:
                self.head_cursor = str(connection.execute(sa.select(sa.func.max(Member.version))).scalar() or 0)
        finally:
            engine.dispose()

    def new_database(self, name: str) -> str:
        engine = sa.create_engine(self.cluster.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f"CREATE DATABASE {name} TEMPLATE {self.template}")
        finally:
            engine.dispose()
        return self.cluster.url(name)

    def settings_file(self, run: Path, database_url: str, sim_port: int, lease_s: float) -> Path:
        lines = [
            'environment = "development"',
            f'database_url = "{database_url}"',
            f'phone_hash_key = "{PHONE_KEY}"',
            'log_level = "WARNING"',
            f"max_page_size = {PAGE}",
            f'wechat_base_url = "http://127.0.0.1:{sim_port}"',
            f'wechat_appid = "{WECHAT_APPID}"',
            f'wechat_mch_id = "{WECHAT_MCH_ID}"',
            f'wechat_api_key = "{WECHAT_API_KEY}"',
            'wechat_member_card = "off"',
        ]
        if self.quick:  # the gateway's timings shrunk, so that a smoke run's payments end within seconds
            lines += [
                "payments_poll_seconds = 1.0",
                "payments_limit_seconds = 6.0",
                "payments_reverse_not_before_seconds = 2.0",
            ]
        if self.has_lease:
            lines.append(f"lease_seconds = {lease_s}")
        path = run / "central.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _spawn(self, name: str, run: Path, *args: str) -> subprocess.Popen:
        log = (run / f"{name}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "central", *args], stdout=log, stderr=subprocess.STDOUT, cwd=run
        )
        self.processes[name] = process
        return process

    def start_run(self, run: Path, plan: Plan, userpaying_s: float, lease_s: float) -> None:
        database = self.new_database(f"load_{run.name}")
        sim_port = free_port()
        config = self.settings_file(run, database, sim_port, lease_s)
        self.processes = {}
        self._spawn(
            "simulator",
            run,
            "simulate",
            "wechat",
            "--config",
            str(config),
            "--port",
            str(sim_port),
            "--userpaying-seconds",
            str(userpaying_s),
        )
        if self.has_worker:
            self._spawn("worker", run, "worker", "--config", str(config))
        self.replica_urls = []
        for n in range(plan.replicas):
            port = free_port()
            extra = ["--no-jobs"] if self.has_no_jobs else []
            self._spawn(f"replica-{n + 1}", run, "serve", "--config", str(config), "--port", str(port), *extra)
            self.replica_urls.append(f"http://127.0.0.1:{port}")
        self.sim_url = f"http://127.0.0.1:{sim_port}"
        self.database_url = database
        deadline = time.monotonic() + 60
        for url in [*self.replica_urls, self.sim_url]:
            path = "/healthz" if url != self.sim_url else "/_sim/records"
            while True:
                dead = [name for name, p in self.processes.items() if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"{', '.join(dead)} exited at start; see {run}/{dead[0]}.log")
                try:
                    if httpx.get(url + path, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{url} did not start within 60 s")
                time.sleep(0.1)

    def open_payments(self) -> list[tuple[str, str | None]]:
        """Payments not final now, with the process holding each (`lease_owner`)."""
        engine = sa.create_engine(self.database_url)
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    sa.text("SELECT out_trade_no, lease_owner FROM payment WHERE state NOT IN :final").bindparams(
                        sa.bindparam("final", expanding=True)
                    ),
                    {"final": list(FINAL)},
                ).all()
        finally:
            engine.dispose()
        return [(row[0], row[1]) for row in rows]

    def database_waits(
        self, stop: threading.Event, samples: list[tuple[float, int, int, int]], waiting: Counter[str]
    ) -> None:
        """Every half second until `stop`: (when, sessions running a statement, of them waiting for a lock, sessions
        in a transaction between two statements) in the run's database, and the statements that wait for a lock.
        Runs in a thread of its own."""
        engine = sa.create_engine(self.database_url, poolclass=sa.pool.NullPool)
        query = sa.text(
            "SELECT count(*) FILTER (WHERE state = 'active'), "
            "count(*) FILTER (WHERE state = 'active' AND wait_event_type = 'Lock'), "
            "count(*) FILTER (WHERE state = 'idle in transaction') "
            "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        statements = sa.text(
            "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90) FROM pg_stat_activity "
            "WHERE datname = current_database() AND state = 'active' AND wait_event_type = 'Lock'"
        )
        try:
            with engine.connect() as connection:
                while not stop.wait(0.5):
                    active, locked, between = connection.execute(query).one()
                    if locked:
                        waiting.update(connection.execute(statements).scalars())
                    connection.commit()
                    samples.append((time.monotonic(), active, locked, between))
        finally:
            engine.dispose()

    def replica_owner(self, n: int) -> str:
        """How replica n (from 1) names itself in leases (central/leases.py: host and port)."""
        return f"{socket.gethostname()}:{self.replica_urls[n - 1].rsplit(':', 1)[1]}"

    def replica_pids(self) -> list[int]:
        return [p.pid for name, p in self.processes.items() if name.startswith("replica")]

    def cpu(self) -> dict[str, float]:
        pg_pid = int((self.cluster.dir / "data" / "postmaster.pid").read_text().split()[0])
        return {
            "replicas": sum(Cpu.of(pid) for pid in self.replica_pids()),
            "worker": Cpu.of(self.processes["worker"].pid) if "worker" in self.processes else 0.0,
            "postgresql": Cpu.tree(pg_pid),
            "simulator": Cpu.of(self.processes["simulator"].pid),
            "generator": Cpu.own(),
        }

    def kill(self, name: str) -> None:
        os.kill(self.processes[name].pid, signal.SIGKILL)

    def stop_run(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


# --- the load balancer ---------------------------------------------------------------------------------------


class NoReplica(Exception):
    pass


class Balancer:
    """httpx clients to every replica, at most `pool` requests in flight to each (more wait here, in order, as in a
    balancer's queue). A till has a preferred replica; a refused connection goes to the next one, and the refusing
    replica is skipped for `down_s` (a health check's view of it).

    Each replica's connections are split among clients of `SHARD` connections, a till always using the same one:
    httpx's pool does work in the square of its connections on every request (its keep-alive check), which at 100
    connections made this process the busiest on the machine."""

    SHARD = 16

    def __init__(self, urls: list[str], pool: int, down_s: float = 1.0):
        shards = max(1, -(-pool // self.SHARD))
        size = -(-pool // shards)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        timeout = httpx.Timeout(30.0, connect=2.0)
        self.clients = [
            [httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) for _ in range(shards)] for url in urls
        ]
        self.slots = [[asyncio.Semaphore(size) for _ in range(shards)] for _ in urls]
        self.down_until = [0.0] * len(urls)
        self.down_s = down_s
        self.failovers = 0

    async def request(self, till: int, preferred: int, method: str, path: str, **kwargs: Any) -> httpx.Response:
        count = len(self.clients)
        order = [(preferred + k) % count for k in range(count)]
        now = time.monotonic()
        up = [i for i in order if self.down_until[i] <= now] or order
        for n, i in enumerate(up):
            shard = till % len(self.clients[i])
            try:
                if n:
                    self.failovers += 1
                async with self.slots[i][shard]:
                    return await self.clients[i][shard].request(method, path, **kwargs)
            except httpx.ConnectError:
                self.down_until[i] = time.monotonic() + self.down_s
        raise NoReplica("no replica accepted the connection")

    async def aclose(self) -> None:
        for clients in self.clients:
            for client in clients:
                await client.aclose()


# --- measurements --------------------------------------------------------------------------------------------


@dataclass
class Stats:
    calls: dict[str, list[tuple[float, float, int | str]]] = field(default_factory=lambda: defaultdict(list))
    sales: list[tuple[float, bool]] = field(default_factory=list)  # (finished at, paid by code)

    def record(self, endpoint: str, started: float, seconds: float, status: int | str) -> None:
        self.calls[endpoint].append((started, seconds, status))

    def in_window(self, start: float, end: float) -> Stats:
        window = Stats()
        for endpoint, calls in self.calls.items():
            window.calls[endpoint] = [c for c in calls if start <= c[0] < end]
        window.sales = [s for s in self.sales if start <= s[0] < end]
        return window


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# --- the tills -----------------------------------------------------------------------------------------------


@dataclass
class Sold:
    """A sale the till journaled, as the checks need it."""

    id: str
    store_id: str
    total_fen: int
    out_trade_no: str | None  # its WeChat tender
    given_up: list[str] = field(default_factory=list)  # code payments the till voided during this sale


class Till:
    def __init__(
        self,
        index: int,
        store_id: str,
        station: int,
        replica: int,
        balancer: Balancer,
        journal: Journal,
        writer: ThreadPoolExecutor,
        stats: Stats,
        mix: Mix,
        pace: Pace,
        cursor: str,
        rng: random.Random,
    ):
        self.index = index
        self.store_id = store_id
        self.station_id = f"{store_id}-T{station}"
        self.replica = replica
        self.balancer = balancer
        self.journal = journal
        self.writer = writer
        self.stats = stats
        self.mix = mix
        self.pace = pace
        self.cursor = cursor
        self.rng = rng
        self.headers = {"Authorization": f"Bearer {Central.token(store_id)}", "X-Store-Id": store_id}
        self.pending: list[JournalRecord] = []
        self.sold: list[Sold] = []
        self.rejected: list[str] = []
        self.payments = 0
        self.sales_made = 0

    # -- one HTTP call, timed, through the balancer --

    async def call(self, endpoint: str, method: str, path: str, **kwargs: Any) -> tuple[int | str, Any]:
        started = time.monotonic()
        body: Any = None
        try:
            response = await self.balancer.request(
                self.index, self.replica, method, path, headers=self.headers, **kwargs
            )
            status: int | str = response.status_code
            if response.headers.get("content-type", "").startswith("application/json"):
                body = response.json()
        except NoReplica:
            status = "no replica"
        except httpx.TimeoutException:
            status = "timeout"
        except httpx.TransportError:
            status = "502 cut"  # the replica went away with the request: what a balancer answers
        self.stats.record(endpoint, started, time.monotonic() - started, status)
        return status, body

    # -- the till's life --

    async def run(self) -> None:
        """Sell until the load stops: a sale, a push when due, then sleep until the next sale. The first push comes
        after 1..push_every sales, so that the tills' pushes are spread from the start as they are later on."""
        due = self.rng.randint(1, self.mix.push_every)
        await self.pace.pause(self.rng)
        while not self.pace.stopping:
            await self.sale()
            due -= 1
            if due <= 0:
                await self.push()
                due = self.mix.push_every
            await self.pace.pause(self.rng)

    async def pull_now_and_then(self) -> None:
        """Pull the member changes every pull_every seconds (the first after a random part of it) until the stop."""
        wait = self.rng.uniform(0, self.mix.pull_every_s)
        while not self.pace.stopping:
            done, _ = await asyncio.wait([self.pace.stopped], timeout=wait)
            if done:
                return
            started = time.monotonic()
            await self.pull()
            wait = max(0.0, self.mix.pull_every_s - (time.monotonic() - started))

    async def sale(self) -> None:
        started = time.monotonic()
        lines = []
        for sku, name, price, category in self.rng.sample(CATALOG, self.rng.randint(1, 4)):
            qty = self.rng.choice((1, 1, 1, 2, 3))
            lines.append(
                contract.SoldLine(
                    sku=sku, name=name, qty=qty, unit_price_fen=price, category=category, amount_fen=qty * price
                )
            )
        total = sum(line.amount_fen for line in lines)
        member: dict | None = None
        paid: dict | None = None
        given_up: list[str] = []
        by_code = self.rng.random() < self.mix.code_share
        if by_code:
            customer = self.rng.randint(1, CUSTOMERS)
            draw = self.rng.random()
            if draw < self.mix.userpaying_share:
                scenario = "10"  # USERPAYING, the customer confirms after the simulator's userpaying_seconds
            elif draw < self.mix.userpaying_share + self.mix.declined_share:
                scenario = "32"  # NOTENOUGH: not paid
            else:
                scenario = f"0{self.rng.randrange(10)}"  # paid at once
            auth_code = f"13{customer:04d}{self.rng.randrange(10**10):010d}{scenario}"
            if self.rng.random() < self.mix.identify_share:
                status, found = await self.call(
                    "POST /v1/payments/identify", "POST", "/v1/payments/identify", json={"auth_code": auth_code}
                )
                if status == 200 and found.get("member"):
                    member = found["member"]
            paid = await self.pay_by_code(auth_code, total, member["member_id"] if member else None, given_up)
        earned = total // 100 if member else 0
        if paid is not None:
            tender = contract.PaidTender(
                kind="wechat",
                amount_fen=total,
                out_trade_no=paid["out_trade_no"],
                tendered_fen=total,
                change_fen=0,
                reference=paid.get("provider_trade_no"),
            )
        else:
            handed = -(-total // 10000) * 10000  # the next 100 yuan note
            tender = contract.PaidTender(kind="cash", amount_fen=total, tendered_fen=handed, change_fen=handed - total)
        self.sales_made += 1
        body = contract.SaleBody(
            receipt_no=f"{self.station_id}-{self.sales_made:05d}",
            online=True,
            guide_id=None,
            lines=lines,
            tenders=[tender],
            coupons=[],
            subtotal_fen=total,
            tier_discount_fen=0,
            discount_fen=0,
            points_value_fen=0,
            member=contract.BodyMember(
                display_name=member["display_name"],
                tier=member["tier"],
                phone_masked=member.get("phone_masked"),
                via="payment_code",
            )
            if member
            else None,
            points_balance=member["points"] + earned if member else None,
        )
        entry = JournalEntry(
            kind="sale",
            total_fen=total,
            body=body,
            member_id=member["member_id"] if member else None,
            points_earned=earned,
        )
        record = await asyncio.get_running_loop().run_in_executor(self.writer, self.journal.append, entry)
        self.pending.append(record)
        self.sold.append(Sold(record.id, self.store_id, total, paid["out_trade_no"] if paid else None, given_up))
        finished = time.monotonic()
        self.stats.sales.append((finished, paid is not None))
        if by_code:
            self.stats.record("sale paid by code, scan to journaled", started, finished - started, 200)

    async def pay_by_code(self, auth_code: str, amount: int, member_id: str | None, given_up: list[str]) -> dict | None:
        """A code payment as the agent makes it; the payment when paid, else None (the customer pays cash)."""
        self.payments += 1
        out_trade_no = f"{self.station_id.replace('-', '')}{self.payments:07d}"
        request = {
            "out_trade_no": out_trade_no,
            "auth_code": auth_code,
            "amount_fen": amount,
            "station_id": self.station_id,
            "description": "门店消费",
            "provider": "wechat",
            **({"member_id": member_id} if member_id else {}),
        }
        void = {"provider": "wechat", "amount_fen": amount, "station_id": self.station_id}
        give_up_at = time.monotonic() + self.mix.till_limit_s
        status, answer = await self.call("POST /v1/payments", "POST", "/v1/payments", json=request)
        if status == "no replica" or (isinstance(status, int) and 400 <= status < 500):
            return None  # it never left the store, or central refused it: nothing was charged
        payment = answer if status in (200, 201) else None  # else unanswered: followed
        gave_up = need_void = False
        while True:
            if not gave_up and time.monotonic() >= give_up_at:
                gave_up = need_void = True
            if payment is not None and payment["final"]:
                if not (gave_up and payment["state"] == "SUCCESS"):
                    break
                need_void = True  # paid after the till gave up: void it again, so central takes it back
            if need_void:
                if out_trade_no not in given_up:
                    given_up.append(out_trade_no)
                status, answer = await self.call(
                    "POST /v1/payments/{n}/void", "POST", f"/v1/payments/{out_trade_no}/void", json=void
                )
                if status == 200:
                    payment, need_void = answer, False
                if status != 200 or payment["state"] == "SUCCESS":
                    await asyncio.sleep(1)
                continue
            status, answer = await self.call(
                "GET /v1/payments/{n}?wait=5", "GET", f"/v1/payments/{out_trade_no}", params={"wait": FOLLOW_WAIT_S}
            )
            if status == 200:
                payment = answer
            elif status == 404 and gave_up:
                need_void = True  # a void records a number central never saw, so a late copy is refused
            elif status == 404:
                # Central does not know it: the request may still be on its way. Send the same one again.
                status, answer = await self.call("POST /v1/payments", "POST", "/v1/payments", json=request)
                if status in (200, 201):
                    payment = answer
                elif isinstance(status, int) and 400 <= status < 500:
                    gave_up = need_void = True  # refused when sent again: void it, as the agent does
            else:
                await asyncio.sleep(1)
        return payment if payment["state"] == "SUCCESS" and not gave_up else None

    async def push(self) -> bool:
        """Send the outbox in batches; True once it is empty."""
        while self.pending:
            batch = self.pending[: contract.MAX_BATCH_SIZE]
            rows = [
                {
                    "id": r.id,
                    "station_id": r.station_id,
                    "kind": r.kind,
                    "business_day": r.business_day.isoformat(),
                    "created_at": r.created_at.isoformat(),
                    "member_id": r.member_id,
                    "total_fen": r.total_fen,
                    "points_earned": r.points_earned,
                    "points_redeemed": r.points_redeemed,
                    "body": r.body,
                    "prev_hash": r.prev_hash,
                    "hash": r.hash,
                }
                for r in batch
            ]
            status, result = await self.call(
                "POST /v1/transactions:batch", "POST", "/v1/transactions:batch", json={"transactions": rows}
            )
            if status != 200:
                return False
            settled = set()
            for row in result["results"]:
                if row["status"] == "rejected":
                    self.rejected.append(f"{row['id']}: {row.get('reason')} {row.get('message')}")
                settled.add(row["id"])
            self.pending = [r for r in self.pending if r.id not in settled]
        return True

    async def pull(self) -> None:
        for _ in range(50):
            status, page = await self.call(
                "GET /v1/members/changes",
                "GET",
                "/v1/members/changes",
                params={"cursor": self.cursor, "limit": PAGE},
            )
            if status != 200:
                return
            self.cursor = page["next_cursor"]
            if not page["has_more"]:
                break
        await self.call("GET /v1/keys/member-code", "GET", "/v1/keys/member-code")


# --- one run -------------------------------------------------------------------------------------------------

JUDGED = ("POST /v1/payments/identify", "POST /v1/payments", "POST /v1/transactions:batch", "GET /v1/members/changes")


@dataclass
class Violation:
    kind: str  # lost, doubled, unresolved
    detail: str


@dataclass
class Step:
    """One rate held for a while, and what came of it in its measured window."""

    offered: float  # sales/s
    window: tuple[float, float]
    stats: Stats
    cpu: dict[str, float]  # cores each part used in the window
    machine_busy: float  # of all CPUs, 0..1
    db_active: float = 0.0  # PostgreSQL sessions running a statement, on average
    db_locked: float = 0.0  # of them, waiting for a lock
    db_between: float = 0.0  # in a transaction, between two statements (the process works, or waits for the CPU)
    sustained: bool = True
    why: str = ""

    @property
    def seconds(self) -> float:
        return self.window[1] - self.window[0]

    @property
    def achieved(self) -> float:
        return len(self.stats.sales) / self.seconds

    @property
    def requests(self) -> float:
        """Requests per second the tills made to central (answered or not)."""
        return sum(len(self.stats.calls.get(endpoint, [])) for endpoint in ENDPOINTS[:-1]) / self.seconds

    @property
    def pull_share(self) -> float:
        """Of those, the member pulls and key fetches."""
        pulls = sum(len(self.stats.calls.get(e, [])) for e in ("GET /v1/members/changes", "GET /v1/keys/member-code"))
        return pulls / (self.requests * self.seconds) if self.requests else 0.0

    @property
    def others(self) -> float:
        """Cores used by processes that are not this benchmark's (other work on the machine)."""
        return max(0.0, self.machine_busy * (os.cpu_count() or 1) - sum(self.cpu.values()))


def judge(step: Step, p99_limit_ms: float) -> Step:
    """Sustained: the sales done short of the offered rate by no more than 10 %, or by no more than chance allows
    where that is more (3 standard deviations of a Poisson count); the till's calls' p99 within the limit; fewer than
    1 % of calls failing (5xx or no answer)."""
    expected = step.offered * step.seconds
    if len(step.stats.sales) < min(0.9 * expected, expected - 3 * expected**0.5):
        step.sustained, step.why = False, f"{step.achieved:.1f} sales/s done of {step.offered:.1f} offered"
        return step
    calls = [c for endpoint in ENDPOINTS[:-1] for c in step.stats.calls.get(endpoint, [])]
    failed = sum(1 for _, _, status in calls if not (isinstance(status, int) and status < 500))
    if calls and failed / len(calls) >= 0.01:
        step.sustained, step.why = False, f"{failed} of {len(calls)} calls failed"
        return step
    for endpoint in JUDGED:
        times = [seconds * 1000 for _, seconds, _ in step.stats.calls.get(endpoint, [])]
        if times and (p99 := percentile(times, 0.99)) > p99_limit_ms:
            step.sustained, step.why = False, f"p99 of {endpoint} {p99:,.0f} ms"
            return step
    return step


@dataclass
class RunResult:
    plan: Plan
    tills: int
    steps: list[Step]
    failovers: int
    violations: list[Violation]
    figures: dict[str, Any]

    @property
    def best(self) -> Step | None:
        """The highest step sustained; else the last one (the kill run: its one step, whatever came of it)."""
        sustained = [step for step in self.steps if step.sustained]
        return sustained[-1] if sustained else (self.steps[-1] if self.steps else None)


async def drive(
    central: Central, plan: Plan, mix: Mix, args: argparse.Namespace, agent_db: Path
) -> tuple[list[Till], list[Step], dict[str, Any]]:
    """Hold each of the plan's rates for a step (the kill in its time), stop at the first step not sustained,
    let the tills finish their sales and push everything."""
    balancer = Balancer(central.replica_urls, args.pool)
    engine = open_agent_database(agent_db)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
    stats = Stats()
    count = len(central.stores) * central.stations
    pace = Pace(gap_s=count / plan.rates[0])
    rng = random.Random(args.seed)
    tills = []
    for store_id in central.stores:
        for station in range(1, central.stations + 1):
            index = len(tills)
            tills.append(
                Till(
                    index,
                    store_id,
                    station,
                    index % plan.replicas,
                    balancer,
                    Journal(engine, f"{store_id}-T{station}", ZONE, 4),
                    writer,
                    stats,
                    mix,
                    pace,
                    central.head_cursor,
                    random.Random(rng.random()),
                )
            )
    figures: dict[str, Any] = {}
    started = time.monotonic()

    async def kill() -> None:
        await asyncio.sleep(plan.kill_at_s)
        central.kill("replica-1")
        figures["killed_at_s"] = time.monotonic() - started
        figures["killed_at"] = datetime.now(UTC)
        open_now = await asyncio.to_thread(central.open_payments)
        figures["open_at_kill"] = [otn for otn, _ in open_now]
        figures["held_by_killed"] = [otn for otn, owner in open_now if owner == central.replica_owner(1)]
        say(
            f"  replica-1 killed (SIGKILL) at {figures['killed_at_s']:.1f} s; {len(open_now)} payments open, "
            f"{len(figures['held_by_killed'])} of them held by replica-1"
        )

    killer = asyncio.create_task(kill()) if plan.kill_at_s is not None else None
    waits: list[tuple[float, int, int, int]] = []
    sampling = threading.Event()
    waiting: Counter[str] = Counter()
    sampler = threading.Thread(target=central.database_waits, args=(sampling, waits, waiting), daemon=True)
    sampler.start()
    tasks = [asyncio.create_task(till.run()) for till in tills]
    tasks += [asyncio.create_task(till.pull_now_and_then()) for till in tills]
    steps: list[Step] = []
    for rate in plan.rates:
        pace.set(count / rate)
        await asyncio.sleep(args.settle)
        cpu_before, machine_before, start = central.cpu(), Cpu.machine(), time.monotonic()
        await asyncio.sleep(plan.step_s - args.settle)
        cpu_after, machine_after, end = central.cpu(), Cpu.machine(), time.monotonic()
        busy, total = (machine_after[0] - machine_before[0]), (machine_after[1] - machine_before[1])
        step = Step(
            offered=rate,
            window=(start, end),
            stats=stats.in_window(start, end),
            cpu={name: (cpu_after[name] - cpu_before[name]) / (end - start) for name in cpu_after},
            machine_busy=busy / total if total else 0.0,
        )
        seen = [sample[1:] for sample in waits if start <= sample[0] < end]
        if seen:
            step.db_active, step.db_locked, step.db_between = (
                sum(column) / len(seen) for column in zip(*seen, strict=True)
            )
        steps.append(judge(step, args.p99_limit))
        verdict = "sustained" if step.sustained else f"not sustained: {step.why}"
        say(
            f"  {rate:,.1f} sales/s offered, {step.achieved:,.1f} done; {verdict} (PostgreSQL: {step.db_active:.1f} "
            f"statements running, {step.db_locked:.1f} waiting for a lock, {step.db_between:.1f} between two)"
        )
        if not step.sustained and plan.kill_at_s is None:
            break
    if killer is not None:
        await killer
    sampling.set()
    stopped = time.monotonic()
    pace.set(stop=True)
    await asyncio.gather(*tasks)
    figures["finish_s"] = time.monotonic() - stopped
    # Drain: every till pushes what it journaled (again and again while a replica is away).
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(await asyncio.gather(*(till.push() for till in tills if till.pending))):
            break
        await asyncio.sleep(1)
    figures["failovers"] = balancer.failovers
    figures["lock_waits"] = waiting.most_common(3)
    await balancer.aclose()
    writer.shutdown(wait=True)
    engine.dispose()
    return tills, steps, figures


def wait_final(database_url: str, within_s: float) -> float:
    """Seconds until central holds every payment final (or `within_s` passed)."""
    engine = sa.create_engine(database_url)
    started = time.monotonic()
    query = sa.text("SELECT count(*) FROM payment WHERE state NOT IN :final").bindparams(
        sa.bindparam("final", expanding=True)
    )
    try:
        while time.monotonic() - started < within_s:
            with engine.connect() as connection:
                if connection.execute(query, {"final": list(FINAL)}).scalar_one() == 0:
                    break
            time.sleep(0.5)
    finally:
        engine.dispose()
    return time.monotonic() - started


def check(database_url: str, agent_db: Path, tills: list[Till], sim: dict) -> tuple[list[Violation], dict[str, Any]]:
    """Every journaled sale at central once, as journaled; money at the provider as the sales say; payments final
    and held."""
    violations: list[Violation] = []
    station_store = {till.station_id: till.store_id for till in tills}
    agent = sa.create_engine(f"sqlite:///{agent_db}")
    with agent.connect() as connection:
        journaled = {
            row.id: (station_store[row.station_id], row.total_fen)
            for row in connection.execute(sa.text("SELECT id, station_id, total_fen FROM journal WHERE kind = 'sale'"))
        }
    agent.dispose()
    sold = {s.id: s for till in tills for s in till.sold}
    tendered = {s.out_trade_no: s for s in sold.values() if s.out_trade_no}
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        at_central = Counter()
        amounts: dict[str, tuple[str, int]] = {}
        for row in connection.execute(sa.text("SELECT id, store_id, total_fen FROM store_transaction")):
            at_central[row.id] += 1
            amounts[row.id] = (row.store_id, row.total_fen)
        payments = {
            row.out_trade_no: row
            for row in connection.execute(
                sa.text("SELECT out_trade_no, state, amount_fen, code, finished_at FROM payment")
            )
        }
    engine.dispose()

    for till in tills:
        for reason in till.rejected:
            violations.append(Violation("lost", f"central rejected {reason}"))
    if set(journaled) != set(sold):
        violations.append(Violation("lost", f"the journal holds {len(journaled)} sales, the tills made {len(sold)}"))
    for sale_id, (store_id, total) in journaled.items():
        if at_central[sale_id] == 0:
            violations.append(Violation("lost", f"sale {sale_id} of {store_id} ({total} fen) is not at central"))
        elif amounts[sale_id] != (store_id, total):
            violations.append(
                Violation("lost", f"sale {sale_id}: journaled {store_id} {total}, central {amounts[sale_id]}")
            )
    for sale_id, count in at_central.items():
        if sale_id not in journaled:
            violations.append(Violation("doubled", f"central holds {sale_id}, which no till journaled"))
        elif count > 1:
            violations.append(Violation("doubled", f"central holds sale {sale_id} {count} times"))

    orders = provider_orders(sim, {"orders": [], "refunds": []})
    for out_trade_no, sale in tendered.items():
        kept = orders[out_trade_no].kept_fen if out_trade_no in orders else 0
        if kept < sale.total_fen:
            violations.append(
                Violation(
                    "lost", f"{out_trade_no}: sale {sale.id} took {sale.total_fen} fen, the provider keeps {kept}"
                )
            )
        elif kept > sale.total_fen:
            violations.append(
                Violation("doubled", f"{out_trade_no}: the provider keeps {kept} fen for a sale of {sale.total_fen}")
            )
        payment = payments.get(out_trade_no)
        if payment is None or payment.state != "SUCCESS":
            state = payment.state if payment else "nothing"
            violations.append(Violation("lost", f"{out_trade_no}: sale {sale.id} paid by it, central has {state}"))
    for out_trade_no, order in orders.items():
        if out_trade_no not in tendered and order.kept_fen > 0:
            violations.append(
                Violation(
                    "doubled",
                    f"{out_trade_no}: the provider keeps {order.kept_fen} fen, no sale holds it (paid cash too)",
                )
            )
    for out_trade_no, payment in payments.items():
        if payment.state not in FINAL:
            violations.append(Violation("unresolved", f"{out_trade_no}: {payment.state} at central"))
        elif payment.state == "SUCCESS" and out_trade_no not in tendered:
            violations.append(Violation("unresolved", f"{out_trade_no}: SUCCESS at central, no sale holds it"))
    states = Counter(p.state for p in payments.values())
    figures = {
        "sales_journaled": len(journaled),
        "sales_at_central": sum(at_central.values()),
        "payments": len(payments),
        "payment_states": dict(sorted(states.items())),
        "provider_orders": len(orders),
        "given_up": sum(len(s.given_up) for s in sold.values()),
        "states": {otn: payment.state for otn, payment in payments.items()},
        "finished": {otn: payment.finished_at for otn, payment in payments.items()},
    }
    return violations, figures


def run_plan(central: Central, plan: Plan, mix: Mix, args: argparse.Namespace, base: Path) -> RunResult:
    run = base / plan.slug
    run.mkdir()
    tills = len(central.stores) * central.stations
    shape = (
        f"{plan.rates[0]:,.1f} sales/s for {plan.step_s:.0f} s, replica-1 killed at {plan.kill_at_s:.0f} s"
        if plan.kill_at_s is not None
        else f"from {plan.rates[0]:,.1f} sales/s up, {plan.step_s:.0f} s a step"
    )
    say(f"{plan.name}: {tills:,} tills, {shape}")
    central.start_run(run, plan, args.userpaying_seconds, args.lease)
    shm = Path("/dev/shm")
    agent_db = Path(tempfile.mkdtemp(prefix="pos-load-tills-", dir=shm if shm.is_dir() else None)) / "tills.db"
    try:
        tills_run, steps, figures = asyncio.run(drive(central, plan, mix, args, agent_db))
        say(f"  load stopped; the tills finished their sales in {figures['finish_s']:.1f} s and pushed everything")
        figures["final_wait_s"] = wait_final(central.database_url, args.final_within)
        sim = httpx.get(central.sim_url + "/_sim/records", timeout=60).json()
        violations, found = check(central.database_url, agent_db, tills_run, sim)
        figures |= found
        if "held_by_killed" in figures:
            states = found["states"]
            figures["held_ended"] = dict(sorted(Counter(states[otn] for otn in figures["held_by_killed"]).items()))
            ends = [found["finished"][otn] for otn in figures["held_by_killed"] if found["finished"][otn] is not None]
            figures["held_final_s"] = max(((end - figures["killed_at"]).total_seconds() for end in ends), default=0.0)
    finally:
        shutil.rmtree(agent_db.parent, ignore_errors=True)
        central.stop_run()
    return RunResult(plan, tills, steps, figures["failovers"], violations, figures)


# --- the report ----------------------------------------------------------------------------------------------


def errors_of(calls: list[tuple[float, float, int | str]]) -> str:
    bad = Counter(str(status) for _, _, status in calls if not (isinstance(status, int) and status < 400))
    return ", ".join(f"{status} x{count}" for status, count in sorted(bad.items())) or "-"


def report(results: list[RunResult], central: Central, mix: Mix, args: argparse.Namespace) -> str:
    one = next((r.best for r in results if r.plan.replicas == 1 and r.plan.kill_at_s is None), None)
    jobs = (
        "replicas serve with --no-jobs; one `pos-central worker` runs the periodic jobs and takes over the payments "
        "of a replica that died"
        if central.has_no_jobs and central.has_worker
        else "one `pos-central worker`; the replicas run the periodic jobs too (no --no-jobs in this release)"
        if central.has_worker
        else "no `pos-central worker` in this release: every replica runs the periodic jobs itself"
    )
    out = [
        f"{len(central.stores)} stores x {central.stations} tills = {len(central.stores) * central.stations:,} tills; "
        f"{mix.code_share:.0%} of sales by WeChat payment code ({mix.userpaying_share:.0%} of those USERPAYING, "
        f"{mix.declined_share:.0%} declined), the payer identified before {mix.identify_share:.0%} of them; a push "
        f"every {mix.push_every} sales, a member pull every {mix.pull_every_s:g} s per till; {central.members:,} "
        f"members, the simulator's customers 1-{central.payers:,} among them.",
        f"The kill run: {args.kill_userpaying_share:.0%} of code payments USERPAYING, so that payments are open "
        "(held by a replica) when it dies.",
        f"Balancer: till i -> replica i mod N; a refused connection fails over to the next replica; {jobs}.",
        f"Sustained: the highest offered rate (steps of {args.step_factor:g}x, {args.step:g} s each, the first "
        f"{args.settle:g} s not measured) with the sales done (at most 10 % short, or within chance), p99 of the "
        "till's calls under "
        f"{args.p99_limit:,.0f} ms and under 1 % failed. CPU in cores (the machine has {os.cpu_count()}); "
        "'others': processes outside this benchmark.",
        "",
        "| run | replicas | sustained sales/s | ratio to 1 replica | requests/s | by code | failovers | CPU: generator · "
        "replicas · worker · PostgreSQL · simulator · others | lost · doubled · unresolved |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        step = r.best
        verdict = Counter(v.kind for v in r.violations)
        if step is None:
            rate = ratio = requests = code = cpu = "-"
        else:
            by_code = sum(1 for _, code in step.stats.sales if code)
            rate = f"{step.achieved:,.1f} (offered {step.offered:,.1f}{'' if step.sustained else ', not sustained'})"
            ratio = f"{step.achieved / one.achieved:.2f}" if one is not None else "-"
            requests = f"{step.requests:,.0f} ({step.pull_share:.0%} pulls)"
            code = f"{by_code / len(step.stats.sales):.0%}" if step.stats.sales else "-"
            parts = ("generator", "replicas", "worker", "postgresql", "simulator")
            cpu = " · ".join(f"{step.cpu[k]:.2f}" for k in parts) + f" · {step.others:.2f}"
        out.append(
            f"| {r.plan.name} | {r.plan.replicas} | {rate} | {ratio} | {requests} | {code} | {r.failovers:,} | {cpu} | "
            f"{verdict['lost']} · {verdict['doubled']} · {verdict['unresolved']} |"
        )
    out += [
        "",
        "Steps (offered -> done sales/s [PostgreSQL sessions on average: running a statement / of them waiting for a "
        "lock / in a transaction between two statements]):",
    ]
    for r in results:
        marks = ", ".join(
            f"{s.offered:,.1f} -> {s.achieved:,.1f}"
            + ("" if s.sustained else f" ({s.why})")
            + f" [{s.db_active:.1f} / {s.db_locked:.1f} / {s.db_between:.1f}]"
            for s in r.steps
        )
        out.append(f"- {r.plan.name}: {marks}")
    out += [
        "",
        "Latency at the sustained step in ms, p50 / p99 (calls; errors by status). The follow is a long-poll that "
        "waits up to 5 s for a change; a sale paid by code includes the customer's confirming on the phone for "
        "USERPAYING.",
        "",
        "| endpoint | " + " | ".join(r.plan.name for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for endpoint in ENDPOINTS:
        cells = []
        for r in results:
            calls = r.best.stats.calls.get(endpoint, []) if r.best else []
            if not calls:
                cells.append("-")
                continue
            times = [seconds * 1000 for _, seconds, _ in calls]
            cells.append(
                f"{percentile(times, 0.5):,.0f} / {percentile(times, 0.99):,.0f} ({len(calls):,}; {errors_of(calls)})"
            )
        out.append(f"| {endpoint} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def verdicts(results: list[RunResult]) -> tuple[str, bool]:
    lines = []
    ok = True
    for r in results:
        count = Counter(v.kind for v in r.violations)
        f = r.figures
        killed = (
            f" replica-1 killed at {f['killed_at_s']:.1f} s with {len(f['open_at_kill'])} payments open, "
            f"{len(f['held_by_killed'])} held by it, which ended {f['held_ended']} (the last "
            f"{f['held_final_s']:.1f} s after the kill);"
            if "killed_at_s" in f
            else ""
        )
        lines.append(
            f"{r.plan.name}:{killed} {f['sales_journaled']:,} sales journaled, {f['sales_at_central']:,} at central; "
            f"{f['payments']:,} payments {f['payment_states']}, {f['given_up']} given up by a till; every payment "
            f"final {f['final_wait_s']:.1f} s after the drain; "
            f"lost {count['lost']}, doubled {count['doubled']}, unresolved {count['unresolved']}"
        )
        if f["lock_waits"]:
            seen = "; ".join(f"{count} x {statement}" for statement, count in f["lock_waits"])
            lines.append(f"  statements seen waiting for a lock (half-second samples): {seen}")
        for v in r.violations[:20]:
            lines.append(f"  {v.kind}: {v.detail}")
        if len(r.violations) > 20:
            lines.append(f"  ... and {len(r.violations) - 20} more")
        ok = ok and not r.violations
    return "\n".join(lines), ok


def rates(start: float, factor: float, highest: float) -> tuple[float, ...]:
    steps = [start]
    while steps[-1] * factor <= highest:
        steps.append(round(steps[-1] * factor, 1))
    return tuple(steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=500)
    parser.add_argument("--stations", type=int, default=4, help="tills per store")
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--payers", type=int, default=5_000, help="the simulator's customers 1..N are members")
    parser.add_argument("--start-rate", type=float, default=3.0, help="offered sales/s of the first step")
    parser.add_argument("--step-factor", type=float, default=1.3, help="each step offers this much more")
    parser.add_argument("--max-rate", type=float, default=400.0)
    parser.add_argument("--step", type=float, default=20.0, help="seconds per step")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds at the start of a step not measured")
    parser.add_argument("--p99-limit", type=float, default=1000.0, help="ms: a step above it is not sustained")
    parser.add_argument("--kill-rate", type=float, default=0.0, help="sales/s of the kill run (0: 1 replica's)")
    parser.add_argument("--kill-duration", type=float, default=60.0, help="seconds of the kill run")
    parser.add_argument("--kill-at", type=float, default=0.5, help="the kill, as a fraction of --kill-duration")
    parser.add_argument(
        "--kill-userpaying-share",
        type=float,
        default=0.5,
        help="of code payments in the kill run: more payments open (held by a replica) when it dies",
    )
    parser.add_argument("--code-share", type=float, default=0.6)
    parser.add_argument("--userpaying-share", type=float, default=0.1, help="of code payments")
    parser.add_argument("--declined-share", type=float, default=0.02, help="of code payments")
    parser.add_argument("--identify-share", type=float, default=0.5, help="of code payments")
    parser.add_argument("--push-every", type=int, default=5, help="sales between two pushes")
    parser.add_argument("--pull-every", type=float, default=30.0, help="seconds between two member pulls")
    parser.add_argument("--till-limit", type=float, default=60.0, help="a till voids a payment open this long")
    parser.add_argument("--userpaying-seconds", type=float, default=3.0, help="the simulated customer confirms")
    parser.add_argument("--pool", type=int, default=100, help="requests in flight per replica (the balancer's)")
    parser.add_argument("--lease", type=float, default=5.0, help="lease_seconds at central (when it has them)")
    parser.add_argument("--final-within", type=float, default=180.0, help="bounded wait for every payment final")
    parser.add_argument("--runs", default="1,2,kill", help="which runs: 1, 2, kill (comma-separated)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the runs' folder (logs, settings)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 30 s")
    args = parser.parse_args(argv)
    if args.quick:
        args.stores, args.stations, args.members, args.payers = 10, 4, 500, 100
        args.start_rate, args.max_rate, args.step, args.settle = 20.0, 20.0, 3.0, 0.5
        args.kill_duration, args.pull_every, args.till_limit, args.userpaying_seconds = 4.0, 2.0, 8.0, 1.0
        args.lease, args.final_within, args.p99_limit = 2.0, 30.0, 5000.0
    mix = Mix(
        code_share=args.code_share,
        userpaying_share=args.userpaying_share,
        declined_share=args.declined_share,
        identify_share=args.identify_share,
        push_every=args.push_every,
        pull_every_s=args.pull_every,
        till_limit_s=args.till_limit,
    )
    ramp = rates(args.start_rate, args.step_factor, args.max_rate)
    chosen = [name.strip() for name in args.runs.split(",")]
    unknown = set(chosen) - {"1", "2", "kill"}
    if unknown:
        parser.error(f"--runs: unknown {', '.join(sorted(unknown))}; choose from 1, 2, kill")

    base = Path(tempfile.mkdtemp(prefix="pos-central-load-"))
    central = Central(args.stores, args.stations, args.members, args.payers, args.quick)
    results: list[RunResult] = []
    try:
        started = time.monotonic()
        central.start_cluster()
        central.seed_template()
        say(
            f"PostgreSQL on port {central.cluster.port}; {args.members:,} members, {len(central.stores)} stores seeded "
            f"in {time.monotonic() - started:.1f} s; worker: {'yes' if central.has_worker else 'not in this release'}, "
            f"--no-jobs: {'yes' if central.has_no_jobs else 'no'}, lease_seconds: {'yes' if central.has_lease else 'no'}"
        )
        for name in chosen:
            if name == "kill":
                one = next((r.best for r in results if r.plan.replicas == 1 and r.best.sustained), None)
                rate = args.kill_rate or (one.offered if one is not None else args.start_rate)
                at = args.kill_duration * args.kill_at
                plan = Plan("kill", "2 replicas, one killed", 2, (rate,), args.kill_duration, at)
                results.append(
                    run_plan(central, plan, replace(mix, userpaying_share=args.kill_userpaying_share), args, base)
                )
            else:
                plan = Plan(f"r{name}", f"{name} replica{'s' if name != '1' else ''}", int(name), ramp, args.step)
                results.append(run_plan(central, plan, mix, args, base))
    finally:
        central.close()
        if args.keep:
            say(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    print(report(results, central, mix, args))
    print()
    text, ok = verdicts(results)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("POS_CENTRAL_LOG_LEVEL", "WARNING")
    sys.exit(main())
