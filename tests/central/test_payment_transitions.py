"""The payment's and the refund's state machines as tables (central/payments/transitions.py): every state × every
event, the moves that must never happen because they would lose a customer's money, and the tables printed in the
module's docstring and in docs/PAYMENTS.md agreeing with the code."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import deque
from pathlib import Path

import pytest

from central.contract import FINAL_PAYMENT_STATES, PaymentState
from central.payments import transitions
from central.payments.provider import Outcome, RefundStatus
from central.payments.transitions import (
    CHARGE_ANSWERS,
    DRIVEN_STATES,
    PAYMENT_TRANSITIONS,
    QUERY_ANSWERS,
    REFUND_ANSWERS,
    REFUND_FINAL_STATES,
    REFUND_OPEN_STATES,
    REFUND_TRANSITIONS,
    WAITING_STATES,
    PaymentTrigger,
    RefundState,
    RefundTrigger,
    next_payment_state,
    next_refund_state,
    payment_move,
    refund_move,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "PAYMENTS.md"

# Written out by hand, apart from the module: each cell is the state the event leads to from the column's state, "·"
# where the payment stays as it is. "new" is a payment central has no row for yet.
PAYMENT_GRID = """
                        new   PENDING  USERPAYING  UNKNOWN  SUCCESS  FAILED  REVERSING  REVERSED
REQUESTED               PEN   ·        ·           ·        ·        ·       ·          ·
VOIDED_BEFORE_ARRIVAL   FAI   ·        ·           ·        ·        ·       ·          ·
CHARGE_PAID             ·     SUC      ·           ·        ·        ·       ·          ·
CHARGE_USERPAYING       ·     USR      ·           ·        ·        ·       ·          ·
CHARGE_FAILED           ·     FAI      ·           ·        ·        ·       ·          ·
CHARGE_CLOSED           ·     RVD      ·           ·        ·        ·       ·          ·
CHARGE_UNKNOWN          ·     UNK      ·           ·        ·        ·       ·          ·
CHARGE_UNANSWERED       ·     UNK      ·           ·        ·        ·       ·          ·
CHARGE_REFUSED          ·     RVG      ·           ·        ·        ·       ·          ·
QUERY_PAID              ·     SUC      SUC         SUC      ·        ·       ·          ·
QUERY_USERPAYING        ·     USR      USR         USR      ·        ·       ·          ·
QUERY_FAILED            ·     FAI      FAI         FAI      ·        ·       ·          ·
QUERY_CLOSED            ·     RVD      RVD         RVD      ·        ·       ·          ·
QUERY_UNKNOWN           ·     UNK      ·           ·        ·        ·       ·          ·
LIMIT_PASSED            ·     RVG      RVG         RVG      ·        ·       ·          ·
TILL_CANCELS            ·     RVG      RVG         RVG      RVG      ·       ·          ·
REVERSE_CONFIRMED       ·     ·        ·           ·        ·        ·       RVD        ·
"""
PAYMENT_SHORT = {
    "PEN": PaymentState.PENDING,
    "USR": PaymentState.USERPAYING,
    "UNK": PaymentState.UNKNOWN,
    "SUC": PaymentState.SUCCESS,
    "FAI": PaymentState.FAILED,
    "RVG": PaymentState.REVERSING,
    "RVD": PaymentState.REVERSED,
}

REFUND_GRID = """
                        new   PENDING  PROCESSING  SUCCESS  FAILED
