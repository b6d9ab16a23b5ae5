"""The central load benchmark stays runnable: a quick kill run on PostgreSQL (2 replicas and the worker, one
replica killed mid-run) prints its table and finds nothing lost, doubled or unresolved."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.central.plugin import _pg_bindir

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(90)
def test_central_load_quick_kill_run_loses_nothing():
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        message = "PostgreSQL server binaries not found (Debian: apt-get install postgresql)"
        pytest.fail(message) if os.environ.get("CI") == "true" else pytest.skip(message)
    result = subprocess.run(
        [sys.executable, "bench/central_load.py", "--quick", "--runs", "kill"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^\| 2 replicas, one killed \| 2 \| \d", result.stdout, re.M), result.stdout
    killed = (
        r"^2 replicas, one killed: replica-1 killed at [\d.]+ s with \d+ payments open, \d+ held by it, which ended "
    )
    assert re.search(killed, result.stdout, re.M), result.stdout
    assert "lost 0, doubled 0, unresolved 0" in result.stdout
