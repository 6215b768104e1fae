"""``benchmarks/bench_tta.py`` (both cases) and ``bench_active.py`` run end to end on
tiny synthetic data, as a user runs them, and report consistent fields (not figures)."""

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


def test_bench_active_smoke(tmp_path, tiny_data):
    out = tmp_path / "active.json"
    done = run_script(
        "bench_active.py", "--data", str(tiny_data), "--train", "3", "--eval", "2",
        "--size", "24", "--count", "1", "--per-image", "--rounds", "1", "--iterations", "3",
        "--finetune", "2", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["round"], r["strategy"]) for r in rows] == [
        (0, "suggested"), (0, "random"), (1, "suggested"), (1, "random"),
    ]  # fmt: skip
    start, suggested, random = rows[0], rows[2], rows[3]
    assert start["annotated_px"] == 3 * 24 * 24  # one window per slice
    added = 3 * 576  # one more window on each of the 3 images
    assert suggested["annotated_px"] == random["annotated_px"] == start["annotated_px"] + added
    assert all(0 <= r["rand_error"] <= 1 and 0 <= r["ap50"] <= 1 for r in rows)
    assert "| 1 |" in done.stdout
