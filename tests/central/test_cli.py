"""`pos-central` as an operator runs it: the commands do what they say, errors are one line, no tracebacks."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from agent.member_code import load_public_key, verify_member_code
from central.cli import main
from central.models import Coupon, LedgerEntry, Member, MemberIdentifier
from central.pii import hash_e164
from central.seed import MINI_PROGRAM_APPID, OFFICIAL_ACCOUNT_APPID, demo_member
from tests.support.credentials import PHONE_KEY

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, database_url: str, **extra: str) -> Path:
    values = {"environment": "development", "database_url": database_url, "phone_hash_key": PHONE_KEY, **extra}
    path.write_text("".join(f'{key} = "{value}"\n' for key, value in values.items()), encoding="utf-8")
    return path


def run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table.__tablename__: connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in (Member, MemberIdentifier, Coupon, LedgerEntry)
        }


def test_seed_demo_is_realistic_deterministic_and_idempotent(central_database_url, tmp_path, capsys):
    config = write_config(tmp_path / "central.toml", central_database_url)
    code, out, _ = run(capsys, "seed-demo", "--config", str(config), "--members", "300")
    assert code == 0 and out.startswith("300 members added, 300 in total; store DEMO01 added")
    engine = sa.create_engine(central_database_url)
    try:
        first = counts(engine)
        assert run(capsys, "seed-demo", "--config", str(config), "--members", "300")[1].startswith(
            "0 members added, 300 in total"
        )
        assert counts(engine) == first
        assert run(capsys, "seed-demo", "--config", str(config), "--members", "310")[1].startswith(
            "10 members added, 310 in total"
        )

        with engine.connect() as connection:
            members = connection.execute(
                sa.select(Member.id, Member.tier, Member.display_name, Member.phone_masked)
            ).all()
            identifiers = connection.execute(sa.select(MemberIdentifier.kind, MemberIdentifier.value)).all()
            by_identifier = connection.execute(
                sa.select(MemberIdentifier.kind, MemberIdentifier.value, MemberIdentifier.member_id)
            ).all()
            coupons = connection.execute(sa.select(Coupon.code)).scalars().all()
    finally:
        engine.dispose()
    assert {m.tier for m in members} == {"normal", "silver", "gold", "platinum"}
    assert all(re.fullmatch(r"[\u4e00-\u9fff]{1,2}\*{1,2}[\u4e00-\u9fff]?", m.display_name) for m in members)
    assert all(m.phone_masked is None or re.fullmatch(r"1\d{2}\*{4}\d{4}", m.phone_masked) for m in members)
    kinds = {kind for kind, _ in identifiers}
    assert kinds == {
        "phone_hash",
        "card_no",
        "unionid",
        f"openid:{MINI_PROGRAM_APPID}",
        f"openid:{OFFICIAL_ACCOUNT_APPID}",
    }
    assert all(re.fullmatch(r"8800\d{9}", value) for kind, value in identifiers if kind == "card_no")
    assert all(re.fullmatch(r"CP[0-9A-Z]{10}", code) for code in coupons) and len(coupons) > 50
    # Same seed, same people, on any database.
    assert demo_member(1, 1, PHONE_KEY.encode(), datetime.now(UTC)).id in {m.id for m in members}
    # The banner's members are the stored ones: each listed phone and card finds the member it is listed with.
    listed = re.findall(r"^\s+000\d  (M\w{11}) .* phone (\d{11}|-)  card (8800\d{9}|-)", out, re.MULTILINE)
    assert len(listed) == 4
    found = {value: member for _, value, member in by_identifier}
    for member_id, phone, card in listed:
        if phone != "-":
            assert found[hash_e164(PHONE_KEY.encode(), "+86" + phone)] == member_id
        if card != "-":
            assert found[card] == member_id


def test_store_token_member_code_and_key_rotation_work_against_the_service(central, tmp_path, capsys):
    config = write_config(tmp_path / "central.toml", central.settings.database_url)
    code, token, err = run(capsys, "store", "add", "SH001", "--config", str(config))
    token = token.strip()
    assert code == 0 and len(token) >= 32 and "shown once" in err
    assert run(capsys, "store", "add", "SH001", "--config", str(config))[0] == 1  # exists: no silent new token

    member = central.add_member()
    code, text, _ = run(capsys, "member-code", member, "--config", str(config))
    assert code == 0
    headers = {"Authorization": f"Bearer {token}", "X-Store-Id": "SH001"}
    with central.client() as client:
        published = client.get("/v1/keys/member-code", headers=headers).json()["keys"]
    claim = verify_member_code(
        text.strip(), {k["kid"]: load_public_key(k["public_key"]) for k in published}, datetime.now(UTC)
    )
    assert claim.member_id == member

    code, out, _ = run(capsys, "keys", "rotate", "--config", str(config))
    assert code == 0 and out.startswith("key 2 is current")
    with central.client() as client:
        assert [k["kid"] for k in client.get("/v1/keys/member-code", headers=headers).json()["keys"]] == [2, 1]

    code, new_token, _ = run(capsys, "store", "add", "SH001", "--new-token", "--config", str(config))
    with central.client() as client:
        assert client.get("/v1/keys/member-code", headers=headers).status_code == 401
        assert (
            client.get(
                "/v1/keys/member-code", headers={**headers, "Authorization": f"Bearer {new_token.strip()}"}
            ).status_code
            == 200
        )

    code, _, err = run(capsys, "member-code", "MNOSUCH", "--config", str(config))
    assert code == 1 and err.strip() == "error: no member MNOSUCH"


def test_member_merge_command(central, tmp_path, capsys):
    config = write_config(tmp_path / "central.toml", central.settings.database_url)
    survivor, other = central.add_member(points=5), central.add_member(points=7)
    code, out, _ = run(capsys, "member", "merge", survivor, other, "--config", str(config))
    assert code == 0 and out.strip() == f"{other} merged into {survivor}; {survivor} now has 12 points"
    code, _, err = run(capsys, "member", "merge", survivor, survivor, "--config", str(config))
    assert code == 1 and "itself" in err


def test_seed_demo_refuses_a_production_database(tmp_path, capsys):
    config = write_config(tmp_path / "central.toml", f"sqlite:///{tmp_path / 'c.db'}", environment="production")
    code, _, err = run(capsys, "seed-demo", "--config", str(config))
    assert code == 2 and "development" in err


def pos_central(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "central", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_bad_settings_exit_2_naming_the_key(tmp_path):
    config = tmp_path / "central.toml"
    config.write_text('databse_url = "sqlite:///c.db"\nphone_hash_key = "short"\nport = 0\n', encoding="utf-8")
    result = pos_central("db", "upgrade", "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "databse_url: unknown key; did you mean 'database_url'?" in result.stderr
    assert "phone_hash_key: must be at least 16 characters" in result.stderr
    assert "port: Input should be greater than or equal to 1" in result.stderr
    missing = pos_central("serve", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "file not found" in missing.stderr and "Traceback" not in missing.stderr


def test_an_unreachable_database_is_one_line_exit_1(tmp_path):
    with socket_closed_port() as port:
        config = write_config(tmp_path / "central.toml", f"postgresql://nobody@127.0.0.1:{port}/central")
        result = pos_central("db", "upgrade", "--config", str(config))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: cannot open the database")


class socket_closed_port:
    """A loopback port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


