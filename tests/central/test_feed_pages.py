"""Pages of the change feed: written straight from the rows, yet exactly what the contract's model prints, and
read by index at any depth of the feed (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from central import card, contract, feed
from central.identity import merge
from central.models import Coupon


def raw_pages(client, limit: int) -> list[bytes]:
    out, cursor = [], None
    while True:
        params = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        answer = client.get("/v1/members/changes", params=params)
        assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
        out.append(answer.content)
        page = contract.ChangesPage.model_validate_json(answer.content)
        cursor = page.next_cursor
        if not page.has_more:
            return out


def give(central, member_id: str, coupon: Coupon, used_at: datetime | None = None) -> None:
    with central.session() as session:
        feed.lock(session)
        card.issue_coupon(session, member_id, coupon)
        coupon.used_at = used_at
        session.commit()


def test_a_page_is_byte_for_byte_what_the_contract_model_prints(central):
    store = central.add_store("S1")
    central.seed(members=12)
    now = datetime.now(UTC).replace(microsecond=123456)
    plain = central.add_member(display_name="", tier="normal")  # no identifiers, no phone, no name
    wang = central.add_member(points=1234, display_name="王*明", phone="13812345678", identifiers={"card_no": "8801"})
    li = central.add_member(points=5, identifiers={"card_no": "8802", "unionid": "oU_li"})
    percent = Coupon(
        code="CP-PCT",
        title='九折 "VIP" \\ 券',  # quotes and a backslash, escaped as the model escapes them
        kind="percent_off",
        percent_off=10,
        cap_fen=5000,
        valid_from=now - timedelta(days=2),
        valid_until=now + timedelta(days=3),
        usable_offline=True,
    )
    give(central, wang, percent)
    used = Coupon(
        code="CP-USED",
        title="满100减10",
        kind="amount_off",
        amount_off_fen=1000,
        threshold_fen=10000,
        valid_from=now - timedelta(days=2),
        valid_until=now + timedelta(days=3),
    )
    give(central, wang, used, used_at=now - timedelta(hours=1))
    expired = Coupon(
        code="CP-OLD",
        title="过期",
        kind="amount_off",
        amount_off_fen=100,
        valid_from=now - timedelta(days=9),
        valid_until=now - timedelta(days=1),
    )
    give(central, li, expired)
    with central.session() as session:
        feed.lock(session)
        merge(session, wang, li, now)  # li becomes a tombstone pointing at wang, who takes li's identifiers
        session.commit()

    with central.client(store) as client:
        bodies = raw_pages(client, limit=4)
    assert len(bodies) > 3
    for body in bodies:
        assert body == contract.ChangesPage.model_validate_json(body).model_dump_json().encode()

    changes = {c.member_id: c for body in bodies for c in contract.ChangesPage.model_validate_json(body).changes}
    assert len(changes) == 15
    assert changes[plain].identifiers == [] and changes[plain].coupons == [] and changes[plain].phone_masked is None
    assert changes[li].deleted and changes[li].merged_into == wang and changes[li].identifiers == []
    survivor = changes[wang]
    assert survivor.points == 1239 and survivor.display_name == "王*明" and survivor.phone_masked == "138****5678"
    assert [(i.kind, i.value) for i in survivor.identifiers] == sorted(
        [("card_no", "8801"), ("card_no", "8802"), ("phone_hash", survivor.identifiers[2].value), ("unionid", "oU_li")]
    )
    assert [c.code for c in survivor.coupons] == ["CP-PCT", "CP-USED"]  # not the expired one, ordered by code
    pct, spent = survivor.coupons
    assert (pct.cap_fen, pct.percent_off, pct.usable_offline, pct.used_at) == (5000, 10, True, None)
    assert pct.valid_from == now - timedelta(days=2)  # microseconds kept, UTC
    assert spent.used_at == now - timedelta(hours=1) and spent.cap_fen is None


def test_a_page_and_a_lookup_describe_a_member_the_same_way(central):
    store = central.add_store("S1")
    member = central.add_member(points=70, identifiers={"card_no": "8803", "unionid": "oU_zhao"})
    with central.client(store) as client:
        (body,) = raw_pages(client, limit=10)
        found = client.get("/v1/members/lookup", params={"card_no": "8803"}).json()
    (change,) = contract.ChangesPage.model_validate_json(body).changes
    assert change.member_id == member
    assert contract.MemberLookup.model_validate(found).member == change


def plan_of(session, statement: sa.Select) -> str:
    connection = session.connection()
    options = {"literal_binds": True, "render_postcompile": True}
    sql = str(statement.compile(dialect=connection.dialect, compile_kwargs=options))
    explain = "EXPLAIN QUERY PLAN " if connection.dialect.name == "sqlite" else "EXPLAIN "
    return "\n".join(str(row[-1]) for row in connection.exec_driver_sql(explain + sql))


def test_a_page_deep_in_the_feed_is_read_by_the_version_index(central):
    """Keyset pagination: `WHERE version > :after ORDER BY version LIMIT n` walks the unique index on version from
    the cursor, each balance sums one member's ledger entries by their index, and the page's identifiers are found
    by its members' ids: nothing is scanned, and only the page's own identifiers are sorted."""
    page = feed._PAGE.params(after=1_150_000, limit=1001)
    identifiers = feed._IDENTIFIERS.params(ids=[f"G{n}" for n in range(150_001, 151_001)])
    with central.session() as session:
        if session.connection().dialect.name == "sqlite":
            plan = plan_of(session, page)
            assert re.search(r"SEARCH member USING INDEX \w+ \(version>\?\)", plan), plan
            assert "SEARCH ledger_entry USING INDEX ix_ledger_entry_member_id (member_id=?)" in plan, plan
            assert "TEMP B-TREE" not in plan and "SCAN" not in plan, plan
            plan = plan_of(session, identifiers)
            assert "SEARCH member_identifier USING INDEX ix_member_identifier_member_id (member_id=?)" in plan, plan
            assert "SCAN" not in plan, plan
            return
        # PostgreSQL, with enough rows that the planner chooses as it would for a chain (a few rows are read whole).
        now = {"now": datetime.now(UTC)}
        for statement in (
            "INSERT INTO member (id, tier, display_name, version, deleted, created_at, updated_at) "
            "SELECT 'G' || g, 'normal', '', 1000000 + g, false, %(now)s, %(now)s FROM generate_series(1, 200000) AS g",
            "INSERT INTO ledger_entry (member_id, kind, points, transaction_id, created_at) "
            "SELECT 'G' || g, 'opening', 10, 'seed:G' || g, %(now)s FROM generate_series(1, 200000) AS g",
            "INSERT INTO member_identifier (kind, value, member_id, created_at) "
            "SELECT k, k || g, 'G' || g, %(now)s FROM generate_series(1, 200000) AS g, "
            "unnest(ARRAY['card_no', 'unionid', 'phone_hash']) AS k",
        ):
            session.connection().exec_driver_sql(statement, now)
        session.commit()
        session.connection().exec_driver_sql("ANALYZE member, ledger_entry, member_identifier")
        plan = plan_of(session, page)
        assert "Index Scan using member_version_key on member" in plan, plan
        assert "ix_ledger_entry_member_id" in plan, plan
        assert "Sort" not in plan and "Seq Scan" not in plan, plan
        plan = plan_of(session, identifiers)
        assert "ix_member_identifier_member_id" in plan and "Seq Scan" not in plan, plan


def test_a_page_built_before_a_change_is_not_served_after_it(central):
    # Pages are kept for the next store that asks (and the next page is built ahead): never once the feed moved.
    store = central.add_store("S1")
    first, second, third = (central.add_member(points=n) for n in (1, 2, 3))
    with central.client(store) as client:
        before = client.get("/v1/members/changes", params={"limit": 2}).json()
        with central.session() as session:
            feed.lock(session)
            card.book(session, first, "adjust", 10, "adjust:test", datetime.now(UTC))
            session.commit()
        after = client.get("/v1/members/changes", params={"limit": 2}).json()
        rest = client.get("/v1/members/changes", params={"cursor": after["next_cursor"], "limit": 2}).json()
    assert [c["member_id"] for c in before["changes"]] == [first, second]
    assert [c["member_id"] for c in after["changes"]] == [second, third]  # first moved to the end of the feed
    assert [(c["member_id"], c["points"]) for c in rest["changes"]] == [(first, 11)]


def test_a_coupon_leaves_a_kept_page_when_it_expires(central):
    store = central.add_store("S1")
    member = central.add_member()
    now = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    give(
        central,
        member,
        Coupon(
            code="CP-TODAY",
            title="今日",
            kind="amount_off",
            amount_off_fen=100,
            valid_from=now - timedelta(days=1),
            valid_until=now + timedelta(hours=1),
        ),
    )
    central.set_now(now)
    with central.client(store) as client:
        (during,) = contract.ChangesPage.model_validate(client.get("/v1/members/changes").json()).changes
        central.set_now(now + timedelta(hours=1))
        (later,) = contract.ChangesPage.model_validate(client.get("/v1/members/changes").json()).changes
    central.set_now(None)
    assert [c.code for c in during.coupons] == ["CP-TODAY"] and later.coupons == []
