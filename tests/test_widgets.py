"""GUI tests of the Train, Segment and Weight-map widgets in a real napari viewer.

Everything runs through the thread workers the user's clicks start; tiny
images, a tiny network and a few iterations keep the whole file fast.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import torch
from napari.utils.notifications import NotificationSeverity, notification_manager
from qtpy.QtCore import QTimer

from napari_unet.config import UNetConfig
from napari_unet.model import UNet
from napari_unet.model_io import load_model
from napari_unet.sample_data import make_sample
from napari_unet.training import PRESETS
from napari_unet.weights import weight_map
from napari_unet.widgets import _dialogs, jobs, segment_widget
from napari_unet.widgets._workers import end_all_jobs, start_job
from napari_unet.widgets.model_store import model_store
from napari_unet.widgets.segment_widget import SegmentWidget
from napari_unet.widgets.train_widget import TrainWidget
from napari_unet.widgets.weight_map_widget import WeightMapWidget

#: longest wait for a job: generous, since the work is bounded (steps, tiles), not the time
WAIT_MS = 300_000
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(autouse=True)
def end_running_jobs(make_napari_viewer):
    """After each test, passed or failed, end the jobs it left running (before its
    viewers close), so that one failure does not spill into the next tests."""
    yield
    assert end_all_jobs() == 0, "a job's thread did not end"


@pytest.fixture
def tiny_preset(monkeypatch):
    """A preset small enough for tests: 4 base channels, depth 2, 124 px tiles."""
    preset = PRESETS["fast"].replace(
        base_channels=4, depth=2, tile_size=124, batch_size=2, minutes=None,
        iterations=40, val_every=20, val_every_s=None, preview_every_s=0.2,
        refresh_every_s=0.2,
    )  # fmt: skip
    monkeypatch.setitem(PRESETS, "tiny", preset)
    return "tiny"


@pytest.fixture
def notifications():
    """Messages of the napari notifications shown during the test: [(severity, text)]."""
    seen: list[tuple[NotificationSeverity, str]] = []

    def record(notification):
        seen.append((notification.severity, str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def sample_viewer(make_napari_viewer):
    image, labels = make_sample((128, 128), n_objects=10, seed=1)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    return viewer


def tiny_model(in_channels: int = 1) -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(in_channels=in_channels, base_channels=4, depth=2))


def snapshot(viewer) -> dict[str, np.ndarray]:
    return {layer.name: np.array(layer.data) for layer in viewer.layers}


def assert_unchanged(viewer, before: dict[str, np.ndarray]) -> None:
    after = snapshot(viewer)
    assert list(after) == list(before)
    for name, data in before.items():
        np.testing.assert_array_equal(after[name], data, err_msg=name)


# -- opening ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("display_name", "widget_type"),
    [("Train U-Net", TrainWidget), ("Segment", SegmentWidget), ("Weight map", WeightMapWidget)],
)
def test_widget_opens_through_the_manifest(make_napari_viewer, display_name, widget_type):
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", display_name)
    assert isinstance(widget, widget_type)


def open_from_menu(viewer, display_name: str):
    """Open a widget as napari's Plugins menu does: (dock, widget)."""
    return viewer.window.add_plugin_dock_widget("napari-unet", display_name)


def test_widgets_opened_from_the_menu_share_the_viewers_model(make_napari_viewer):
    """napari gives each widget its own proxy of the viewer: one store all the same."""
    viewer, other = make_napari_viewer(), make_napari_viewer()
    _, train = open_from_menu(viewer, "Train U-Net")
    _, segment = open_from_menu(viewer, "Segment")
    _, elsewhere = open_from_menu(other, "Segment")
    assert train.viewer is not segment.viewer  # two proxies...
    assert train.store is segment.store is model_store(viewer)  # ...of one viewer
    assert elsewhere.store is not train.store
    train.store.set(tiny_model(), "test")
    assert "test" in segment.model_info.value
    assert "no model" in elsewhere.model_info.value


