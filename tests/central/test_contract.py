"""The wire contract: pure models, and the same shapes as the agent's journal rows and member cache."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from zoneinfo import ZoneInfo

from agent.journal import Journal, JournalEntry
from agent.member_cache import MemberChange as AgentMemberChange
from central import contract
from central.transactions import digest


def test_the_contract_imports_no_framework_or_database():
    code = (
        "import sys, central.contract; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette', 'sqlalchemy', 'sqlmodel', 'agent') "
        "or (m.startswith('central.') and m != 'central.contract')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_journal_row_is_a_transaction_in(engine):
    journal = Journal(engine, "T01", ZoneInfo("Asia/Shanghai"), 4)
    record = journal.append(
        JournalEntry(
            kind="sale",
            total_fen=2590,
            member_id="M0012345",
            points_earned=25,
            body={
                "lines": [{"name": "咖啡", "amount_fen": 2590}],
                "tenders": [{"kind": "wechat", "amount_fen": 2590}],
                "coupons": [{"code": "CP0000000001", "amount_off_fen": 500}],
            },
        )
    )
    # seq is the till's own order; receipt_no and original_id are generated from the body, which is sent.
    wire = {k: v for k, v in dataclasses.asdict(record).items() if k not in ("seq", "receipt_no", "original_id")}
    parsed = contract.TransactionIn.model_validate(wire)
    assert (
        parsed.id == record.id
        and parsed.body.tenders[0].kind == "wechat"
        and parsed.body.coupons[0].code == "CP0000000001"
    )
    assert set(contract.TransactionIn.model_fields) == set(wire)


def test_member_change_carries_every_field_of_the_agent_cache():
    agent_fields = {f.name for f in dataclasses.fields(AgentMemberChange)}
    assert agent_fields <= set(contract.MemberChange.model_fields)


def test_digest_is_what_the_contract_says():
    rows = [("0190b000-0000-7000-8000-000000000002", 500), ("0190b000-0000-7000-8000-000000000001", -120)]
    text = "0190b000-0000-7000-8000-000000000001:-120\n0190b000-0000-7000-8000-000000000002:500"
    assert digest(rows) == hashlib.sha256(text.encode()).hexdigest()
    assert digest([]) == hashlib.sha256(b"").hexdigest()
    assert "sorted by id" in contract.DaySummary.__doc__


def test_unknown_fields_are_ignored_for_forward_compatibility():
    change = contract.MemberChange.model_validate({"member_id": "M1", "version": 3, "added_in_v1_5": True})
    assert change.member_id == "M1" and not hasattr(change, "added_in_v1_5")
