"""Security checks of central as tests:

- every API route (read from the app, so a new one is covered the day it is added) wants a store's token and
  does nothing without it; the routes open on purpose are listed here by name. What a token of the wrong store
  gets is tested route by route in tests/central/test_auth.py;
- a secret written in a settings file anyone on the machine can read is warned about, as the agent warns
  (agent/settings.py), by the settings loader and on the command line;
- the SQLite database, its -wal and -shm, are for central's user only, even under a umask that lets anyone read
  new files.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from fastapi.routing import iter_route_contexts

from central.cli import cli
from central.config import load_settings
from central.models import Member, Payment
from tests.support.credentials import WECHAT_KEY

# /static-offline-docs: Swagger UI's own scripts and styles, served from the package (nothing of the chain's).
OPEN_PATHS = {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/static-offline-docs"}
# Outside /v1/ yet behind a token: metrics_token (off without one), checked by the route itself.
TOKEN_PATHS = {"/metrics"}
# Outside /v1/ and without credentials by design: the e-receipt page, whose unguessable token is its key
# (tests/central/test_e_receipts.py); a made-up token is a 404 page.
TOKEN_IN_PATH = {"/e/{token}"}
# The merchant's mini program (central/routes/wechat.py): its login's credential is wx.login's code, checked by
# WeChat; the other routes want the session token the login answers, never a store's (test_wechat_miniprogram.py).
MINI_PROGRAM_LOGIN = {"/v1/wechat/miniprogram/login"}
SESSION_PATHS = {"/v1/wechat/miniprogram/userinfo", "/v1/wechat/miniprogram/phone"}
PHONE_HASH_KEY = "a-phone-hash-key-that-is-secret"


@pytest.fixture
def world_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("central_database_url", ["sqlite"], indirect=True)
def test_every_route_without_a_token_or_with_a_wrong_one_is_401_and_does_nothing(central):
    central.add_store("S1")
    contexts = list(iter_route_contexts(central.app.routes))
    routes = [
        (method, context.path) for context in contexts for method in sorted(context.methods or ()) if method != "HEAD"
    ]
    assert ("POST", "/v1/payments") in routes and ("POST", "/v1/transactions:batch") in routes
    unprotected = {path for _, path in routes if not path.startswith("/v1/")} - TOKEN_PATHS - TOKEN_IN_PATH
    assert unprotected <= OPEN_PATHS, (
        f"routes outside /v1/ (served without a token?): {sorted(unprotected - OPEN_PATHS)}"
    )

    with httpx.Client(base_url=central.url, timeout=10) as client:
        for method, path in routes:
            if path in OPEN_PATHS or path in TOKEN_IN_PATH or path in MINI_PROGRAM_LOGIN:
                continue
            url = (
                path.replace("{store_id}", "S1")
                .replace("{business_day}", "2026-11-23")
                .replace("{", "")
                .replace("}", "")
            )
            body = {} if method in ("POST", "PUT") else None
            for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "token-of-S1-0123456789"}):
                answer = client.request(method, url, json=body, headers={"X-Store-Id": "S1", **headers})
                expected = "session_invalid" if path in SESSION_PATHS else "unauthorized"
                assert answer.status_code == 401 and answer.json()["error"] == expected, (
                    method,
                    path,
                    headers,
                    answer.text,
                )
                assert answer.headers["www-authenticate"] == "Bearer"
        for path in OPEN_PATHS - {"/docs/oauth2-redirect", "/static-offline-docs"}:
            assert client.get(path).status_code == 200, path
        assert client.get("/static-offline-docs/swagger-ui.css").status_code == 200
        assert client.get("/e/" + "A" * 32).status_code == 404

    with central.session() as session:  # nothing was written
        assert session.execute(sa.select(sa.func.count()).select_from(Member)).scalar_one() == 0
        assert session.execute(sa.select(sa.func.count()).select_from(Payment)).scalar_one() == 0


# --- secrets in a settings file anyone can read ---------------------------------------------------------------


def settings_file(tmp_path: Path, text: str, mode: int) -> Path:
    path = tmp_path / "central.toml"
    path.write_text(f'database_url = "sqlite:///central.db"\n{text}', encoding="utf-8")
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        (f'phone_hash_key = "{PHONE_HASH_KEY}"\n', ["phone_hash_key"]),
        (
            f'phone_hash_key = "{PHONE_HASH_KEY}"\nwechat_base_url = "https://api.mch.weixin.qq.com"\nwechat_appid = "wx1"\n'
            f'wechat_mch_id = "1900000109"\nwechat_api_key = "{WECHAT_KEY}"\n',
            ["phone_hash_key", "wechat_api_key"],
        ),
    ],
    ids=["phone-hash-key", "wechat-api-key"],
)
def test_a_secret_in_a_world_readable_settings_file_is_warned_about_by_name_never_by_value(
    tmp_path, monkeypatch, text, keys
):
    monkeypatch.delenv("POS_CENTRAL_PHONE_HASH_KEY", raising=False)
    warnings = load_settings(settings_file(tmp_path, text, 0o644)).warnings
    assert [warning.split(" ", 1)[0] for warning in warnings] == keys
    for warning, key in zip(warnings, keys, strict=True):
        assert "chmod 600" in warning and f"POS_CENTRAL_{key.upper()}" in warning
        assert PHONE_HASH_KEY not in warning and WECHAT_KEY not in warning
    assert load_settings(settings_file(tmp_path, text, 0o600)).warnings == ()
    assert load_settings(settings_file(tmp_path, text, 0o640)).warnings == ()  # the group is the service's own
    development = settings_file(tmp_path, f'environment = "development"\n{text}', 0o644)
    assert load_settings(development).warnings == ()  # the demo's files hold the public demo secrets


def test_a_database_password_in_a_world_readable_settings_file_is_warned_about(tmp_path, monkeypatch):
    monkeypatch.setenv("POS_CENTRAL_PHONE_HASH_KEY", PHONE_HASH_KEY)  # the secret kept out of the file, as advised
    path = tmp_path / "central.toml"
    path.write_text('database_url = "postgresql://pos:s3cret-pw@db.example.com/pos"\n', encoding="utf-8")
    path.chmod(0o644)
    (warning,) = load_settings(path).warnings
    assert warning.startswith("database_url is written in a file anyone") and "s3cret-pw" not in warning
    path.write_text('database_url = "postgresql://pos@db.example.com/pos"\n', encoding="utf-8")
    assert load_settings(path).warnings == ()  # no password, nothing secret


def test_the_command_line_prints_the_warning(tmp_path, monkeypatch):
    monkeypatch.delenv("POS_CENTRAL_PHONE_HASH_KEY", raising=False)
    path = settings_file(tmp_path, f'phone_hash_key = "{PHONE_HASH_KEY}"\n', 0o644)
    result = CliRunner().invoke(cli, ["db", "upgrade", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "warning: phone_hash_key is written in a file anyone on this machine can read" in result.stderr
    assert PHONE_HASH_KEY not in result.output + result.stderr


def test_the_shipped_example_holds_no_secret_so_a_copy_anyone_can_read_draws_no_warning(tmp_path, monkeypatch):
    monkeypatch.setenv("POS_CENTRAL_PHONE_HASH_KEY", PHONE_HASH_KEY)  # where the example says it belongs
    copy = tmp_path / "central.toml"
    copy.write_bytes((Path(__file__).resolve().parents[2] / "config" / "central-example.toml").read_bytes())
    copy.chmod(0o644)
    assert load_settings(copy).warnings == ()


# --- the database is central's user's alone ------------------------------------------------------------------


@pytest.mark.parametrize("central_database_url", ["sqlite"], indirect=True)
def test_the_sqlite_database_and_its_wal_and_shm_are_not_readable_by_others(world_umask, central_factory, tmp_path):
    central = central_factory()
    store = central.add_store("S1")
    with central.client(store) as client:
        assert (
            client.post(
                "/v1/members",
                json={"phone": "13812345678", "consent": True},
                headers={"Idempotency-Key": "k-0123456789"},
            ).status_code
            == 201
        )
    database = Path(central.engine.url.database)
    files = [database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")]
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path.name} is readable by others: {oct(mode)}"
