"""The merchant member card (商家名片会员, `wechat_member_card = "brand"`): the real central service (SQLite and
PostgreSQL) against the WeChat Pay v3 simulator serving the Brand API's member card calls on the same port, both
over HTTP on 127.0.0.1. A payer who is nobody's member pays with join-on-payment and becomes a member holding the
card; points earned reach the card as user feeds, never more than 5 calls a second, again after a rate limit."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import pytest
import sqlalchemy as sa

from central import feed
from central.config import Settings
from central.models import (
    BrandCardPush,
    CardSyncJob,
    MemberConsent,
    MemberIdentifier,
    WechatBrandCard,
    WechatCardJoin,
)
from central.payments.brand_api import ATTACH_MAX, RateLimit, join_attach, parse_join_attach
from central.payments.brand_cards import out_request_no, register
from central.payments.cards import register_card
from central.payments.simulators import serve_in_thread
from central.payments.wechat_v3 import authorization, load_private_key
from tests.central.plugin import central_settings
from tests.central.rows import journal_row
from tests.central.test_payments import code, follow, pay
from tests.support.credentials import APPID, MCH_ID, WECHAT_KEY
from tests.support.poll import eventually
from tests.support.timings import FAST_PAYMENTS
from tests.support.wechat_brand import CARD_ID, brand_settings, brand_simulator
from tests.support.wechat_v3 import MERCHANT_SERIAL, merchant_key_pem, v3_settings, v3_simulator

CARD_KIND = "card_no"  # the code the card shows is a card number a till looks members up by
OPENID_KIND = f"openid:{APPID}"


@pytest.fixture
def sim():
    simulator = v3_simulator(userpaying_seconds=0.2, brand=brand_simulator())
    served = serve_in_thread(simulator.app())
    simulator.url = served.url
    yield simulator
    served.stop()


def brand_central(central_factory, sim, tmp_path, **overrides):
    settings = dict(
        wechat_base_url=sim.url,
        wechat_appid=APPID,
        wechat_mch_id=MCH_ID,
        wechat_api_key=WECHAT_KEY,
        **v3_settings(tmp_path / "wechat-v3"),
        **brand_settings(tmp_path / "brand"),
        **FAST_PAYMENTS,
        wechat_card_join_on_payment=True,
        wechat_card_sync_seconds=0.05,
    )
    return central_factory(**(settings | overrides))


@pytest.fixture
def paying(central_factory, sim, tmp_path):
    server = brand_central(central_factory, sim, tmp_path)
    store = server.add_store("S1")
    with server.client(store) as client:
        yield server, client
    server.stop()


def rows(server, model, **where) -> list[sa.Row]:
    table = model.__table__
    with server.session() as session:
        query = sa.select(table).where(*(table.c[k] == v for k, v in where.items()))
        return session.execute(query).all()


def holder(server, kind: str, value: str) -> str | None:
    found = rows(server, MemberIdentifier, kind=kind, value=value)
    return found[0].member_id if found else None


def joined(server, otn: str) -> sa.Row:
    """The payment's join once the worker has settled it."""
    return eventually(
        lambda: next((r for r in rows(server, WechatCardJoin, out_trade_no=otn) if r.state != "pending"), None),
        what=f"the join of {otn} settled",
    )


def give_card(server, member_id: str, card_code: str, openid: str) -> None:
    with server.session() as session:
        feed.lock(session)
        register(session, member_id, CARD_ID, card_code, datetime.now(UTC), openid=openid)
        session.commit()


# --- join on payment --------------------------------------------------------------------------------------------