def test_train_segment_weight_map_through_the_menu(sample_viewer, qtbot, tiny_preset):
    """The user's path with the widgets opened from the Plugins menu, clicks only."""
    _, train = open_from_menu(sample_viewer, "Train U-Net")
    _, segment = open_from_menu(sample_viewer, "Segment")
    _, weights = open_from_menu(sample_viewer, "Weight map")
    train.preset.value = tiny_preset
    with qtbot.waitSignal(train.store.changed, timeout=WAIT_MS):
        train.train_button.native.click()
    qtbot.waitUntil(lambda: not train.busy, timeout=WAIT_MS)
    assert "trained on 'cells'" in segment.model_info.value

    segment.segment_button.native.click()
    assert segment.busy
    qtbot.waitUntil(lambda: not segment.busy, timeout=WAIT_MS)
    assert sample_viewer.layers["cells segmentation"].data.shape == (128, 128)
    assert "objects in 'cells segmentation'" in segment.status.value

    weights.show_button.native.click()
    qtbot.waitUntil(lambda: not weights.busy, timeout=WAIT_MS)
    expected = weight_map(sample_viewer.layers["cells labels"].data, w0=10, sigma=5)
    layer = sample_viewer.layers["cells labels weight map"]
    np.testing.assert_allclose(layer.data, expected, rtol=1e-6)


def start_endless_training(viewer, qtbot, preset: str):
    """Open Train from the menu and train with a budget it will not reach; (dock, widget)."""
    dock, train = open_from_menu(viewer, "Train U-Net")
    train.preset.value = preset
    train.budget_unit.value = "iterations"
    train.budget.value = 1_000_000
    records = []
    train.train()
    train._worker.yielded.connect(records.append)
    qtbot.waitUntil(lambda: len(records) >= 3, timeout=WAIT_MS)
    return dock, train


def test_removing_the_train_dock_stops_training(sample_viewer, qtbot, tiny_preset):
    dock, train = start_endless_training(sample_viewer, qtbot, tiny_preset)
    worker = train._worker
    sample_viewer.window.remove_dock_widget(dock)
    assert not worker.is_running  # the thread was waited for
    assert not train.busy and train.train_button.enabled and not train.stop_button.enabled
    assert "stopped" in train.status.value
    assert model_store(sample_viewer).model is None  # the run was dropped
    qtbot.wait(100)  # what the worker sent before it ended reaches nobody
    assert "stopped" in train.status.value


def test_removing_the_segment_dock_cancels_segmentation(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((8, 300, 300), np.float32), name="big")
    model_store(viewer).set(tiny_model(), "test")
    before = snapshot(viewer)
    dock, segment = open_from_menu(viewer, "Segment")
    segment.segment()
    worker = segment._worker
    qtbot.waitUntil(lambda: worker.is_running, timeout=WAIT_MS)
    viewer.window.remove_dock_widget(dock)
    assert not worker.is_running and not segment.busy
    qtbot.wait(100)
    assert_unchanged(viewer, before)


def test_closing_the_viewer_while_training_ends_the_thread(sample_viewer, qtbot, tiny_preset):
    _, train = start_endless_training(sample_viewer, qtbot, tiny_preset)
    worker = train._worker
    sample_viewer.close()
    assert not worker.is_running
    qtbot.wait(200)  # deferred deletion of the window; queued signals of the worker


CLOSE_MID_TRAINING = """
import time
import napari
from qtpy.QtWidgets import QApplication
from napari_unet.sample_data import make_sample
from napari_unet.training import PRESETS

PRESETS["tiny"] = PRESETS["fast"].replace(
    base_channels=4, depth=2, tile_size=124, batch_size=2, minutes=None,
    iterations=1_000_000, val_every=20, val_every_s=None, preview_every_s=0.2,
)
viewer = napari.Viewer(show=True)
image, labels = make_sample((128, 128), n_objects=10, seed=1)
viewer.add_image(image, name="cells")
viewer.add_labels(labels, name="cells labels")
_, train = viewer.window.add_plugin_dock_widget("napari-unet", "Train U-Net")
train.preset.value = "tiny"
records = []
train.train()
worker = train._worker
worker.yielded.connect(records.append)
app = QApplication.instance()
while len(records) < 5:
    app.processEvents()
viewer.close()
for _ in range(100):  # the window is deleted; anything queued is delivered
    app.processEvents()
    time.sleep(0.01)
print("thread ended:", not worker.is_running, flush=True)
"""


def test_closing_the_viewer_while_training_in_a_script(tmp_path):
    """As a script or notebook does: no error printed, the process lives on, the thread ends.

    (A Qt slot that raises makes PyQt abort the process; pytest-qt would catch it.)
    """
    script = tmp_path / "close_mid_training.py"
    script.write_text(CLOSE_MID_TRAINING)
    env = {**os.environ, "PYTHONPATH": SRC, "QT_API": "pyqt6"}
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr
    assert "thread ended: True" in run.stdout
    assert "Traceback" not in run.stderr and "deleted" not in run.stderr, run.stderr


