"""The benchmark scripts run end to end on tiny inputs (their ``--smoke`` modes).

Each script is run as a user runs it: ``python benchmarks/NAME.py ...`` in a fresh
process with this checkout's ``src`` first on the path. The measured figures are not
checked here (they depend on the machine), only that every case ran and reported
consistent fields.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_bench_memory_smoke(tmp_path):
    out = tmp_path / "memory.json"
    done = run_script("bench_memory.py", "--smoke", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "machine:" in done.stdout
    results = json.loads(out.read_text())
    assert [r["case"] for r in results] == ["numpy-segment", "zarr-predict", "zarr-segment"]
    for r in results:
        assert r["tiles"] >= 1
        assert 0 < r["rss_before_mib"] <= r["rss_peak_mib"]
        assert r["added_mib"] == r["rss_peak_mib"] - r["rss_before_mib"]
        assert r["probabilities_mib"] == 2 * r["labels_mib"]
        assert f"| {r['case']} | {r['edge']}x{r['edge']} |" in done.stdout


def test_bench_memory_rejects_a_bad_case():
    done = run_script("bench_memory.py", "--cases", "numpy-segment:big")
    assert done.returncode == 2
    assert "a case is NAME:EDGE" in done.stderr
