"""Segmentation metrics on hand-made label images whose answers follow from the definitions."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import adapted_rand_error

from napari_unet.metrics import (
    average_precision,
    foreground_iou,
    instance_counts,
    match_instances,
    pixel_error,
    rand_error,
)


def squares(shape=(40, 40), boxes=((2, 2, 10), (20, 5, 10), (5, 25, 12)), labels=None):
    """Label image with square objects (row, col, edge) labelled 1.. (or ``labels``)."""
    image = np.zeros(shape, dtype=np.int32)
    for value, (r, c, edge) in zip(labels or range(1, len(boxes) + 1), boxes):
        image[r : r + edge, c : c + edge] = value
    return image


def test_identical_labels_are_perfect():
    gt = squares()
    assert instance_counts(gt, gt) == (3, 0, 0)
    assert average_precision(gt, gt) == 1.0
    assert foreground_iou(gt, gt) == 1.0
    assert rand_error(gt, gt) == 0.0
    assert pixel_error(gt, gt) == 0.0


def test_label_values_do_not_matter():
    gt = squares()
    pred = squares(labels=[70_000, 5, 2**31 - 1])  # large ids: the sorting path
    m = match_instances(gt, pred)
    assert m.tp == 3
    assert sorted(zip(m.gt_ids.tolist(), m.pred_ids.tolist())) == [
        (1, 70_000),
        (2, 5),
        (3, 2**31 - 1),
    ]
    assert np.allclose(m.ious, 1.0)
    assert rand_error(gt, pred) == 0.0


def test_shift_below_and_above_the_threshold():
    gt = squares(boxes=((5, 5, 10),))
    # shift by 2 columns: overlap 10*8 = 80, union 120 -> IoU 2/3
    small = squares(boxes=((5, 7, 10),))
    # shift by 4 columns: overlap 60, union 140 -> IoU 3/7 < 0.5
    large = squares(boxes=((5, 9, 10),))
    assert match_instances(gt, small).ious == pytest.approx([2 / 3])
    assert instance_counts(gt, small) == (1, 0, 0)
    assert instance_counts(gt, small, iou=0.7) == (0, 1, 1)
    assert instance_counts(gt, large) == (0, 1, 1)
    assert instance_counts(gt, large, iou=0.4) == (1, 0, 0)
    assert average_precision(gt, large) == 0.0
    assert foreground_iou(gt, small) == pytest.approx(80 / 120)
    assert pixel_error(gt, small) == pytest.approx(40 / gt.size)


def test_threshold_is_inclusive():
    gt = np.array([[1, 1, 1, 1]])
    pred = np.array([[1, 1, 0, 0]])  # IoU exactly 0.5
    assert instance_counts(gt, pred, iou=0.5) == (1, 0, 0)


def test_split_object():
    gt = np.zeros((10, 20), int)
    gt[:, :] = 1
    pred = np.zeros_like(gt)
    pred[:, :10], pred[:, 10:] = 1, 2  # each half has IoU 0.5 with the object
    assert instance_counts(gt, pred, iou=0.5) == (1, 1, 0)
    assert instance_counts(gt, pred, iou=0.6) == (0, 2, 1)
    # adapted Rand F = 2 * both / (in_gt + in_pred), counting ordered pairs of distinct
    # pixels that lie in one object of both / of the ground truth / of the prediction
    both, in_gt, in_pred = 2 * 100 * 99, 200 * 199, 2 * 100 * 99
    assert rand_error(gt, pred) == pytest.approx(1 - 2 * both / (in_gt + in_pred))
    assert pixel_error(gt, pred) == 0.0


def test_merged_objects():
    gt = np.zeros((10, 20), int)
    gt[:, :10], gt[:, 10:] = 1, 2
    pred = np.ones_like(gt)
    assert instance_counts(gt, pred) == (1, 0, 1)
    assert average_precision(gt, pred) == pytest.approx(1 / 2)
    both, in_gt, in_pred = 2 * 100 * 99, 2 * 100 * 99, 200 * 199  # see test_split_object
    assert rand_error(gt, pred) == pytest.approx(1 - 2 * both / (in_gt + in_pred))
    assert foreground_iou(gt, pred) == 1.0


def test_missed_and_spurious_objects():
    gt = squares()
    pred = squares(boxes=((2, 2, 10), (20, 5, 10), (30, 30, 5)))
    assert instance_counts(gt, pred) == (2, 1, 1)
    assert average_precision(gt, pred) == pytest.approx(2 / 4)


def test_hungarian_matching_beats_greedy():
    # candidates at IoU >= 0.2: A-X 0.5, A-Y 0.3, B-X 4/17. Greedy (best IoU first)
    # takes A-X and leaves B and Y unmatched; the optimal matching is A-Y and B-X.
    gt = np.zeros((1, 20), int)
    gt[0, :10], gt[0, 10:] = 1, 2  # A, B
    pred = np.zeros_like(gt)
    pred[0, 3:14], pred[0, :3] = 1, 2  # X, Y
    m = match_instances(gt, pred, iou=0.2)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert dict(zip(m.gt_ids.tolist(), m.pred_ids.tolist())) == {1: 2, 2: 1}


def test_empty_images():
    empty = np.zeros((8, 8), int)
    one = squares((8, 8), boxes=((1, 1, 4),))
    assert instance_counts(empty, empty) == (0, 0, 0)
    assert average_precision(empty, empty) == 1.0
    assert instance_counts(empty, one) == (0, 1, 0)
    assert instance_counts(one, empty) == (0, 0, 1)
    assert average_precision(one, empty) == 0.0
    assert foreground_iou(empty, empty) == 1.0
    assert foreground_iou(one, empty) == 0.0
    assert rand_error(empty, one) == 0.0  # nothing annotated to evaluate
    assert pixel_error(one, empty) == pytest.approx(16 / 64)


def test_average_precision_sums_counts_over_images():
    gt = squares()
    half = squares(boxes=((2, 2, 10),))
    # image 1: 3 TP; image 2: 1 TP, 2 FN -> 4 / (4 + 0 + 2), not the mean of 1 and 1/3
    assert average_precision([gt, gt], [gt, half]) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="2 ground-truth images but 1"):
        average_precision([gt, gt], [gt])


def test_rand_error_ignores_gt_background_and_scores_predicted_background():
    gt = np.zeros((10, 20), int)
    gt[:, 2:8], gt[:, 12:18] = 1, 2
    pred = np.zeros_like(gt)
    pred[:, :10], pred[:, 10:] = 1, 2  # objects grown into the gt background
    assert rand_error(gt, pred) == 0.0
    thin = gt.copy()
    thin[:, 2], thin[:, 17] = 0, 0
    # plain scikit-image (the default): the 20 predicted background pixels form one
    # segment spanning both objects; both = 2 * 50 * 49 + 2 * 10 * 9,
    # in_pred = 2 * 50 * 49 + 20 * 19, in_gt = 2 * 60 * 59
    assert rand_error(gt, thin) == pytest.approx(1 - 2 * 5080 / (5280 + 7080))
    assert rand_error(gt, thin) == pytest.approx(adapted_rand_error(gt, thin)[0])
    # SNEMI3D: predicted background pixels are singletons, in no pair:
    # both = in_pred = 2 * 50 * 49
    singletons = rand_error(gt, thin, background_singletons=True)
    assert singletons == pytest.approx(1 - 2 * 4900 / (4900 + 7080))
    # one merged object costs more: in_pred = 100 * 99
    merged = rand_error(gt, (thin > 0).astype(int), background_singletons=True)
    assert merged == pytest.approx(1 - 2 * 4900 / (9900 + 7080))


def test_works_in_3d_and_with_bool_masks():
    gt = np.zeros((4, 10, 10), int)
    gt[1:3, 2:6, 2:6] = 1
    assert instance_counts(gt, gt) == (1, 0, 0)
    assert foreground_iou(gt > 0, gt > 0) == 1.0


@pytest.mark.parametrize(
    "gt, pred, message",
    [
        (np.zeros((4, 4), int), np.zeros((4, 5), int), "differ in shape"),
        (np.zeros((4, 4)), np.zeros((4, 4), int), "integer label image"),
        (np.full((4, 4), -1), np.zeros((4, 4), int), "negative"),
    ],
)
def test_bad_input_is_a_clear_error(gt, pred, message):
    with pytest.raises(ValueError, match=message):
        instance_counts(gt, pred)


def test_bad_threshold():
    with pytest.raises(ValueError, match="IoU threshold"):
        instance_counts(np.zeros((2, 2), int), np.zeros((2, 2), int), iou=0.0)


def test_many_objects_match_fast():
    import time

    gt = np.zeros((1024, 1024), np.int32)
    edges = np.arange(0, 1024, 16)
    for k, (r, c) in enumerate(np.array(np.meshgrid(edges, edges)).reshape(2, -1).T, 1):
        gt[r + 2 : r + 14, c + 2 : c + 14] = k
    pred = np.roll(gt, 1, axis=1)  # IoU 11*12 / (13*12) = 11/13 for every object
    start = time.perf_counter()
    m = match_instances(gt, pred)
    assert time.perf_counter() - start < 5  # seconds, generous for a shared machine
    assert m.tp == len(edges) ** 2 == 4096
    assert m.ious == pytest.approx(np.full(4096, 11 / 13))


def test_bootstrap_win_rate_says_how_often_a_lead_survives_resampling_the_images():
    from napari_unet.metrics import bootstrap_win_rate, image_parts

    truths = [squares() for _ in range(10)]
    spurious = squares(boxes=((2, 2, 10), (20, 5, 10), (5, 25, 12), (30, 30, 5)))
    everywhere = [spurious] * 10  # one false object on every image
    once = [spurious, *truths[1:]]  # ... on the first image only

    def rate(metric, candidate, incumbent):
        parts = [image_parts(metric, truths, labels) for labels in (candidate, incumbent)]
        return bootstrap_win_rate(metric, *parts)

    assert rate("ap50", truths, everywhere) == 1.0
    assert rate("ap50", everywhere, truths) == 0.0
    assert rate("ap50", truths, truths) == 0.0  # a tie is not a win
    # ahead only where the resample draws image 0: 1 - 0.9**10 = 0.65 of them
    assert rate("ap50", truths, once) == pytest.approx(1 - 0.9**10, abs=0.03)
    merged = [np.where(t > 0, 1, 0) for t in truths]  # lower Rand error wins
    assert rate("rand_error", truths, merged) == 1.0
    assert rate("rand_error", merged, truths) == 0.0
    with pytest.raises(ValueError, match="metric must be"):
        image_parts("iou", truths, truths)