@pytest.mark.parametrize(
    ("widget_type", "combo", "expected"),
    [
        (TrainWidget, "image_layer", "cells"),
        (TrainWidget, "labels_layer", "cells labels"),
        (SegmentWidget, "image_layer", "cells"),
        (WeightMapWidget, "labels_layer", "cells labels"),
    ],
)
def test_widget_opens_directly_and_follows_the_layers(sample_viewer, widget_type, combo, expected):
    widget = widget_type(sample_viewer)
    choices = getattr(widget, combo)
    assert choices.value.name == expected
    kind = type(sample_viewer.layers[expected])
    new = sample_viewer.add_layer(kind(np.zeros((8, 8), np.int32), name="new"))
    assert new in choices.choices
    sample_viewer.layers.remove(new)
    assert new not in choices.choices


@pytest.mark.parametrize(
    ("key", "names"),
    [("touching_cells", ["cells", "cells labels"]), ("nuclei", ["nuclei", "nuclei labels"])],
)
def test_sample_data_opens_through_the_manifest(make_napari_viewer, key, names):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet", key)
    assert [layer.name for layer in viewer.layers] == names


def test_a_job_failing_with_a_runtime_error_reports_it_and_finishes(
    make_napari_viewer, qtbot, notifications
):
    """torch raises RuntimeErrors; napari's worker would take one for a deleted Qt object,
    only warn, and never say finished (the widget would stay busy)."""

    def failing():
        yield 1
        raise RuntimeError("not enough memory")

    finished = []
    start_job(failing, on_finish=lambda: finished.append(1), error_prefix="training failed")
    qtbot.waitUntil(lambda: bool(finished), timeout=30_000)
    assert any(text == "training failed: not enough memory" for _, text in notifications)