REQUESTED               PEN   ·        ·           ·        ·
ANSWERED_REFUNDED       ·     SUC      SUC         ·        ·
ANSWERED_NOT_REFUNDED   ·     FAI      FAI         ·        ·
ANSWERED_PROCESSING     ·     PRO      PRO         ·        ·
ANSWERED_UNKNOWN        ·     PRO      ·           ·        ·
SEND_UNANSWERED         ·     PRO      ·           ·        ·
SEND_REFUSED            ·     PRO      PRO         ·        ·
REFUSAL_CONFIRMED       ·     FAI      FAI         ·        ·
"""
REFUND_SHORT = {
    "PEN": RefundState.PENDING,
    "PRO": RefundState.PROCESSING,
    "SUC": RefundState.SUCCESS,
    "FAI": RefundState.FAILED,
}


def grid(text: str, events, states, short) -> dict:
    """{(state or None, event): new state or None} for every cell of a grid."""
    header, *rows = text.strip().splitlines()
    columns = [None if name == "new" else states(name) for name in header.split()]
    cells = {}
    for row in rows:
        name, *marks = row.split()
        assert len(marks) == len(columns), row
        for state, mark in zip(columns, marks, strict=True):
            cells[(state, events[name])] = None if mark == "·" else short[mark]
    return cells


PAYMENT_CELLS = grid(PAYMENT_GRID, PaymentTrigger, PaymentState, PAYMENT_SHORT)
REFUND_CELLS = grid(REFUND_GRID, RefundTrigger, RefundState, REFUND_SHORT)
PAYMENT_ANSWERS = {*CHARGE_ANSWERS.values(), *QUERY_ANSWERS.values()}  # the events a provider's answer is


def test_the_grids_cover_every_state_and_every_event():
    assert {s for s, _ in PAYMENT_CELLS} == {None, *PaymentState}
    assert {e for _, e in PAYMENT_CELLS} == set(PaymentTrigger)
    assert {s for s, _ in REFUND_CELLS} == {None, *RefundState}
    assert {e for _, e in REFUND_CELLS} == set(RefundTrigger)


@pytest.mark.parametrize(("state", "event"), sorted(PAYMENT_CELLS, key=str), ids=lambda v: str(v))
def test_payment_state_by_event(state, event):
    assert next_payment_state(state, event) == PAYMENT_CELLS[(state, event)]


@pytest.mark.parametrize(("state", "event"), sorted(REFUND_CELLS, key=str), ids=lambda v: str(v))
def test_refund_state_by_event(state, event):
    assert next_refund_state(state, event) == REFUND_CELLS[(state, event)]


def test_the_tables_hold_nothing_but_the_grids_moves():
    assert dict(PAYMENT_TRANSITIONS) == {k: v for k, v in PAYMENT_CELLS.items() if v is not None}
    assert dict(REFUND_TRANSITIONS) == {k: v for k, v in REFUND_CELLS.items() if v is not None}


# --- what would lose money -------------------------------------------------------------------------------------


def test_nothing_leaves_failed_or_reversed():
    for state in (PaymentState.FAILED, PaymentState.REVERSED):
        assert [e for e in PaymentTrigger if next_payment_state(state, e) is not None] == []


def test_no_late_answer_moves_a_payment_that_no_longer_waits_for_one():
    # A cancelled payment being reversed is never made SUCCESS by a charge's or a query's late "paid" (the reverse
    # gives the money back); a SUCCESS is never made FAILED or REVERSED by a late "failed" or "closed".
    for state in (PaymentState.SUCCESS, PaymentState.FAILED, PaymentState.REVERSING, PaymentState.REVERSED):
        for event in PAYMENT_ANSWERS:
            assert next_payment_state(state, event) is None, (state, event)


def test_a_payment_is_paid_only_on_the_providers_word_that_it_is():
    to_success = {e for (_, e), target in PAYMENT_TRANSITIONS.items() if target is PaymentState.SUCCESS}
    assert to_success == {PaymentTrigger.CHARGE_PAID, PaymentTrigger.QUERY_PAID}
    assert {o for o, e in {**CHARGE_ANSWERS, **QUERY_ANSWERS}.items() if e in to_success} == {Outcome.SUCCESS}


def test_silence_or_not_found_is_never_not_paid():
    # No answer, an answer that cannot say, or "no such order" (the charge may still land): asked again.
    for event in (
        PaymentTrigger.CHARGE_UNANSWERED,
        CHARGE_ANSWERS[Outcome.UNKNOWN],
        CHARGE_ANSWERS[Outcome.NOT_FOUND],
        QUERY_ANSWERS[Outcome.UNKNOWN],
        QUERY_ANSWERS[Outcome.NOT_FOUND],
    ):
        assert payment_move(event).target is PaymentState.UNKNOWN
    assert next_payment_state(PaymentState.USERPAYING, QUERY_ANSWERS[Outcome.NOT_FOUND]) is None  # stays waiting


def test_only_the_till_takes_a_success_back_and_only_a_confirmed_reverse_ends_a_reversing():
    assert [e for e in PaymentTrigger if next_payment_state(PaymentState.SUCCESS, e)] == [PaymentTrigger.TILL_CANCELS]
    assert [e for e in PaymentTrigger if next_payment_state(PaymentState.REVERSING, e)] == [
        PaymentTrigger.REVERSE_CONFIRMED
    ]


def test_a_refund_fails_only_on_the_providers_definite_word():
    to_failed = {e for (_, e), target in REFUND_TRANSITIONS.items() if target is RefundState.FAILED}
    assert to_failed == {RefundTrigger.ANSWERED_NOT_REFUNDED, RefundTrigger.REFUSAL_CONFIRMED}
    assert {s for s, e in REFUND_ANSWERS.items() if e in to_failed} == {RefundStatus.FAILED}
    for state in REFUND_FINAL_STATES:
        assert [e for e in RefundTrigger if next_refund_state(state, e) is not None] == []


def test_every_unfinished_payment_and_refund_can_still_end():
    def ends(transitions, start, final) -> bool:
        seen, todo = {start}, deque([start])
        while todo:
            state = todo.popleft()
            if state in final:
                return True
            for (source, _), target in transitions.items():
                if source == state and target not in seen:
                    seen.add(target)
                    todo.append(target)
        return False

    for state in DRIVEN_STATES:
        assert ends(PAYMENT_TRANSITIONS, state, FINAL_PAYMENT_STATES), state
    for state in REFUND_OPEN_STATES:
        assert ends(REFUND_TRANSITIONS, state, REFUND_FINAL_STATES), state


# --- how the gateway reads the tables ----------------------------------------------------------------------------


def test_each_event_leads_to_one_state_so_one_conditional_update_makes_it():
    for event in PaymentTrigger:
        move = payment_move(event)
        assert set(move.sources) == {s for (s, e) in PAYMENT_TRANSITIONS if e is event and s is not None}
        assert move.creates == ((None, event) in PAYMENT_TRANSITIONS)
        assert all(next_payment_state(s, event) is move.target for s in move.sources)
    for event in RefundTrigger:
        move = refund_move(event)
        assert set(move.sources) == {s for (s, e) in REFUND_TRANSITIONS if e is event and s is not None}
        assert all(next_refund_state(s, event) is move.target for s in move.sources)


def test_an_event_with_two_new_states_is_refused_at_import():
    broken = {**PAYMENT_TRANSITIONS, (PaymentState.SUCCESS, PaymentTrigger.TILL_CANCELS): PaymentState.FAILED}
    with pytest.raises(ValueError, match="TILL_CANCELS must lead to exactly one state"):
        transitions._moves(broken, PaymentTrigger, PaymentState)


def test_every_provider_answer_is_an_event():
    assert set(CHARGE_ANSWERS) == set(Outcome) == set(QUERY_ANSWERS)
    assert set(REFUND_ANSWERS) == set(RefundStatus)
    assert {e.name for e in CHARGE_ANSWERS.values()} <= {e.name for e in PaymentTrigger if e.startswith("charge")}
    assert {e.name for e in QUERY_ANSWERS.values()} <= {e.name for e in PaymentTrigger if e.startswith("query")}


def test_waiting_states_are_those_a_query_answer_moves():
    assert WAITING_STATES == set(payment_move(PaymentTrigger.QUERY_PAID).sources)
    assert DRIVEN_STATES == WAITING_STATES | {PaymentState.REVERSING}
    assert REFUND_OPEN_STATES == set(RefundState) - REFUND_FINAL_STATES


def test_the_databases_plain_strings_are_states_and_anything_else_is_an_error():
    assert next_payment_state("USERPAYING", PaymentTrigger.QUERY_PAID) is PaymentState.SUCCESS
    assert next_refund_state("PENDING", RefundTrigger.SEND_UNANSWERED) is RefundState.PROCESSING
    with pytest.raises(ValueError):
        next_payment_state("PAID", PaymentTrigger.QUERY_PAID)


def test_the_tables_module_is_pure():
    code = (
        "import sys, central.payments.transitions; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'sqlalchemy', 'sqlmodel', 'httpx', 'asyncio', 'agent') "
        "or m.startswith('central.') and m not in "
        "('central.contract', 'central.payments', 'central.payments.provider', 'central.payments.transitions')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# --- the tables as printed -------------------------------------------------------------------------------------


def moves_of_rows(rows: list[list[str]]) -> dict[str, tuple[set[str], bool, str]]:
    """{event: (from-states, creates, to-state)} from rows of [event, from-states…, to-state]."""
    return {event: (set(sources) - {"(none)"}, "(none)" in sources, target) for event, *sources, target in rows}


def docstring_moves(text: str, heading: str) -> dict[str, tuple[set[str], bool, str]]:
    """The plain-text table after the line `heading`: a header line, then one row per event up to a blank line."""
    lines = [line.strip() for line in text.splitlines()]
    start = lines.index(heading) + 1
    while not lines[start]:
        start += 1
    assert lines[start].split() == ["event", "from", "to"], lines[start]
    rows = []
    for line in lines[start + 1 :]:
        if not line:
            break
        rows.append(line.split())
    return moves_of_rows(rows)


def markdown_moves(text: str, header: str) -> dict[str, tuple[set[str], bool, str]]:
    """The Markdown table whose header line is `header`: event, from-states apart by spaces, to-state, then
    anything."""
    lines = [line.strip() for line in text.splitlines()]
    start = lines.index(header) + 2  # past the header and its |---| line
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        event, sources, target = (cell.replace("`", "").strip() for cell in line.strip("|").split("|")[:3])
        rows.append([event, *sources.split(), target])
    return moves_of_rows(rows)


def mermaid_edges(text: str) -> dict[tuple[str | None, str], set[str]]:
    """{(from-state or None for [*], to-state): events} from the first `stateDiagram-v2` block."""
    block = text.split("```mermaid\nstateDiagram-v2\n", 1)[1].split("```", 1)[0]
    edges = {}
    for line in block.strip().splitlines():
        source, target, events = re.fullmatch(r"(\S+) --> (\S+): (.+)", line.strip()).groups()
        edges[(None if source == "[*]" else source, target)] = {e.strip() for e in events.split(",")}
    return edges


def table_moves(events, move_of) -> dict[str, tuple[set[str], bool, str]]:
    return {
        e.name: ({s.value for s in move_of(e).sources}, move_of(e).creates, move_of(e).target.value) for e in events
    }


def test_the_docstrings_tables_are_the_code():
    doc = transitions.__doc__
    payments = next(line.strip() for line in doc.splitlines() if line.startswith("Payments ("))
    refunds = next(line.strip() for line in doc.splitlines() if line.startswith("Refunds ("))
    assert docstring_moves(doc, payments) == table_moves(PaymentTrigger, payment_move)
    assert docstring_moves(doc, refunds) == table_moves(RefundTrigger, refund_move)


def test_the_payments_pages_tables_are_the_code():
    page = DOCS.read_text(encoding="utf-8")
    assert markdown_moves(page, "| payment event | from | to | what happened |") == table_moves(
        PaymentTrigger, payment_move
    )
    assert markdown_moves(page, "| refund event | from | to | what happened |") == table_moves(
        RefundTrigger, refund_move
    )


def test_the_payments_pages_diagram_is_the_code():
    edges: dict[tuple[str | None, str], set[str]] = {}
    for (source, event), target in PAYMENT_TRANSITIONS.items():
        edges.setdefault((source and source.value, target.value), set()).add(event.name)
    assert mermaid_edges(DOCS.read_text(encoding="utf-8")) == edges