def test_a_payer_who_is_nobody_s_member_pays_and_joins_with_the_card(paying, sim):
    server, client = paying
    auth_code = code("00", customer="0042")
    openid = sim.openid_for(auth_code)
    assert holder(server, OPENID_KIND, openid) is None
    payment = pay(client, auth_code, 2500).json()
    otn = payment["out_trade_no"]
    assert payment["state"] == "SUCCESS" and payment["member_id"] is None

    # The charge carried the card's join fields; WeChat Pay enrolled the payer with the code they name.
    attach = sim.attaches[otn]
    fields = parse_join_attach(attach)
    assert fields["card_id"] == CARD_ID and len(attach) <= ATTACH_MAX
    card = sim.brand.card_of(CARD_ID, openid)
    assert card is not None and card.code == fields["user_card_code"] and card.via == "payment"

    join = joined(server, otn)
    assert join.state == "linked" and join.linked_code == card.code
    member_id = holder(server, CARD_KIND, card.code)
    assert member_id == join.member_id and holder(server, OPENID_KIND, openid) == member_id
    consents = rows(server, MemberConsent, member_id=member_id)
    assert [(c.purpose, c.notice_version, c.store_id) for c in consents] == [("wechat_card", CARD_ID, "S1")]
    assert [c.code for c in rows(server, WechatBrandCard, member_id=member_id)] == [card.code]

    # The store's change feed shows the new member with the openid and the card.
    page = client.get("/v1/members/changes", params={"limit": 1000}).json()
    change = next(c for c in page["changes"] if c["member_id"] == member_id)
    assert {"kind": CARD_KIND, "value": card.code} in change["identifiers"]
    assert {"kind": OPENID_KIND, "value": openid} in change["identifiers"]

    # Next time the till identifies them as the member, who holds the card: no join fields any more.
    again = code("00", customer="0042")
    found = client.post("/v1/payments/identify", json={"auth_code": again}).json()
    assert found["member"]["member_id"] == member_id
    second = pay(client, again, 800, member_id=member_id).json()
    assert second["state"] == "SUCCESS" and second["out_trade_no"] not in sim.attaches
    assert len(sim.brand.user_cards) == 1


def test_a_member_paying_unidentified_gets_the_card_on_their_own_record(paying, sim):
    server, client = paying
    auth_code = code("00", customer="0051")
    member_id = server.add_member(points=300, identifiers={OPENID_KIND: sim.openid_for(auth_code)})
    otn = pay(client, auth_code, 1200).json()["out_trade_no"]

    join = joined(server, otn)
    assert join.state == "linked" and join.member_id == member_id
    assert holder(server, CARD_KIND, join.linked_code) == member_id
    assert [c.purpose for c in rows(server, MemberConsent, member_id=member_id)] == ["wechat_card"]
    assert len(rows(server, MemberIdentifier, kind=OPENID_KIND)) == 1  # nobody new


def test_a_payer_who_took_the_card_before_is_linked_with_that_card(paying, sim):
    server, client = paying
    auth_code = code("00", customer="0063")
    earlier = sim.brand.enrol(CARD_ID, sim.openid_for(auth_code), "880000000000000000063", "import")
    otn = pay(client, auth_code, 990).json()["out_trade_no"]

    join = joined(server, otn)
    assert join.state == "linked" and join.linked_code == earlier.code != join.code
    assert holder(server, CARD_KIND, earlier.code) == join.member_id
    assert len(sim.brand.user_cards) == 1  # WeChat Pay gave no second card


def test_a_customer_who_confirms_on_the_phone_joins_once_paid(paying, sim):
    server, client = paying
    auth_code = code("10", customer="0077")  # USERPAYING, paid after 0.2 s
    otn = pay(client, auth_code, 1500).json()["out_trade_no"]
    assert follow(client, otn)["state"] == "SUCCESS"
    join = joined(server, otn)
    assert join.state == "linked" and sim.brand.card_of(CARD_ID, sim.openid_for(auth_code)).code == join.code


def test_a_payment_that_fails_enrols_nobody(paying, sim):
    server, client = paying
    otn = pay(client, code("32", customer="0088")).json()["out_trade_no"]  # NOT_ENOUGH
    assert joined(server, otn).state == "not_paid"
    assert sim.brand.user_cards == {} and rows(server, WechatBrandCard) == []


# --- points -----------------------------------------------------------------------------------------------------


