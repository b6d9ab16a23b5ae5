"""Each table group has one owner (docs/storage.md): no module of the agent but its owner holds SQL on its tables,
written out or through the table's declaration."""

from __future__ import annotations

import re
from pathlib import Path

AGENT = Path(__file__).resolve().parents[2] / "agent"

# table -> the module that owns it (docs/storage.md, "Owners").
OWNERS = {
    "print_job": "print_queue.py",
    "member": "member_cache.py",
    "member_identifier": "member_cache.py",
    "coupon": "member_cache.py",
    "sync_state": "member_cache.py",
    "member_code_key": "member_code_gate.py",
    "seen_member_code": "member_code_gate.py",
    "journal": "journal.py",
    "journal_checkpoint": "journal.py",
    "outbox": "journal.py",
    "open_sale": "open_sales.py",
    "pending_refund": "open_sales.py",
    "idempotent_request": "idempotency.py",
    "reprint": "print_queue.py",
}
# The declarations (agent/models.py) and the migrations that create the tables are not SQL on them.
NOT_SQL = {"models.py"}
MODEL_OF = {
    "print_job": "PrintJob",
    "member": "Member",
    "member_identifier": "MemberIdentifier",
    "coupon": "Coupon",
    "sync_state": "SyncState",
    "member_code_key": "MemberCodeKey",
    "seen_member_code": "SeenMemberCode",
    "journal": "Journal",
    "journal_checkpoint": "JournalCheckpoint",
    "outbox": "Outbox",
    "open_sale": "OpenSale",
    "pending_refund": "PendingRefund",
    "idempotent_request": "IdempotentRequest",
    "reprint": "Reprint",
}


def sql_on(table: str) -> re.Pattern[str]:
    """A statement naming the table: written out, or its declared Table or model taken into a module (from
    agent.models: `Journal` is also the journal's store, which any module may use)."""
    model = MODEL_OF[table]
    return re.compile(
        rf"\b(FROM|INTO|UPDATE|JOIN|TABLE)\s+{table}\b|tables\[\"{table}\"\]"
        rf"|\bagent\.models\s+import\b[^\n]*\b{model}\b|\bmodels\.{model}\b",
        re.IGNORECASE,
    )


def offenders(table: str) -> list[str]:
    pattern = sql_on(table)
    found = []
    for path in sorted(AGENT.glob("*.py")):
        if path.name in NOT_SQL or path.name == OWNERS[table]:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                found.append(f"{path.name}:{number}: {line.strip()}")
    return found


def test_only_the_owner_holds_sql_on_its_tables():
    found = {table: offenders(table) for table in OWNERS}
    assert not any(found.values()), {table: lines for table, lines in found.items() if lines}


def test_the_rule_finds_sql_outside_the_owner():
    # The check itself: each way a module could name a table is caught.
    assert sql_on("print_job").search("SELECT data FROM print_job WHERE id = ?")
    assert sql_on("member").search('    "UPDATE member SET last_seen_at = ?"')
    assert sql_on("member").search('_member = Member.metadata.tables["member"]')
    assert sql_on("coupon").search("from agent.models import Coupon, Member")
    assert sql_on("journal").search("_journal = models.Journal.metadata.tables")
    assert sql_on("outbox").search('_outbox = models.Outbox.metadata.tables["outbox"]')
    assert sql_on("open_sale").search("from agent.models import OpenSale, PendingRefund")
    assert not sql_on("journal").search("from agent.journal import Journal, JournalEntry")
    assert not sql_on("member").search("SELECT 1 FROM member_identifier")
    assert not sql_on("coupon").search("coupon = found")
