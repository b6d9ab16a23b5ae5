"""Security checks of the agent as tests, against a whole store on 127.0.0.1 (tests/checkout_stack.py):

- every local API route wants the station's token (routes are read from the app, so a new one is covered the
  day it is added); the routes open without one are listed here by name;
- the kiosk's surface (every JSON answer and event of a kiosk sale by a member with a phone, an openid and a
  unionid) never shows the phone number, openid or unionid in clear;
- the database, its -wal and -shm, and a simulated printer's receipts and previews are for the agent's user
  only, even under a umask that would let anyone read them;
- a member code replayed or forged (bad signature, another key, unknown kid, expired, altered member id) is
  refused at the till with a message that says what to do, and identifies nobody. The verification itself is
  unit-tested in tests/agent/test_member_code.py and the replay guard in tests/agent/test_member_code_gate.py; here it is
  the till's answer over HTTP.

The settings loader's warning about a secret in a file anyone can read is tested in tests/agent/test_settings.py.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.routing import iter_route_contexts

from agent.member_code import HEADER_LEN, SIGNATURE_LEN, parse_member_code
from agent.settings import load_settings
from central.member_code import generate_signing_key, sign_member_code
from tests.checkout_stack import Stack, wechat_code
from tests.support.credentials import API_TOKEN, APPID

# Open without a token, on purpose: liveness, the static screens (they take the token from the URL fragment),
# the home page's redirect to the console, and the API's own description.
ROOT = Path(__file__).resolve().parents[2]
OPEN_PATHS = {
    "/healthz",
    "/readyz",
    "/",
    "/console",
    "/kiosk",
    "/till",
    "/shared",
    "/openapi.json",
    "/docs",
    "/docs/oauth2-redirect",
    "/static-offline-docs",  # Swagger UI's own scripts and styles (fastapi-offline): nothing of the store's
}
# Outside /v1/ yet behind the token all the same: the route checks it itself (docs/metrics.md).
TOKEN_PATHS = {"/metrics"}
PHONE = "13812345678"
UNIONID = "oUnion-9f8e7d6c5b4a39281706"


@pytest.fixture
def world_umask() -> Iterator[None]:
    """A umask that lets everyone read new files (Debian's default): the agent must not rely on a stricter one."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def filled(path: str) -> str:
    return path.replace("{", "").replace("}", "")  # /v1/sessions/{session_id} -> /v1/sessions/session_id


# --- every route wants the token ---------------------------------------------------------------------------


def test_every_local_api_route_without_the_token_or_with_a_wrong_one_is_401_and_does_nothing(stack: Stack):
    jobs_before = len(stack.api.get("/v1/printer/jobs").json())
    scans_before = stack.api.get("/v1/scans").json()
    # Every route the app serves, those of included routers and mounts too.
    contexts = list(iter_route_contexts(stack.app.routes))
    routes = [
        (method, context.path) for context in contexts for method in sorted(context.methods or ()) if method != "HEAD"
    ]
    assert ("POST", "/v1/sessions") in routes and ("GET", "/v1/events") in routes  # the enumeration sees the API
    unprotected = {context.path for context in contexts if not context.path.startswith("/v1/")} - TOKEN_PATHS
    assert unprotected <= OPEN_PATHS, (
        f"routes outside /v1/ are served without a token: {sorted(unprotected - OPEN_PATHS)}"
    )

    with httpx.Client(base_url=stack.url, timeout=10) as client:
        for method, path in routes:
            if path in OPEN_PATHS:
                continue
            url = filled(path)
            body = {} if method in ("POST", "PUT") else None
            for headers in (
                {},
                {"Authorization": "Bearer wrong-token"},
                {"Authorization": API_TOKEN},
                {"Authorization": f"Basic {API_TOKEN}"},
            ):
                answer = client.request(method, url, json=body, headers=headers)
                assert answer.status_code == 401 and answer.json()["error"] == "unauthorized", (
                    method,
                    path,
                    headers,
                    answer.text,
                )
            wrong_query = client.request(method, url, json=body, params={"token": "wrong-token"})
            assert wrong_query.status_code == 401, (method, path)
            if method != "GET":  # the token in the URL is for event streams and images only, never for a change
                in_query = client.request(method, url, json=body, params={"token": API_TOKEN})
                assert in_query.status_code == 401, (method, path, in_query.text)
        for path in ("/healthz", "/readyz", "/kiosk/", "/till/", "/openapi.json"):
            assert client.get(path).status_code == 200, path

    # Nothing was done: no sale opened, nothing printed, no scan injected.
    assert stack.api.get("/v1/sessions/current").status_code == 404
    assert len(stack.api.get("/v1/printer/jobs").json()) == jobs_before
    assert stack.api.get("/v1/scans").json() == scans_before


# --- the kiosk shows nobody's phone, openid or unionid ------------------------------------------------------


class Recorder:
    """The kiosk's calls to the local API, keeping every answer's text."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.texts: list[str] = []

    def call(self, method: str, path: str, **kwargs) -> dict:
        answer = self.stack.api.request(method, path, **kwargs)
        self.texts.append(answer.text)
        assert answer.status_code < 400, (method, path, answer.text)
        return answer.json()

    def events_until(self, done, within: float = 15) -> list[dict]:
        """The station's event stream from its start, as the kiosk follows it, until `done(event)`."""
        events = []
        with (
            httpx.Client(timeout=within) as client,
            client.stream(
                "GET", f"{self.stack.url}/v1/events", params={"token": API_TOKEN}, headers={"Last-Event-ID": "0"}
            ) as stream,
        ):
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    self.texts.append(line[5:])
                    events.append(json.loads(line[5:]))
                    if done(events[-1]):
                        return events
        raise AssertionError(f"the event asked for never came: {events[-3:]}")


def test_a_kiosk_sale_by_a_member_never_shows_their_phone_openid_or_unionid(stack_factory, world_umask):
    kiosk = stack_factory(kind="kiosk")
    payment_code = wechat_code("00", customer="0321")
    openid = kiosk.wechat.openid_for(payment_code)
    member = kiosk.central.add_member(
        points=600,
        tier="gold",
        display_name="林*华",
        phone=PHONE,
        identifiers={f"openid:{APPID}": openid, "unionid": UNIONID, "card_no": "8800012345678"},
    )
    kiosk.sync_now()
    ui = Recorder(kiosk)

    ui.call("GET", "/v1/status")
    kiosk.scan("6901234567892")  # the shopper scans a product: the sale opens
    sale = kiosk.wait_session_current()
    ui.call("GET", "/v1/sessions/current")
    identified = ui.call("POST", f"/v1/sessions/{sale['id']}/phone", json={"phone": PHONE, "confirmed": True})
    assert identified["member"]["id"] == member and identified["member"]["phone_masked"] == "138****5678"
    ui.call("PUT", f"/v1/sessions/{sale['id']}/redemption", json={"points": 50})
    ui.call("GET", "/v1/members/lookup", params={"phone": PHONE})
    ui.call("GET", "/v1/members/lookup", params={"card_no": "8800012345678"})
    kiosk.scan(payment_code)  # pays as the member
    ui.events_until(lambda event: event["type"] == "printed")
    done = ui.call("GET", f"/v1/sessions/{sale['id']}")
    assert done["state"] == "closed" and done["member"]["id"] == member
    ui.call("GET", f"/v1/transactions/{done['transaction_id']}")
    ui.call("GET", "/v1/transactions")
    ui.call("GET", "/v1/scans")
    ui.call("GET", "/v1/status")

    everything = "\n".join(ui.texts)
    for secret, what in (
        (PHONE, "phone number"),
        (openid, "openid"),
        (UNIONID, "unionid"),
        (payment_code, "payment code"),
    ):
        assert secret not in everything, f"the kiosk's API shows the {what} in clear"
    assert "138****5678" in everything  # the masked form is what a screen shows

    # What the sale left on disk is the agent's user's alone.
    preview = None
    for job in kiosk.api.get("/v1/printer/jobs", params={"status": "printed"}).json():
        if job["preview_url"]:
            preview = kiosk.api.get(job["preview_url"])
    assert preview is not None and preview.status_code == 200 and preview.headers["content-type"] == "image/png"
    assert_private_files(kiosk.database.parent)


def assert_private_files(folder: Path) -> None:
    database = folder / "agent.db"
    files = [database, database.with_name("agent.db-wal"), database.with_name("agent.db-shm")]
    receipts = folder / "receipts"
    files += sorted(receipts.glob("*.bin")) + sorted(receipts.glob("*.png"))
    assert any(path.suffix == ".png" for path in files) and any(path.suffix == ".bin" for path in files)
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path.name} is readable by others: {oct(mode)}"
    assert stat.S_IMODE(receipts.stat().st_mode) & 0o077 == 0, "the receipts folder can be listed by others"


