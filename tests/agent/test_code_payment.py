"""The till's code payment as a table (agent/code_payment.py): every state × every event, what the follower does
next, and which answers move a payment. Pure: no clock, no database, no network."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from agent.code_payment import (
    SENDING,
    TRANSITIONS,
    FollowerMove,
    MoveNotAllowed,
    PaymentEvent,
    follower_move,
    is_settled,
    news,
    target,
)
from central.contract import Payment, PaymentState

# Each cell: where the event takes a payment in the column's state. "ans" takes central's answer, "void" central's
# answer to the void (a SUCCESS then reads REVERSING), "=" stays, "·" is refused as a bug.
GRID = """
               sending  PENDING  USERPAYING  UNKNOWN  SUCCESS  FAILED  REVERSING  REVERSED
not_sent       FAILED   ·        ·           ·        ·        ·       ·          ·
refused        FAILED   ·        ·           ·        ·        ·       ·          ·
no_answer      UNKNOWN  ·        ·           ·        ·        ·       ·          ·
answered       ans      ans      ans         ans      ·        ·       ans        ·
restarted      UNKNOWN  =        =           =        =        ·       =          ·
given_up       ·        =        =           =        =        ·       =          ·
not_seen       ·        =        =           =        ·        ·       =          ·
void_answered  ·        void     void        void     void     ·       void       ·
"""


def grid() -> list[tuple[str, PaymentEvent, str]]:
    header, *rows = [line.split() for line in GRID.strip().splitlines()]
    return [(state, PaymentEvent(row[0]), cell) for row in rows for state, cell in zip(header, row[1:], strict=True)]


def state_of(name: str) -> PaymentState | str:
    return SENDING if name == SENDING else PaymentState(name)


@pytest.mark.parametrize(("state", "event", "cell"), grid(), ids=lambda v: str(v))
def test_every_state_and_event_goes_where_the_grid_says(state: str, event: PaymentEvent, cell: str) -> None:
    answer = PaymentState.USERPAYING
    if cell == "·":
        with pytest.raises(MoveNotAllowed):
            target(state_of(state), event, answer)
        return
    expected = {"ans": answer, "void": answer, "=": state_of(state)}.get(cell) or PaymentState(cell)
    assert target(state_of(state), event, answer) == expected


def test_the_grid_and_the_table_hold_the_same_moves() -> None:
    assert {(state_of(s), e) for s, e, cell in grid() if cell != "·"} == set(TRANSITIONS)


def test_a_void_answered_with_success_is_a_reversal_under_way_never_a_payment() -> None:
    for state in (PaymentState.USERPAYING, PaymentState.SUCCESS):
        assert target(state, PaymentEvent.VOID_ANSWERED, PaymentState.SUCCESS) is PaymentState.REVERSING
    assert target(PaymentState.UNKNOWN, PaymentEvent.ANSWERED, PaymentState.SUCCESS) is PaymentState.SUCCESS


def test_an_answer_is_needed_for_the_events_that_carry_one() -> None:
    with pytest.raises(MoveNotAllowed, match="needs central's answer"):
        target(PaymentState.PENDING, PaymentEvent.ANSWERED)


# --- settled, and the follower's next move --------------------------------------------------------------------

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
LIMIT = timedelta(seconds=20)

# state, cancel_requested, void_answered, seconds since the charge → the follower's move
FOLLOWER = [
    ("USERPAYING", False, False, 5, FollowerMove.ASK),
    ("UNKNOWN", False, False, 20, FollowerMove.ASK),  # 20 s is not past a 20 s limit
    ("UNKNOWN", False, False, 21, FollowerMove.GIVE_UP),
    ("USERPAYING", True, False, 21, FollowerMove.VOID),  # given up: void first, whatever the time
    ("USERPAYING", True, True, 30, FollowerMove.ASK),  # voided, not final yet: ask until it is
    ("REVERSING", True, True, 30, FollowerMove.ASK),
    ("SUCCESS", True, False, 5, FollowerMove.VOID),  # charged and given up: not settled until the void is answered
    ("SUCCESS", False, False, 5, FollowerMove.DONE),
    ("FAILED", True, False, 5, FollowerMove.DONE),
    ("REVERSED", True, True, 5, FollowerMove.DONE),
]


@pytest.mark.parametrize(("state", "cancel", "voided", "seconds", "move"), FOLLOWER)
def test_the_follower_voids_gives_up_or_asks_as_the_table_says(
    state: str, cancel: bool, voided: bool, seconds: int, move: FollowerMove
) -> None:
    now = T0 + timedelta(seconds=seconds)
    assert follower_move(PaymentState(state), cancel, voided, T0, now, LIMIT) is move


def test_a_given_up_success_stays_unsettled_until_central_answers_its_void() -> None:
    assert not is_settled(PaymentState.SUCCESS, cancel_requested=True)
    assert is_settled(PaymentState.SUCCESS, cancel_requested=False)
    assert not is_settled(SENDING, cancel_requested=False)


def answer(state: str, final: bool = False) -> Payment:
    return Payment(
        out_trade_no="0196f0c2a1b27c3d",
        provider="wechat",
        state=PaymentState(state),
        paid=state == "SUCCESS",
        final=final,
        amount_fen=380,
        station_id="T01",
        created_at=T0,
        updated_at=T0,
    )


# the payment's state, central's answer → whether it moves the payment
NEWS = [
    ("USERPAYING", answer("USERPAYING"), False),  # a long-poll that ran out
    ("USERPAYING", answer("SUCCESS", final=True), True),
    ("UNKNOWN", answer("USERPAYING"), True),
    ("REVERSING", answer("USERPAYING"), False),  # sent before the reversal began
    ("REVERSING", answer("SUCCESS", final=True), False),
    ("REVERSING", answer("REVERSED", final=True), True),
    ("REVERSED", answer("SUCCESS", final=True), False),  # nothing moves a final payment
    ("FAILED", answer("SUCCESS", final=True), False),
]


@pytest.mark.parametrize(("state", "central", "moves"), NEWS)
def test_only_news_moves_a_payment(state: str, central: Payment, moves: bool) -> None:
    assert news(PaymentState(state), central) is moves
