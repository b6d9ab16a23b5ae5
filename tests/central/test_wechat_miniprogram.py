"""The mini program at central, over real HTTP against the wire-level simulator of WeChat's server API: login and
its session token, the session key that never leaves central, the UnionID from the user's encrypted data (WeChat's
published example included), joining with the phone number, and every store seeing what was linked."""

from __future__ import annotations

import base64
import hashlib
import logging
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from central.identity import openid_kind
from central.models import MemberConsent, WechatSession
from central.pii import phone_hash
from central.wechat.simulator import customer_openid, customer_phone, customer_unionid
from tests.central.test_wechat_opendata import DEMO_APPID, DEMO_ENCRYPTED_DATA, DEMO_IV, DEMO_SESSION_KEY
from tests.central.wechat_apps import MP_APPID, MP_SECRET, NOTICE, served_simulator, start_central
from tests.support.credentials import PHONE_KEY

LOGIN, USERINFO, PHONE = (
    "/v1/wechat/miniprogram/login",
    "/v1/wechat/miniprogram/userinfo",
    "/v1/wechat/miniprogram/phone",
)


@pytest.fixture
def sim():
    with served_simulator() as simulator:
        yield simulator


@pytest.fixture
def mp(central_factory, sim):
    """(central, an HTTP client without store credentials: the mini program's)."""
    server = start_central(central_factory, sim, welcome_points=100, card_no_prefix="8800")
    with server.client() as client:
        yield server, client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login(client, sim, customer: str) -> dict:
    answer = client.post(LOGIN, json={"js_code": sim.login_code(customer)})
    assert answer.status_code == 200, answer.text
    return answer.json()


def identifiers(member: dict) -> dict[str, str]:
    return {i["kind"]: i["value"] for i in member["identifiers"]}


def store_feed(server) -> dict[str, dict]:
    """Every member as a store's feed shows it now (the last state of each)."""
    with server.client(server.add_store("FEED01")) as client:
        changes = client.get("/v1/members/changes", params={"limit": 1000}).json()["changes"]
    return {change["member_id"]: change for change in changes}


def test_login_answers_a_session_token_and_keeps_the_session_key(mp, sim):
    server, client = mp
    before = datetime.now(UTC)
    answer = client.post(LOGIN, json={"js_code": sim.login_code("0042")})
    assert answer.status_code == 200
    body = answer.json()
    key = sim.session_key_of("0042")
    assert key not in answer.text and "session_key" not in body
    assert set(body) == {"session_token", "expires_at", "member", "has_unionid"}
    assert body["member"] is None and body["has_unionid"] is True  # nobody holds this WeChat user yet
    expires = datetime.fromisoformat(body["expires_at"])
    assert before + timedelta(hours=2) <= expires <= datetime.now(UTC) + timedelta(hours=2)

    with server.session() as session:
        (row,) = session.execute(sa.select(WechatSession.__table__)).all()
    assert row.token_hash == hashlib.sha256(body["session_token"].encode()).hexdigest()
    assert body["session_token"] not in row  # only its hash is kept
    assert (row.openid, row.unionid, row.session_key) == (
        customer_openid(MP_APPID, "0042"),
        customer_unionid("0042"),
        key,
    )

    # Logging in again ends the earlier session: WeChat gave a new session key.
    again = login(client, sim, "0042")
    assert client.post(PHONE, headers=bearer(body["session_token"]), json={}).json()["error"] == "session_invalid"
    assert client.post(PHONE, headers=bearer(again["session_token"]), json={}).status_code == 422  # a session


