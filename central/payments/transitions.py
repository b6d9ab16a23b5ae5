"""The code payment's and the refund's state machines as tables: (state, event) → new state.

Pure: no I/O, no database, no clock. The gateway (central/payments/gateway.py) names the event that happened and
makes the move with one conditional UPDATE … WHERE state IN (the event's from-states), so that a till's cancel and
a provider's answer racing for one payment never both win. A move the table does not hold is not made: the payment
stays as it is. Every event leads to one state whatever state it leaves (checked at import), which is what lets one
UPDATE make it. `None` is the state of a payment or refund central has no row for yet.

Payments (`contract.PaymentState`, the same states at central and at the till):

    event                   from                                  to
    REQUESTED               (none)                                PENDING
    VOIDED_BEFORE_ARRIVAL   (none)                                FAILED
    CHARGE_PAID             PENDING                               SUCCESS
    CHARGE_USERPAYING       PENDING                               USERPAYING
    CHARGE_FAILED           PENDING                               FAILED
    CHARGE_CLOSED           PENDING                               REVERSED
    CHARGE_UNKNOWN          PENDING                               UNKNOWN
    CHARGE_UNANSWERED       PENDING                               UNKNOWN
    CHARGE_REFUSED          PENDING                               REVERSING
    QUERY_PAID              PENDING USERPAYING UNKNOWN            SUCCESS
    QUERY_USERPAYING        PENDING USERPAYING UNKNOWN            USERPAYING
    QUERY_FAILED            PENDING USERPAYING UNKNOWN            FAILED
    QUERY_CLOSED            PENDING USERPAYING UNKNOWN            REVERSED
    QUERY_UNKNOWN           PENDING                               UNKNOWN
    LIMIT_PASSED            PENDING USERPAYING UNKNOWN            REVERSING
    TILL_CANCELS            PENDING USERPAYING UNKNOWN SUCCESS    REVERSING
    REVERSE_CONFIRMED       REVERSING                             REVERSED

Nothing leaves FAILED or REVERSED, and no answer from the provider moves a payment that is no longer waiting for
one: a late "paid" never makes a cancelled payment SUCCESS (it is being reversed, which gives the money back), and a
late "failed" never unpays a SUCCESS. A SUCCESS leaves only when the till takes it back; the gateway adds what the
table cannot see (within 24 h, and only while no refund of it exists).

Refunds (`RefundState`; PENDING is PROCESSING on the wire, `contract.RefundState`):

    event                   from                                  to
    REQUESTED               (none)                                PENDING
    ANSWERED_REFUNDED       PENDING PROCESSING                    SUCCESS
    ANSWERED_NOT_REFUNDED   PENDING PROCESSING                    FAILED
    ANSWERED_PROCESSING     PENDING PROCESSING                    PROCESSING
    ANSWERED_UNKNOWN        PENDING                               PROCESSING
    SEND_UNANSWERED         PENDING                               PROCESSING
    SEND_REFUSED            PENDING PROCESSING                    PROCESSING
    REFUSAL_CONFIRMED       PENDING PROCESSING                    FAILED

A refund is FAILED only on the provider's definite word: its answer, or a refused request the provider then says it
does not hold. Nothing leaves SUCCESS or FAILED.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum, auto
from types import MappingProxyType
from typing import Generic, TypeVar

from central.contract import FINAL_PAYMENT_STATES, PaymentState
from central.payments.provider import Outcome, RefundStatus

# --- payments ------------------------------------------------------------------------------------------------------


class PaymentTrigger(StrEnum):
    """What happens to a payment (an event of its state machine)."""

    REQUESTED = auto()  # POST /v1/payments stored it; the charge goes out next
    VOIDED_BEFORE_ARRIVAL = auto()  # the till gave up a number central had not seen: its late request is refused
    CHARGE_PAID = auto()  # the charge answered: paid
    CHARGE_USERPAYING = auto()  # the charge answered: the customer confirms on the phone
    CHARGE_FAILED = auto()  # the charge answered: definitely not paid
    CHARGE_CLOSED = auto()  # the charge answered: the order is closed or reversed
    CHARGE_UNKNOWN = auto()  # the charge answered, but could not say (SYSTEMERROR, BANKERROR)
    CHARGE_UNANSWERED = auto()  # no answer to the charge: an error, a timeout, a body that is not the protocol
    CHARGE_REFUSED = auto()  # the provider refused the request itself, before processing it
    QUERY_PAID = auto()  # a query answered: paid
    QUERY_USERPAYING = auto()  # a query answered: still waiting for the customer
    QUERY_FAILED = auto()  # a query answered: definitely not paid
    QUERY_CLOSED = auto()  # a query answered: closed or reversed at the provider
    QUERY_UNKNOWN = auto()  # a query answered, but could not say, or the provider holds no such order (yet)
    LIMIT_PASSED = auto()  # the payment limit after the charge passed: give up waiting for the customer
    TILL_CANCELS = auto()  # the till cancels, takes back or voids a payment central holds
    REVERSE_CONFIRMED = auto()  # the provider confirmed the reverse


_P = PaymentState
_T = PaymentTrigger

PAYMENT_TRANSITIONS: Mapping[tuple[PaymentState | None, PaymentTrigger], PaymentState] = MappingProxyType(
    {
        (None, _T.REQUESTED): _P.PENDING,
        (None, _T.VOIDED_BEFORE_ARRIVAL): _P.FAILED,
        # sent, no answer yet
        (_P.PENDING, _T.CHARGE_PAID): _P.SUCCESS,
        (_P.PENDING, _T.CHARGE_USERPAYING): _P.USERPAYING,
        (_P.PENDING, _T.CHARGE_FAILED): _P.FAILED,
        (_P.PENDING, _T.CHARGE_CLOSED): _P.REVERSED,
        (_P.PENDING, _T.CHARGE_UNKNOWN): _P.UNKNOWN,
        (_P.PENDING, _T.CHARGE_UNANSWERED): _P.UNKNOWN,
        (_P.PENDING, _T.CHARGE_REFUSED): _P.REVERSING,
        (_P.PENDING, _T.QUERY_PAID): _P.SUCCESS,
        (_P.PENDING, _T.QUERY_USERPAYING): _P.USERPAYING,
        (_P.PENDING, _T.QUERY_FAILED): _P.FAILED,
        (_P.PENDING, _T.QUERY_CLOSED): _P.REVERSED,
        (_P.PENDING, _T.QUERY_UNKNOWN): _P.UNKNOWN,
        (_P.PENDING, _T.LIMIT_PASSED): _P.REVERSING,
        (_P.PENDING, _T.TILL_CANCELS): _P.REVERSING,
        # the customer confirms on the phone
        (_P.USERPAYING, _T.QUERY_PAID): _P.SUCCESS,
        (_P.USERPAYING, _T.QUERY_USERPAYING): _P.USERPAYING,
        (_P.USERPAYING, _T.QUERY_FAILED): _P.FAILED,
        (_P.USERPAYING, _T.QUERY_CLOSED): _P.REVERSED,
        (_P.USERPAYING, _T.LIMIT_PASSED): _P.REVERSING,
        (_P.USERPAYING, _T.TILL_CANCELS): _P.REVERSING,
        # the provider could not say: central is asking
        (_P.UNKNOWN, _T.QUERY_PAID): _P.SUCCESS,
        (_P.UNKNOWN, _T.QUERY_USERPAYING): _P.USERPAYING,
        (_P.UNKNOWN, _T.QUERY_FAILED): _P.FAILED,
        (_P.UNKNOWN, _T.QUERY_CLOSED): _P.REVERSED,
        (_P.UNKNOWN, _T.LIMIT_PASSED): _P.REVERSING,
        (_P.UNKNOWN, _T.TILL_CANCELS): _P.REVERSING,
        # paid: only the till takes it back
        (_P.SUCCESS, _T.TILL_CANCELS): _P.REVERSING,
        # given up or cancelled: reversed until the provider confirms
        (_P.REVERSING, _T.REVERSE_CONFIRMED): _P.REVERSED,
        # FAILED, REVERSED: nothing leaves them
    }
)

# The provider's answer to a charge, and to a query, as the event it is.
CHARGE_ANSWERS: Mapping[Outcome, PaymentTrigger] = MappingProxyType(
    {
        Outcome.SUCCESS: _T.CHARGE_PAID,
        Outcome.USERPAYING: _T.CHARGE_USERPAYING,
        Outcome.FAILED: _T.CHARGE_FAILED,
        Outcome.REVERSED: _T.CHARGE_CLOSED,
        Outcome.UNKNOWN: _T.CHARGE_UNKNOWN,
        Outcome.NOT_FOUND: _T.CHARGE_UNKNOWN,  # never "not charged" on a provider's not-found: ask again
    }
)
QUERY_ANSWERS: Mapping[Outcome, PaymentTrigger] = MappingProxyType(
    {
        Outcome.SUCCESS: _T.QUERY_PAID,
        Outcome.USERPAYING: _T.QUERY_USERPAYING,
        Outcome.FAILED: _T.QUERY_FAILED,
        Outcome.REVERSED: _T.QUERY_CLOSED,
        Outcome.UNKNOWN: _T.QUERY_UNKNOWN,
        Outcome.NOT_FOUND: _T.QUERY_UNKNOWN,  # the charge may not have landed yet: ask again
    }
)

WAITING_STATES = frozenset({_P.PENDING, _P.USERPAYING, _P.UNKNOWN})  # the outcome is still open: central asks
DRIVEN_STATES = frozenset(set(PaymentState) - FINAL_PAYMENT_STATES)  # a gateway task must be driving it


# --- refunds -------------------------------------------------------------------------------------------------------


class RefundState(StrEnum):
    """A refund's state at central. PENDING (sent, no answer yet) is PROCESSING on the wire."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"


