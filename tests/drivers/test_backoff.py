"""The one back-off policy (drivers/backoff.py): doubling from the first wait to the cap, jitter within its share."""

from __future__ import annotations

import pytest

from drivers.backoff import Backoff

LOWEST, HIGHEST = lambda: 0.999999, lambda: 0.0  # noqa: E731 -- the draws that give the shortest and longest wait


def test_waits_double_from_the_first_up_to_the_cap():
    policy = Backoff(first=2.0, cap=300.0, jitter=0)
    assert [policy.delay(n) for n in range(1, 11)] == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]


def test_nothing_failed_means_no_wait():
    assert Backoff(first=3.0, cap=60.0, jitter=0).delay(0) == 0


def test_a_steady_retry_is_a_cap_equal_to_the_first_wait():
    steady = Backoff(first=3.0, cap=3.0, jitter=0)
    assert {steady.delay(n) for n in range(1, 50)} == {3.0}


@pytest.mark.parametrize("jitter, shortest", [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)])
def test_jitter_draws_within_its_share_of_the_wait(jitter, shortest):
    policy = Backoff(first=1.0, cap=15.0, jitter=jitter)
    for failures, step in ((1, 1.0), (3, 4.0), (9, 15.0)):
        assert policy.delay(failures, HIGHEST) == step
        assert policy.delay(failures, LOWEST) == pytest.approx(step * shortest, abs=1e-4)
        assert step * shortest - 1e-4 <= policy.delay(failures) <= step  # the real draw stays inside


def test_real_draws_spread_tills_that_failed_together():
    waits = {Backoff(first=2.0, cap=300.0, jitter=1.0).delay(4) for _ in range(50)}
    assert len(waits) > 40 and all(0 <= wait <= 16 for wait in waits)


def test_a_till_down_for_days_still_gets_the_cap():
    assert Backoff(first=0.5, cap=10.0, jitter=0).delay(100_000) == 10.0


@pytest.mark.parametrize(
    "kwargs, says",
    [({"first": 5, "cap": 1}, "first <= cap"), ({"first": -1}, "first <= cap"), ({"jitter": 1.5}, "between 0 and 1")],
)
def test_a_policy_that_cannot_work_is_refused_when_made(kwargs, says):
    with pytest.raises(ValueError, match=says):
        Backoff(**kwargs)
