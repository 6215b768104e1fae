"""``napari-unet demo``: the headless form end to end (tiny budget) and its errors."""

from __future__ import annotations

import subprocess
import sys
import tempfile
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
    for what in ("trained:   3 steps", "AP@0.5:", "good score is 0.8", "IoU:", str(out)):
        assert what in run.stdout
    labels = tifffile.imread(out)
    assert labels.shape == (64, 64) and np.issubdtype(labels.dtype, np.integer)
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left


def test_headless_demo_runs_a_fixed_number_of_steps_with_the_same_result(
    tmp_path, monkeypatch, capsys
):
    """A step budget and validation by steps: two runs give the same labels, however
    long they took; by default they go to the system's temp folder, not the cwd."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.chdir(tmp_path)
    args = ["demo", "--headless", "--iterations", "6", "--size", "64"]
    assert main(args) == 0
    first = capsys.readouterr().out
    default = tmp_path / "tmp" / "napari-unet-demo" / "labels.tif"
    assert "trained:   6 steps" in first and f"labels:    {default}" in first
    assert "total:" in first
    labels = tifffile.imread(default)
    assert main([*args, "--out", str(tmp_path / "again.tif")]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "again.tif"), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again.tif", "tmp"]


def test_headless_demo_validates_once_at_the_end_never_by_time():
    from napari_unet.cli import build_parser
    from napari_unet.commands.demo import DEMO_STEPS, _settings

    settings = _settings(build_parser().parse_args(["demo", "--headless"]))
    assert settings.iterations == DEMO_STEPS and settings.minutes is None
    assert settings.val_every is None and settings.val_every_s is None  # once, at the end


def test_headless_demo_rejects_a_missing_folder_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "missing" / "labels.tif"
    assert main(["demo", "--headless", "--iterations", "1", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.parent.exists()


def test_headless_demo_rejects_an_unknown_preset(capsys):
    assert main(["demo", "--headless", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err


def test_gui_demo_opens_on_train_with_the_whole_image_in_view(make_napari_viewer, qtbot):
    from napari_unet.commands.demo import DEMO_WIDGETS, open_demo

    viewer = open_demo(make_napari_viewer(show=True))
    qtbot.wait(100)
    docks = {name.split(" (")[0]: widget for name, widget in viewer.window.dock_widgets.items()}
    in_sight = {
        name: not getattr(docks[name], "native", docks[name]).visibleRegion().isEmpty()
        for name in DEMO_WIDGETS
    }
    assert in_sight == {"Train U-Net": True, "Segment": False, "Weight map": False}
    height, width = viewer.canvas.size
    image = viewer.layers["cells"]
    extent = np.asarray(image.extent.world)  # [[y0, x0], [y1, x1]]
    size, centre = extent[1] - extent[0], extent.mean(axis=0)
    assert viewer.camera.zoom * size[0] <= height and viewer.camera.zoom * size[1] <= width
    np.testing.assert_allclose(viewer.camera.center[-2:], centre, atol=1)


def test_builtin_demo_segments_generated_nuclei_without_training_or_qt(tmp_path):
    out = tmp_path / "labels.tif"
    args = ["demo", "--model", "nuclei", "--headless", "--out", str(out)]
    code = (
        "import sys; from napari_unet.cli import main; "
        f"rc = main({args!r}); "
        "heavy = [m for m in ('qtpy', 'PyQt6', 'napari') if m in sys.modules]; "
        "assert not heavy, heavy; sys.exit(rc)"
    )
    env = {"PYTHONPATH": SRC, "NAPARI_UNET_CACHE_DIR": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert "built-in 'nuclei'" in run.stdout and "no training" in run.stdout
    assert "trained:" not in run.stdout
    labels = tifffile.imread(out)
    from napari_unet.metrics import average_precision
    from napari_unet.sample_data import make_nuclei

    truth = make_nuclei(seed=0)[1]
    assert labels.shape == truth.shape
    ap50 = average_precision([truth], [labels], iou=0.5)
    assert f"AP@0.5:    {ap50:.3f}" in run.stdout  # the score printed is the file's score
    assert ap50 > 0.5  # the built-in model finds most of the generated nuclei


def test_builtin_demo_refuses_a_name_that_is_not_built_in(capsys):
    assert main(["demo", "--model", "model.safetensors", "--headless"]) == 2
    assert "must name a built-in model (nuclei)" in capsys.readouterr().err


def test_gui_builtin_demo_opens_segment_with_the_builtin_model(make_napari_viewer, qtbot):
    from napari_unet.commands.demo import open_builtin_demo
    from napari_unet.widgets.model_store import model_store

    viewer = open_builtin_demo(make_napari_viewer(show=True), "nuclei")
    qtbot.wait(100)
    assert [layer.name for layer in viewer.layers] == ["nuclei", "nuclei labels"]
    segment = next(
        widget for name, widget in viewer.window.dock_widgets.items() if name.startswith("Segment")
    )
    assert (
        not getattr(segment, "native", segment).visibleRegion().isEmpty()
    )  # in front of its tabbed siblings
    assert "built-in 'nuclei'" in model_store(viewer).source