@pytest.mark.parametrize("args", [["--help"], ["seed-demo", "--help"], ["--version"]])
def test_help_and_version(args, capsys):
    code, out, _ = run(capsys, *args)
    assert code == 0 and out


def test_demo_members_one_to_nine_are_the_payment_simulators_customers():
    from central.payments.simulators.wechat import customer_openid

    appid = OFFICIAL_ACCOUNT_APPID
    first = demo_member(1, 1, PHONE_KEY.encode(), datetime.now(UTC), payer_appid=appid)
    tenth = demo_member(1, 10, PHONE_KEY.encode(), datetime.now(UTC), payer_appid=appid)
    assert (f"openid:{appid}", customer_openid(appid, "0001")) in first.identifiers
    assert [k for k, _ in first.identifiers].count(f"openid:{appid}") == 1
    assert (f"openid:{appid}", customer_openid(appid, "0010")) not in tenth.identifiers
    assert first.id == demo_member(1, 1, PHONE_KEY.encode(), datetime.now(UTC)).id  # the same person as before


def test_sqlite_serves_one_process_and_says_so_to_a_second(tmp_path):
    """A second `serve` on the same SQLite file refuses to start, naming the way to run several (PostgreSQL);
    the worker, which exists for several processes, refuses SQLite outright."""
    config = write_config(tmp_path / "central.toml", f"sqlite:///{tmp_path / 'c.db'}")
    ports = []
    for _ in range(2):
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            ports.append(str(free.getsockname()[1]))
    first = subprocess.Popen(
        [sys.executable, "-m", "central", "serve", "--config", str(config), "--port", ports[0]],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for line in first.stderr:  # serving once uvicorn says so
            if "Uvicorn running" in line or "Application startup complete" in line:
                break
        second = pos_central("serve", "--config", str(config), "--port", ports[1])
        assert second.returncode == 1 and "Traceback" not in second.stderr
        assert "SQLite serves one process only" in second.stderr and "PostgreSQL" in second.stderr
        assert first.poll() is None  # the first one serves on, untouched
    finally:
        first.terminate()
        first.wait(timeout=30)
    worker = pos_central("worker", "--config", str(config))
    assert worker.returncode == 1 and "on SQLite `pos-central serve` runs the jobs itself" in worker.stderr
