"""Train widget: "Suggest where to annotate" adds the most uncertain regions as rectangles."""

from __future__ import annotations

import numpy as np
import torch

from napari_unet.config import UNetConfig
from napari_unet.inference import predict
from napari_unet.model import UNet
from napari_unet.sample_data import make_sample
from napari_unet.suggest import suggest_regions
from napari_unet.widgets.jobs import SUGGEST_TTA
from napari_unet.widgets.model_store import model_store
from napari_unet.widgets.train_widget import TrainWidget

WAIT_MS = 120_000


def test_suggest_button_adds_rectangles_outside_the_annotation(make_napari_viewer, qtbot):
    image, labels = make_sample((128, 140), n_objects=10, seed=2)
    labels[:, 60:] = 0  # only the left part is annotated
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=2))
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    region = viewer.add_shapes([np.array([[0, 0], [0, 60], [128, 60], [128, 0]])], name="done")
    model_store(viewer).set(model, "test")
    widget = TrainWidget(viewer)
    widget.region_layer.value = region
    widget.suggester.size.value = 32
    widget.suggester.count.value = 2
    for _ in range(2):  # a second run replaces the layer
        widget.suggester.suggest()
        qtbot.waitUntil(lambda: not widget.suggester.busy, timeout=WAIT_MS)
    names = [layer.name for layer in viewer.layers]
    assert names.count("cells suggested regions") == 1, names
    shapes = viewer.layers["cells suggested regions"]
    assert list(shapes.shape_type) == ["rectangle", "rectangle"]
    _, uncertainty = predict(model, image, tta=SUGGEST_TTA, with_uncertainty=True)
    annotated = np.zeros(image.shape, bool)
    annotated[:, :61] = True  # the region's rectangle, as the Train widget masks it
    expected = suggest_regions(uncertainty, size=32, count=2, annotated=annotated | (labels > 0))
    for drawn, region_ in zip(shapes.data, expected):
        np.testing.assert_allclose(drawn, region_.corners())
        assert region_.left > 60  # outside the annotated part
    assert "cells uncertainty" in viewer.layers
    assert "2 region(s)" in widget.suggester.status.value
    np.testing.assert_array_equal(viewer.layers["cells labels"].data, labels)  # untouched


def test_suggest_without_a_model_is_a_clear_error(make_napari_viewer, monkeypatch):
    from napari_unet.widgets import suggest_panel

    errors = []
    monkeypatch.setattr(suggest_panel, "show_error", errors.append)
    image, labels = make_sample((64, 64), n_objects=4, seed=1)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="cells")
    viewer.add_labels(labels, name="cells labels")
    widget = TrainWidget(viewer)
    widget.suggester.suggest()
    assert errors == ["no model yet: train one first (or load one in Segment)"]
    assert not widget.suggester.busy