# -- weight map ---------------------------------------------------------------------------
def test_weight_map_layer_follows_sigma(sample_viewer, qtbot):
    labels = sample_viewer.layers["cells labels"].data
    widget = WeightMapWidget(sample_viewer)
    assert not widget._debounce.isActive() and not widget.busy  # nothing will come...
    assert "cells labels weight map" not in sample_viewer.layers  # ...until asked for
    widget.show_button.native.click()
    qtbot.waitUntil(lambda: "cells labels weight map" in sample_viewer.layers, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    layer = sample_viewer.layers["cells labels weight map"]
    np.testing.assert_allclose(layer.data, weight_map(labels, w0=10, sigma=5), rtol=1e-6)
    assert layer.colormap.name == "magma"
    assert layer.contrast_limits[1] == pytest.approx(float(layer.data.max()))

    widget.sigma.value = 2.0
    expected = weight_map(labels, w0=10, sigma=2)
    qtbot.waitUntil(lambda: np.allclose(layer.data, expected, rtol=1e-6), timeout=WAIT_MS)
    assert sample_viewer.layers["cells labels weight map"] is layer  # updated in place


def test_weight_map_components_as_layers(sample_viewer, qtbot):
    widget = WeightMapWidget(sample_viewer)
    widget.show_components.value = True
    widget.show_map()
    names = [f"cells labels {part}" for part in ("w_c", "d1+d2", "border")]
    qtbot.waitUntil(lambda: all(n in sample_viewer.layers for n in names), timeout=WAIT_MS)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    total = sample_viewer.layers["cells labels weight map"].data
    w_c = sample_viewer.layers["cells labels w_c"].data
    border = sample_viewer.layers["cells labels border"].data
    np.testing.assert_allclose(w_c + border, total, rtol=1e-6)
    assert border.max() > 0  # the sample has touching cells

    widget.show_components.value = False
    qtbot.waitUntil(lambda: not any(n in sample_viewer.layers for n in names), timeout=WAIT_MS)


def test_weight_map_of_empty_labels_warns_and_adds_nothing(
    make_napari_viewer, qtbot, notifications
):
    viewer = make_napari_viewer()
    viewer.add_labels(np.zeros((64, 64), np.int32), name="nothing yet")
    before = snapshot(viewer)
    widget = WeightMapWidget(viewer)
    widget.show_button.native.click()
    assert any("empty" in text for _, text in notifications)
    widget.sigma.value = 3.0  # the debounced update fires too, and must warn again
    qtbot.waitUntil(lambda: sum("empty" in t for _, t in notifications) == 2, timeout=WAIT_MS)
    assert not widget.busy
    assert_unchanged(viewer, before)


# -- bad choices --------------------------------------------------------------------------
def test_train_with_labels_of_another_shape_notifies_and_changes_nothing(
    sample_viewer, notifications
):
    sample_viewer.add_labels(np.ones((50, 60), np.int32), name="other labels")
    before = snapshot(sample_viewer)
    widget = TrainWidget(sample_viewer)
    widget.labels_layer.value = sample_viewer.layers["other labels"]
    widget.train()
    assert not widget.busy
    assert any(
        severity == NotificationSeverity.ERROR and "shape" in text
        for severity, text in notifications
    )
    assert_unchanged(sample_viewer, before)


def test_train_with_empty_labels_notifies_and_changes_nothing(sample_viewer, notifications):
    sample_viewer.add_labels(np.zeros((128, 128), np.int32), name="empty")
    before = snapshot(sample_viewer)
    widget = TrainWidget(sample_viewer)
    widget.labels_layer.value = sample_viewer.layers["empty"]
    widget.train()
    widget.add_pair()
    assert not widget.busy and widget.pairs == []
    assert sum("empty" in text for _, text in notifications) == 2
    assert_unchanged(sample_viewer, before)


def test_segment_without_a_model_notifies_and_changes_nothing(sample_viewer, notifications):
    before = snapshot(sample_viewer)
    widget = SegmentWidget(sample_viewer)
    widget.segment()
    assert not widget.busy
    assert any("no model" in text for _, text in notifications)
    assert_unchanged(sample_viewer, before)


def test_segment_with_a_model_of_other_channels_notifies(sample_viewer, notifications):
    model_store(sample_viewer).set(tiny_model(in_channels=2), "test")
    before = snapshot(sample_viewer)
    SegmentWidget(sample_viewer).segment()
    assert any("2 channels" in text for _, text in notifications)
    assert_unchanged(sample_viewer, before)


# -- segment ------------------------------------------------------------------------------
def gated(job, gate: threading.Event):
    """``job`` that waits for ``gate`` after its first progress report (finishing before a
    cancel is then impossible, on any machine)."""

    def wrapper(*args, **kwargs):
        run = job(*args, **kwargs)
        yield next(run)
        gate.wait(WAIT_MS / 1000)
        return (yield from run)

    return wrapper


def run_segment(widget: SegmentWidget, qtbot) -> None:
    widget.segment()
    assert widget.busy
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)


@pytest.mark.parametrize(
    ("data", "rgb", "in_channels", "spatial"),
    [
        (np.random.default_rng(0).random((70, 90), np.float32), False, 1, (70, 90)),
        (np.random.default_rng(0).random((3, 40, 50), np.float32), False, 1, (3, 40, 50)),
        (np.random.default_rng(0).random((40, 50, 3), np.float32), True, 3, (40, 50)),
        (np.random.default_rng(0).random((2, 40, 50), np.float32), False, 2, (40, 50)),
        (da.random.random((2, 60, 60), chunks=(1, 30, 30)), False, 1, (2, 60, 60)),
    ],
    ids=["2d", "stack", "rgb", "two-channel", "dask-stack"],
)
def test_segment_image_kinds(make_napari_viewer, qtbot, data, rgb, in_channels, spatial):
    viewer = make_napari_viewer()
    viewer.add_image(data, name="img", rgb=rgb, scale=(2.0,) * (data.ndim - rgb))
    model_store(viewer).set(tiny_model(in_channels), "test")
    widget = SegmentWidget(viewer)
    widget.show_probabilities.value = True
    run_segment(widget, qtbot)
    labels = viewer.layers["img segmentation"]
    assert labels.data.shape == spatial
    assert tuple(labels.scale) == (2.0,) * len(spatial)
    assert viewer.layers["img p(foreground)"].data.shape == spatial


