"""A code payment at the till as a transition table: its state, what can happen to it, and where that leads.

The states are central's (`central.contract.PaymentState`), plus the till's own `sending`: written to disk before
the charge leaves the store, so a restart knows a request may be out. Two flags ride along: `cancel_requested` (the
till gave the payment up: central is asked to void it) and `void_answered` (central recorded that).

    sending ──not sent──► FAILED           the request never left the store: not charged
            ──refused───► FAILED           central's own refusal: no payment under this number
            ──no answer─► UNKNOWN          it may have been charged: follow it, never charge again
            ──answered──► central's state  (then as below)
    PENDING | USERPAYING | UNKNOWN ──answered──► central's state;  ──given up──► same state, voided next
    SUCCESS ──given up──► SUCCESS, its tender dropped: unsettled until central answers the void
    any given-up payment ──void answered──► central's state (SUCCESS taken as REVERSING: reversal under way)
    REVERSING ──answered──► REVERSED (or FAILED)

A move the table does not hold is a bug, not a guess: `move` refuses it. Pure: no I/O, no clock reading.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final, Literal

from central.contract import FINAL_PAYMENT_STATES, Payment, PaymentState

SENDING: Final = "sending"
TillPaymentState = PaymentState | Literal["sending"]

PENDING, USERPAYING, UNKNOWN = PaymentState.PENDING, PaymentState.USERPAYING, PaymentState.UNKNOWN
SUCCESS, FAILED = PaymentState.SUCCESS, PaymentState.FAILED
REVERSING, REVERSED = PaymentState.REVERSING, PaymentState.REVERSED
WAITING: Final = frozenset({PENDING, USERPAYING, UNKNOWN})
NOT_PAID: Final = frozenset({FAILED, REVERSING, REVERSED})  # a definite no, or a reversal under way


class PaymentEvent(StrEnum):
    NOT_SENT = "not_sent"  # central was not reached: the request never left the store
    REFUSED = "refused"  # central refused the request itself (its error body says why)
    NO_ANSWER = "no_answer"  # the request may have left, no answer came
    ANSWERED = "answered"  # central says the payment is in a state (charge, long-poll, or the request sent again)
    RESTARTED = "restarted"  # the agent started with this payment unsettled
    GIVEN_UP = "given_up"  # the till gives it up: the cashier cancelled, the sale was cancelled, or the time ran out
    NOT_SEEN = "not_seen"  # central does not know the number, and the till will not send it again: void it
    VOID_ANSWERED = "void_answered"  # central answered the void


class Take(StrEnum):
    """A target that depends on central's answer."""

    ANSWER = "central's state"
    VOID_ANSWER = "central's state after a void"


Target = TillPaymentState | Take

TRANSITIONS: Final[dict[tuple[TillPaymentState, PaymentEvent], Target]] = {
    (SENDING, PaymentEvent.NOT_SENT): FAILED,
    (SENDING, PaymentEvent.REFUSED): FAILED,
    (SENDING, PaymentEvent.NO_ANSWER): UNKNOWN,
    (SENDING, PaymentEvent.ANSWERED): Take.ANSWER,
    (SENDING, PaymentEvent.RESTARTED): UNKNOWN,  # it may have left: only central's word, or a void, settles it
    **{(state, PaymentEvent.ANSWERED): Take.ANSWER for state in (*WAITING, REVERSING)},
    **{(state, PaymentEvent.RESTARTED): state for state in (*WAITING, REVERSING, SUCCESS)},
    **{(state, PaymentEvent.GIVEN_UP): state for state in (*WAITING, REVERSING, SUCCESS)},
    **{(state, PaymentEvent.NOT_SEEN): state for state in (*WAITING, REVERSING)},
    **{(state, PaymentEvent.VOID_ANSWERED): Take.VOID_ANSWER for state in (*WAITING, REVERSING, SUCCESS)},
}


class MoveNotAllowed(RuntimeError):
    """A payment event the table does not allow in the payment's state: a bug in the caller."""


def target(state: TillPaymentState, event: PaymentEvent, answer: PaymentState | None = None) -> TillPaymentState:
    """Where `event` takes a payment in `state`; `answer` is central's state for the events that carry one."""
    to = TRANSITIONS.get((state, event))
    if to is None:
        raise MoveNotAllowed(f"a code payment in state {state} cannot take the event {event}")
    if to is Take.ANSWER or to is Take.VOID_ANSWER:
        if answer is None:
            raise MoveNotAllowed(f"the event {event} needs central's answer")
        state = PaymentState(answer)  # a plain string from a model built without validation is taken too
        return REVERSING if to is Take.VOID_ANSWER and state is SUCCESS else state
    return to


def is_final(state: TillPaymentState) -> bool:
    return state in FINAL_PAYMENT_STATES


def is_settled(state: TillPaymentState, cancel_requested: bool) -> bool:
    """Nothing more to ask central: a final state, except a SUCCESS the till gave up — charged, and not given back
    until central answers its void."""
    return is_final(state) and not (state == SUCCESS and cancel_requested)


class FollowerMove(StrEnum):
    DONE = "done"  # settled: nothing to ask
    VOID = "void"  # given up, central has not answered the void yet
    GIVE_UP = "give_up"  # the customer did not confirm within the till's limit
    ASK = "ask"  # long-poll central for the outcome


def follower_move(
    state: TillPaymentState,
    cancel_requested: bool,
    void_answered: bool,
    created_at: datetime,
    now: datetime,
    limit: timedelta,
) -> FollowerMove:
    """What the follower of an unsettled payment does next."""
    if is_settled(state, cancel_requested):
        return FollowerMove.DONE
    if cancel_requested and not void_answered:
        return FollowerMove.VOID
    if now - created_at > limit and not cancel_requested:
        return FollowerMove.GIVE_UP
    return FollowerMove.ASK


def news(state: TillPaymentState, answer: Payment) -> bool:
    """Whether central's answer moves a payment in `state`: a long-poll that ended without change does not, nor
    one sent before a reversal began (central's REVERSING only ends REVERSED or FAILED)."""
    if state == REVERSING and answer.state not in (REVERSED, FAILED):
        return False
    return not is_final(state) and not (answer.state == state and not answer.final)
