"""``benchmarks/bench_tta.py`` runs end to end on tiny synthetic data (both cases), as a
user runs it, and reports every mode with consistent fields (not the figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile

from napari_unet.sample_data import make_sample

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, str(ROOT / "benchmarks" / name), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def tiny_data(tmp_path):
    data = tmp_path / "data"
    for folder in ("images", "labels"):
        (data / folder).mkdir(parents=True)
    for seed in range(5):  # every 5th file is held out: 1 held-out image
        image, labels = make_sample((96, 80), n_objects=6, seed=seed)
        tifffile.imwrite(data / "images" / f"s{seed}.tif", image)
        tifffile.imwrite(data / "labels" / f"s{seed}.tif", labels)
    return data


def check_rows(result: dict, scores: set[str]) -> None:
    rows = {row["tta"]: row for row in result["rows"]}
    assert list(rows) == ["none", "flips", "d4"]
    assert rows["none"]["time_ratio"] == 1
    for row in rows.values():
        assert row["seconds"] > 0 and scores <= set(row)
        assert all(0 <= row[name] <= 1 for name in scores)


def test_bench_tta_dsb_smoke(tmp_path, tiny_data):
    out = tmp_path / "dsb.json"
    done = run_script("bench_tta.py", "dsb", "--data", str(tiny_data), "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "| d4 |" in done.stdout and "machine:" in done.stdout
    check_rows(json.loads(out.read_text()), {"ap50", "ap75"})


def test_bench_tta_isbi_smoke(tmp_path, tiny_data):
    out = tmp_path / "isbi.json"
    done = run_script(
        "bench_tta.py", "isbi", "--data", str(tiny_data), "--train", "3", "--eval", "2",
        "--iterations", "3", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["iterations"] == 3 and result["train_seconds"] > 0
    check_rows(result, {"rand_error", "pixel_error"})
