"""A member code is accepted once, inside its window, with a key central published; a restart changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.db import open_database
from agent.member_code import ExpiredMemberCode, ReplayedMemberCode, UnknownSigningKey
from agent.member_code_gate import MemberCodeGate, PublicKeyRecord
from central.member_code import generate_signing_key, public_key_b64, sign_member_code

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


@pytest.fixture
def signing_key():
    return generate_signing_key()


@pytest.fixture
def gate(engine, signing_key) -> MemberCodeGate:
    gate = MemberCodeGate(engine, window_s=120, skew_s=30)
    gate.replace_keys([PublicKeyRecord(1, public_key_b64(signing_key))], now=NOW)
    return gate


def code_at(key, at: datetime, member_id: str = "m1", kid: int = 1) -> str:
    return sign_member_code(key, kid, member_id, int(at.timestamp()))


def test_accepted_once_then_refused_as_replay(gate, signing_key):
    code = code_at(signing_key, NOW - timedelta(seconds=10))
    assert gate.accept(code, now=NOW).member_id == "m1"
    with pytest.raises(ReplayedMemberCode, match="refresh the code"):
        gate.accept(code, now=NOW + timedelta(seconds=1))


def test_replay_guard_survives_a_restart(gate, signing_key, db_path):
    code = code_at(signing_key, NOW)
    gate.accept(code, now=NOW)
    gate.engine.dispose()
    restarted = MemberCodeGate(open_database(db_path))
    with pytest.raises(ReplayedMemberCode):
        restarted.accept(code, now=NOW + timedelta(seconds=5))
    restarted.engine.dispose()


def test_a_fresh_code_for_the_same_member_is_accepted(gate, signing_key):
    gate.accept(code_at(signing_key, NOW), now=NOW)
    assert (
        gate.accept(code_at(signing_key, NOW + timedelta(seconds=1)), now=NOW + timedelta(seconds=2)).member_id == "m1"
    )


def test_expired_fingerprints_are_pruned_and_stay_refused(gate, signing_key, engine):
    old = code_at(signing_key, NOW)
    gate.accept(old, now=NOW)
    later = NOW + timedelta(seconds=600)
    gate.accept(code_at(signing_key, later), now=later)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM seen_member_code").scalar() == 1
    with pytest.raises(ExpiredMemberCode):
        gate.accept(old, now=later)


def test_rotated_key_works_through_its_grace_period_only(engine):
    old_key, new_key = generate_signing_key(), generate_signing_key()
    gate = MemberCodeGate(engine)
    gate.replace_keys(
        [
            PublicKeyRecord(1, public_key_b64(old_key), not_after=NOW + timedelta(hours=1)),
            PublicKeyRecord(2, public_key_b64(new_key)),
        ],
        now=NOW,
    )
    assert gate.accept(code_at(old_key, NOW, kid=1), now=NOW).kid == 1
    assert gate.accept(code_at(new_key, NOW, kid=2), now=NOW).kid == 2
    after_grace = NOW + timedelta(hours=2)
    with pytest.raises(UnknownSigningKey):
        gate.accept(code_at(old_key, after_grace, kid=1), now=after_grace)


def test_a_bad_key_does_not_replace_the_good_ones(gate, signing_key):
    with pytest.raises(ValueError, match="copy it again"):
        gate.replace_keys([PublicKeyRecord(3, "not-a-key")])
    assert gate.accept(code_at(signing_key, NOW), now=NOW).member_id == "m1"
