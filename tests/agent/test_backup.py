"""Backups are taken while the till sells and are whole; a restore puts back only what verifies, never under a
running agent, and keeps what it replaces."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.backup import (
    BackupInvalid,
    NoRoomForBackup,
    RestoreRefused,
    listed_backups,
    prune,
    restore,
    take_backup,
    verify_backup,
)
from agent.db import head_revision, open_database, schema_revision
from agent.disk_space import MB
from agent.journal import Journal, JournalEntry, verify
from agent.member_cache import MemberCache
from agent.member_code_gate import MemberCodeGate
from agent.scheduler import build_scheduler
from agent.settings import load_settings
from agent.sync import Sync
from tests.agent.test_retention import confirm, fill_journal
from tests.support.credentials import PHONE_KEY_BYTES

ROOT = Path(__file__).resolve().parents[2]
SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2027, 6, 1, 4, 0, tzinfo=UTC)


def sale(n: int) -> JournalEntry:
    return JournalEntry(
        kind="sale",
        total_fen=100 + n,
        body={"lines": [{"sku": "6901234567892", "qty": 1, "amount_fen": 100 + n}], "n": n},
    )


def rows_of(path: Path) -> list[str]:
    connection = sqlite3.connect(path)
    try:
        return [row[0] for row in connection.execute("SELECT id FROM journal ORDER BY seq")]
    finally:
        connection.close()


@pytest.fixture
def journal(engine) -> Journal:
    return Journal(engine, "T01", SHANGHAI, 4)


@pytest.fixture
def folder(tmp_path) -> Path:
    return tmp_path / "backups"


def test_a_backup_taken_while_sales_are_journaled_restores_to_a_whole_prefix(
    engine, db_path, journal, folder, tmp_path
):
    prefilled = fill_journal(engine, 20_000, NOW - timedelta(days=1))
    written: list[str] = []
    selling, stop = threading.Event(), threading.Event()

    def sell() -> None:
        n = 0
        while not stop.is_set():
            written.append(journal.append(sale(n)).id)
            n += 1
            if n == 20:
                selling.set()

    seller = threading.Thread(target=sell)
    seller.start()
    try:
        assert selling.wait(30)
        before = len(written)
        result = take_backup(db_path, folder, keep_days=7)
        after = len(written)
    finally:
        stop.set()
        seller.join()

    assert (
        result.path.parent == folder
        and result.path.name.startswith("agent-")
        and result.path.stat().st_mode & 0o777 == 0o600
    )
    target = tmp_path / "restored" / "agent.db"
    target.parent.mkdir()
    restore(result.path, target)
    restored = open_database(target)
    try:
        assert verify(restored).ok
        ids = rows_of(target)
        sold = ids[len(prefilled) :]
        assert ids[: len(prefilled)] == prefilled
        assert before <= len(sold) <= after and sold == written[: len(sold)]  # a prefix of what was committed
        with restored.connect() as connection:  # each sale came with its outbox row, none without
            queued = connection.exec_driver_sql("SELECT journal_id FROM outbox ORDER BY journal_id").scalars().all()
        assert queued == sorted(sold)
        assert schema_revision(restored) == head_revision()
    finally:
        restored.dispose()
    assert result.journal_rows == len(ids)


def _flip_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"this is not sqlite")


def _scramble_a_page(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek((size // 4096 // 2) * 4096)  # a page in the middle: the journal's rows
        f.write(random.Random(7).randbytes(4096))


def _change_a_digit(path: Path) -> None:
    # One digit of one sale's tendered amount: SQLite sees a well-formed page (no index covers it; the receipt
    # number is indexed, so a change there is caught by the integrity check), only the chain can tell.
    data = bytearray(path.read_bytes())
    sale = data.index(b'"receipt_no":"T0100004321"')
    at = data.index(b'"amount_fen":', sale) + len(b'"amount_fen":')
    data[at] = ord("9") if data[at] != ord("9") else ord("8")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, said",
    [
        (_flip_header, "not a usable SQLite database"),
        (_scramble_a_page, "damaged"),
        (_change_a_digit, "journal chain is broken"),
    ],
    ids=["header", "page", "one-digit"],
)
def test_a_damaged_backup_is_refused_and_the_database_is_left_as_it_was(engine, db_path, folder, damage, said):
    fill_journal(engine, 10_000, NOW)
    backup = take_backup(db_path, folder, keep_days=7).path
    damage(backup)
    before = db_path.read_bytes()
    with pytest.raises(BackupInvalid, match=said) as refused:
        restore(backup, db_path)
    assert str(backup) in str(refused.value) and "use another backup" in str(refused.value)
    assert db_path.read_bytes() == before and not list(db_path.parent.glob("*.before-restore-*"))


HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from zoneinfo import ZoneInfo
    from agent.db import open_database
    from agent.journal import Journal, JournalEntry

    engine = open_database(Path(sys.argv[1]))
    journal = Journal(engine, "T01", ZoneInfo("Asia/Shanghai"), 4)
    for n in range(5):
        journal.append(JournalEntry(kind="sale", total_fen=777, body={"after_backup": n}))
    print("selling", flush=True)
    sys.stdin.read()
    """
)