def test_segment_replaces_its_own_layer_and_never_the_users(sample_viewer, qtbot):
    model_store(sample_viewer).set(tiny_model(), "test")
    user = sample_viewer.add_labels(np.zeros((128, 128), np.int32), name="cells segmentation")
    widget = SegmentWidget(sample_viewer)
    run_segment(widget, qtbot)
    ours = [layer for layer in sample_viewer.layers if layer.name.startswith("cells segm")]
    assert len(ours) == 2 and not user.data.any()  # the user's layer is untouched
    n_layers = len(sample_viewer.layers)
    output = ours[1]
    run_segment(widget, qtbot)
    assert len(sample_viewer.layers) == n_layers  # replaced, not added
    assert output in sample_viewer.layers

    output.events.paint()  # the user paints on our output: it becomes theirs
    run_segment(widget, qtbot)
    assert len(sample_viewer.layers) == n_layers + 1


@pytest.mark.parametrize("where", ["dock", "napari progress bar"])
def test_cancel_segmentation_changes_no_layer(make_napari_viewer, qtbot, monkeypatch, where):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((4, 300, 300), np.float32), name="big")
    model_store(viewer).set(tiny_model(), "test")
    before = snapshot(viewer)
    gate = threading.Event()
    monkeypatch.setattr(segment_widget, "segment_job", gated(segment_widget.segment_job, gate))
    widget = SegmentWidget(viewer)
    widget.segment()
    if where == "dock":
        widget.cancel_button.native.click()
    else:
        widget._bar.bar.cancel()  # what the Cancel button of napari's activity dock calls
    gate.set()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert "cancelled" in widget.status.value
    assert widget.segment_button.enabled and not widget.cancel_button.enabled
    assert_unchanged(viewer, before)


def test_load_model_from_file(sample_viewer, tmp_path, monkeypatch, notifications):
    from napari_unet.model_io import save_model

    path = tmp_path / "m.safetensors"
    save_model(tiny_model(), path)
    monkeypatch.setattr(_dialogs, "ask_open_model", lambda parent: str(path))
    widget = SegmentWidget(sample_viewer)
    widget.load_button.native.click()
    assert model_store(sample_viewer).model is not None
    assert "m.safetensors" in widget.model_info.value

    (tmp_path / "bad.safetensors").write_text("not a model")
    monkeypatch.setattr(
        _dialogs, "ask_open_model", lambda parent: str(tmp_path / "bad.safetensors")
    )
    widget.load_button.native.click()
    assert any(s == NotificationSeverity.ERROR for s, _ in notifications)
    assert "m.safetensors" in widget.model_info.value  # the loaded model stays


# -- train --------------------------------------------------------------------------------
def test_train_stop_save_segment(sample_viewer, qtbot, tiny_preset, tmp_path, monkeypatch):
    """The user's path: Train, watch, Stop, Save, Segment with the trained model."""
    tiny = PRESETS[tiny_preset]
    monkeypatch.setitem(PRESETS, tiny_preset, tiny.replace(iterations=100_000))
    labels_before = np.array(sample_viewer.layers["cells labels"].data)
    train = TrainWidget(sample_viewer)
    segment = SegmentWidget(sample_viewer)
    train.preset.value = tiny_preset
    train.budget_unit.value = "iterations"
    train.budget.value = 100_000
    records = []
    train.train()
    assert train.busy and train.stop_button.enabled
    train._worker.yielded.connect(records.append)
    qtbot.waitUntil(  # previews come every 0.2 s: wait for one, however fast the steps
        lambda: len(records) >= 25 and any(record.preview is not None for record in records),
        timeout=WAIT_MS,
    )
    train.stop_button.native.click()
    qtbot.waitUntil(lambda: not train.busy, timeout=WAIT_MS)

    steps = max(record.iteration for record in records)
    assert 25 <= steps < 100_000  # stopped before the budget
    assert any(record.val is not None for record in records)
    model = model_store(sample_viewer).model
    assert model is not None and model.info.task == "instance"
    assert "trained on 'cells'" in segment.model_info.value
    chosen = model.info.postprocess  # tuned on validation: shown, and used by Segment
    shown = f"threshold {chosen['threshold']:g}, min size {chosen['min_size']} px, grow"
    assert f"{shown} {chosen['expand']} px" in train.metrics.value
    assert train.plot.loss_points and train.save_button.enabled
    preview = sample_viewer.layers["cells preview"]
    assert preview.data.shape == (128, 128) and preview.data.any()

    path = tmp_path / "trained.safetensors"
    monkeypatch.setattr(_dialogs, "ask_save_model", lambda parent: str(path))
    train.save_button.native.click()
    assert load_model(path).config == model.config

    run_segment(segment, qtbot)
    result = sample_viewer.layers["cells segmentation"]
    assert result.data.shape == (128, 128)
    np.testing.assert_array_equal(sample_viewer.layers["cells labels"].data, labels_before)


