"""The checkout benchmark stays runnable: a quick run through the whole store prints its table, ratios and verdict."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_checkout_bench_runs_quickly():
    result = subprocess.run(
        [sys.executable, "bench/checkout.py", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=280
    )
    assert result.returncode == 0, result.stderr
    assert "ratio p50" in result.stdout
    number = r" +-?\d+\.\d"
    for label in ("scan-to-paid, member", "scan-to-paid, no member", "full sale, member", "full sale, no member"):
        assert re.search(rf"^{label}(?:{number}){{6}} +\d+\.\d\d +\d+\.\d\d$", result.stdout, re.M), result.stdout
    assert (
        "agent -> central per sale, as member: /v1/payments, /v1/payments/identify, /v1/transactions:batch"
        in result.stdout
    )
    assert re.search(r"^verdict: .* \(target < 50 ms\): (met|NOT met)$", result.stdout, re.M), result.stdout
