"""Backups of the agent's database, taken while it sells, and a restore that checks what it puts back.

A backup goes through SQLite's online backup API in one step: the copy is one read transaction, so under WAL it
is a consistent snapshot while the agent keeps writing (writers are never blocked). It is written under a
temporary name, switched out of WAL (a backup is one self-contained file), fsynced, then verified — SQLite's
`integrity_check`, a schema this release knows, every station's journal chain — and only then renamed to
`agent-YYYYmmddTHHMMSSZ.db` (UTC). Backups older than `storage.backup_keep_days` are deleted, never the newest.

A restore verifies the file the same way, refuses while the agent has the database open, keeps the current
database aside as `agent.db.before-restore-<UTC time>` and puts a byte-exact copy in its place. The agent is
detected two ways: a process holding the database open holds a read lock on byte 128 of its `-shm` file (SQLite's
"dead man switch", held by every connection in WAL mode until it closes), which a probe cannot take over; and its
local API port answering.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import shutil
import socket
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError

from agent import journal
from agent.clock import utcnow
from agent.db import MIGRATIONS
from agent.disk_space import MB, statvfs_free_bytes
from agent.open_sales import OpenSaleStore

log = logging.getLogger(__name__)

NAME_FORMAT = "agent-%Y%m%dT%H%M%SZ.db"
NAME = re.compile(r"^agent-(\d{8}T\d{6}Z)\.db$")
PARTIAL_SUFFIX = ".partial"
# SQLite's unix VFS: every connection to a WAL database holds a shared lock on this byte of the -shm file.
SHM_DMS_OFFSET = 128
BUSY_TIMEOUT_S = 5.0


class BackupError(Exception):
    """A backup or restore could not be done; the message says why and what to do."""


class BackupInvalid(BackupError):
    """The file is not a backup this release can use: damaged, not the agent's, from a newer release, a broken chain."""


class NoRoomForBackup(BackupError):
    pass


class RestoreRefused(BackupError):
    pass


@dataclass(frozen=True)
class BackupCheck:
    """What a verified backup holds."""

    path: Path
    size_bytes: int
    schema_revision: str
    journal_rows: int
    journal_purged: int
    stations: tuple[str, ...]
    last_seq: int


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size_bytes: int
    seconds: float
    journal_rows: int
    removed: tuple[Path, ...]


@dataclass(frozen=True)
class CurrentState:
    """What the database a restore would replace holds beyond the backup: lost from the till if restored."""

    readable: bool
    problem: str | None = None
    newer_rows: int = 0  # journal rows after the backup's last one
    unconfirmed_rows: int = 0  # journal rows central has not confirmed (all of them absent from the backup or not)
    open_sales: int = 0
    pending_refunds: int = 0

    @property
    def loses_something(self) -> bool:
        return bool(self.newer_rows or self.unconfirmed_rows or self.open_sales or self.pending_refunds)


@dataclass(frozen=True)
class RestoreResult:
    restored: BackupCheck
    kept_aside: Path | None


# --- backup ----------------------------------------------------------------------------------------------------


def backup_name(at: datetime) -> str:
    return at.astimezone(UTC).strftime(NAME_FORMAT)


def take_backup(
    database: Path,
    folder: Path,
    keep_days: int,
    *,
    min_free_bytes: int = 0,
    to: Path | None = None,
    now: Callable[[], datetime] = utcnow,
    free_bytes: Callable[[Path], int] = statvfs_free_bytes,
) -> BackupResult:
    """Back `database` up into `folder` (or to the file `to`), verified, then delete backups older than
    `keep_days` from `folder`. Never eats into the `min_free_bytes` kept for sales on the database's disk."""
    database = Path(database)
    if not database.is_file():
        raise BackupError(f"no database at {database}: check storage.database in the settings")
    started = time.monotonic()
    at = now()
    target = Path(to) if to is not None else Path(folder) / backup_name(at)
    if target.exists():
        raise BackupError(f"{target} already exists; choose another file name or delete it first")
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_room(database, target.parent, min_free_bytes, free_bytes)
    partial = target.with_name(f".{target.name}{PARTIAL_SUFFIX}")
    try:
        _copy_online(database, partial)
        check = verify_backup(partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)
    _fsync_dir(target.parent)
    removed = () if to is not None else prune(Path(folder), keep_days, at)
    seconds = time.monotonic() - started
    return BackupResult(target, check.size_bytes, seconds, check.journal_rows, removed)


def _check_room(database: Path, folder: Path, min_free_bytes: int, free_bytes: Callable[[Path], int]) -> None:
    need = sum(p.stat().st_size for p in (database, _sidecar(database, "-wal")) if p.exists())
    same_disk = os.stat(folder).st_dev == os.stat(database.parent).st_dev
    reserve = min_free_bytes if same_disk else 0
    free = free_bytes(folder)
    if free - need < reserve:
        raise NoRoomForBackup(
            f"not enough free disk for a backup in {folder}: about {need // MB + 1} MB needed, {free // MB} MB free"
            + (f", {reserve // MB} MB of it kept for sales (storage.min_free_mb)" if reserve else "")
            + "; delete old backups or set storage.backup_dir to a bigger disk"
        )