# --- member codes replayed or forged are refused at the till -----------------------------------------------------


def altered(code: str, member_id: str) -> str:
    """The same code with another member id of the same length in its payload, signature untouched."""
    raw = base64.urlsafe_b64decode(code[3:] + "=" * (-len(code[3:]) % 4))
    old = raw[HEADER_LEN:-SIGNATURE_LEN]
    assert len(member_id.encode()) == len(old)
    return "M1." + base64.urlsafe_b64encode(
        raw[:HEADER_LEN] + member_id.encode() + raw[-SIGNATURE_LEN:]
    ).decode().rstrip("=")


def flipped_signature(code: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(code[3:] + "=" * (-len(code[3:]) % 4)))
    raw[-1] ^= 0x01
    return "M1." + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


def test_member_codes_replayed_or_forged_are_refused_at_the_till_with_what_to_do(stack: Stack):
    member = stack.add_member(points=500, display_name="周*")
    victim = stack.add_member(points=90000, display_name="吴*")
    assert len(member) == len(victim)
    stack.sync_now()  # the till learns the members and central's member-code key
    session = stack.open_session()
    sid = session["id"]

    first = stack.member_code(member)
    accepted = stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": first})
    assert accepted.status_code == 200 and accepted.json()["member"]["id"] == member
    stack.api.post(f"/v1/sessions/{sid}/cancel")
    sid = stack.open_session()["id"]

    claim = parse_member_code(stack.member_code(member, seconds_ago=1))
    stranger = generate_signing_key()
    now = claim.issued_at
    refresh, other_way = "refresh the code in the app", "identify by card or phone"
    cases = {  # the code, what the cashier reads, what to do
        "replayed": (first, "already used", refresh),
        "expired": (stack.member_code(member, seconds_ago=600), "expired", refresh),
        "bad signature": (flipped_signature(stack.member_code(member, seconds_ago=2)), "signature is invalid", refresh),
        "another key, the real kid": (
            sign_member_code(stranger, claim.kid, member, now),
            "signature is invalid",
            refresh,
        ),
        "unknown kid": (
            sign_member_code(stranger, (claim.kid + 1) % 0x10000, member, now),
            "key this till does not know",
            other_way,
        ),
        "altered member id": (
            altered(stack.member_code(member, seconds_ago=3), victim),
            "signature is invalid",
            refresh,
        ),
    }
    for name, (code, says, advice) in cases.items():
        refused = stack.api.post(f"/v1/sessions/{sid}/codes", json={"text": code})
        body = refused.json()
        assert refused.status_code == 409 and body["error"] == "not_now", (name, body)
        assert says in body["message"] and advice in body["message"], (name, body["message"])
        assert body["message_zh"] == "会员码无效或已使用，请刷新会员码", (name, body)
        assert code not in refused.text, name  # a bearer secret is never echoed
        assert stack.session(sid)["member"] is None, name  # identifies nobody


# --- the shipped settings hold no secret ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["example.toml", "demo.toml", "demo-kiosk.toml"])
def test_the_shipped_settings_hold_no_secret_so_a_copy_anyone_can_read_draws_no_warning(name, tmp_path, monkeypatch):
    """Secrets go in the environment (docs/checkout.md): the files a store starts from carry none, so copying one
    with the usual mode 0644 exposes nothing. A secret in such a file is warned about (tests/agent/test_settings.py)."""
    for variable in [v for v in os.environ if v.startswith("POS_EDGE_")]:
        monkeypatch.delenv(variable)
    copy = tmp_path / name
    copy.write_bytes((ROOT / "config" / name).read_bytes())
    copy.chmod(0o644)
    loaded = load_settings(copy)
    assert loaded.warnings == ()
    settings = loaded.settings
    assert not settings.central.token.get_secret_value() and not settings.api.token.get_secret_value()
    assert settings.privacy.phone_hash_key is None
