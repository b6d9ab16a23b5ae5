"""Fixtures that run the real central service for tests: on SQLite and on a throw-away PostgreSQL cluster,
served by uvicorn on 127.0.0.1 in a background thread, with fault injection for the sync tests.

`tests/central/conftest.py` loads this module; other test folders load it with
`pytest_plugins = ["tests.central.plugin"]` in the root `tests/conftest.py`, then use:

- `central` — a running service on a fresh database, once per database kind (test ids `[sqlite]`,
  `[postgresql]`). `central.add_store("SH001")` registers a store and returns its credentials,
  `central.client(creds)` an httpx client that sends them, `central.seed(members=300)` demo members,
  `central.faults` cuts or replaces answers, `central.stop()` / `central.start()` take it down and back up on
  the same port, `central.set_now(dt)` moves its clock.
- `central_factory(**settings)` — more services, or one with other settings (e.g. `max_page_size=5`).
- `central_database_url` — a fresh, empty database URL of each kind; `postgres_cluster` — the session's cluster.

When PostgreSQL is not installed, the `[postgresql]` tests are skipped with the reason, or fail when CI=true.
"""

from __future__ import annotations

import asyncio
import glob
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import uvicorn

from central import card, feed, identity
from central.config import Settings
from central.db import CentralSession, Pool, open_database, write_session
from central.deps import get_now
from central.main import create_app
from central.pii import mask_phone, phone_hash
from central.seed import SeedReport, seed_demo
from central.stores import add_store
from tests.support.credentials import PHONE_KEY

IN_CI = os.environ.get("CI") == "true"


# --- PostgreSQL ----------------------------------------------------------------------------------------------


def _pg_bindir() -> Path | None:
    if found := os.environ.get("POS_CENTRAL_PG_BINDIR"):
        return Path(found)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]), reverse=True
    )
    if candidates:
        return Path(candidates[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """A PostgreSQL cluster of its own in a temporary directory, on a free loopback port, trust auth.

    As root the server runs as the `postgres` user (it refuses to run as root), as Debian's packages set up.
    Durability is off (fsync): it is thrown away after the session.
    """

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="pos-central-pg-"))
        self._names = itertools.count(1)
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            log = self.dir / "data" / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")

    def start(self) -> None:
        data = self.dir / "data"
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync")
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(data), "-o", options, "-l", str(data / "log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        name = f"central_{next(self._names)}"
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            engine.dispose()
        return self.url(name)


def start_postgres() -> PostgresCluster:
    """A throw-away cluster, started, for a script (the benchmarks); exits saying why when there is no server."""
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        sys.exit("PostgreSQL server binaries not found (Debian: apt-get install postgresql)")
    cluster = PostgresCluster(bindir)
    cluster.start()
    return cluster


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        message = "PostgreSQL server binaries not found (Debian: apt-get install postgresql); PostgreSQL tests not run"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired, LookupError) as exc:
        shutil.rmtree(cluster.dir, ignore_errors=True)
        message = f"cannot start a PostgreSQL cluster: {exc}"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def central_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'central.db'}"
    # Asked for lazily, so a run of only the SQLite tests starts no cluster.
    return request.getfixturevalue("postgres_cluster").new_database()


# --- the service ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoreCredentials:
    store_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "X-Store-Id": self.store_id}


async def read_body(receive: Callable) -> bytes:
    """An ASGI request's whole body."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


class InjectedFault(Exception):
    """Raised inside the server to cut a connection: uvicorn closes it without finishing the answer."""


class Held:
    """Requests taken by `Faults.hold`: their answers were lost at once; each is handled when released."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.statuses: list[int] = []  # what central answered each one, once handled
        self._handled = threading.Condition()

    def release(self) -> None:
        self.released.set()

    def wait_handled(self, count: int, within: float = 15) -> list[int]:
        with self._handled:
            assert self._handled.wait_for(lambda: len(self.statuses) >= count, within), (
                f"{len(self.statuses)} of {count} handled"
            )
        return list(self.statuses)

    def _record(self, status: int) -> None:
        with self._handled:
            self.statuses.append(status)
            self._handled.notify_all()


@dataclass
class _Rule:
    method: str | None
    path: str
    times: int
    action: str  # "drop", "respond" or "hold"
    status: int = 500
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    held: Held | None = None


