"""``napari-unet demo``: the headless form end to end (tiny budget) and its errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile

from napari_unet.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_headless_demo_trains_segments_writes_and_reports(tmp_path):
    out = tmp_path / "labels.tif"
    args = ["demo", "--headless", "--iterations", "3", "--size", "64", "--out", str(out)]
    code = (
        "import sys; from napari_unet.cli import main; "
        f"rc = main({args!r}); "
        "heavy = [m for m in ('qtpy', 'PyQt6', 'napari') if m in sys.modules]; "
        "assert not heavy, heavy; sys.exit(rc)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": SRC}
    )
    assert run.returncode == 0, run.stderr
    for what in ("trained:   3 steps", "AP@0.5:", "IoU:", str(out)):
        assert what in run.stdout
    labels = tifffile.imread(out)
    assert labels.shape == (64, 64) and np.issubdtype(labels.dtype, np.integer)
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left


def test_headless_demo_rejects_a_missing_folder_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "missing" / "labels.tif"
    assert main(["demo", "--headless", "--iterations", "1", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.parent.exists()


def test_headless_demo_rejects_an_unknown_preset(capsys):
    assert main(["demo", "--headless", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err