def test_points_earned_reach_the_card_once_and_points_spent_are_not_pushed_without_a_cell(paying, sim):
    server, client = paying
    openid = sim.openid_for(code("00", customer="0101"))
    member_id = server.add_member(points=500, identifiers={OPENID_KIND: openid})
    sim.brand.enrol(CARD_ID, openid, "88000000000000000101", "import")
    give_card(server, member_id, "88000000000000000101", openid)

    sale = journal_row(2500, member_id=member_id, points_earned=25)
    client.post("/v1/transactions:batch", json={"transactions": [sale]}).raise_for_status()
    (job,) = eventually(lambda: [j for j in rows(server, BrandCardPush) if j.state == "done"], what="the feed pushed")
    assert job.out_request_no == out_request_no(job.ledger_entry_id, "88000000000000000101")
    assert sim.brand.feeds[job.out_request_no] == {
        "card_id": CARD_ID,
        "user_card_code": "88000000000000000101",
        "openid": openid,
        "out_request_no": job.out_request_no,
        "cell": "1:25",
    }

    # The same batch again queues nothing; a redemption's spent points have no cell to say them with.
    client.post("/v1/transactions:batch", json={"transactions": [sale]}).raise_for_status()
    client.post(
        "/v1/transactions:batch",
        json={"transactions": [journal_row(1000, member_id=member_id, points_earned=10, points_redeemed=100)]},
    ).raise_for_status()
    eventually(
        lambda: all(j.state != "pending" for j in rows(server, BrandCardPush)) and len(rows(server, BrandCardPush)) == 3
    )
    assert sorted(j.state for j in rows(server, BrandCardPush)) == ["done", "done", "skipped"]
    assert sorted(f["cell"] for f in sim.brand.feeds.values()) == ["1:10", "1:25"]
    assert sim.brand.count("user-feeds") == 2


def members_with_cards(server, sim, count: int) -> list[str]:
    members = []
    for n in range(count):
        openid = sim.openid_for(code("00", customer=f"{200 + n:04d}"))
        member_id = server.add_member(identifiers={OPENID_KIND: openid})
        card_code = f"88{200 + n:018d}"
        sim.brand.enrol(CARD_ID, openid, card_code, "import")
        give_card(server, member_id, card_code, openid)
        members.append(member_id)
    return members


def test_feeds_go_out_at_most_five_a_second(paying, sim):
    server, client = paying
    members = members_with_cards(server, sim, 12)
    sales = [journal_row(1000 + n, member_id=m, points_earned=10 + n) for n, m in enumerate(members)]
    client.post("/v1/transactions:batch", json={"transactions": sales}).raise_for_status()
    eventually(
        lambda: len(sim.brand.feeds) == 12 and all(j.state == "done" for j in rows(server, BrandCardPush)),
        within=20,
        what="twelve feeds pushed",
    )
    assert sim.brand.busiest_second() <= 5 and sim.brand.count(status=429) == 0
    assert all(j.attempts == 1 for j in rows(server, BrandCardPush))


@pytest.mark.parametrize(
    "delays", [[0.0] * 12, [0.5] + [0.0] * 11, [0.01, 0.3, 0.0, 0.9, 0.05, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0]]
)
def test_the_rate_limit_never_lets_a_second_hold_six_calls_however_long_answers_take(delays):
    """On a virtual clock: each call arrives at WeChat Pay somewhere between its turn and its answer."""
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    limit = RateLimit(5, clock=lambda: now[0], sleep=sleep)

    async def run() -> list[tuple[float, float]]:
        spans = []
        for delay in delays:
            await limit.take()
            started = now[0]
            now[0] += delay
            limit.answered()
            spans.append((started, now[0]))
        return spans

    spans = asyncio.run(run())
    for (start, _), (later, _) in zip(spans, spans[1:], strict=False):
        assert later - start >= 0.2 - 1e-9  # spaced evenly
    for (_, answered), (sixth, _) in zip(spans, spans[5:], strict=False):
        assert sixth - answered >= 1.0  # whenever the first arrived, the sixth arrives a second later at least


def test_a_rate_limited_feed_is_sent_again_later_as_the_same_request(paying, sim):
    server, client = paying
    members = members_with_cards(server, sim, 3)
    sim.brand.limited = 2  # WeChat Pay answers the next two calls 429 FREQUENCY_LIMITED
    sales = [journal_row(500, member_id=m, points_earned=5) for m in members]
    client.post("/v1/transactions:batch", json={"transactions": sales}).raise_for_status()
    eventually(lambda: all(j.state == "done" for j in rows(server, BrandCardPush)) and len(sim.brand.feeds) == 3)
    assert sim.brand.count("user-feeds", status=429) == 2 and sim.brand.count("user-feeds", status=204) == 3
    first = min(rows(server, BrandCardPush), key=lambda j: j.id)
    assert first.attempts == 3  # refused twice, then pushed: in order, the others waited behind it
    assert sorted(f["out_request_no"] for f in sim.brand.feeds.values()) == sorted(
        j.out_request_no for j in rows(server, BrandCardPush)
    )