class Faults:
    """ASGI wrapper around the app that misbehaves on request, for the next `times` matching requests.

    - `drop_response(path)`: the request runs to the end (the batch is committed), then the connection is cut
      after the status line, so the client never gets the answer.
    - `respond(path, status, body, headers)`: answer this instead, without reaching the service (500, 429 with
      Retry-After, 200 with a body that is not JSON, ...).
    - `hold(path)`: the request is read whole and the connection cut at once (the client never hears), and it is
      handled only when the test releases it — a request still on its way when the client asks about it.
    `path` matches the start of the URL path (for `hold`, the whole path); `hits` counts requests per path that
    reached the wrapper.
    """

    def __init__(self, app: Any):
        self.app = app
        self._later: set[asyncio.Task] = set()
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self.hits: dict[str, int] = {}

    def drop_response(self, path: str, *, times: int = 1, method: str | None = None) -> None:
        with self._lock:
            self._rules.append(_Rule(method, path, times, "drop"))

    def respond(
        self,
        path: str,
        status: int,
        body: bytes | str = b"",
        *,
        headers: dict[str, str] | None = None,
        times: int = 1,
        method: str | None = None,
    ) -> None:
        raw = body.encode() if isinstance(body, str) else body
        pairs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        with self._lock:
            self._rules.append(_Rule(method, path, times, "respond", status, raw, pairs))

    def hold(self, path: str, *, times: int = 1, method: str | None = None) -> Held:
        held = Held()
        with self._lock:
            self._rules.append(_Rule(method, path, times, "hold", held=held))
        return held

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _take(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            self.hits[path] = self.hits.get(path, 0) + 1
            for rule in self._rules:
                matches = path == rule.path if rule.action == "hold" else path.startswith(rule.path)
                if matches and rule.method in (None, method):
                    rule.times -= 1
                    if rule.times <= 0:
                        self._rules.remove(rule)
                    return rule
        return None

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        rule = self._take(scope["method"], scope["path"]) if scope["type"] == "http" else None
        if rule is None:
            await self.app(scope, receive, send)
        elif rule.action == "hold":
            body = await read_body(receive)
            task = asyncio.get_running_loop().create_task(self._handle_later(scope, body, rule.held))
            self._later.add(task)
            task.add_done_callback(self._later.discard)
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1000")]})
            raise InjectedFault(f"fault injected: {scope['path']} held, its answer lost")
        elif rule.action == "respond":
            headers = [
                (b"content-length", str(len(rule.body)).encode()),
                (b"content-type", b"application/json"),
                *rule.headers,
            ]
            await send({"type": "http.response.start", "status": rule.status, "headers": headers})
            await send({"type": "http.response.body", "body": rule.body})
        else:
            messages: list[dict] = []

            async def keep(message: dict) -> None:
                messages.append(message)

            await self.app(scope, receive, keep)
            await send(messages[0])  # the status line and headers, then nothing
            raise InjectedFault(f"fault injected: answer to {scope['path']} dropped after it was handled")

    async def _handle_later(self, scope: dict, body: bytes, held: Held) -> None:
        while not held.released.is_set():
            await asyncio.sleep(0.01)
        delivered = False
        statuses: list[int] = []

        async def receive() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # the client is long gone; nothing more comes
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await self.app(scope, receive, send)
        held._record(statuses[0])


class CentralServer:
    """The central app on a real socket. `start()`/`stop()` can be called again (same port)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.engine = open_database(settings.database_url, Pool.from_settings(settings))
        self.app = create_app(settings, self.engine)
        self.faults = Faults(self.app)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._server is not None:
            return
        # IPPROTO_TCP named explicitly: asyncio sets TCP_NODELAY on accepted connections only when the listening
        # socket says TCP, and without it every keep-alive answer waits ~40 ms for a delayed ACK (Nagle).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        config = uvicorn.Config(
            self.faults,
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            lifespan="on",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=lambda: asyncio.run(server.serve(sockets=[sock])), name=f"central:{self.port}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 15
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the central test server did not start")
            time.sleep(0.01)
        self._server, self._thread = server, thread

    def stop(self) -> None:
        """Stop serving: connections are refused until `start()`."""
        if self._server is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = None

    def close(self) -> None:
        """Stop without waiting for uvicorn's shutdown ticks (~0.2 s): nothing is in flight at teardown, and the
        next test gets a port of its own."""
        if self._server is not None:
            self._server.should_exit = True
            self._server = self._thread = None
        self.engine.dispose()

    def add_store(self, store_id: str, token: str | None = None) -> StoreCredentials:
        with write_session(self.engine) as session:
            token = add_store(session, store_id, datetime.now(UTC), token=token or f"token-of-{store_id}-0123456789")
            session.commit()
        return StoreCredentials(store_id, token)

    def client(self, credentials: StoreCredentials | None = None, **kwargs: Any) -> httpx.Client:
        headers = credentials.headers if credentials else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=kwargs.pop("timeout", 10), **kwargs)

    def session(self) -> CentralSession:
        return write_session(self.engine)

    def add_member(
        self,
        member_id: str | None = None,
        *,
        points: int = 0,
        tier: str = "normal",
        display_name: str = "王*明",
        phone: str | None = None,
        identifiers: dict[str, str] | None = None,
    ) -> str:
        """A member with these identifiers (kind -> value) and an opening balance; its id."""
        now = datetime.now(UTC)
        with self.session() as session:
            feed.lock(session)
            member = identity.create_member(
                session,
                now,
                tier=tier,
                display_name=display_name,
                phone_masked=mask_phone(phone) if phone else None,
                member_id=member_id,
            )
            wanted = dict(identifiers or {})
            if phone:
                wanted["phone_hash"] = phone_hash(self.settings.key_bytes(), phone)
            for kind, value in wanted.items():
                identity.attach(session, member.id, kind, value, now)
            card.book(session, member.id, "opening", points, f"test:{member.id}", now)
            created = member.id
            session.commit()
        return created

    def seed(self, members: int = 300, seed: int = 1) -> SeedReport:
        return seed_demo(self.engine, self.settings.key_bytes(), members, seed)

    def set_now(self, now: datetime | None) -> None:
        """Move the service's clock (None: back to real time)."""
        if now is None:
            self.app.dependency_overrides.pop(get_now, None)
        else:
            self.app.dependency_overrides[get_now] = lambda: now


def central_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(database_url=database_url, phone_hash_key=PHONE_KEY, environment="development")
    return Settings(**(values | overrides))


@pytest.fixture
def central_factory(
    central_database_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., CentralServer]]:
    """Start a central service with these settings overrides; the first one gets `central_database_url`,
    later ones a fresh database of the same kind."""
    servers: list[CentralServer] = []

    def make(**overrides: Any) -> CentralServer:
        url = central_database_url
        if servers:
            url = (
                f"sqlite:///{tmp_path / f'central-{len(servers)}.db'}"
                if url.startswith("sqlite")
                else request.getfixturevalue("postgres_cluster").new_database()
            )
        server = CentralServer(central_settings(url, **overrides))
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.close()


@pytest.fixture
def central(central_factory: Callable[..., CentralServer]) -> CentralServer:
    return central_factory()