def test_neither_the_session_key_nor_the_secret_nor_a_token_reaches_a_log_or_an_answer(mp, sim, caplog):
    server, client = mp
    caplog.set_level(logging.DEBUG)
    answers = []
    for customer in ("0042", "9042"):  # 9042: WeChat gives no UnionID at login, the user data does
        answer = client.post(LOGIN, json={"js_code": sim.login_code(customer)})
        token = answer.json()["session_token"]
        encrypted, iv = sim.encrypted_user_info(customer)
        answers += [
            answer,
            client.post(USERINFO, headers=bearer(token), json={"encrypted_data": encrypted, "iv": iv}),
            client.post(
                USERINFO, headers=bearer(token), json={"encrypted_data": encrypted[:-8] + "AAAAAAA=", "iv": iv}
            ),
            client.post(
                PHONE,
                headers=bearer(token),
                json={"code": sim.phone_code(customer), "consent": True, "notice_version": NOTICE},
            ),
        ]
    assert [a.status_code for a in answers] == [200, 200, 422, 201] * 2
    secrets = [sim.session_key_of("0042"), sim.session_key_of("9042"), MP_SECRET]
    secrets += [a.json()["session_token"] for a in answers[::4]]
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert "jscode2session" in logged  # the calls to WeChat were logged, and were looked at
    for secret in secrets:
        assert secret not in logged
    for answer in answers[1:]:
        assert not any(s in answer.text for s in secrets[:3])
    assert customer_phone("0042") not in logged and customer_phone("9042") not in logged


def test_login_links_the_mini_program_openid_to_the_member_holding_the_unionid_and_stores_see_it(mp, sim):
    server, client = mp
    member = server.add_member(identifiers={"unionid": customer_unionid("0007")}, phone="13912345678")
    answer = login(client, sim, "0007")
    assert answer["member"]["member_id"] == member and answer["has_unionid"] is True
    assert identifiers(answer["member"])[openid_kind(MP_APPID)] == customer_openid(MP_APPID, "0007")
    assert answer["member"]["phone_masked"] == "139****5678"
    fed = store_feed(server)[member]
    assert identifiers(fed)[openid_kind(MP_APPID)] == customer_openid(MP_APPID, "0007")


def test_a_login_code_that_is_invalid_or_used_is_refused_and_no_session_starts(mp, sim):
    server, client = mp
    code = sim.login_code("0001")
    assert client.post(LOGIN, json={"js_code": code}).status_code == 200
    for js_code in (code, "nonsense"):
        refused = client.post(LOGIN, json={"js_code": js_code})
        assert refused.status_code == 422 and refused.json()["error"] == "invalid_code", refused.text
        assert "wx.login" in refused.json()["message"]
    assert client.post(LOGIN, json={}).status_code == 422
    with server.session() as session:
        assert session.execute(sa.select(sa.func.count()).select_from(WechatSession.__table__)).scalar() == 1


def test_without_a_mini_program_the_routes_say_so(central):
    with central.client() as client:
        answer = client.post(LOGIN, json={"js_code": "0001abcdefgh"})
    assert answer.status_code == 404 and answer.json()["error"] == "not_configured"
    assert "wechat_miniprogram_appid" in answer.json()["message"]


def test_the_session_token_is_its_own_auth_path(mp, sim):
    server, client = mp
    store = server.add_store("S1")
    token = login(client, sim, "0042")["session_token"]
    body = {"code": sim.phone_code("0042"), "consent": True, "notice_version": NOTICE}
    for headers in ({}, bearer(store.token), store.headers, {"Authorization": f"Basic {token}"}, bearer("x" * 43)):
        refused = client.post(PHONE, headers=headers, json=body)
        assert refused.status_code == 401 and refused.json()["error"] == "session_invalid", headers
        assert refused.headers["WWW-Authenticate"] == "Bearer"
    # ... and a session token is no store's token.
    stores = client.get("/v1/members/changes", headers=bearer(token) | {"X-Store-Id": "S1"})
    assert stores.status_code == 401 and stores.json()["error"] == "unauthorized"
    # It ends after wechat_session_ttl_seconds (2 h).
    server.set_now(datetime.now(UTC) + timedelta(hours=2, seconds=1))
    assert client.post(PHONE, headers=bearer(token), json=body).json()["error"] == "session_invalid"
    server.set_now(None)
    assert client.post(PHONE, headers=bearer(token), json=body).status_code == 201
    assert sim.count("wxa/business/getuserphonenumber") == 1


