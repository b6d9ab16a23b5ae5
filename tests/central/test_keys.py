"""Member-code keys: the current key first; a rotated key is listed until the end of its grace period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from central import contract, keys


def test_a_rotated_key_is_listed_during_its_grace_period_only(central):
    store = central.add_store("S1")
    t0 = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    with central.client(store) as client:
        before = contract.PublicKeys.model_validate(client.get("/v1/keys/member-code").json()).keys
        assert [(k.kid, k.not_after) for k in before] == [(1, None)]  # made at start-up

        with central.session() as session:
            keys.rotate(session, t0, timedelta(hours=1))
            session.commit()
        central.set_now(t0 + timedelta(minutes=59))
        during = contract.PublicKeys.model_validate(client.get("/v1/keys/member-code").json()).keys
        central.set_now(t0 + timedelta(hours=1))
        after = contract.PublicKeys.model_validate(client.get("/v1/keys/member-code").json()).keys
    assert [(k.kid, k.not_after) for k in during] == [(2, None), (1, t0 + timedelta(hours=1))]
    assert during[1].public_key == before[0].public_key
    assert [k.kid for k in after] == [2]


def test_member_codes_are_signed_with_the_current_key(central):
    member = central.add_member()
    now = datetime.now(UTC)
    with central.session() as session:
        first = keys.member_code(session, member, now)
        keys.rotate(session, now, timedelta(hours=1))
        second = keys.member_code(session, member, now)
        session.commit()
    from agent.member_code import parse_member_code

    assert (parse_member_code(first).kid, parse_member_code(second).kid) == (1, 2)
    assert parse_member_code(second).member_id == member