def test_fine_tuning_needs_a_current_model(sample_viewer, tiny_preset, notifications):
    widget = TrainWidget(sample_viewer)
    widget.start_from.value = "current model"
    widget.train()
    assert not widget.busy
    assert any("no current model" in text for _, text in notifications)


def test_several_pairs_and_a_region(sample_viewer, qtbot, tiny_preset):
    image2, labels2 = make_sample((100, 110), n_objects=8, seed=2)
    sample_viewer.add_image(image2, name="more")
    sample_viewer.add_labels(labels2, name="more labels")
    region = sample_viewer.add_shapes([np.array([[0, 0], [0, 60], [60, 60], [60, 0]])])
    widget = TrainWidget(sample_viewer)
    widget.preset.value = tiny_preset
    widget.add_pair()  # cells + cells labels
    widget.image_layer.value = sample_viewer.layers["more"]
    widget.labels_layer.value = sample_viewer.layers["more labels"]
    widget.region_layer.value = region
    widget.add_pair()
    assert len(widget.pairs) == 2 and "2 pair(s)" in widget.pairs_info.value
    masks = [pair.read()[2] for pair in widget.training_pairs()]
    assert masks[0] is None and masks[1].shape == (100, 110)
    assert masks[1][:60, :60].all() and not masks[1][70:].any()

    widget.train()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert "trained on 'cells', 'more'" in model_store(sample_viewer).source


def test_new_strokes_reach_the_engine(sample_viewer, qtbot, tiny_preset):
    """Painting while training marks the data dirty; the next refresh hands it over."""
    widget = TrainWidget(sample_viewer)
    pair = widget.current_pair()
    widget._watch([pair])
    assert widget._refresh([pair]) is None  # nothing painted yet
    labels = sample_viewer.layers["cells labels"]
    labels.paint((5, 5), 99)
    _, new_labels, _ = widget._refresh([pair])
    assert new_labels[0][5, 5] == 99
    assert widget._refresh([pair]) is None  # handed over once


#: responsiveness test: steps, validation and preview every so many steps, forced collection
STALL_STEPS, STALL_VAL_EVERY, STALL_PREVIEW_EVERY, STALL_COLLECT_AT = 60, 20, 5, 25
STALL_FLOOR_S = 0.200  # s: gaps below this never count as a stall (see the test)


