"""Is there room for another sale? Checked before a sale starts, so SQLite never meets a full disk mid-write.

A sale that cannot be journaled after the customer paid is the worst failure a till has; SQLite itself rolls
a transaction back cleanly on a full disk, but the money has moved by then. So the till stops taking new sales
while the free space is still above what a business day of journal, receipts, WAL and a backup needs
(`storage.min_free_mb`, docs/storage.md), and says so to the cashier and on /readyz.

`os.statvfs` costs about 2 µs here (measured: 1.7 µs on ext4), so the check runs for every sale without a cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MB = 1024 * 1024

FULL_ZH = "收银机存储空间不足，已暂停新交易以免数据丢失，请联系技术支持"


def statvfs_free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write there (blocks reserved for root are not the agent's)."""
    found = os.statvfs(path)
    return found.f_bavail * found.f_frsize


@dataclass(frozen=True, slots=True)
class DiskCheck:
    ok: bool
    free_bytes: int
    min_free_bytes: int
    message: str  # for the cashier and /readyz, in English
    message_zh: str  # for the customer's screen, in Chinese; empty when ok


class DiskSpace:
    def __init__(self, path: Path, min_free_bytes: int, free_bytes: Callable[[Path], int] = statvfs_free_bytes):
        self.path = Path(path)
        self.min_free_bytes = min_free_bytes
        self._free_bytes = free_bytes

    def check(self) -> DiskCheck:
        try:
            free = self._free_bytes(self.path)
        except OSError as exc:
            return DiskCheck(
                False,
                0,
                self.min_free_bytes,
                f"cannot tell how much disk is free at {self.path} ({exc.strerror}): new sales are stopped; call IT support",
                FULL_ZH,
            )
        if free < self.min_free_bytes:
            return DiskCheck(
                False,
                free,
                self.min_free_bytes,
                f"the till's disk is nearly full ({_mb(free)} free, {_mb(self.min_free_bytes)} kept for the day's sales): "
                "new sales are stopped so none is lost half-written; call IT support to free space",
                FULL_ZH,
            )
        return DiskCheck(True, free, self.min_free_bytes, f"{_mb(free)} free", "")


def _mb(n: int) -> str:
    return f"{n // MB} MB"
