"""Training-data preparation: validation of pairs, targets, annotated regions, caching."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.data import (
    WeightCache,
    class_balance,
    instance_target,
    prepare_planes,
    region_mask,
    split_validation,
)


def two_touching_squares() -> np.ndarray:
    labels = np.zeros((32, 32), np.int32)
    labels[8:20, 4:16] = 1
    labels[8:20, 16:28] = 2
    return labels


def test_instance_target_separates_touching_objects_by_twice_the_gap():
    labels = two_touching_squares()
    gapped = instance_target(labels, gap=1)
    _, n = ndi.label(gapped > 0)
    assert n == 2
    assert not gapped[:, 15:17].any()  # 2 px line between the squares
    assert gapped[9:19, 5:15].all() and gapped[9:19, 17:27].all()
    assert gapped.sum() > 0 and (gapped > 0).sum() == 2 * 10 * 10


def test_region_mask_from_rectangle_and_polygon():
    rectangle = np.array([[2, 2], [2, 9], [9, 9], [9, 2]])
    triangle = np.array([[20, 20], [20, 30], [30, 20]])
    mask = region_mask((32, 32), [rectangle, triangle])
    assert mask[5, 5] and mask[21, 21] and not mask[15, 15] and not mask[29, 29]


def test_class_balance_gives_rare_class_more_weight_and_zero_outside():
    target = np.zeros((10, 10), np.uint8)
    target[:2] = 1
    valid = np.ones_like(target, bool)
    valid[-1] = False
    weight = class_balance(target, valid, 2)
    assert weight[0, 0] > weight[5, 5] > 0
    assert np.all(weight[-1] == 0)
    assert np.isclose(weight[valid].mean(), 1.0)


def test_instance_planes_weight_zero_outside_mask():
    labels = two_touching_squares()
    mask = np.zeros_like(labels, bool)
    mask[:, :20] = True
    image = labels.astype(np.float32)
    (plane,), channels, n_classes = prepare_planes([image], [labels], [mask])
    assert channels == 1 and n_classes == 2
    assert plane.image.shape == (1, 32, 32)
    assert np.all(plane.weight[:, 20:] == 0) and np.all(plane.weight[:, :20] > 0)
    assert set(np.unique(plane.target)) == {0, 1}


def test_stack_uses_only_annotated_slices_and_channels_last_images():
    labels = np.zeros((4, 32, 32), np.int32)
    labels[1] = two_touching_squares()
    labels[3, 2:6, 2:6] = 1
    image = np.random.default_rng(0).random((4, 32, 32, 3)).astype(np.float32)
    planes, channels, _ = prepare_planes([image], [labels])
    assert channels == 3 and len(planes) == 2
    assert [p.name for p in planes] == ["image 0, slice 1", "image 0, slice 3"]


def test_semantic_targets_and_classes():
    labels = np.zeros((16, 16), np.uint8)
    labels[:4] = 1  # background scribble
    labels[10:12] = 3  # class 2
    labels[6, 6] = 2
    planes, _, n_classes = prepare_planes([labels.astype(float)], [labels], mode="semantic")
    (plane,) = planes
    assert n_classes == 3
    assert np.all(plane.weight[labels == 0] == 0)
    assert np.all(plane.target[labels == 3] == 2) and np.all(plane.target[labels == 1] == 0)


@pytest.mark.parametrize(
    ("image", "labels", "mode", "message"),
    [
        (np.zeros((10, 12)), np.zeros((10, 10), int), "instance", "does not match"),
        (np.zeros((10, 10)), np.full((10, 10), 0.5), "instance", "integer"),
        (np.zeros((10, 10)), np.zeros((10, 10), int), "instance", "no object"),
        (np.zeros((10, 10)), np.ones((10, 10), int), "semantic", "two classes"),
        (np.zeros((10, 10)), -np.ones((10, 10), int), "instance", "negative"),
    ],
)
def test_bad_input_gives_one_clear_message(image, labels, mode, message):
    with pytest.raises(ValueError, match=message):
        prepare_planes([image], [labels], mode=mode)


def test_no_object_inside_annotated_region():
    labels = two_touching_squares()
    mask = np.zeros_like(labels, bool)
    mask[25:, 25:] = True
    with pytest.raises(ValueError, match="no object labelled inside the annotated region"):
        prepare_planes([labels.astype(float)], [labels], [mask])


def test_weight_cache_recomputes_only_changed_labels():
    first, second = two_touching_squares(), two_touching_squares()
    second[25:30, 2:6] = 3
    images = [first.astype(float), second.astype(float)]
    cache = WeightCache()
    prepare_planes(images, [first, second], cache=cache)
    assert cache.misses == 2
    repainted = second.copy()
    repainted[0:3, 0:3] = 4
    prepare_planes(images, [first, repainted], cache=cache)
    assert cache.misses == 3


def test_split_validation_by_planes_and_by_rows():
    labels = two_touching_squares()
    planes, _, _ = prepare_planes([labels.astype(float)] * 5, [labels] * 5)
    train, val = split_validation(planes, 0.2, np.random.default_rng(0))
    assert len(train) == 4 and len(val) == 1
    train, val = split_validation(planes, 0.6, np.random.default_rng(0), max_planes=2)
    assert len(train) == 3 and len(val) == 2
    (single,), _, _ = prepare_planes([labels.astype(float)], [labels])
    (train,), (val,) = split_validation([single], 0.25, np.random.default_rng(0))
    train_rows = np.flatnonzero((train.weight > 0).any(1))
    val_rows = np.flatnonzero((val.weight > 0).any(1))
    assert train_rows.max() < val_rows.min()
    assert np.array_equal(train.weight + val.weight, single.weight)
