"""The benchmarks stay runnable: each one, on a small input, prints its ratio against its baseline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_member_cache_bench_runs_on_a_small_input():
    result = subprocess.run(
        [sys.executable, "bench/member_cache.py", "--members", "3000", "--page", "500", "--lookups", "300"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "ratio cache/baseline:" in result.stdout
    assert result.stdout.count("lookup by") == 3
