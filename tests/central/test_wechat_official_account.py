"""The official account's follower walk against the wire-level simulator: pages followed by next_openid, UnionIDs
asked 100 at a time, followers linked to members (and merged where a UnionID proves two members are one), the
cursor kept across a quota stop, the access token fetched again on 40001, the rate limit, and stores seeing it."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from central.identity import openid_kind
from central.models import WechatFollowerSync
from central.wechat.api_client import RateLimiter, WeChatApi
from central.wechat.official_account import sync_followers
from central.wechat.simulator import customer_openid, customer_unionid
from tests.central.wechat_apps import OA_APPID, OA_SECRET, served_simulator, start_central
from tests.support.poll import eventually

OA = openid_kind(OA_APPID)


@pytest.fixture
def sim():
    with served_simulator(page_size=4) as simulator:
        yield simulator


@pytest.fixture
def server(central_factory, sim):
    return start_central(central_factory, sim)


@pytest.fixture
def api(sim):
    client = WeChatApi(sim.url, OA_APPID, OA_SECRET, limiter=RateLimiter(1000.0, burst=1000))
    yield client
    client.close()


def customers(first: int, count: int) -> list[str]:
    return [f"{n:04d}" for n in range(first, first + count)]


def holders(server, kind: str = OA) -> dict[str, str]:
    """openid -> member for this kind."""
    with server.session() as session:
        rows = session.execute(
            sa.text("SELECT value, member_id FROM member_identifier WHERE kind = :kind"), {"kind": kind}
        ).all()
    return dict(rows)


def state(server) -> WechatFollowerSync:
    with server.session() as session:
        found = session.get(WechatFollowerSync, OA_APPID)
        session.expunge_all()
    return found


def test_a_walk_pages_through_every_follower_and_links_those_whose_unionid_a_member_holds(server, sim, api):
    sim.follow(*customers(1, 10))  # three pages of 4, 4 and 2, then an empty one
    members = {c: server.add_member(identifiers={"unionid": customer_unionid(c)}) for c in ("0002", "0005", "0010")}
    report = sync_followers(server.engine, api)
    assert report.finished and (report.pages, report.followers, report.asked, report.linked) == (4, 10, 10, 3)
    assert sim.count("cgi-bin/user/get") == 4 and sim.count("cgi-bin/user/info/batchget") == 3  # one per page
    assert holders(server) == {customer_openid(OA_APPID, c): member for c, member in members.items()}
    done = state(server)
    assert (done.next_openid, done.passes, done.linked, done.last_error) == ("", 1, 3, None)

    # The next walk asks WeChat only about followers central cannot place yet.
    sim.follow("0011")
    newcomer = server.add_member(identifiers={"unionid": customer_unionid("0011")})
    again = sync_followers(server.engine, api)
    assert again.finished and (again.asked, again.linked) == (8, 1)
    assert holders(server)[customer_openid(OA_APPID, "0011")] == newcomer

    # Every store sees the linked openids on the change feed.
    store = server.add_store("S1")
    with server.client(store) as client:
        changes = client.get("/v1/members/changes").json()["changes"]
    fed = {c["member_id"]: {i["kind"]: i["value"] for i in c["identifiers"]} for c in changes}
    assert fed[members["0005"]][OA] == customer_openid(OA_APPID, "0005")
    assert fed[newcomer][OA] == customer_openid(OA_APPID, "0011")


def test_a_follower_whose_openid_and_unionid_are_two_members_makes_them_one(server, sim, api):
    sim.follow("0003")
    by_unionid = server.add_member(identifiers={"unionid": customer_unionid("0003")}, points=100)
    # e.g. a member found by their payment openid (the payment appid is the official account's) at a till
    by_openid = server.add_member(identifiers={OA: customer_openid(OA_APPID, "0003")}, points=20, tier="gold")
    assert sync_followers(server.engine, api).linked == 1
    assert holders(server)[customer_openid(OA_APPID, "0003")] == by_unionid
    store = server.add_store("S1")
    with server.client(store) as client:
        changes = {c["member_id"]: c for c in client.get("/v1/members/changes").json()["changes"]}
    assert changes[by_openid]["deleted"] is True and changes[by_openid]["merged_into"] == by_unionid
    assert (changes[by_unionid]["points"], changes[by_unionid]["tier"]) == (120, "gold")


def test_followers_who_left_or_have_no_member_are_not_linked(server, sim, api):
    sim.follow(*customers(1, 3))
    member = server.add_member(identifiers={"unionid": customer_unionid("0001")})
    sim.unfollow("0001")
    sim.follow("0001")
    sim.unfollow("0002")  # gone: no longer listed
    report = sync_followers(server.engine, api)
    assert report.linked == 1 and holders(server) == {customer_openid(OA_APPID, "0001"): member}


def test_a_walk_stopped_by_the_quota_resumes_from_its_cursor(server, sim, api, caplog):
    sim.follow(*customers(1, 10))
    members = {c: server.add_member(identifiers={"unionid": customer_unionid(c)}) for c in customers(1, 10)}
    sim.quota_left["cgi-bin/user/info/batchget"] = 1  # the first page's question, then errcode 45009
    with caplog.at_level(logging.WARNING, logger="central.wechat.official_account"):
        stopped = sync_followers(server.engine, api)
    assert not stopped.finished and "45009" in stopped.stopped and stopped.linked == 4
    assert any("45009" in r.getMessage() and "resumes" in r.getMessage() for r in caplog.records)
    kept = state(server)
    assert kept.next_openid == customer_openid(OA_APPID, "0004") and kept.passes == 0 and "45009" in kept.last_error

    sim.quota_left.clear()  # a new day
    listed_before = sim.count("cgi-bin/user/get")
    resumed = sync_followers(server.engine, api)
    assert resumed.finished and resumed.linked == 6 and resumed.followers == 6  # from the fifth follower on
    assert sim.count("cgi-bin/user/get") - listed_before == 3
    assert holders(server) == {customer_openid(OA_APPID, c): m for c, m in members.items()}
    assert state(server).passes == 1 and state(server).last_error is None


def test_the_access_token_is_fetched_again_once_on_40001(server, sim, api):
    sim.follow(*customers(1, 6))
    server.add_member(identifiers={"unionid": customer_unionid("0006")})
    assert sync_followers(server.engine, api, max_pages=1).pages == 1
    assert sim.count("cgi-bin/stable_token") == 1
    sim.revoke_tokens(OA_APPID)  # WeChat no longer takes the token central holds
    report = sync_followers(server.engine, api)
    assert report.finished and report.linked == 1
    assert sim.count("cgi-bin/stable_token") == 2  # fetched again once, then used for the rest of the walk


def test_calls_to_wechat_keep_to_the_rate_limit(server, sim):
    sim.follow(*customers(1, 10))
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # a clock that moves only when the limiter waits
        waits.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(2.0, burst=1, clock=lambda: now[0], sleep=sleep)
    api = WeChatApi(sim.url, OA_APPID, OA_SECRET, limiter=limiter)
    try:
        report = sync_followers(server.engine, api)
    finally:
        api.close()
    calls = 1 + 4 + 3  # the token, four pages, a question per page with followers
    assert report.finished and len(sim.calls) == calls
    assert len(waits) == calls - 1 and all(w == pytest.approx(0.5) for w in waits)  # 2 a second, evenly


def test_the_limiter_answers_busy_rather_than_keep_a_request_waiting():
    from central.wechat.api_client import WeChatBusy

    limiter = RateLimiter(1.0, burst=2, clock=lambda: 100.0, sleep=lambda s: None)
    limiter.wait(max_wait=0)
    limiter.wait(max_wait=0)  # a burst of two
    with pytest.raises(WeChatBusy) as busy:
        limiter.wait(max_wait=0.5)
    assert busy.value.retry_after == pytest.approx(1.0)


def test_the_walk_runs_by_itself_with_the_service(central_factory, sim):
    sim.follow(*customers(1, 5))
    server = start_central(central_factory, sim, wechat_follower_sync_seconds=0.05)
    member = server.add_member(identifiers={"unionid": customer_unionid("0004")})
    eventually(lambda: holders(server).get(customer_openid(OA_APPID, "0004")) == member, what="the follower linked")
    server.stop()  # the walk stops with the service, before the simulator goes
    assert server.app.state.follower_sync is None
