"""The Segment widget labels as ``segment()`` does, through the one prediction path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.config import UNetConfig
from napari_unet.inference import predict, segment
from napari_unet.model import UNet
from napari_unet.sample_data import make_sample
from napari_unet.widgets.model_store import model_store
from napari_unet.widgets.segment_widget import SegmentWidget

WAIT_MS = 120_000


def model_with_stored_postprocessing() -> UNet:
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=2))
    # a threshold inside the range of its foreground probabilities: not the default 0.5
    probabilities = predict(model, make_sample((96, 110), n_objects=8, seed=3)[0])[1]
    model.info.postprocess = {"threshold": float(np.quantile(probabilities, 0.6)), "expand": 3}
    return model


@pytest.mark.parametrize("probabilities", [False, True], ids=["labels", "with-probabilities"])
def test_segment_widget_labels_equal_segment(make_napari_viewer, qtbot, probabilities):
    image = make_sample((96, 110), n_objects=8, seed=3)[0]
    model = model_with_stored_postprocessing()
    expected = segment(model, image)
    assert not np.array_equal(expected, segment(model, image, threshold=0.5, expand=1))
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    model_store(viewer).set(model, "test")
    widget = SegmentWidget(viewer)
    widget.show_probabilities.value = probabilities
    widget.segment()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    np.testing.assert_array_equal(viewer.layers["cells segmentation"].data, expected)
    assert ("cells p(foreground)" in viewer.layers) == probabilities


def test_segment_widget_shows_the_settings_measured_for_this_machine(make_napari_viewer, qtbot):
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=3, depth=2))  # a size nothing else measured
    viewer = make_napari_viewer()
    viewer.add_image(make_sample((64, 64), seed=1)[0], name="cells")
    widget = SegmentWidget(viewer)
    assert "runs on cpu" in widget.run_info.value
    model_store(viewer).set(model, "test")
    assert "measured at the first run" in widget.run_info.value
    widget.segment()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    assert "Mpx/s" in widget.run_info.value and "tiles ≤" in widget.run_info.value


def test_tta_choice_adds_the_uncertainty_layer_and_rerun_replaces_it(make_napari_viewer, qtbot):
    image = make_sample((96, 110), n_objects=8, seed=3)[0]
    model = model_with_stored_postprocessing()
    labels, uncertainty = segment(model, image, tta="d4", with_uncertainty=True)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    mine = viewer.add_image(np.ones_like(image, dtype=np.float32), name="my notes")
    model_store(viewer).set(model, "test")
    widget = SegmentWidget(viewer)
    assert not widget.tta.show_uncertainty.enabled  # no uncertainty without TTA
    widget.tta.mode.value = "d4"
    assert (
        widget.tta.show_uncertainty.enabled and "8x slower" in widget.tta.mode.native.currentText()
    )
    for _ in range(2):
        widget.segment()
        qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    names = [layer.name for layer in viewer.layers]
    assert names.count("cells uncertainty") == 1, names
    shown = viewer.layers["cells uncertainty"]
    np.testing.assert_allclose(shown.data, uncertainty, atol=1e-6)
    assert shown.colormap.name == "magma"
    np.testing.assert_array_equal(viewer.layers["cells segmentation"].data, labels)
    assert names[-1] == "cells segmentation"  # the labels stay on top
    np.testing.assert_array_equal(mine.data, 1)
    widget.tta.mode.value = "none"
    widget.segment()
    qtbot.waitUntil(lambda: not widget.busy, timeout=WAIT_MS)
    np.testing.assert_array_equal(viewer.layers["cells segmentation"].data, segment(model, image))
