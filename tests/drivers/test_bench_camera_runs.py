"""The camera benchmark stays runnable: on a few frames it prints a ratio for every decoder, size and scene."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_camera_bench_runs_on_a_few_frames():
    result = subprocess.run(
        [sys.executable, "bench/camera_decode.py", "--frames", "2", "--rounds", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "ratio pipeline/bare" in result.stdout
    rows = re.findall(
        r"^(zxing|pyzbar) +\d+x\d+ +(no code|payment screen) .* (\d+\.\d\d)  (yes|NO|-)$", result.stdout, re.M
    )
    zxing = [row for row in rows if row[0] == "zxing"]
    assert len(zxing) == 4  # 2 sizes x 2 scenes
    assert all(read == "yes" for _, scene, _, read in rows if scene == "payment screen"), result.stdout
    pyzbar_missing = re.search(r"^pyzbar +unavailable", result.stdout, re.M)
    assert len(rows) == (4 if pyzbar_missing else 8), result.stdout
    assert "zxing: met" in result.stdout or "zxing: NOT met" in result.stdout
