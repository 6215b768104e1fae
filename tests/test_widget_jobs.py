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
    labels, probabilities, _ = drain(segment_job(model, image, probabilities=True))
    np.testing.assert_array_equal(labels, segment(model, image))
    np.testing.assert_allclose(probabilities, predict(model, image), atol=1e-6)
    alone, none, _ = drain(segment_job(model, image))
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
    with_probabilities, probabilities, _ = drain(segment_job(model, image, probabilities=True))
    alone, _, _ = drain(segment_job(model, image))
    np.testing.assert_array_equal(with_probabilities, expected)
    np.testing.assert_array_equal(alone, expected)
    assert probabilities.shape == (2, *image.shape)


def test_segment_job_with_tta_returns_the_uncertainty_of_segment():
    image = make_sample((70, 90), n_objects=6, seed=4)[0]
    model = tiny_model()
    labels, probabilities, uncertainty = drain(
        segment_job(model, image, tta="d4", uncertainty=True)
    )
    expected_labels, expected_uncertainty = segment(model, image, tta="d4", with_uncertainty=True)
    assert probabilities is None
    np.testing.assert_array_equal(labels, expected_labels)
    np.testing.assert_allclose(uncertainty, expected_uncertainty, atol=1e-6)


def test_suggest_job_ranks_windows_by_the_tta_uncertainty_outside_the_annotation():
    from napari_unet.suggest import suggest_regions
    from napari_unet.widgets.jobs import SUGGEST_TTA, suggest_job

    image = make_sample((96, 96), n_objects=8, seed=5)[0]
    annotated = np.zeros(image.shape, bool)
    annotated[:40, :40] = True
    regions, uncertainty = drain(
        suggest_job(tiny_model(), image, annotated=annotated, size=24, count=2)
    )
    _, expected = predict(tiny_model(), image, tta=SUGGEST_TTA, with_uncertainty=True)
    np.testing.assert_allclose(uncertainty, expected, atol=1e-6)
    assert regions == suggest_regions(expected, size=24, count=2, annotated=annotated)
    assert len(regions) == 2 and not any(annotated[r.slices()].any() for r in regions)
