"""Sales and refunds in progress stay on disk until their money is journaled, and leave with the journal row."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from agent.clock import from_storage, utcnow
from agent.open_sales import OpenSaleStore

OPENED = datetime(2026, 11, 23, 2, 30, tzinfo=UTC)


@pytest.fixture
def store(engine) -> OpenSaleStore:
    return OpenSaleStore(engine)


def stored(engine, table: str, key: str) -> sa.Row:
    with engine.connect() as connection:
        return connection.exec_driver_sql(f"SELECT * FROM {table} WHERE id = ?", (key,)).one()


class Rollback(Exception):
    pass


def test_a_sale_saved_again_keeps_its_place_and_takes_its_new_state(store, engine):
    before = utcnow()
    store.save("s2", "T01", "basket", '{"n": 1}', OPENED + timedelta(minutes=1))
    store.save("s1", "T01", "basket", '{"n": 2}', OPENED)
    store.save("k1", "K01", "basket", '{"n": 3}', OPENED)  # another station's sale
    store.save("s2", "T01", "payment", '{"n": 4}', OPENED + timedelta(minutes=1))
    assert store.bodies("T01") == ['{"n": 2}', '{"n": 4}']  # oldest first
    row = stored(engine, "open_sale", "s2")
    assert row.state == "payment" and from_storage(row.created_at) == OPENED + timedelta(minutes=1)
    assert from_storage(row.updated_at) >= before  # stamped now, in UTC
    assert store.count_open() == 3


def test_a_sale_leaves_alone_or_with_the_caller_s_transaction(store, engine):
    store.save("s1", "T01", "paid", "{}", OPENED)
    store.save("s2", "T01", "cancelled", "{}", OPENED)
    with pytest.raises(Rollback), engine.begin() as connection:
        store.delete("s1", connection)
        raise Rollback  # the journal row failed: the sale stays on disk
    assert store.bodies("T01") == ["{}", "{}"]
    with engine.begin() as connection:
        store.delete("s1", connection)
    store.delete("s2")
    store.delete("never-saved")
    assert store.bodies("T01") == []


def test_from_the_event_loop(store):
    async def steps() -> tuple[list[str], list[str]]:
        await store.asave("s1", "T01", "basket", '{"n": 1}', OPENED)
        saved = await store.abodies("T01")
        await store.adelete("s1")
        return saved, await store.abodies("T01")

    assert asyncio.run(steps()) == (['{"n": 1}'], [])


def test_a_refund_in_flight_is_kept_until_journaled(store, engine):
    store.save_refund("r2", "sale-b", '{"step": 1}', OPENED + timedelta(minutes=1))
    store.save_refund("r1", "sale-a", '{"step": 1}', OPENED)
    store.save_refund("r2", "sale-b", '{"step": 2}', OPENED + timedelta(minutes=1))  # a part answered
    assert store.refund_body("sale-b") == '{"step": 2}' and store.refund_body("sale-c") is None
    assert store.refund_sales() == ["sale-a", "sale-b"]  # oldest first
    assert store.count_refunds() == 2
    with pytest.raises(sa.exc.IntegrityError):  # one refund in flight per sale
        store.save_refund("r3", "sale-a", "{}", OPENED)
    with pytest.raises(Rollback), engine.begin() as connection:
        store.drop_refund("r1", connection)
        raise Rollback  # the refund's journal row failed: it stays in flight
    assert store.refund_sales() == ["sale-a", "sale-b"]
    with engine.begin() as connection:
        store.drop_refund("r1", connection)
        assert store.refund_sales(connection) == ["sale-b"]
    store.drop_refund("r2")
    assert store.refund_sales() == [] and store.count_refunds() == 0


def test_refunds_in_flight_from_the_event_loop(store):
    async def steps() -> tuple[str | None, list[str], list[str]]:
        await store.asave_refund("r1", "sale-a", '{"step": 1}', OPENED)
        body, sales = await store.arefund_body("sale-a"), await store.arefund_sales()
        await store.adrop_refund("r1")
        return body, sales, await store.arefund_sales()

    assert asyncio.run(steps()) == ('{"step": 1}', ["sale-a"], [])
