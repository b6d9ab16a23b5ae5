"""The member cache finds a member by any identifier and follows central's change feed exactly."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from agent.db import open_database
from agent.member_cache import MemberCache, MemberChange, UnknownIdentifierKind
from agent.pii import InvalidPhoneNumber, phone_hash
from tests.support.credentials import PHONE_KEY_BYTES


def wang(version: int = 1, **overrides) -> MemberChange:
    fields = dict(
        member_id="m1",
        version=version,
        tier="gold",
        points=1200,
        display_name="王*明",
        phone_masked="138****5678",
        identifiers=(
            ("unionid", "oU_wang"),
            ("openid:wx1234567890abcdef", "oP_wang_mini"),
            ("openid:wxfedcba0987654321", "oP_wang_oa"),
            ("card_no", "8800012345678"),
            ("phone_hash", phone_hash(PHONE_KEY_BYTES, "13812345678")),
        ),
    )
    fields.update(overrides)
    return MemberChange(**fields)


def test_every_identifier_finds_the_member(cache):
    cache.apply([wang()], cursor="1")
    for kind, value in wang().identifiers:
        found = cache.lookup(kind, value)
        assert found is not None and found.id == "m1" and found.points == 1200
    assert cache.lookup_phone("138 1234 5678").display_name == "王*明"
    assert cache.lookup("card_no", "8800099999999") is None
    assert cache.lookup("openid:wx1234567890abcdef", "oP_wang_oa") is None  # an openid belongs to one app


def test_phone_numbers_are_never_stored_in_clear(cache, db_path, engine):
    cache.apply([wang()])
    engine.dispose()  # checkpoints the write-ahead log into the file
    raw = db_path.read_bytes()
    assert b"13812345678" not in raw
    assert b"138****5678" in raw


def test_upsert_replaces_the_identifier_set(cache):
    cache.apply([wang()], cursor="1")
    cache.apply([wang(2, points=900, identifiers=(("unionid", "oU_wang"), ("card_no", "8800087654321")))], cursor="2")
    assert cache.lookup("card_no", "8800012345678") is None
    assert cache.lookup("card_no", "8800087654321").points == 900
    assert cache.cursor() == "2"


def test_a_reissued_card_moves_to_its_new_holder(cache):
    cache.apply([wang()])
    cache.apply([MemberChange("m2", 3, tier="normal", identifiers=(("card_no", "8800012345678"),))])
    assert cache.lookup("card_no", "8800012345678").id == "m2"
    assert cache.lookup("unionid", "oU_wang").id == "m1"


def test_a_member_changed_during_a_sync_keeps_only_its_last_state(cache):
    # Pages applied together can hold a member twice: read early at one version, and again at its new one.
    first = wang(1, identifiers=(("card_no", "8800012345678"), ("unionid", "oU_wang")))
    other = MemberChange("m2", 2, tier="normal", identifiers=(("card_no", "8800000000002"),))
    later = wang(3, points=900, identifiers=(("unionid", "oU_wang"), ("card_no", "8800087654321")))
    result = cache.apply([first, other, later], cursor="3")
    assert (result.upserted, result.deleted) == (2, 0)
    assert cache.lookup("card_no", "8800012345678") is None  # the card the member gave up in between
    assert cache.lookup("card_no", "8800087654321").points == 900
    assert cache.get("m1").version == 3 and cache.count() == 2


def test_a_card_reissued_within_one_batch_belongs_to_its_last_holder(cache):
    # m1 held the card, m2 took it over, then m1 changed again without it: feed order decides, not first sight.
    given_up = wang(1, identifiers=(("card_no", "8800012345678"),))
    taken = MemberChange("m2", 2, tier="normal", identifiers=(("card_no", "8800012345678"),))
    cache.apply([given_up, taken, wang(3, identifiers=(("unionid", "oU_wang"),))], cursor="3")
    assert cache.lookup("card_no", "8800012345678").id == "m2"
    # And back within one batch: m1 first seen before m2 took the card, then last with it again.
    card = (("card_no", "8800012345678"),)
    cache.apply(
        [wang(4, identifiers=card), MemberChange("m2", 5, tier="normal", identifiers=card), wang(6, identifiers=card)]
    )
    assert cache.lookup("card_no", "8800012345678").id == "m1"


def test_pages_applied_together_keep_each_members_last_state(cache):
    # A sync applies several pages in one transaction: m1 on the first page, changed again by the third.
    first = cache.rows([wang(1, identifiers=(("card_no", "8800012345678"),)), MemberChange("m2", 2, tier="normal")])
    second = cache.rows([MemberChange("m3", 3, tier="normal", identifiers=(("card_no", "8800000000003"),))])
    third = cache.rows([wang(4, identifiers=(("unionid", "oU_wang"),)), MemberChange("m2", 5, deleted=True)])
    result = cache.apply_rows([first, second, third], cursor="5")
    assert (result.upserted, result.deleted) == (2, 1)
    assert cache.lookup("card_no", "8800012345678") is None and cache.lookup("unionid", "oU_wang").id == "m1"
    assert cache.get("m2") is None and cache.get("m3") is not None and cache.cursor() == "5"


def test_a_member_deleted_after_an_upsert_in_the_same_batch_is_gone(cache):
    result = cache.apply([wang(1), MemberChange("m1", 2, deleted=True)], cursor="2")
    assert (result.upserted, result.deleted) == (0, 1)
    assert cache.get("m1") is None and cache.lookup("unionid", "oU_wang") is None


def test_tombstone_removes_member_and_identifiers(cache, engine):
    cache.apply([wang(), MemberChange("m2", 2, tier="normal", identifiers=(("card_no", "1"),))], cursor="2")
    result = cache.apply([MemberChange("m1", 3, deleted=True)], cursor="3")
    assert (result.upserted, result.deleted) == (0, 1)
    assert cache.lookup("unionid", "oU_wang") is None
    assert cache.count() == 1
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM member_identifier WHERE member_id='m1'").scalar() == 0


def test_a_failed_page_leaves_the_previous_state_and_cursor(cache):
    cache.apply([wang()], cursor="1")
    # A page whose second row breaks a constraint (NULL tier) must not apply its first row nor move the cursor.
    broken = [MemberChange("m3", 5, tier="silver"), MemberChange("m4", 6, tier=None)]
    with pytest.raises(sa.exc.IntegrityError):
        cache.apply(broken, cursor="6")
    assert cache.cursor() == "1"
    assert cache.count() == 1


def test_state_survives_reopening(cache, engine, db_path):
    cache.apply([wang()], cursor="abc")
    engine.dispose()
    reopened = MemberCache(open_database(db_path), PHONE_KEY_BYTES)
    assert reopened.cursor() == "abc"
    assert reopened.lookup("unionid", "oU_wang").tier == "gold"
    reopened.engine.dispose()


def test_bad_lookups_are_clear_errors(cache):
    with pytest.raises(UnknownIdentifierKind, match="unionid, card_no, phone_hash or openid"):
        cache.lookup("email", "a@b.c")
    with pytest.raises(InvalidPhoneNumber):
        cache.lookup_phone("12345")


def test_central_balances_are_written_in_the_callers_transaction(engine, cache):
    cache.apply([MemberChange("m1", 1, tier="gold", points=100), MemberChange("m2", 2, tier="silver", points=5)])
    with engine.begin() as connection:
        MemberCache.set_points(connection, [("m1", 130), ("gone", 7)])  # a member the cache no longer holds
    assert (cache.get("m1").points, cache.get("m2").points) == (130, 5)
    assert cache.get("gone") is None