def test_restore_refuses_while_the_agent_has_the_database_open_and_keeps_its_last_sales_aside(
    engine, db_path, journal, folder
):
    journal.append(sale(1))
    backup = take_backup(db_path, folder, keep_days=7).path
    engine.dispose()
    agent = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert agent.stdout.readline().strip() == "selling"
        with pytest.raises(RestoreRefused, match="a process has .* open: stop the agent first"):
            restore(backup, db_path)
    finally:
        os.kill(agent.pid, signal.SIGKILL)  # a crash: its last sales may be in the -wal file only
        agent.wait()

    heard = []
    result = restore(backup, db_path, now=lambda: NOW, confirm=lambda check, current: heard.append(current) or True)
    assert heard[0].newer_rows == 5 and heard[0].unconfirmed_rows == 6 and heard[0].loses_something
    assert result.kept_aside == db_path.with_name("agent.db.before-restore-20270601T040000Z")
    assert len(rows_of(result.kept_aside)) == 6  # the killed agent's sales are in the copy kept aside
    assert len(rows_of(db_path)) == 1 and not Path(f"{db_path}-wal").exists()
    again = open_database(db_path)
    assert verify(again).ok
    again.dispose()


def test_restore_refuses_while_the_api_port_answers(engine, db_path, journal, folder):
    journal.append(sale(1))
    backup = take_backup(db_path, folder, keep_days=7).path
    engine.dispose()
    with socket.create_server(("127.0.0.1", 0)) as listening:
        port = listening.getsockname()[1]
        with pytest.raises(RestoreRefused, match=f"answers on the agent's API port 127.0.0.1:{port}"):
            restore(backup, db_path, api_host="127.0.0.1", api_port=port)
    assert restore(backup, db_path, api_host="127.0.0.1", api_port=port).kept_aside is not None


def test_restore_refuses_a_newer_releases_backup_and_another_tills(engine, db_path, journal, folder, tmp_path):
    journal.append(sale(1))
    backup = take_backup(db_path, folder, keep_days=7).path
    with pytest.raises(RestoreRefused, match="station T01, and this till is station T02"):
        restore(backup, tmp_path / "other.db", station_id="T02")
    connection = sqlite3.connect(backup)
    connection.execute("UPDATE alembic_version SET version_num = '9999'")
    connection.commit()
    connection.close()
    with pytest.raises(BackupInvalid, match="newer release of pos-edge"):
        verify_backup(backup)


def test_old_backups_go_but_the_newest_always_stays(engine, db_path, folder):
    folder.mkdir()
    for days in (30, 9, 8, 6, 1):
        (folder / (NOW - timedelta(days=days)).strftime("agent-%Y%m%dT%H%M%SZ.db")).write_bytes(b"x")
    (folder / "notes.txt").write_text("kept: not a backup")
    removed = prune(folder, keep_days=7, now=NOW)
    assert len(removed) == 3 and [t for t, _ in listed_backups(folder)] == [
        NOW - timedelta(days=6),
        NOW - timedelta(days=1),
    ]
    older = listed_backups(folder)[0][1]
    assert prune(folder, keep_days=7, now=NOW + timedelta(days=100)) == (older,)
    assert len(listed_backups(folder)) == 1 and (folder / "notes.txt").exists()

    result = take_backup(db_path, folder, keep_days=7, now=lambda: NOW + timedelta(days=200))
    assert result.path.name == "agent-20271218T040000Z.db" and [p for _, p in listed_backups(folder)] == [result.path]


def test_a_backup_never_eats_into_the_room_kept_for_sales(engine, db_path, folder):
    fill_journal(engine, 1000, NOW)
    with pytest.raises(NoRoomForBackup, match="not enough free disk for a backup .* kept for sales"):
        take_backup(db_path, folder, keep_days=7, min_free_bytes=256 * MB, free_bytes=lambda path: 256 * MB + 1024)
    assert list(folder.iterdir()) == []
    assert (
        take_backup(db_path, folder, keep_days=7, min_free_bytes=256 * MB, free_bytes=lambda path: 300 * MB).size_bytes
        > 0
    )


