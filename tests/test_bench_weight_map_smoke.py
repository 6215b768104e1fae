"""The weight-map benchmark script runs (on generated labels, in seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_weight_map_smoke():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks/bench_weight_map.py"),
            "--smoke",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    assert "| generated 96x96 |" in result.stdout
    assert "ns / pixel" in result.stdout
