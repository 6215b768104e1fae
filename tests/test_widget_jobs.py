"""The widgets' jobs run plainly (no Qt): weight maps, segmentation, live preview."""

from __future__ import annotations

import numpy as np
import torch

from napari_unet.config import UNetConfig
from napari_unet.inference import predict, segment
from napari_unet.model import UNet
from napari_unet.progress import collect, drain
from napari_unet.sample_data import make_sample
from napari_unet.weights import weight_map
from napari_unet.widgets.jobs import (
    MAX_PREVIEW_EDGE,
    PreviewSource,
    preview_prediction,
    segment_job,
    weight_map_job,
)


def tiny_model() -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(base_channels=4, depth=2))


def test_weight_map_job_treats_a_stack_slice_by_slice():
    stack = np.stack([make_sample((64, 64), n_objects=6, seed=s)[1] for s in (1, 2)])
    job = weight_map_job(stack, w0=10, sigma=5, components=True)
    progress, maps = collect(job)
    assert progress[-1] == (2, 2)
    for z in range(2):
        np.testing.assert_allclose(maps["weight"][z], weight_map(stack[z]), rtol=1e-6)
    np.testing.assert_allclose(maps["w_c"] + maps["border"], maps["weight"], rtol=1e-6)
    assert np.isfinite(maps["d1+d2"]).all()  # capped, not inf, so it can be shown


def test_segment_job_with_probabilities_matches_segment():
    image = np.stack([make_sample((80, 90), n_objects=6, seed=s)[0] for s in (1, 2)])
    model = tiny_model()
    labels, probabilities = drain(segment_job(model, image, probabilities=True))
    np.testing.assert_array_equal(labels, segment(model, image))
    np.testing.assert_allclose(probabilities, predict(model, image), atol=1e-6)
    alone, none = drain(segment_job(model, image))
    assert none is None
    np.testing.assert_array_equal(alone, labels)


def test_preview_predicts_the_visible_part_of_the_current_slice():
    image = np.random.default_rng(0).random((3, 2, 100, 120), np.float32)  # (Z, C, Y, X)
    model = UNet(UNetConfig(in_channels=2, base_channels=4, depth=2))
    source = PreviewSource(image, 1, (0, 2, 3), lambda: (2, slice(10, 60), slice(0, 120)))
    values, origin = preview_prediction(model, source)
    assert origin == (2, 10, 0) and values.shape == (50, 120)
    expected = predict(model, image[2, :, 10:60, :], channel_axis=0)[1]
    np.testing.assert_allclose(values, expected, atol=1e-6)


def test_preview_is_limited_in_size_and_skipped_without_a_region():
    image = np.zeros((10, 2000), np.float32)
    source = PreviewSource(image, None, (0, 1), lambda: (None, slice(0, 10), slice(0, 2000)))
    values, origin = preview_prediction(tiny_model(), source)
    assert values.shape == (10, MAX_PREVIEW_EDGE) and origin[2] == (2000 - MAX_PREVIEW_EDGE) // 2
    nothing = PreviewSource(image, None, (0, 1), lambda: None)
    assert preview_prediction(tiny_model(), nothing) is None


def test_segment_job_uses_the_models_stored_postprocessing_with_and_without_probabilities():
    """The Segment widget's job labels as ``segment()`` does, with the threshold and growth
    training stored in the model (not the defaults), whether probabilities are kept or not."""
    image = np.stack([make_sample((80, 90), n_objects=6, seed=s)[0] for s in (1, 2)])
    model = tiny_model()
    threshold = float(np.quantile(predict(model, image)[1], 0.6))  # not the default 0.5
    model.info.postprocess = {"threshold": threshold, "expand": 3}
    expected = segment(model, image)
    assert not np.array_equal(expected, segment(model, image, threshold=0.5, expand=1))
    with_probabilities, probabilities = drain(segment_job(model, image, probabilities=True))
    alone, _ = drain(segment_job(model, image))
    np.testing.assert_array_equal(with_probabilities, expected)
    np.testing.assert_array_equal(alone, expected)
    assert probabilities.shape == (2, *image.shape)