def _copy_online(database: Path, partial: Path) -> None:
    partial.unlink(missing_ok=True)
    # Created 0600 before SQLite opens it: a backup holds member data.
    os.close(os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
    source = sqlite3.connect(_read_only(database), uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        copy = sqlite3.connect(partial)
        try:
            # pages=-1: the whole database in one step, i.e. one read transaction, i.e. one consistent snapshot.
            source.backup(copy, pages=-1)
            mode = copy.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
            if mode != "delete":
                raise BackupError(f"the backup copy stayed in {mode} mode; it would need its -wal file")
        finally:
            copy.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"cannot back up {database}: {exc}; run `pos-edge doctor`") from exc
    finally:
        source.close()
    _fsync(partial)


def prune(folder: Path, keep_days: int, now: datetime) -> tuple[Path, ...]:
    """Delete backups taken more than `keep_days` before `now`, keeping the newest whatever its age, and copies
    a crashed backup left half-written."""
    backups = sorted(listed_backups(folder))
    cutoff = now - timedelta(days=keep_days)
    removed = [path for taken, path in backups[:-1] if taken < cutoff]
    removed += [p for p in folder.glob(f".agent-*{PARTIAL_SUFFIX}") if p.stat().st_mtime < now.timestamp() - 3600]
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        _fsync_dir(folder)
    return tuple(removed)


def listed_backups(folder: Path) -> list[tuple[datetime, Path]]:
    """The backups in `folder` by the time in their names (the time each was taken), oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if match := NAME.match(path.name):
            found.append((datetime.strptime(match[1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC), path))
    return sorted(found)


def latest_backup_at(folder: Path) -> datetime | None:
    backups = listed_backups(folder)
    return backups[-1][0] if backups else None


# --- verify ----------------------------------------------------------------------------------------------------


def verify_backup(path: Path) -> BackupCheck:
    """Check a backup file as a restore would; raise BackupInvalid saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise BackupInvalid(f"{path}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise BackupInvalid(f"{path}: the file is empty")
    engine = _read_only_engine(path)
    try:
        with engine.connect() as connection:
            problems = [row[0] for row in connection.exec_driver_sql("PRAGMA integrity_check(20)")]
            if problems != ["ok"]:
                raise BackupInvalid(
                    f"{path} is damaged (SQLite integrity check: {'; '.join(problems[:3])}); use another backup"
                )
            revision = _schema_revision(connection, path)
            stations = tuple(journal.stations(connection))
            last_seq = journal.highest_seq(connection) or 0
        report = journal.verify(engine)
    except sa.exc.DatabaseError as exc:
        raise BackupInvalid(f"{path} is not a usable SQLite database ({exc.orig}); use another backup") from None
    finally:
        engine.dispose()
    broken = report.first_break
    if broken is not None:
        raise BackupInvalid(
            f"{path}: its journal chain is broken at seq {broken.seq} ({broken.reason}); use another backup"
        )
    return BackupCheck(path, size, revision, report.rows, report.purged, stations, last_seq)


def _schema_revision(connection: sa.Connection, path: Path) -> str:
    try:
        revision = connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    except sa.exc.OperationalError:
        revision = None
    if revision is None:
        raise BackupInvalid(f"{path} is an SQLite database but not the agent's (it has no schema revision)")
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        ScriptDirectory.from_config(config).get_revision(revision)
    except CommandError:
        raise BackupInvalid(
            f"{path} was written by a newer release of pos-edge (schema {revision}); restore it with that release"
        ) from None
    return revision


# --- restore ---------------------------------------------------------------------------------------------------


def agent_running(database: Path, api_host: str | None = None, api_port: int | None = None) -> str | None:
    """Why the agent looks to be running (a process has the database open, or its API answers), or None.
    Ask from a process that does not have the database open itself: POSIX locks never conflict within a process."""
    shm = _sidecar(Path(database), "-shm")
    try:
        fd = os.open(shm, os.O_RDWR)
    except FileNotFoundError:
        fd = None
    except OSError as exc:
        return f"cannot check whether {database} is in use ({exc.strerror})"
    if fd is not None:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, SHM_DMS_OFFSET)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return f"a process has {database} open"
            raise
        finally:
            os.close(fd)  # also drops the probe's lock
    if api_port is not None:
        host = "127.0.0.1" if api_host in (None, "", "0.0.0.0") else ("::1" if api_host == "::" else api_host)
        with contextlib.suppress(OSError), socket.create_connection((host, api_port), timeout=0.5):
            return f"something answers on the agent's API port {host}:{api_port}"
    return None


def inspect_current(database: Path, backup: BackupCheck) -> CurrentState:
    """What the current database holds that the backup does not, read without changing it."""
    database = Path(database)
    if not database.exists():
        return CurrentState(readable=True)
    engine = _read_only_engine(database, timeout=BUSY_TIMEOUT_S)
    open_work = OpenSaleStore(engine)
    try:
        with engine.connect() as connection:
            return CurrentState(
                readable=True,
                newer_rows=journal.count_rows(connection, after_seq=backup.last_seq),
                unconfirmed_rows=journal.count_unconfirmed(connection),
                open_sales=open_work.count_open(connection),
                pending_refunds=open_work.count_refunds(connection),
            )
    except sa.exc.DatabaseError as exc:
        return CurrentState(readable=False, problem=str(exc.orig))
    finally:
        engine.dispose()


def restore(
    backup: Path,
    database: Path,
    *,
    api_host: str | None = None,
    api_port: int | None = None,
    station_id: str | None = None,
    now: Callable[[], datetime] = utcnow,
    free_bytes: Callable[[Path], int] = statvfs_free_bytes,
    confirm: Callable[[BackupCheck, CurrentState], bool] = lambda check, current: True,
) -> RestoreResult:
    """Put `backup` in place of `database`: verified, never while the agent runs, the current one kept aside.
    `confirm` sees what is restored and what the current database would lose, and may still say no."""
    backup, database = Path(backup), Path(database)
    check = verify_backup(backup)
    if station_id is not None and check.stations and station_id not in check.stations:
        raise RestoreRefused(
            f"{backup} holds the journal of station {', '.join(check.stations)}, and this till is station {station_id}: "
            "restoring it would continue another till's chain; use a backup of this till"
        )
    _refuse_if_running(database, api_host, api_port)
    current = inspect_current(database, check)
    if not confirm(check, current):
        raise RestoreRefused("restore cancelled; nothing was changed")
    if not database.parent.is_dir():
        raise RestoreRefused(f"database directory {database.parent} does not exist; create it or fix storage.database")
    free = free_bytes(database.parent)
    if free < check.size_bytes + 16 * MB:
        raise RestoreRefused(
            f"not enough free disk in {database.parent}: {check.size_bytes // MB + 16} MB needed, {free // MB} MB free"
        )

    incoming = database.with_name(f".{database.name}.restoring")
    incoming.unlink(missing_ok=True)
    digest = _copy_file(backup, incoming)
    if _sha256(incoming) != digest:
        incoming.unlink(missing_ok=True)
        raise BackupError(
            f"the copy of {backup} in {database.parent} does not match it (a failing disk?); nothing was changed"
        )
    _refuse_if_running(database, api_host, api_port, cleanup=incoming)
    aside = _set_aside(database, now()) if database.exists() else None
    os.replace(incoming, database)
    _fsync_dir(database.parent)
    log.warning(
        "database restored from a backup",
        extra={
            "backup": str(backup),
            "journal_rows": check.journal_rows,
            "kept_aside": str(aside) if aside else "none",
        },
    )
    return RestoreResult(check, aside)


def _refuse_if_running(database: Path, api_host: str | None, api_port: int | None, cleanup: Path | None = None) -> None:
    reason = agent_running(database, api_host, api_port)
    if reason is not None:
        if cleanup is not None:
            cleanup.unlink(missing_ok=True)
        raise RestoreRefused(f"{reason}: stop the agent first (systemctl stop pos-edge), then restore")


def _set_aside(database: Path, at: datetime) -> Path:
    """Keep the current database as `<name>.before-restore-<UTC time>`, its committed WAL folded in if it can be."""
    aside = database.with_name(f"{database.name}.before-restore-{at.astimezone(UTC):%Y%m%dT%H%M%SZ}")
    wal, shm = _sidecar(database, "-wal"), _sidecar(database, "-shm")
    if wal.exists():
        # Fold the WAL into the file, so the aside copy is whole; on a damaged database this may fail, and then the
        # -wal file goes aside with it (SQLite pairs a database with "<name>-wal").
        with contextlib.suppress(sqlite3.DatabaseError):
            connection = sqlite3.connect(database, timeout=BUSY_TIMEOUT_S)
            try:
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                connection.close()
    try:
        os.link(database, aside)  # the live name keeps pointing at a whole database until the swap
    except OSError:
        shutil.copy2(database, aside)
    # A WAL left beside the restored file would be replayed into it: it goes with the database it belongs to.
    if wal.exists():
        os.replace(wal, _sidecar(aside, "-wal"))
    shm.unlink(missing_ok=True)  # rebuilt from the WAL by whoever opens the aside copy
    return aside


# --- files -----------------------------------------------------------------------------------------------------


def _read_only_engine(path: Path, timeout: float = 5.0) -> sa.Engine:
    """An engine reading the file without writing to it (no pragmas, no migration): a backup, or the database a
    restore would replace."""
    return sa.create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(_read_only(path), uri=True, timeout=timeout),
        poolclass=sa.pool.NullPool,
    )


def _read_only(path: Path) -> str:
    # A file: URI, so a path holding "?", "#" or "%" still names the file.
    return f"{Path(path).resolve().as_uri()}?mode=ro"


def _sidecar(database: Path, suffix: str) -> Path:
    return database.with_name(database.name + suffix)


def _copy_file(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as out, open(source, "rb") as src:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    _fsync(path)