@pytest.mark.parametrize("shown", [False, True], ids=["hidden", "shown"])
def test_ui_stays_responsive_while_training(
    make_napari_viewer, qtbot, tiny_preset, monkeypatch, shown
):
    """No event-loop stall between the first and the last training step.

    A gap between two ticks of a 10 ms QTimer counts for the time this process
    was computing in it: min(wall time, the process's CPU time in the gap). A
    garbage collection holding the GIL in the training thread counts in full;
    time in which the OS ran other programs (a machine loaded 4 times over its
    cores gave 350 ms gaps with no work in them) does not. A stall is a gap over
    STALL_FLOOR_S (200 ms), or over twice the 99th percentile of the gaps where
    this machine repaints more slowly than that (a loaded 2-core machine under
    Xvfb: p99 about 90 ms with the window shown). The floor is above the 115 ms
    that one preview repaint under software OpenGL took on an idle 2-core machine
    and below the stall this test exists for: a full garbage collection in the
    training thread (with the heap freeze disabled: 292/359 ms hidden/shown on a
    loaded machine, 249/274 ms on an idle Xeon, both failing the test).
    The percentile does not follow one long gap: the 300 ms collection below fails
    the test as long as p99 is under 150 ms.

    With the window shown (under Xvfb: OpenGL drawn by Mesa's software renderer)
    the canvas, dock and progress bars repaint during the run; the viewer is
    shown and given half a second to paint its first frames before training
    starts, so only the training run itself is measured. The run includes
    live-preview refreshes and validations.

    The work is fixed, not the time: 60 steps, a validation every 20 steps and a
    live preview every 5th step (the engine offers one every step; the others
    are dropped), so every machine measures the same run, however fast.

    A real run of minutes sees full garbage collections in the training thread
    (~300 ms holding the GIL in a napari process, unless the widget freezes the
    heap); a run this short may not, so the test forces one, after step 25. The
    measured span starts at the first step in the training thread, so a stall
    there is always inside it.
    """
    preview_prediction = jobs.preview_prediction
    offered: list[int] = []
    collected: list[tuple[float, float]] = []  # (start, end) of the forced collection

    def sparse_collecting_preview(*args):
        offered.append(1)  # training thread: one call per step
        if len(offered) == STALL_COLLECT_AT:
            start = time.perf_counter()
            gc.collect()
            collected.append((start, time.perf_counter()))
        if len(offered) % STALL_PREVIEW_EVERY:
            return None
        return preview_prediction(*args)

    monkeypatch.setattr(jobs, "preview_prediction", sparse_collecting_preview)
    monkeypatch.setitem(
        PRESETS, tiny_preset,
        PRESETS[tiny_preset].replace(
            iterations=STALL_STEPS, val_every=STALL_VAL_EVERY, preview_every_s=0.0
        ),
    )  # fmt: skip
    first_step = stamp_first_step(monkeypatch)
    image, labels = make_sample((128, 128), n_objects=10, seed=1)
    viewer = make_napari_viewer(show=shown)
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Train U-Net")
    widget.preset.value = tiny_preset
    qtbot.wait(500)  # first paint of the window and the dock
    ticks: list[tuple[float, float]] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(clocks()))
    received: list[tuple[float, float]] = []
    kinds: set[str] = set()
    widget.train()
    widget._worker.yielded.connect(lambda record: received.append(clocks()))
    widget._worker.yielded.connect(
        lambda record: kinds.update(k for k in ("val", "preview") if getattr(record, k))
    )
    timer.start(10)
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    timer.stop()
    assert len(received) > STALL_STEPS  # every step, and the final validation
    assert {"val", "preview"} <= kinds and collected
    begin, end = first_step[0], received[-1]
    assert begin[0] < collected[0][0] < end[0]
    during = np.array([begin, *(t for t in ticks if begin[0] < t[0] < end[0]), end])
    wall, cpu = np.diff(during, axis=0).T
    gaps = np.minimum(wall, cpu)
    longest, p99 = float(gaps.max()), float(np.percentile(gaps, 99))
    print(
        f"window {'shown' if shown else 'hidden'}: longest stall {1000 * longest:.0f} ms, "
        f"p99 {1000 * p99:.0f} ms (limit {1000 * max(STALL_FLOOR_S, 2 * p99):.0f} ms) over "
        f"{len(received)} steps in {end[0] - begin[0]:.1f} s, {len(during) - 2} ticks, "
        f"longest wall-clock gap {1000 * wall.max():.0f} ms; a full garbage collection in "
        "the training thread took "
        f"{1000 * (collected[0][1] - collected[0][0]):.0f} ms"
    )
    limit = max(STALL_FLOOR_S, 2 * p99)
    assert longest < limit, f"the UI stalled for {1000 * longest:.0f} ms"


def clocks() -> tuple[float, float]:
    """(wall-clock time, CPU time of the whole process), in seconds."""
    return time.perf_counter(), time.process_time()


def stamp_first_step(monkeypatch) -> list[tuple[float, float]]:
    """A list that receives the :func:`clocks` (training thread) at the end of the first step."""
    import napari_unet.training

    stamps: list[tuple[float, float]] = []
    train_iter = napari_unet.training.train_iter

    def stamped(*args, **kwargs):
        run = train_iter(*args, **kwargs)
        record = next(run)
        stamps.append(clocks())
        yield record
        return (yield from run)

    monkeypatch.setattr(napari_unet.training, "train_iter", stamped)
    return stamps


