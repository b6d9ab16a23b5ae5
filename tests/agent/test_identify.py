"""Identifying the customer at the till: cache first, central when the cache misses, and what each way allows."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from agent.central_client import CentralClient
from agent.identify import CentralNeeded, Identifier, MemberNotFound
from agent.member_cache import MemberCache
from agent.member_code import ReplayedMemberCode
from agent.member_code_gate import MemberCodeGate
from agent.pii import InvalidPhoneNumber
from agent.settings import CentralSettings
from agent.sync import Sync
from central.keys import member_code
from tests.support.credentials import PHONE_KEY_BYTES


@pytest.fixture
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def setup(engine, central, loop):
    central.seed(members=20)
    credentials = central.add_store("SH001")
    settings = CentralSettings(
        url=central.url, token=SecretStr(credentials.token), connect_timeout_s=2, read_timeout_s=5
    )
    client = CentralClient(settings, "SH001")
    cache, gate = MemberCache(engine, PHONE_KEY_BYTES), MemberCodeGate(engine)
    online = {"up": True}

    async def is_online() -> bool:
        return online["up"]

    identifier = Identifier(cache, gate, client, is_online)
    yield identifier, Sync(engine, cache, gate, client), online
    loop.run_until_complete(client.aclose())


def member_with(engine, kind: str) -> tuple[str, str]:
    with engine.connect() as connection:
        return connection.exec_driver_sql(
            "SELECT member_id, value FROM member_identifier WHERE kind = ? ORDER BY member_id LIMIT 1", (kind,)
        ).one()


def test_card_from_cache_or_central_and_it_cannot_spend_points(setup, engine, loop, central):
    identifier, sync, online = setup
    loop.run_until_complete(sync.pull())
    member_id, card = member_with(engine, "card_no")
    found = loop.run_until_complete(identifier.card(card))
    assert found.member.id == member_id and not found.from_central and found.may_redeem is False

    with engine.begin() as connection:  # a member the till has not synced yet
        connection.exec_driver_sql("DELETE FROM member WHERE id = ?", (member_id,))
    from_central = loop.run_until_complete(identifier.card(card))
    assert from_central.member.id == member_id and from_central.from_central
    assert identifier.cache.lookup("card_no", card) is not None  # cached for next time

    online["up"] = False
    with pytest.raises(MemberNotFound, match="no member with this card"):
        loop.run_until_complete(identifier.card("8800999999999"))


def test_member_code_allows_points_once(setup, engine, loop, central):
    identifier, sync, _ = setup
    loop.run_until_complete(sync.pull())
    member_id, _ = member_with(engine, "card_no")
    with central.session() as session:
        code = member_code(session, member_id, datetime.now(UTC))  # what the member's phone shows
        session.commit()
    found = loop.run_until_complete(identifier.member_code(code))
    assert found.member.id == member_id and found.may_redeem is True
    with pytest.raises(ReplayedMemberCode):
        loop.run_until_complete(identifier.member_code(code))


def test_phone_numbers_are_checked_and_looked_up_by_hash(setup, loop, engine):
    identifier, sync, _ = setup
    loop.run_until_complete(sync.pull())
    with pytest.raises(InvalidPhoneNumber):
        loop.run_until_complete(identifier.phone("12345"))
    with pytest.raises(MemberNotFound, match="phone number"):
        loop.run_until_complete(identifier.phone("13900000000"))


def test_payment_code_needs_central(setup, loop):
    identifier, _, online = setup
    online["up"] = False
    with pytest.raises(CentralNeeded, match="pay in cash or by card"):
        loop.run_until_complete(identifier.payment_code("134512345678901200"))


def test_a_confirmed_phone_may_spend_points(setup, loop, central):
    identifier, _, _ = setup
    member_id = central.add_member(points=800, phone="13812345678")
    typed = loop.run_until_complete(identifier.phone("138 1234 5678"))
    assert typed.member.id == member_id and typed.from_central and typed.may_redeem is False
    assert typed.member.phone_masked == "138****5678"
    confirmed = loop.run_until_complete(identifier.phone("13812345678", confirmed=True))
    assert confirmed.may_redeem is True and not confirmed.from_central


def test_a_member_code_waiting_for_the_database_leaves_the_event_loop_free(setup, engine, db_path, loop, central):
    """Another writer holds the database (a sale's journal write, a feed page): the replay guard's write waits for
    it in a worker thread, while the loop goes on serving every other screen; then the code is accepted."""
    identifier, sync, _ = setup
    loop.run_until_complete(sync.pull())
    member_id, _ = member_with(engine, "card_no")
    with central.session() as session:
        code = member_code(session, member_id, datetime.now(UTC))
        session.commit()
    writer = sqlite3.connect(db_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the write lock, held

    async def scan_while_locked():
        identification = asyncio.ensure_future(identifier.member_code(code))
        for _ in range(20):
            await asyncio.sleep(0)  # the loop turns: other work would run here
        waiting = not identification.done()
        writer.execute("COMMIT")  # the other writer finishes
        return waiting, await identification

    try:
        waiting, found = loop.run_until_complete(scan_while_locked())
    finally:
        writer.close()
    assert waiting, "the identification must wait for the database off the loop, not hold the loop"
    assert found.member.id == member_id and found.may_redeem is True
