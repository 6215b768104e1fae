"""Probabilities -> labels: instances, size filter, gap closing, semantic ids, stacks."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.postprocess import (
    instances_from_foreground,
    join_slices,
    labels_from_probabilities,
)


def two_class(foreground: np.ndarray) -> np.ndarray:
    fg = foreground.astype(np.float32) * 0.8 + 0.1
    return np.stack([1 - fg, fg])


def test_touching_objects_separated_by_a_gap_come_back_touching():
    fg = np.zeros((10, 12), dtype=bool)
    fg[2:8, 1:5] = True
    fg[2:8, 7:11] = True  # 2 px background gap (columns 5, 6)
    labels = labels_from_probabilities(two_class(fg), min_size=1, expand=1)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[4, 5] != 0 and labels[4, 6] != 0 and labels[4, 5] != labels[4, 6]
    no_growth = labels_from_probabilities(two_class(fg), min_size=1, expand=0)
    assert np.array_equal(no_growth > 0, fg)


def test_small_objects_are_dropped_and_ids_are_consecutive():
    fg = np.zeros((20, 20), dtype=bool)
    fg[1:3, 1:3] = True  # 4 px
    fg[10:15, 10:15] = True  # 25 px
    fg[1:6, 14:19] = True  # 25 px
    labels = instances_from_foreground(fg, min_size=5, expand=0)
    assert labels[1, 1] == 0
    assert sorted(np.unique(labels)) == [0, 1, 2]
    assert labels.dtype == np.int32


def test_diagonal_neighbours_are_separate_objects():
    fg = np.array([[1, 0], [0, 1]], dtype=bool)
    assert instances_from_foreground(fg, min_size=1, expand=0).max() == 2


def test_semantic_models_give_argmax_class_ids():
    probs = np.zeros((3, 2, 2), dtype=np.float32)
    probs[0, 0, 0] = probs[1, 0, 1] = probs[2, 1, 0] = probs[2, 1, 1] = 1
    assert np.array_equal(labels_from_probabilities(probs, task="semantic"), [[0, 1], [2, 2]])


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="n_classes"):
        labels_from_probabilities(np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="task"):
        labels_from_probabilities(np.zeros((2, 4, 4)), task="panoptic")


def test_join_slices_links_overlapping_objects_only():
    stack = np.zeros((3, 6, 6), dtype=np.int32)
    stack[0, 1:3, 1:3] = 1
    stack[1, 2:4, 2:4] = 2  # overlaps object 1
    stack[1, 4:6, 4:6] = 3  # new object
    stack[2, 0:2, 4:6] = 4  # no overlap with anything
    joined = join_slices(stack)
    assert joined[0, 1, 1] == joined[1, 3, 3]
    ids = {joined[0, 1, 1], joined[1, 5, 5], joined[2, 0, 5]}
    assert len(ids) == 3 and ids == {1, 2, 3}
    assert np.array_equal(joined > 0, stack > 0)


def test_threshold_half_is_the_argmax_and_others_move_the_boundary():
    rng = np.random.default_rng(0)
    p1 = rng.random((40, 40)).astype(np.float32)
    probs = np.stack([1 - p1, p1])
    argmax = labels_from_probabilities(probs, min_size=0, expand=0)
    np.testing.assert_array_equal(
        argmax, labels_from_probabilities(probs, min_size=0, expand=0, threshold=0.5)
    )
    high = labels_from_probabilities(probs, min_size=0, expand=0, threshold=0.8)
    np.testing.assert_array_equal(high > 0, p1 > 0.8)
    with pytest.raises(ValueError, match="between 0 and 1"):
        labels_from_probabilities(probs, threshold=1.0)


def test_tune_instances_finds_the_threshold_that_splits_and_the_growth_that_fills():
    """Two cells 10 px apart, their cores (eroded by 3 px) sure (0.9), joined by a
    0.65 bridge; only thresholds above 0.65 split them, and only growing by >= 3*sqrt(2)
    px gives their rims (corners included) back. Scored by minus the Rand error."""
    from napari_unet.metrics import rand_error
    from napari_unet.postprocess import tune_instances

    truth = np.zeros((40, 60), np.int32)
    truth[10:30, 5:25], truth[10:30, 35:55] = 1, 2
    foreground = np.full(truth.shape, 0.1, np.float32)
    foreground[13:27, 8:22] = foreground[13:27, 38:52] = 0.9
    foreground[18:22, 22:38] = 0.65  # the bridge

    def score(truths, preds):
        return -np.mean([rand_error(t, p) for t, p in zip(truths, preds)])

    best = tune_instances(
        [foreground], [truth], score, thresholds=(0.5, 0.6, 0.7), expands=(0, 2, 4, 5, 8)
    )
    assert (best["threshold"], best["expand"]) == (0.7, 5)  # the first of equally good
    assert best["score"] == 0.0


def test_tune_instances_finds_the_smallest_object_that_drops_fragments():
    """One 20 x 20 cell whose probability dips in a 4 px band near its edge: above
    the threshold its core (14 x 20 px) and a 4 x 4 fragment (16 px) separate. Only
    dropping objects under 20 px (of the sizes offered: 10, 20, 40) removes the false
    fragment; AP@0.5 goes from 1/2 to 1."""
    from napari_unet.metrics import average_precision
    from napari_unet.postprocess import tune_instances

    truth = np.zeros((40, 40), np.int32)
    truth[10:30, 10:30] = 1
    foreground = np.where(truth > 0, 0.9, 0.1).astype(np.float32)
    foreground[24:26, 10:30] = 0.2  # the dip: the rows below are cut off...
    foreground[26:30, 14:30] = 0.2  # ...except a 4 x 4 fragment at the left
    best = tune_instances([foreground], [truth], average_precision, thresholds=(0.5,),
                          expands=(1,), min_sizes=(10, 20, 40))  # fmt: skip
    assert best["min_size"] == 20 and best["score"] == 1.0
    assert tune_instances([foreground], [truth], average_precision, thresholds=(0.5,),
                          expands=(1,), min_sizes=(10,))["score"] == 0.5  # fmt: skip


def test_a_model_segments_with_the_settings_it_stores_and_old_models_with_10_px():
    from napari_unet.config import ModelInfo
    from napari_unet.postprocess import DEFAULT_MIN_SIZE, Postprocess

    tuned = {"threshold": 0.4, "expand": 2, "min_size": 20, "ap50": 0.8}
    chosen = Postprocess.of_tuned(tuned)
    assert chosen == Postprocess(threshold=0.4, expand=2, min_size=20)
    info = ModelInfo(postprocess=chosen.as_dict())
    assert Postprocess.of_model(info) == chosen
    assert Postprocess.of_model(info, min_size=3).min_size == 3  # a given value wins
    old = ModelInfo(postprocess={"threshold": 0.4, "expand": 2})  # saved before min_size
    assert Postprocess.of_model(old).min_size == DEFAULT_MIN_SIZE
    assert Postprocess.of_tuned({"threshold": 0.4, "expand": 2}).min_size == DEFAULT_MIN_SIZE


def test_growing_by_several_distances_at_once_equals_expand_labels():
    from skimage.segmentation import expand_labels

    from napari_unet.postprocess import grown_by_each

    labels = np.zeros((40, 50), np.int32)
    labels[5:9, 5:12], labels[20:23, 30:33], labels[30:38, 8:10] = 1, 7, 3
    distances = (0, 1, 2, 4, 8, 16)
    for grown, d in zip(grown_by_each(labels, distances), distances):
        np.testing.assert_array_equal(grown, expand_labels(labels, distance=d))
    assert all(g.dtype == labels.dtype for g in grown_by_each(labels, distances))
    empty = np.zeros((6, 6), np.int32)
    assert [g.sum() for g in grown_by_each(empty, distances)] == [0] * len(distances)


def test_without_settings_keeps_the_scores_of_a_tuned_validation():
    from napari_unet.postprocess import without_settings

    tuned = {"threshold": 0.4, "expand": 8, "ap50": 0.8, "rand_error": 0.05}
    assert without_settings(tuned) == {"ap50": 0.8, "rand_error": 0.05}
    assert without_settings({"iou": 0.5}) == {"iou": 0.5}


def test_segmenting_drops_objects_under_the_size_the_model_stores():
    """The labelling path (``Predictor.to_labels``, which ``segment`` uses) reads the
    model's stored smallest object: a 16 px speck survives 10 px and not 20 px."""
    import torch

    from napari_unet.config import UNetConfig
    from napari_unet.hardware import RunSettings
    from napari_unet.model import UNet
    from napari_unet.predictor import Predictor

    foreground = np.zeros((40, 40), np.float32)
    foreground[5:25, 5:25] = 0.9  # 400 px
    foreground[30:34, 30:34] = 0.9  # 16 px
    probs = np.stack([1 - foreground, foreground])
    model = UNet(UNetConfig(base_channels=2, depth=1))
    counts = {}
    for min_size in (10, 20):
        model.info.postprocess = {"threshold": 0.5, "expand": 0, "min_size": min_size}
        predictor = Predictor(model, torch.device("cpu"), RunSettings())
        counts[min_size] = int(predictor.to_labels(probs).max())
    assert counts == {10: 2, 20: 1}