def test_wechats_published_example_sent_by_a_mini_program_links_its_unionid(central_factory, sim):
    """The demo of 开放数据校验与解密, end to end: the login answers its openid and session key (no UnionID), the
    mini program sends its encryptedData and iv, and central links the UnionID it holds."""
    sim.miniprogram_appid = DEMO_APPID
    sim.script_login("demo-login-code", openid="oGZUI0egBJY1zhBYw2KhdUfwVJJE", session_key=DEMO_SESSION_KEY)
    server = start_central(central_factory, sim, wechat_miniprogram_appid=DEMO_APPID)
    member = server.add_member(identifiers={"unionid": "ocMvos6NjeKLIBqg5Mr9QjxrP1FA"})
    server.set_now(datetime.fromtimestamp(1477314187 + 60, UTC))  # a minute after WeChat sealed it
    with server.client() as client:
        logged_in = client.post(LOGIN, json={"js_code": "demo-login-code"}).json()
        assert logged_in["member"] is None and logged_in["has_unionid"] is False
        answer = client.post(
            USERINFO,
            headers=bearer(logged_in["session_token"]),
            json={"encrypted_data": DEMO_ENCRYPTED_DATA, "iv": DEMO_IV},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["has_unionid"] is True and answer.json()["member"]["member_id"] == member
    assert identifiers(answer.json()["member"])[openid_kind(DEMO_APPID)] == "oGZUI0egBJY1zhBYw2KhdUfwVJJE"


def sealed(session_key: str, padded: bytes) -> dict[str, str]:
    """Bytes already padded (well or not) to whole blocks, sealed with the session key as WeChat would."""
    vector = b"\x07" * 16
    encryptor = Cipher(algorithms.AES(base64.b64decode(session_key)), modes.CBC(vector)).encryptor()
    data = encryptor.update(padded) + encryptor.finalize()
    return {"encrypted_data": base64.b64encode(data).decode(), "iv": base64.b64encode(vector).decode()}


def user_info(sim, customer: str, **changes) -> dict[str, str]:
    encrypted, iv = sim.encrypted_user_info(customer, **changes)
    return {"encrypted_data": encrypted, "iv": iv}


def test_user_data_that_is_altered_foreign_stale_or_badly_padded_is_refused_with_a_code(mp, sim):
    server, client = mp
    token = login(client, sim, "9042")["session_token"]
    key = sim.session_key_of("9042")
    genuine = user_info(sim, "9042")
    altered = bytearray(base64.b64decode(genuine["encrypted_data"]))
    altered[len(altered) // 2] ^= 0x80
    cases = {
        "decryption_failed": [
            genuine | {"encrypted_data": base64.b64encode(bytes(altered)).decode()},
            sealed(key, b'{"unionId":"x"}' + b"\x00"),  # pad byte 0
            sealed(key, b'{"unionId":"x"}' + b"\x11"),  # pad byte 17
            sealed(key, b'{"unionId":"x1"}' + b"\x20" * 16),  # pad byte 32
            sealed(key, b'{"unionId":"x"}' + b"\x02"),  # a pad of 2 whose other byte is not 2
        ],
        "invalid_encrypted_data": [
            genuine | {"encrypted_data": "%%%"},
            genuine | {"encrypted_data": genuine["encrypted_data"][:-4]},  # not whole blocks
            genuine | {"iv": "AAAA"},  # 3 bytes
        ],
        "watermark_appid_mismatch": [user_info(sim, "9042", appid="wx0000000000000000")],
        "watermark_stale": [user_info(sim, "9042", timestamp=int(datetime.now(UTC).timestamp()) - 601)],
    }
    for code, bodies in cases.items():
        for body in bodies:
            refused = client.post(USERINFO, headers=bearer(token), json=body)
            assert refused.status_code == 422, refused.text
            assert refused.json()["error"] == code and refused.json()["message"], refused.json()
    # None of them linked anything; the genuine data still does.
    with server.session() as session:
        assert session.execute(sa.select(WechatSession.unionid)).scalar() is None
    assert client.post(USERINFO, headers=bearer(token), json=genuine).json()["has_unionid"] is True


def test_user_data_links_the_unionid_and_merges_the_two_members_it_proves_are_one(mp, sim):
    server, client = mp
    by_unionid = server.add_member(identifiers={"unionid": customer_unionid("9042")}, points=300)
    by_openid = server.add_member(identifiers={openid_kind(MP_APPID): customer_openid(MP_APPID, "9042")}, points=50)
    logged_in = login(client, sim, "9042")  # no UnionID from WeChat at login for this customer
    assert logged_in["has_unionid"] is False and logged_in["member"]["member_id"] == by_openid
    encrypted, iv = sim.encrypted_user_info("9042")
    answer = client.post(
        USERINFO, headers=bearer(logged_in["session_token"]), json={"encrypted_data": encrypted, "iv": iv}
    )
    assert answer.status_code == 200 and answer.json()["has_unionid"] is True
    survivor = answer.json()["member"]
    assert survivor["member_id"] == by_unionid and survivor["points"] == 350
    assert identifiers(survivor)[openid_kind(MP_APPID)] == customer_openid(MP_APPID, "9042")
    fed = store_feed(server)
    assert fed[by_openid]["deleted"] is True and fed[by_openid]["merged_into"] == by_unionid
    assert identifiers(fed[by_unionid])["unionid"] == customer_unionid("9042")
    assert fed[by_unionid]["version"] > fed[by_openid]["version"]  # the tombstone first, then the survivor


def test_another_users_data_is_refused(mp, sim):
    server, client = mp
    token = login(client, sim, "0042")["session_token"]
    login(client, sim, "0043")
    encrypted, iv = sim.encrypted_user_info("0043")  # sealed with 0043's key: 0042's session cannot open it
    refused = client.post(USERINFO, headers=bearer(token), json={"encrypted_data": encrypted, "iv": iv})
    assert refused.status_code == 422 and refused.json()["error"] == "decryption_failed"


def test_phone_quick_fill_joins_the_customer_with_consent_recorded(mp, sim):
    server, client = mp
    logged_in = login(client, sim, "0042")
    token = logged_in["session_token"]
    code = sim.phone_code("0042")
    refused = client.post(PHONE, headers=bearer(token), json={"code": code, "consent": False, "notice_version": NOTICE})
    assert refused.status_code == 422 and refused.json()["error"] == "consent_required"
    missing = client.post(PHONE, headers=bearer(token), json={"code": code, "consent": True})
    assert missing.status_code == 422  # the notice the customer read is required
    assert sim.count("wxa/business/getuserphonenumber") == 0  # a paid call: never made without consent

    answer = client.post(PHONE, headers=bearer(token), json={"code": code, "consent": True, "notice_version": NOTICE})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["created"] is True and body["welcome_points"] == 100
    member = body["member"]
    held = identifiers(member)
    assert held["phone_hash"] == phone_hash(PHONE_KEY.encode(), customer_phone("0042"))
    assert held["unionid"] == customer_unionid("0042")
    assert held[openid_kind(MP_APPID)] == customer_openid(MP_APPID, "0042")
    assert held["card_no"].startswith("8800") and len(held["card_no"]) == 13
    assert member["phone_masked"] == "138****0042" and member["points"] == 100
    assert customer_phone("0042") not in answer.text
    with server.session() as session:
        consents = session.execute(sa.select(MemberConsent.__table__)).all()
    assert [(c.member_id, c.purpose, c.notice_version, c.store_id) for c in consents] == [
        (member["member_id"], "membership", NOTICE, None)
    ]

    # The same code again (an answer lost on the way): the member, without paying WeChat a second time.
    again = client.post(PHONE, headers=bearer(token), json={"code": code, "consent": True, "notice_version": NOTICE})
    assert again.status_code == 200 and again.json()["member"]["member_id"] == member["member_id"]
    assert sim.count("wxa/business/getuserphonenumber") == 1
    # A new login finds the member.
    assert login(client, sim, "0042")["member"]["member_id"] == member["member_id"]
    assert store_feed(server)[member["member_id"]]["phone_masked"] == "138****0042"


def test_a_phone_code_of_another_user_is_refused(mp, sim):
    server, client = mp
    token = login(client, sim, "0042")["session_token"]
    body = {"code": sim.phone_code("0043"), "consent": True, "notice_version": NOTICE}
    refused = client.post(PHONE, headers=bearer(token), json=body)
    assert refused.status_code == 422 and refused.json()["error"] == "invalid_code"


def test_the_phone_quota_used_up_is_a_clear_error_and_a_warning(mp, sim, caplog):
    server, client = mp
    token = login(client, sim, "0042")["session_token"]
    sim.phone_quota = 0
    body = {"code": sim.phone_code("0042"), "consent": True, "notice_version": NOTICE}
    with caplog.at_level(logging.WARNING, logger="central.wechat.miniprogram"):
        refused = client.post(PHONE, headers=bearer(token), json=body)
    assert refused.status_code == 503
    assert refused.json()["error"] == "phone_quota_exhausted" and "quota" in refused.json()["message"]
    assert any(r.levelno == logging.WARNING and "1400001" in r.getMessage() for r in caplog.records)
    with server.session() as session:
        assert session.execute(sa.select(sa.func.count()).select_from(MemberConsent.__table__)).scalar() == 0


def test_the_access_token_is_shared_and_fetched_again_once_when_wechat_refuses_it(mp, sim):
    server, client = mp
    for customer in ("0041", "0042"):
        token = login(client, sim, customer)["session_token"]
        body = {"code": sim.phone_code(customer), "consent": True, "notice_version": NOTICE}
        assert client.post(PHONE, headers=bearer(token), json=body).status_code == 201
    assert sim.count("cgi-bin/stable_token") == 1  # one token for both calls

    sim.revoke_tokens()  # WeChat answers the kept token with 40001
    token = login(client, sim, "0043")["session_token"]
    body = {"code": sim.phone_code("0043"), "consent": True, "notice_version": NOTICE}
    assert client.post(PHONE, headers=bearer(token), json=body).status_code == 201
    assert sim.count("cgi-bin/stable_token") == 2
    assert sim.count("wxa/business/getuserphonenumber") == 4  # the refused call, then once more


def test_wechat_unreachable_is_a_502_and_no_session(central_factory):
    server = central_factory(
        wechat_api_base_url="http://127.0.0.1:9",  # nothing listens there
        wechat_miniprogram_appid=MP_APPID,
        wechat_miniprogram_secret=MP_SECRET,
    )
    with server.client() as client:
        answer = client.post(LOGIN, json={"js_code": "0001abcdefgh"})
    assert answer.status_code == 502 and answer.json()["error"] == "wechat_unavailable"


def test_a_member_whose_unionid_disagrees_with_wechat_is_left_alone_with_a_warning(mp, sim, caplog):
    server, client = mp
    # Data that contradicts WeChat (one UnionID per user): an import gave this member another UnionID.
    odd = server.add_member(
        identifiers={
            openid_kind(MP_APPID): customer_openid(MP_APPID, "0008"),
            "unionid": "oIMPORTEDxxxxxxxxxxxxxxxxxxx",
        }
    )
    other = server.add_member(identifiers={"unionid": customer_unionid("0008")})
    with caplog.at_level(logging.WARNING, logger="central.wechat.links"):
        answer = login(client, sim, "0008")
    assert answer["member"]["member_id"] == odd  # the openid's member, neither merged nor given a second UnionID
    assert identifiers(answer["member"])["unionid"] == "oIMPORTEDxxxxxxxxxxxxxxxxxxx"
    assert identifiers(store_feed(server)[other]) == {"unionid": customer_unionid("0008")}
    assert any("another UnionID" in r.getMessage() for r in caplog.records)


def test_no_input_is_a_server_error(mp, sim):
    """These routes are outside the OpenAPI document test_fuzz_api.py fuzzes: odd bodies, tried here."""
    server, client = mp
    token = login(client, sim, "0042")["session_token"]
    odd = [None, [], "x", 0, {"unknown": 1}, {"js_code": ""}, {"js_code": "é" * 128}, {"js_code": "\x00" * 10}]
    odd += [{"js_code": 12}, {"encrypted_data": "A" * 8192, "iv": "A" * 64}, {"encrypted_data": "AAAA", "iv": "é"}]
    odd += [
        {"encrypted_data": "=" * 24, "iv": "=" * 24},
        {"encrypted_data": "AA==" * 8, "iv": "AAAAAAAAAAAAAAAAAAAAAA=="},
    ]
    odd += [{"code": "é" * 40, "consent": True, "notice_version": "x"}, {"code": "0042", "consent": "yes"}]
    odd += [{"code": "0042" + "a" * 124, "consent": True, "notice_version": "n" * 33}]
    for path in (LOGIN, USERINFO, PHONE):
        for body in odd:
            answer = client.post(path, headers=bearer(token), json=body)
            assert answer.status_code < 500 and answer.json()["error"], (path, body, answer.text)
        answer = client.post(path, headers=bearer(token) | {"Content-Type": "application/json"}, content=b"{not json")
        assert answer.status_code == 422, (path, answer.text)
