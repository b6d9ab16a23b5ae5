"""`pos-edge` as a store's IT person runs it: real processes, exit codes, and no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.db import head_revision, open_database
from agent.journal import Journal, JournalEntry
from agent.member_cache import MemberCache, MemberChange
from agent.pii import phone_hash

ROOT = Path(__file__).resolve().parents[2]
KEY = "cli-test-phone-hash-key-0123"


def pos_edge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[store]\nid = "SH001"\nname = "徐汇店"\n[station]\nid = "T01"\n[central]\nurl = "http://127.0.0.1:9"\n'
        "[codes]\ncard_patterns = ['16[0-9]{16}']\n[storage]\ndatabase = \"agent.db\"\n"
    )
    return path


def test_classify_the_issue_examples():
    result = pos_edge(
        "codes",
        "classify",
        "134512345678901234",
        "163652150534672204",
        "281234567890123456",
        "6212345678901234567",
        "4006381333931",
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["kind"], r["provider"]) for r in rows] == [
        ("payment", "wechat"),
        ("unknown", None),  # a WeChat member-card code with no card pattern configured: never a payment
        ("payment", "alipay"),
        ("payment", "unionpay"),
        ("product", "ean13"),
    ]
    assert "134512345678901234" not in result.stdout  # auth codes are masked
    assert rows[4]["value"] == "4006381333931"


def test_classify_with_the_store_card_patterns(config):
    result = pos_edge("codes", "classify", "--config", str(config), "163652150534672204")
    assert json.loads(result.stdout)["kind"] == "card"


def test_config_check_example_and_typo(tmp_path):
    ok = pos_edge("config", "check", "config/example.toml")
    assert ok.returncode == 0 and "config/example.toml: OK" in ok.stdout
    typo = tmp_path / "typo.toml"
    typo.write_text((ROOT / "config/example.toml").read_text().replace("read_timeout_s", "read_timout_s"))
    bad = pos_edge("config", "check", str(typo))
    assert bad.returncode == 2
    assert "central.read_timout_s: unknown key; did you mean 'read_timeout_s'?" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_config_check_never_prints_secrets(config):
    result = pos_edge("config", "check", str(config), env={"POS_EDGE_CENTRAL__TOKEN": "tok-very-secret"})
    assert result.returncode == 0
    assert "tok-very-secret" not in result.stdout + result.stderr
    assert "token set" in result.stdout


def test_journal_verify_reports_ok_then_the_broken_row(config):
    engine = open_database(config.parent / "agent.db")
    journal = Journal(engine, "T01", __import__("zoneinfo").ZoneInfo("Asia/Shanghai"), 4)
    rows = [journal.append(JournalEntry(kind="sale", total_fen=100 * n)) for n in range(1, 4)]
    assert pos_edge("journal", "verify", "--config", str(config)).stdout.startswith("journal OK: 3 rows")
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TRIGGER journal_no_update")
        connection.exec_driver_sql(f"UPDATE journal SET total_fen = 1 WHERE id = '{rows[1].id}'")
    engine.dispose()
    broken = pos_edge("journal", "verify", "--config", str(config))
    assert broken.returncode == 1
    assert f"journal BROKEN at row seq={rows[1].seq} id={rows[1].id}" in broken.stderr


def test_member_lookup_by_card_and_phone(config):
    engine = open_database(config.parent / "agent.db")
    MemberCache(engine, KEY.encode()).apply(
        [
            MemberChange(
                "m7",
                1,
                tier="gold",
                points=88,
                display_name="李*",
                phone_masked="139****0000",
                identifiers=(("card_no", "8800012345678"), ("phone_hash", phone_hash(KEY.encode(), "13900000000"))),
            )
        ]
    )
    engine.dispose()
    by_card = pos_edge("member", "lookup", "--config", str(config), "--card", "8800012345678")
    assert json.loads(by_card.stdout) == {
        "id": "m7",
        "tier": "gold",
        "points": 88,
        "name": "李*",
        "phone": "139****0000",
    }
    no_key = pos_edge("member", "lookup", "--config", str(config), "--phone", "13900000000")
    assert no_key.returncode == 1 and "set privacy.phone_hash_key" in no_key.stderr
    by_phone = pos_edge(
        "member",
        "lookup",
        "--config",
        str(config),
        "--phone",
        "13900000000",
        env={"POS_EDGE_PRIVACY__PHONE_HASH_KEY": KEY},
    )
    assert json.loads(by_phone.stdout)["id"] == "m7"
    missing = pos_edge("member", "lookup", "--config", str(config), "--card", "1")
    assert missing.returncode == 1 and "no such member" in missing.stderr
    # An empty number is not a number: said so, not looked up as some other kind of identifier.
    empty_phone = pos_edge(
        "member", "lookup", "--config", str(config), "--phone", "", env={"POS_EDGE_PRIVACY__PHONE_HASH_KEY": KEY}
    )
    assert empty_phone.returncode == 1 and "not a phone number" in empty_phone.stderr


def test_storage_problems_are_one_clear_line(config):
    config.write_text(config.read_text().replace('database = "agent.db"', 'database = "/nonexistent/dir/agent.db"'))
    result = pos_edge("journal", "verify", "--config", str(config))
    assert result.returncode == 1
    assert result.stderr.startswith("error: database directory /nonexistent/dir does not exist; create it")
    assert "Traceback" not in result.stderr


def test_run_refuses_bad_settings_before_starting(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[store]\nid = 'x'\n")
    result = pos_edge("run", "--config", str(bad))
    assert result.returncode == 2 and "station: Field required" in result.stderr


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_run_serves_status_and_stops_cleanly_on_ctrl_c(config):
    import signal

    import httpx

    port = free_port()
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "POS_EDGE_API__PORT": str(port)},
    )
    try:
        lines = []
        for line in agent.stderr:
            lines.append(line)
            if "Uvicorn running" in line or agent.poll() is not None:
                break
        assert any(
            'msg="agent ready"' in line and f"console=http://127.0.0.1:{port}/console/" in line for line in lines
        ), lines
        status = httpx.get(f"http://127.0.0.1:{port}/v1/status", timeout=5).json()
        assert status["store_id"] == "SH001" and status["database"]["schema_revision"] == head_revision()
        agent.send_signal(signal.SIGINT)
        rest = agent.stderr.read()
        assert agent.wait(timeout=15) == 130  # the shell's code for "stopped by Ctrl-C", after a clean shutdown
        assert 'msg="agent stopped"' in rest
    finally:
        agent.kill()
