"""The change feed: every member change, in version order, by pages, and the agent's cache can follow it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.member_cache import MemberChange
from central import contract, feed, identity
from tests.central.rows import journal_row
from tests.central.test_transactions import issue_coupon


def pages(client, limit: int | None = None, cursor: str | None = None) -> list[contract.ChangesPage]:
    out = []
    while True:
        params = {k: v for k, v in (("cursor", cursor), ("limit", limit)) if v is not None}
        page = contract.ChangesPage.model_validate(client.get("/v1/members/changes", params=params).json())
        out.append(page)
        cursor = page.next_cursor
        if not page.has_more:
            return out


def to_agent(change: contract.MemberChange) -> MemberChange:
    """The agent's cache entry for a wire change: the same fields by name."""
    return MemberChange(
        member_id=change.member_id,
        version=change.version,
        deleted=change.deleted,
        tier=change.tier,
        points=change.points,
        display_name=change.display_name,
        phone_masked=change.phone_masked,
        identifiers=tuple((i.kind, i.value) for i in change.identifiers),
    )


def test_pages_follow_the_cursor_and_the_page_size_is_capped(central_factory):
    central = central_factory(max_page_size=10, default_page_size=4)
    store = central.add_store("S1")
    central.seed(members=25)
    with central.client(store) as client:
        capped = pages(client, limit=1000)
        default = pages(client)
        assert client.get("/v1/members/changes", params={"limit": 0}).status_code == 422
        bad = client.get("/v1/members/changes", params={"cursor": "abc"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_cursor"
        end = client.get("/v1/members/changes", params={"cursor": capped[-1].next_cursor}).json()
    assert [len(p.changes) for p in capped] == [10, 10, 5]
    assert [len(p.changes) for p in default] == [4] * 6 + [1]
    versions = [c.version for p in capped for c in p.changes]
    assert versions == sorted(versions) and len(set(versions)) == 25
    assert [p.has_more for p in capped] == [True, True, False]
    assert end == {"changes": [], "next_cursor": capped[-1].next_cursor, "has_more": False}


def test_points_and_coupon_changes_move_a_member_up_the_feed(central):
    store = central.add_store("S1")
    first, second = central.add_member(points=10), central.add_member()
    with central.client(store) as client:
        cursor = pages(client)[-1].next_cursor
        assert (
            client.post(
                "/v1/transactions:batch", json={"transactions": [journal_row(500, member_id=first, points_earned=5)]}
            ).status_code
            == 200
        )
        page = pages(client, cursor=cursor)[0]
        assert [(c.member_id, c.points) for c in page.changes] == [(first, 15)]
        issue_coupon(central, second, "CP0000000002")
        changed = pages(client, cursor=page.next_cursor)[0].changes
    assert [c.member_id for c in changed] == [second]
    assert [c.code for c in changed[0].coupons] == ["CP0000000002"]


def test_the_agent_cache_follows_a_merge(central, cache):
    store = central.add_store("S1")
    survivor = central.add_member(points=100, identifiers={"unionid": "oU1"})
    other = central.add_member(points=40, identifiers={"card_no": "8800000000033", "openid:wxapp": "oOPEN1"})
    with central.client(store) as client:
        for page in pages(client):
            cache.apply([to_agent(c) for c in page.changes], cursor=page.next_cursor)
        assert cache.lookup("card_no", "8800000000033").id == other

        with central.session() as session:
            feed.lock(session)
            identity.link_openid(session, "wxapp", "oOPEN1", "oU1", datetime.now(UTC))
            session.commit()
        changed = pages(client, cursor=cache.cursor())
    changes = [c for page in changed for c in page.changes]
    assert [(c.member_id, c.deleted, c.merged_into) for c in changes] == [
        (other, True, survivor),
        (survivor, False, None),
    ]
    for page in changed:
        cache.apply([to_agent(c) for c in page.changes], cursor=page.next_cursor)
    found = cache.lookup("card_no", "8800000000033")
    assert found.id == survivor and found.points == 140
    assert cache.lookup("openid:wxapp", "oOPEN1").id == survivor
    assert cache.count() == 1


@pytest.mark.parametrize("cursor", ["", "0"])
def test_an_empty_or_zero_cursor_starts_at_the_beginning(central, cursor):
    store = central.add_store("S1")
    member = central.add_member()
    with central.client(store) as client:
        page = client.get("/v1/members/changes", params={"cursor": cursor}).json()
    assert [c["member_id"] for c in page["changes"]] == [member]