@pytest.mark.parametrize(
    ("make_image", "rgb", "in_channels"),
    [
        (lambda gray: np.stack([gray, gray * 0.5, 1 - gray], axis=-1), True, 3),
        (lambda gray: np.stack([gray, 1 - gray]), False, 2),
    ],
    ids=["rgb", "channels-first"],
)
def test_train_and_segment_multichannel_images(
    make_napari_viewer, qtbot, tiny_preset, monkeypatch, make_image, rgb, in_channels
):
    """Train on an RGB / multi-channel layer (live preview on), then Segment it."""
    monkeypatch.setitem(
        PRESETS, tiny_preset, PRESETS[tiny_preset].replace(iterations=30, val_every=15)
    )
    gray, labels = make_sample((96, 96), n_objects=6, seed=3)
    viewer = make_napari_viewer()
    viewer.add_image(make_image(gray).astype(np.float32), name="multi", rgb=rgb)
    viewer.add_labels(labels, name="multi labels")
    train = TrainWidget(viewer)
    train.preset.value = tiny_preset
    train.train()
    assert train.busy
    qtbot.waitUntil(lambda: not train.busy, timeout=WAIT_MS)
    model = model_store(viewer).model
    assert model is not None and model.config.in_channels == in_channels
    assert viewer.layers["multi preview"].data.shape == (96, 96)

    segment = SegmentWidget(viewer)
    run_segment(segment, qtbot)
    assert viewer.layers["multi segmentation"].data.shape == (96, 96)


def test_live_preview_of_a_semantic_model_shows_class_ids(
    sample_viewer, qtbot, tiny_preset, monkeypatch
):
    """Scribbles (1 = background, 2 = cells): the preview is a labels layer of class ids + 1."""
    cells = sample_viewer.layers["cells labels"].data
    scribbles = np.zeros_like(cells, dtype=np.int32)
    scribbles[::7] = np.where(cells[::7] > 0, 2, 1)  # every 7th row annotated
    sample_viewer.add_labels(scribbles, name="scribbles")
    preset = PRESETS[tiny_preset].replace(preview_every_s=0.0)  # every step: on any machine
    monkeypatch.setitem(PRESETS, tiny_preset, preset)
    widget = TrainWidget(sample_viewer)
    widget.preset.value = tiny_preset
    widget.labels_layer.value = sample_viewer.layers["scribbles"]
    widget.mode.value = "semantic"
    previews = []
    widget.train()
    widget._worker.yielded.connect(lambda record: previews.append(record.preview is not None))
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert any(previews)
    preview = sample_viewer.layers["cells preview"]
    assert type(preview).__name__ == "Labels"
    assert preview.data.shape == (128, 128)
    assert set(np.unique(preview.data)) <= {1, 2}  # every visible pixel gets a class
    assert model_store(sample_viewer).model.info.task == "semantic"


def test_shapes_region_on_a_stack_marks_only_its_slice(
    make_napari_viewer, qtbot, tiny_preset, monkeypatch
):
    """A rectangle drawn on slice 1 of a (Z, Y, X) stack: only that slice and region train."""
    from napari_unet.data import prepare_planes

    monkeypatch.setitem(PRESETS, tiny_preset, PRESETS[tiny_preset].replace(iterations=10))
    planes = [make_sample((80, 80), n_objects=6, seed=seed) for seed in range(3)]
    image = np.stack([plane[0] for plane in planes])
    labels = np.stack([plane[1] for plane in planes])
    viewer = make_napari_viewer()
    viewer.add_image(image, name="stack")
    viewer.add_labels(labels, name="stack labels")
    rectangle = np.array([[1, 10, 20], [1, 10, 70], [1, 60, 70], [1, 60, 20]], float)
    region = viewer.add_shapes([rectangle], shape_type="rectangle", name="annotated")
    widget = TrainWidget(viewer)
    widget.region_layer.value = region
    _, _, mask = widget.current_pair().read()
    assert mask.shape == labels.shape
    assert not mask[0].any() and not mask[2].any()
    assert mask[1, 10:60, 20:70].all() and mask[1].sum() == mask[1, 10:61, 20:71].sum()

    (plane,), _, _ = prepare_planes([image], [labels], [mask])
    assert plane.name.endswith("slice 1")
    assert (plane.weight[~mask[1]] == 0).all() and (plane.weight[mask[1]] > 0).all()

    widget.preset.value = tiny_preset
    widget.train()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert model_store(viewer).model is not None


def test_validation_text_names_the_post_processing_it_was_scored_with():
    from napari_unet.widgets.train_widget import _validation_text

    scores = {"threshold": 0.4, "expand": 8, "min_size": 20, "ap50": 0.8, "iou": 0.9,
              "rand_error": 0.05}  # fmt: skip
    assert _validation_text(scores).splitlines() == [
        "AP@0.5 0.800 · IoU 0.900 · Rand error 0.050",
        "(threshold 0.4, min size 20 px, grow 8 px)",
    ]
    assert _validation_text({"iou": 0.5, "pixel_error": 0.1}) == "IoU 0.500 · pixel error 0.100"