def test_a_backup_of_a_purged_journal_verifies_from_its_checkpoint(engine, db_path, journal, folder):
    from agent.retention import purge_journal

    fill_journal(engine, 300, NOW - timedelta(days=400))
    journal.append(sale(1))
    purge_journal(engine, NOW - timedelta(days=180), NOW)
    check = verify_backup(take_backup(db_path, folder, keep_days=7).path)
    assert (check.journal_rows, check.journal_purged) == (1, 300)


# --- the commands and the daily job ---------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path) -> Path:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing answers there: no agent is running
    path = tmp_path / "agent.toml"
    path.write_text(
        '[store]\nid = "SH001"\nname = "徐汇店"\n[station]\nid = "T01"\n[central]\nurl = "http://127.0.0.1:9"\n'
        f'[api]\nport = {port}\n[storage]\ndatabase = "agent.db"\nbackup_keep_days = 3\n'
    )
    return path


def pos_edge(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args], input=stdin, capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_backup_and_restore_commands(config, tmp_path):
    engine = open_database(tmp_path / "agent.db")
    Journal(engine, "T01", SHANGHAI, 4).append(sale(1))
    engine.dispose()

    made = pos_edge("backup", "--config", str(config))
    assert made.returncode == 0, made.stderr
    (backup,) = (tmp_path / "backups").iterdir()  # next to the database by default
    assert made.stdout.startswith(f"backup {backup}: ") and "1 journal rows, verified" in made.stdout
    copy = pos_edge("backup", "--config", str(config), "--to", str(tmp_path / "before-upgrade.db"))
    assert copy.returncode == 0 and (tmp_path / "before-upgrade.db").exists()
    again = pos_edge("backup", "--config", str(config), "--to", str(tmp_path / "before-upgrade.db"))
    assert again.returncode == 1 and again.stderr.strip().endswith(
        "already exists; choose another file name or delete it first"
    )

    asked = pos_edge("restore", str(backup), "--config", str(config))  # no terminal to answer a question
    assert (
        asked.returncode == 1 and asked.stderr.strip() == "error: not restored: add --yes to restore without a question"
    )
    done = pos_edge("restore", str(backup), "--config", str(config), "--yes")
    assert done.returncode == 0, done.stderr
    assert "verified" in done.stdout and "the previous database is kept as" in done.stdout

    _flip_header(backup)
    refused = pos_edge("restore", str(backup), "--config", str(config), "--yes")
    assert refused.returncode == 1 and len(refused.stderr.strip().splitlines()) == 1
    assert refused.stderr.startswith("error: ") and "Traceback" not in refused.stderr


def test_the_daily_jobs_back_up_once_a_day_and_purge(config, tmp_path, caplog):
    settings = load_settings(config).settings
    engine = open_database(settings.storage.database)
    journal = Journal(engine, "T01", SHANGHAI, 4)
    old = [
        journal.append(JournalEntry(kind="sale", total_fen=100, created_at=datetime.now(UTC) - timedelta(days=400)))
        for _ in range(3)
    ]
    confirm(engine, *(r.id for r in old))
    sync = Sync(engine, MemberCache(engine, PHONE_KEY_BYTES), MemberCodeGate(engine), client=None)
    scheduler = build_scheduler(settings, sync)
    jobs = {job.id: job for job in scheduler.get_jobs()}
    caplog.set_level(logging.INFO, logger="agent.scheduler")

    asyncio.run(jobs["backup"].func())
    asyncio.run(jobs["backup"].func())  # the newest backup is minutes old: not due
    (taken,) = listed_backups(settings.storage.backup_folder)
    asyncio.run(jobs["retention"].func())
    engine.dispose()

    backups = [r for r in caplog.records if r.msg == "backup taken"]
    assert len(backups) == 1 and backups[0].path == str(taken[1]) and backups[0].size_mb > 0 and backups[0].seconds >= 0
    (purge,) = [r for r in caplog.records if r.msg == "retention"]
    assert purge.journal_rows == 3
    (checkpoint,) = [r for r in caplog.records if r.msg == "journal checkpoint"]
    assert (checkpoint.station, checkpoint.seq, checkpoint.hash) == ("T01", 3, old[-1].hash)


def test_backups_and_retention_are_scheduled_even_where_sync_with_central_is_off(config, monkeypatch):
    settings = load_settings(config).settings
    sync = Sync(None, None, None, client=None)
    assert not settings.central.token.get_secret_value()
    assert {job.id for job in build_scheduler(settings, sync).get_jobs()} == {"backup", "retention"}
    monkeypatch.setenv("POS_EDGE_CENTRAL__TOKEN", "a-store-token-0123456789")
    with_token = load_settings(config).settings
    assert {job.id for job in build_scheduler(with_token, sync).get_jobs()} == {
        "backup",
        "retention",
        "outbox-push",
        "member-pull",
        "reconcile",
    }
