"""The agent's SQLite database: opened safely, upgraded in place, never left half-written.

WAL with `synchronous=FULL` keeps every committed transaction across a power cut (NORMAL may lose the last
ones). Every write transaction starts with BEGIN IMMEDIATE so two writers queue on the busy timeout instead
of failing when a reader tries to upgrade its lock.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 5000


class StorageError(Exception):
    """The database cannot be used; the message says what to do."""


class DatabaseDirectoryMissing(StorageError):
    pass


class DatabaseNotWritable(StorageError):
    pass


class DatabaseFromNewerRelease(StorageError):
    pass


class DatabaseCorrupt(StorageError):
    pass


def create_engine(path: Path) -> sa.Engine:
    """An engine on an existing database file, with the agent's pragmas on every connection."""
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, instead of the driver's implicit deferred one.
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


def reader(engine: sa.Engine) -> sa.Connection:
    """A connection whose transactions only read: they never wait for, or hold up, a writer."""
    return engine.connect().execution_options(read_only=True)


def open_database(path: Path) -> sa.Engine:
    """Open (creating if needed) the database at `path` and upgrade its schema to this release's head."""
    path = Path(path)
    _prepare_file(path)
    engine = create_engine(path)
    try:
        migrate(engine)
    except sa.exc.OperationalError as exc:
        engine.dispose()
        raise _translate(path, exc) from exc
    except sa.exc.DatabaseError as exc:
        engine.dispose()
        raise DatabaseCorrupt(
            f"{path} is not a usable SQLite database ({exc.orig}); restore it from a backup or move it aside"
        ) from exc
    except BaseException:
        engine.dispose()
        raise
    return engine


def migrate(engine: sa.Engine, revision: str = "head") -> None:
    """Upgrade the schema in place, in one transaction: a failed upgrade leaves the previous schema."""
    with engine.begin() as connection:
        before = _check_not_newer(connection)
        config = _alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
        after = MigrationContext.configure(connection).get_current_revision()
    if after != before:
        log.info("database schema upgraded", extra={"from_revision": before or "empty", "to_revision": after})


def schema_revision(engine: sa.Engine) -> str | None:
    with reader(engine) as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "agent/migrations holds at least one revision"
    return head


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _check_not_newer(connection: sa.Connection) -> str | None:
    """The database's schema revision, after checking this release knows it."""
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None:
        return None
    try:
        ScriptDirectory.from_config(_alembic_config()).get_revision(current)
    except CommandError:
        raise DatabaseFromNewerRelease(
            f"the database was written by a newer release of pos-edge (schema {current}); "
            "install that release again, or restore a backup made by this one"
        ) from None
    return current


def _prepare_file(path: Path) -> None:
    directory = path.parent
    if not directory.is_dir():
        raise DatabaseDirectoryMissing(
            f"database directory {directory} does not exist; create it (install -d -m 0700 {directory}) "
            "or set storage.database to a path in an existing directory"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DatabaseNotWritable(
            f"database directory {directory} is not writable by this user; the agent needs it for the database "
            "and its write-ahead log (check the owner, or whether the disk is mounted read-only)"
        )
    try:
        # The database holds member data: only the agent's user may read it. SQLite gives the -wal and -shm
        # files the same mode as the database file.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise DatabaseNotWritable(f"cannot open {path} for writing: {exc.strerror}") from None
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, 0o600)
            log.warning("database file was readable by others; mode set to 0600 path=%s", path)
    finally:
        os.close(fd)


def _translate(path: Path, exc: sa.exc.OperationalError) -> StorageError:
    text = str(exc.orig).lower()
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return DatabaseNotWritable(
            f"cannot write {path} ({exc.orig}); check that the disk is not full or mounted read-only"
        )
    if "disk i/o" in text or "full" in text:
        return DatabaseNotWritable(f"cannot write {path} ({exc.orig}); check the disk")
    if "malformed" in text or "not a database" in text:
        return DatabaseCorrupt(f"{path} is damaged ({exc.orig}); restore it from a backup or move it aside")
    return StorageError(f"cannot use {path}: {exc.orig}")
