"""The till stops taking sales while the disk still has room to finish them, and says so in plain words."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from agent.db import open_database
from agent.disk_space import MB, DiskSpace, statvfs_free_bytes
from agent.journal import Journal, JournalEntry, verify
from tests.conftest import IN_CI


def test_below_the_reserve_new_sales_are_refused_with_a_message_for_the_cashier(tmp_path):
    free = {"bytes": 300 * MB}
    disk = DiskSpace(tmp_path, 256 * MB, free_bytes=lambda path: free["bytes"])
    ok = disk.check()
    assert ok.ok and ok.free_bytes == 300 * MB and ok.message == "300 MB free" and ok.message_zh == ""

    free["bytes"] = 255 * MB
    full = disk.check()
    assert not full.ok and (full.free_bytes, full.min_free_bytes) == (255 * MB, 256 * MB)
    assert "nearly full (255 MB free, 256 MB kept" in full.message and "call IT support" in full.message
    assert "存储空间不足" in full.message_zh


def test_a_disk_that_cannot_be_asked_counts_as_full(tmp_path):
    def unreadable(path: Path) -> int:
        raise FileNotFoundError(2, "No such file or directory")

    check = DiskSpace(tmp_path / "gone", 16 * MB, free_bytes=unreadable).check()
    assert not check.ok and "No such file or directory" in check.message and check.message_zh


def test_statvfs_reports_what_df_reports(tmp_path):
    df = subprocess.run(["df", "--output=avail", "-B1", str(tmp_path)], capture_output=True, text=True, check=True)
    reported = int(df.stdout.split()[-1])
    assert abs(statvfs_free_bytes(tmp_path) - reported) < 64 * MB  # others write to this disk meanwhile


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB file system of its own (tmpfs with size=), so filling it harms nothing."""
    where = tmp_path / "small"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(where)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        message = f"cannot mount a size-limited tmpfs (root needed): {mounted.stderr.strip()}"
        pytest.fail(message) if IN_CI and os.geteuid() == 0 else pytest.skip(message)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def test_on_a_real_small_disk_the_guard_trips_before_sqlite_fails(small_disk):
    engine = open_database(small_disk / "agent.db")
    journal = Journal(engine, "T01", ZoneInfo("Asia/Shanghai"), 4)
    disk = DiskSpace(small_disk, 512 * 1024)
    body = {
        "lines": [
            {"sku": f"690123456789{i}", "name": "矿泉水 550ml" * 3, "qty": 1, "amount_fen": 200} for i in range(12)
        ]
    }
    sales = 0
    while disk.check().ok:  # what the checkout asks before each sale
        journal.append(JournalEntry(kind="sale", total_fen=200 * 12, body=body))
        sales += 1
    refused = disk.check()
    assert sales > 20 and not refused.ok and refused.free_bytes < 512 * 1024
    # The reserve is real: the sale already under way when the guard tripped can still be journaled...
    journal.append(JournalEntry(kind="sale", total_fen=200 * 12, body=body))
    # ...and SQLite does run out of room further on, which is what the guard keeps a till away from.
    with pytest.raises(sa.exc.OperationalError, match="full"):
        for _ in range(10_000):
            journal.append(JournalEntry(kind="sale", total_fen=200 * 12, body=body))
    assert verify(engine).ok  # a full disk rolled the last append back whole
    engine.dispose()
