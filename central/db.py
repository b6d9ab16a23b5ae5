"""The central database: one code path for SQLite (one file, the default) and PostgreSQL (many stores).

SQLite: WAL, `synchronous=FULL`, foreign keys on, and every write transaction begins IMMEDIATE so concurrent
writers queue on the busy timeout instead of failing when a reader upgrades its lock. Read-only sessions
(`read_session`) begin a plain deferred transaction and never wait for a writer.

The schema belongs to the Alembic migrations in `central/migrations`, run by `pos-central serve` at start and
`pos-central db upgrade`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlmodel import Session

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 10_000


class DatabaseError(Exception):
    """The database cannot be used; the message says what to do."""


class UTCDateTime(sa.types.TypeDecorator):
    """Aware UTC datetimes on both databases: timestamptz on PostgreSQL, naive UTC text on SQLite."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: central stores aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def normalize_url(url: str) -> str:
    """Use psycopg 3 for PostgreSQL whatever driver the URL names (or none)."""
    for prefix in ("postgresql+psycopg2://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@dataclass(frozen=True)
class Pool:
    """A process's PostgreSQL connections (docs/DEPLOYING-CENTRAL.md has the sizing rule)."""

    size: int = 10  # kept open
    max_overflow: int = 10  # opened under load, closed when idle
    timeout: float = 5.0  # a request waits this long for a connection, then is answered 503 (central.main)
    statement_timeout: float = 15.0  # PostgreSQL cancels a longer statement; 0: no limit

    @classmethod
    def from_settings(cls, settings: Any) -> Pool:
        return cls(
            size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
            timeout=settings.db_pool_timeout_seconds,
            statement_timeout=settings.db_statement_timeout_seconds,
        )


def create_engine(url: str, pool: Pool | None = None) -> sa.Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    pool = pool or Pool()
    try:
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool.size,
            max_overflow=pool.max_overflow,
            pool_timeout=pool.timeout,
            # Server-side: a runaway query is cancelled and its connection comes back, instead of holding it.
            connect_args={"options": f"-c statement_timeout={int(pool.statement_timeout * 1000)}"},
        )
    except ModuleNotFoundError as exc:
        # The PostgreSQL driver is an extra: a till installs the agent without it.
        if (exc.name or "").partition(".")[0] != "psycopg":
            raise
        raise DatabaseError("PostgreSQL needs the psycopg driver: pip install 'pos-edge-agent[central]'") from None


def _sqlite_engine(url: str) -> sa.Engine:
    path = sa.engine.make_url(url).database
    if path and path != ":memory:":
        if not Path(path).parent.is_dir():
            raise DatabaseError(
                f"database directory {Path(path).parent} does not exist; create it or change database_url"
            )
        if not Path(path).exists():
            # It will hold member data and the member-code signing keys: readable by this user only. SQLite
            # gives its -wal and -shm files the same mode.
            try:
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            except OSError as exc:
                raise DatabaseError(f"cannot create {path}: {exc.strerror}") from None
    engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record) -> None:
        # SQLAlchemy's "begin" event below issues BEGIN, instead of the driver's implicit deferred one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        read_only = connection.get_execution_options().get("read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


class CentralSession(Session):
    """Central's sessions: `central.feed` hands out feed versions for the members touched when one commits."""


def write_session(engine: sa.Engine) -> CentralSession:
    return CentralSession(engine)


def read_session(engine: sa.Engine) -> CentralSession:
    """A session whose transactions only read: on SQLite they never wait for, or hold up, a writer."""
    return CentralSession(engine.execution_options(read_only=True))


# --- migrations ----------------------------------------------------------------------------------------------


def migrate(engine: sa.Engine, revision: str = "head") -> None:
    """Upgrade the schema in place, in one transaction: a failed upgrade leaves the previous schema."""
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # An upgrade may rewrite a large table: no statement timeout for it.
                connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
            before = _check_not_newer(connection)
            config = _alembic_config()
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            after = MigrationContext.configure(connection).get_current_revision()
    except sa.exc.OperationalError as exc:
        raise DatabaseError(
            f"cannot open the database ({exc.orig}); check database_url and that it is reachable"
        ) from exc
    if after != before:
        log.info("database schema upgraded from %s to %s", before or "empty", after)


def schema_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _check_not_newer(connection: sa.Connection) -> str | None:
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None:
        return None
    try:
        ScriptDirectory.from_config(_alembic_config()).get_revision(current)
    except CommandError:
        raise DatabaseError(
            f"the database was written by a newer release of pos-central (schema {current}); "
            "run that release, or restore a backup made by this one"
        ) from None
    return current


def open_database(url: str, pool: Pool | None = None) -> sa.Engine:
    """An engine on `url` with the schema upgraded to this release's head."""
    engine = create_engine(url, pool)
    try:
        migrate(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def hold_single_process(engine: sa.Engine) -> IO[bytes] | None:
    """On a SQLite file, make this process the only central process on it, or say why it cannot start: SQLite
    serves one process (its leases, jobs and payments assume it). The lock lives as long as the returned file;
    PostgreSQL takes any number of processes (None)."""
    if engine.dialect.name != "sqlite" or not engine.url.database or engine.url.database == ":memory:":
        return None
    path = Path(engine.url.database + ".lock")
    lock = open(path, "ab")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise DatabaseError(
            f"another pos-central process is using {engine.url.database}: SQLite serves one process only. "
            "Stop the other one, or run several processes on PostgreSQL (docs/DEPLOYING-CENTRAL.md)"
        ) from None
    return lock