REFUND_FINAL_STATES = frozenset({RefundState.SUCCESS, RefundState.FAILED})
REFUND_OPEN_STATES = frozenset({RefundState.PENDING, RefundState.PROCESSING})  # a gateway task follows it


class RefundTrigger(StrEnum):
    """What happens to a refund (an event of its state machine)."""

    REQUESTED = auto()  # POST .../refunds stored it (the sum checked); the refund goes out next
    ANSWERED_REFUNDED = auto()  # the refund or its query answered: the money is back with the payer
    ANSWERED_NOT_REFUNDED = auto()  # the refund or its query answered: definitely not refunded
    ANSWERED_PROCESSING = auto()  # the refund or its query answered: accepted, on its way
    ANSWERED_UNKNOWN = auto()  # the refund or its query answered, but could not say
    SEND_UNANSWERED = auto()  # no answer to the refund: an error, a timeout, a body that is not the protocol
    SEND_REFUSED = auto()  # the provider refused the request itself (the query decides whether it holds it)
    REFUSAL_CONFIRMED = auto()  # after a refused request, the query says the provider holds no such refund


_R = RefundState
_RT = RefundTrigger

REFUND_TRANSITIONS: Mapping[tuple[RefundState | None, RefundTrigger], RefundState] = MappingProxyType(
    {
        (None, _RT.REQUESTED): _R.PENDING,
        # sent, no answer yet
        (_R.PENDING, _RT.ANSWERED_REFUNDED): _R.SUCCESS,
        (_R.PENDING, _RT.ANSWERED_NOT_REFUNDED): _R.FAILED,
        (_R.PENDING, _RT.ANSWERED_PROCESSING): _R.PROCESSING,
        (_R.PENDING, _RT.ANSWERED_UNKNOWN): _R.PROCESSING,
        (_R.PENDING, _RT.SEND_UNANSWERED): _R.PROCESSING,
        (_R.PENDING, _RT.SEND_REFUSED): _R.PROCESSING,
        (_R.PENDING, _RT.REFUSAL_CONFIRMED): _R.FAILED,
        # accepted, or its answer not in: central asks
        (_R.PROCESSING, _RT.ANSWERED_REFUNDED): _R.SUCCESS,
        (_R.PROCESSING, _RT.ANSWERED_NOT_REFUNDED): _R.FAILED,
        (_R.PROCESSING, _RT.ANSWERED_PROCESSING): _R.PROCESSING,
        (_R.PROCESSING, _RT.SEND_REFUSED): _R.PROCESSING,
        (_R.PROCESSING, _RT.REFUSAL_CONFIRMED): _R.FAILED,
        # SUCCESS, FAILED: nothing leaves them
    }
)

