"""`pos-edge doctor` against real parts: a central service on 127.0.0.1, a database file, a serial scanner on a
pseudo-terminal, a network printer on a TCP port. Each check says what is wrong and what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.db import open_database
from agent.doctor import SERVICE_GROUPS, Doctor, read_environment_file
from agent.journal import Journal, JournalEntry
from tests.central.plugin import CentralServer, central_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def central(tmp_path):
    server = CentralServer(central_settings(f"sqlite:///{tmp_path / 'central.db'}"))
    server.start()
    yield server
    server.close()


@pytest.fixture
def till(tmp_path, central, printer_server):
    """A till's settings with a scanner on a pty and a printer on TCP, its database with one sale, its secrets."""
    store = central.add_store("SH001")
    master, slave = os.openpty()
    scanner = os.ttyname(slave)
    database = tmp_path / "agent.db"
    engine = open_database(database)
    from zoneinfo import ZoneInfo

    Journal(engine, "T01", ZoneInfo("Asia/Shanghai"), 4).append(JournalEntry("sale", 1200, {"note": "1200 fen"}))
    engine.dispose()
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[store]\nid = "SH001"\nname = "徐汇店"\n[station]\nid = "T01"\n[central]\nurl = "{central.url}"\n'
        f'[storage]\ndatabase = "{database}"\n[api]\nport = 9\n'
        f'[[devices.scanners]]\nid = "s1"\nurl = "serial://{scanner}"\n[devices.printer]\nurl = "{printer_server.url}"\n'
    )
    secrets = tmp_path / "secrets.env"
    secrets.write_text(f'# written by the installer\nPOS_EDGE_CENTRAL__TOKEN="{store.token}"\n')
    os.environ["POS_EDGE_CENTRAL__TOKEN"] = store.token
    yield config
    os.environ.pop("POS_EDGE_CENTRAL__TOKEN", None)
    os.close(master)
    os.close(slave)


def by_name(checks) -> dict[str, object]:
    return {c.name: c for c in checks}


def test_a_healthy_till_passes_every_check_it_can_make(till):
    checks = by_name(Doctor(till).run())
    for name in (
        "settings",
        "database",
        "migrations",
        "journal",
        "outbox",
        "disk",
        "scanner s1",
        "printer printer",
        "central",
        "clock",
    ):
        assert checks[name].status == "ok", checks[name]
    assert "1 rows" in checks["journal"].detail and "token accepted" in checks["central"].detail
    assert checks["agent"].status == "warn"  # nothing serves the API in this test: said, not hidden


def test_a_clock_two_minutes_fast_fails_and_says_how_to_fix_it(till):
    checks = by_name(Doctor(till, now=lambda: datetime.now(UTC) + timedelta(minutes=2)).run())
    assert checks["clock"].status == "fail" and "ahead of central" in checks["clock"].detail
    assert "timedatectl set-ntp true" in checks["clock"].fix
    slow = by_name(Doctor(till, now=lambda: datetime.now(UTC) - timedelta(seconds=12)).run())["clock"]
    assert slow.status == "warn" and "behind central" in slow.detail


def test_a_refused_token_and_an_unreachable_central_are_told_apart(till, central):
    os.environ["POS_EDGE_CENTRAL__TOKEN"] = "not-the-store-token-0000"
    refused = by_name(Doctor(till).run())["central"]
    assert refused.status == "fail" and "refused the store token" in refused.detail
    central.stop()
    down = by_name(Doctor(till).run())
    assert (
        down["central"].status == "fail" and "cannot reach" in down["central"].detail and down["clock"].status == "skip"
    )


def test_a_changed_journal_row_and_a_damaged_file_fail_with_the_way_out(till, tmp_path):
    import sqlite3

    database = tmp_path / "agent.db"
    with sqlite3.connect(database) as db:  # someone with the file and sqlite3 edits a sale
        db.execute("DROP TRIGGER journal_no_update")
        db.execute("UPDATE journal SET body = replace(body, '1200 fen', '12 fen')")
    journal = by_name(Doctor(till).run())["journal"]
    assert journal.status == "fail" and "seq 1" in journal.detail and "restore" in journal.fix

    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages = db.execute("PRAGMA page_count").fetchone()[0]
    data = bytearray(database.read_bytes())
    page = len(data) // pages
    for offset in range(page + 8, len(data), 7):  # scribble over every page but the file header's
        data[offset] ^= 0x5A
    database.write_bytes(bytes(data))
    damaged = by_name(Doctor(till).run())["database"]
    assert damaged.status == "fail" and "pos-edge restore" in damaged.fix


