"""benchmarks/bench_distributed.py runs end to end in its ``--smoke`` mode (as a user runs
it, in a fresh process): every case ran, reported its fields, and the labels of the
cluster run equal those of the single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_bench_distributed_smoke(tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "distributed.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_distributed.py"), "--smoke",
         "--workers", "1", "--json", str(out), "--folder", str(tmp_path / "work")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "machine:" in done.stdout
    rows = json.loads(out.read_text())
    assert [r["workers"] for r in rows] == [0, 1]
    assert all(r["identical"] and r["seconds"] > 0 for r in rows)
    assert len(rows[1]["worker_peak_mib"]) == 1
    assert "| LocalCluster, 1 x 1 thread |" in done.stdout