# --- settings ---------------------------------------------------------------------------------------------------


def test_the_join_fields_must_fit_codepay_s_attach(tmp_path):
    long_card = "c" * 32

    def settings(cell: str) -> Settings:
        return central_settings(
            f"sqlite:///{tmp_path / 'central.db'}",
            wechat_base_url="http://127.0.0.1:9",
            wechat_appid=APPID,
            wechat_mch_id=MCH_ID,
            wechat_api_key=WECHAT_KEY,
            **v3_settings(tmp_path / "wechat-v3"),
            **brand_settings(tmp_path / "brand") | {"wechat_brand_card_id": long_card},
            wechat_card_join_on_payment=True,
            wechat_card_code_prefix="",
            wechat_card_code_length=32,
            wechat_card_join_cell=cell,
        )

    # cell=…&card_id=<32>&user_card_code=<32>: 94 characters and the cell.
    assert len(join_attach(long_card, "9" * 32, "x" * 34)) == ATTACH_MAX
    assert settings("x" * 34).wechat_card_join_on_payment
    with pytest.raises(ValueError, match="attach of 129 characters"):
        settings("x" * 35)
    with pytest.raises(ValueError, match='needs wechat_member_card = "brand"'):
        central_settings(
            f"sqlite:///{tmp_path / 'central.db'}",
            wechat_base_url="http://127.0.0.1:9",
            wechat_appid=APPID,
            wechat_mch_id=MCH_ID,
            wechat_api_key=WECHAT_KEY,
            **v3_settings(tmp_path / "wechat-v3"),
            wechat_card_join_on_payment=True,
        )


def test_the_simulator_refuses_an_attach_longer_than_wechat_pay_takes(sim):
    def codepay(attach: str) -> httpx.Response:
        body = {
            "appid": APPID,
            "mchid": MCH_ID,
            "description": "门店消费",
            "out_trade_no": f"ATT{len(attach)}",
            "payer": {"auth_code": code("00")},
            "amount": {"total": 100, "currency": "CNY"},
            "scene_info": {"store_info": {"out_id": "S1"}},
            "attach": attach,
        }
        data = json.dumps(body).encode()
        header = authorization(
            mchid=MCH_ID,
            serial_no=MERCHANT_SERIAL,
            key=load_private_key(merchant_key_pem()),
            method="POST",
            url="/v3/pay/transactions/codepay",
            body=data,
        )
        return httpx.post(
            f"{sim.url}/v3/pay/transactions/codepay",
            content=data,
            headers={"Authorization": header, "Content-Type": "application/json"},
        )

    assert codepay("a" * ATTACH_MAX).status_code == 200
    refused = codepay("a" * (ATTACH_MAX + 1))
    assert refused.status_code == 400 and refused.json()["code"] == "PARAM_ERROR"


def test_with_the_member_card_off_no_points_are_queued_for_any_card(central_factory, sim):
    server = central_factory(
        wechat_member_card="off",
        wechat_card_api_base_url=sim.url,  # a legacy card set up, and turned off
        wechat_appid=APPID,
        wechat_card_appsecret=sim.card_appsecret,
    )
    member_id = server.add_member(points=100)
    with server.session() as session:
        register_card(session, member_id, CARD_ID, "123456789012", datetime.now(UTC))
        session.commit()
    store = server.add_store("S1")
    with server.client(store) as client:
        sale = journal_row(2500, member_id=member_id, points_earned=25)
        assert (
            client.post("/v1/transactions:batch", json={"transactions": [sale]}).json()["balances"][0]["points"] == 125
        )
    assert rows(server, CardSyncJob) == [] and rows(server, BrandCardPush) == []
    assert server.app.state.card_sync is None