def test_a_missing_scanner_and_a_printer_out_of_paper_fail(till, printer_server):
    till.write_text(till.read_text().replace("serial:///dev/pts/", "serial:///dev/pts/9"))
    printer_server.paper = "out"
    checks = by_name(Doctor(till).run())
    assert checks["scanner s1"].status == "fail" and "is not there" in checks["scanner s1"].detail
    assert checks["printer printer"].status == "fail" and "paper=out" in checks["printer printer"].detail


def test_under_systemd_a_failed_unit_and_restarts_are_reported(till, monkeypatch):
    from agent import doctor

    monkeypatch.setattr(doctor, "_under_systemd", lambda: True)
    shown = "LoadState=loaded\nActiveState=failed\nSubState=failed\nNRestarts=3\nResult=watchdog\nUnitFileState=enabled\nStatusText=\n"
    checks = [
        c
        for c in Doctor(till, systemctl=lambda args: subprocess.CompletedProcess(args, 0, shown, "")).run()
        if c.name == "service"
    ]
    assert checks[0].status == "fail" and "failed/failed" in checks[0].detail and "watchdog" in checks[0].detail
    assert checks[1].status == "warn" and "restarted 3 time(s)" in checks[1].detail


def test_the_command_reads_the_service_secrets_prints_json_and_exits_non_zero_on_a_failure(till, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "POS_EDGE_CENTRAL__TOKEN"}
    command = [
        sys.executable,
        "-m",
        "agent",
        "doctor",
        "--config",
        str(till),
        "--secrets",
        str(tmp_path / "secrets.env"),
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    assert checks["central"]["status"] == "ok", checks["central"]  # the token came from the secrets file
    assert done.returncode == 0, done.stdout
    (tmp_path / "agent.db").unlink()
    failed = subprocess.run(command[:-1], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert failed.returncode == 1 and "FAIL  database" in failed.stdout and "Traceback" not in failed.stderr


def test_bad_settings_are_one_failed_check_not_a_traceback(tmp_path):
    bad = tmp_path / "agent.toml"
    bad.write_text("[store]\nid = 'x'\n")
    checks = Doctor(bad).run()
    assert [c.status for c in checks] == ["fail"] and "station" in checks[0].detail


def test_the_environment_file_is_read_as_systemd_reads_it(tmp_path):
    path = tmp_path / "secrets.env"
    path.write_text("# comment\n\nPOS_EDGE_API__TOKEN='a b'\n; another comment\nPOS_EDGE_CENTRAL__TOKEN=plain\n")
    assert read_environment_file(path) == {"POS_EDGE_API__TOKEN": "a b", "POS_EDGE_CENTRAL__TOKEN": "plain"}


def test_the_groups_the_doctor_assumes_are_the_units_groups():
    unit = (ROOT / "systemd" / "pos-edge.service").read_text()  # missing: fails, as a unit that lost its groups would
    line = next(line for line in unit.splitlines() if line.startswith("SupplementaryGroups="))
    assert tuple(line.split("=", 1)[1].split()) == SERVICE_GROUPS


def test_with_the_agent_running_devices_and_readiness_come_from_the_agent(stack, monkeypatch):
    from agent.disk_space import MB

    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    checks = by_name(Doctor(stack.config).run())
    assert checks["agent"].status == "ok" and "ready to sell" in checks["agent"].detail
    assert checks["scanner scanner-1"].status == "ok" and "simulated" in checks["scanner scanner-1"].detail
    stack.app.state.agent.disk._free_bytes = lambda path: 10 * MB  # the agent's own view: its disk is nearly full
    agent = by_name(Doctor(stack.config).run())["agent"]
    assert agent.status == "fail" and "disk low" in agent.detail