# The provider's answer to a refund or a refund query as the event it is. NOT_FOUND (query only) is the gateway's
# decision: send the same refund again, or REFUSAL_CONFIRMED after a refused request.
REFUND_ANSWERS: Mapping[RefundStatus, RefundTrigger] = MappingProxyType(
    {
        RefundStatus.SUCCESS: _RT.ANSWERED_REFUNDED,
        RefundStatus.FAILED: _RT.ANSWERED_NOT_REFUNDED,
        RefundStatus.PROCESSING: _RT.ANSWERED_PROCESSING,
        RefundStatus.UNKNOWN: _RT.ANSWERED_UNKNOWN,
        RefundStatus.NOT_FOUND: _RT.ANSWERED_UNKNOWN,
    }
)


# --- reading the tables --------------------------------------------------------------------------------------------

StateT = TypeVar("StateT", PaymentState, RefundState)
EventT = TypeVar("EventT", PaymentTrigger, RefundTrigger)


@dataclass(frozen=True)
class Move(Generic[StateT]):
    """An event's moves, as one conditional UPDATE makes them: from any of `sources` to `target`."""

    sources: tuple[StateT, ...]  # in the order the states are declared; never None
    target: StateT
    creates: bool  # it also starts a payment or refund central has no row for


def _moves(
    transitions: Mapping[tuple[StateT | None, EventT], StateT], events: type[EventT], states: type[StateT]
) -> dict[EventT, Move[StateT]]:
    moves: dict[EventT, Move[StateT]] = {}
    for event in events:
        targets = {target for (_, on), target in transitions.items() if on is event}
        if len(targets) != 1:
            raise ValueError(f"{event.name} must lead to exactly one state, not {sorted(targets)}")
        sources = tuple(s for s in states if (s, event) in transitions)
        moves[event] = Move(sources, targets.pop(), creates=(None, event) in transitions)
    return moves


_PAYMENT_MOVES = _moves(PAYMENT_TRANSITIONS, PaymentTrigger, PaymentState)
_REFUND_MOVES = _moves(REFUND_TRANSITIONS, RefundTrigger, RefundState)


def next_payment_state(state: str | None, event: PaymentTrigger) -> PaymentState | None:
    """The payment's state after `event`, or None when the table has no such move (it stays as it is). `state` may
    be the database's plain string; one that is no payment state is a ValueError."""
    return PAYMENT_TRANSITIONS.get((None if state is None else PaymentState(state), event))


def payment_move(event: PaymentTrigger) -> Move[PaymentState]:
    return _PAYMENT_MOVES[event]


def next_refund_state(state: str | None, event: RefundTrigger) -> RefundState | None:
    """The refund's state after `event`, or None when the table has no such move (it stays as it is)."""
    return REFUND_TRANSITIONS.get((None if state is None else RefundState(state), event))


def refund_move(event: RefundTrigger) -> Move[RefundState]:
    return _REFUND_MOVES[event]
