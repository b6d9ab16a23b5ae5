"""End to end: a customer joins in the merchant's mini program (login, phone quick-fill with consent), follows the
official account, and the till then knows them from their WeChat Pay payment code.

WeChat gives a user one openid per app and one UnionID for all apps of the merchant's Open Platform account. The
payment code names the payer by their openid of the payment appid; here that is the official account (a service
account bound to WeChat Pay), so the member must come to hold that openid: the follower walk asks WeChat the
UnionID of each follower and links the follower's openid to the member holding it. The simulators model this as
WeChat does: the WeChat Pay simulator's `authcodetoopenid` answers `customer_openid(payment appid, customer)`, and
the server API simulator lists the same openid as a follower with the customer's one UnionID. Both run on one port,
as `pos-central simulate wechat` serves them.
"""

from __future__ import annotations

import itertools

import pytest

from central.identity import openid_kind
from central.payments.simulators import serve_in_thread
from central.payments.simulators.wechat import WeChatSimulator
from central.wechat.simulator import WeChatApiSimulator, customer_openid, customer_unionid
from tests.central.wechat_apps import MP_APPID, MP_SECRET, NOTICE, OA_APPID, OA_SECRET, wechat_settings
from tests.support.credentials import MCH_ID, WECHAT_KEY
from tests.support.poll import eventually

_serial = itertools.count(1)


def auth_code(customer: str) -> str:
    """A WeChat Pay payment code of the simulated customer (18 digits, prefix 13, scenario 00: it identifies)."""
    return f"13{customer}{next(_serial):010d}00"


@pytest.fixture
def wechat():
    """The WeChat Pay simulator with the server API simulator on the same port; the payment appid is `pay_appid`."""
    served = []

    def start(pay_appid: str) -> tuple[str, WeChatSimulator, WeChatApiSimulator]:
        pay = WeChatSimulator(appid=pay_appid, mch_id=MCH_ID, api_key=WECHAT_KEY)
        api = WeChatApiSimulator(
            miniprogram_appid=MP_APPID,
            miniprogram_secret=MP_SECRET,
            official_account_appid=OA_APPID,
            official_account_secret=OA_SECRET,
        )
        app = pay.app()
        api.install(app)
        served.append(serve_in_thread(app))
        return served[-1].url, pay, api

    yield start
    for one in served:
        one.stop()


def identify(client, customer: str) -> dict:
    answer = client.post("/v1/payments/identify", json={"auth_code": auth_code(customer)})
    assert answer.status_code == 200, answer.text
    return answer.json()


def join_in_the_mini_program(central, sim: WeChatApiSimulator, customer: str) -> dict:
    with central.client() as mini_program:
        login = mini_program.post("/v1/wechat/miniprogram/login", json={"js_code": sim.login_code(customer)}).json()
        joined = mini_program.post(
            "/v1/wechat/miniprogram/phone",
            headers={"Authorization": f"Bearer {login['session_token']}"},
            json={"code": sim.phone_code(customer), "consent": True, "notice_version": NOTICE},
        )
    assert joined.status_code == 201, joined.text
    return joined.json()["member"]


def test_a_member_who_joined_in_the_mini_program_and_follows_the_account_is_known_by_their_payment_code(
    central_factory, wechat
):
    url, pay, sim = wechat(pay_appid=OA_APPID)  # the service account is the payment appid
    central = central_factory(
        wechat_base_url=url,
        wechat_appid=OA_APPID,
        wechat_mch_id=MCH_ID,
        wechat_api_key=WECHAT_KEY,
        **wechat_settings(url, wechat_follower_sync_seconds=0.05),
    )
    member = join_in_the_mini_program(central, sim, "0042")
    kinds = {i["kind"] for i in member["identifiers"]}
    assert {"unionid", "phone_hash", openid_kind(MP_APPID)} <= kinds and openid_kind(OA_APPID) not in kinds

    with central.client(central.add_store("S1")) as till:
        before = identify(till, "0042")
        assert before["payer"] == {"appid": OA_APPID, "openid": pay.openid_for(auth_code("0042"))}
        assert before["member"] is None  # the payment openid is of another app than the mini program's

        sim.follow("0042")  # the customer follows the official account; the next walk links them

        def linked() -> dict | None:
            changes = till.get("/v1/members/changes").json()["changes"]
            mine = [c for c in changes if c["member_id"] == member["member_id"]]
            held = {i["kind"]: i["value"] for i in mine[-1]["identifiers"]} if mine else {}
            return mine[-1] if held.get(openid_kind(OA_APPID)) == customer_openid(OA_APPID, "0042") else None

        fed = eventually(linked, what="the store's feed showing the official account's openid")
        assert {i["value"] for i in fed["identifiers"] if i["kind"] == "unionid"} == {customer_unionid("0042")}

        after = identify(till, "0042")
        assert after["member"]["member_id"] == member["member_id"] and after["may_redeem"] is False
        assert after["member"]["phone_masked"] == "138****0042"
        assert identify(till, "0043")["member"] is None  # another customer is nobody's
    central.stop()  # the follower walk stops with the service, before the simulators go


def test_when_the_mini_program_is_the_payment_appid_the_login_alone_ties_the_payment_code(central_factory, wechat):
    url, pay, sim = wechat(pay_appid=MP_APPID)
    central = central_factory(
        wechat_base_url=url,
        wechat_appid=MP_APPID,
        wechat_mch_id=MCH_ID,
        wechat_api_key=WECHAT_KEY,
        **wechat_settings(url),
    )
    member = join_in_the_mini_program(central, sim, "0007")
    with central.client(central.add_store("S1")) as till:
        assert identify(till, "0007")["member"]["member_id"] == member["member_id"]
