"""Border weight maps: the worked example, the plain definition, input handling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from napari_unet import weight_map, weight_map_components
from napari_unet.weights import cutoff_distance

W0, SIGMA = 10.0, 5.0
# beyond the cut-off the implementation drops a term below 1e-6 * w0; float32 output
TOLERANCE = 1e-6 * W0 + 1e-5


def plain_weight_map(labels, w0=W0, sigma=SIGMA, mask=None):
    """The definition, written plainly: one full-image distance transform per object."""
    labels = np.asarray(labels)
    foreground = labels > 0
    counted = foreground if mask is None else foreground[mask]
    n_fg = np.count_nonzero(counted)
    n_bg = counted.size - n_fg
    if n_fg and n_bg:
        w_bg, w_fg = min(n_fg, n_bg) / n_bg, min(n_fg, n_bg) / n_fg
    else:
        w_bg = w_fg = 1.0
    weight = np.where(foreground, w_fg, w_bg)
    ids = np.unique(labels[foreground])
    if len(ids) >= 2:
        distances = np.sort([ndi.distance_transform_edt(labels != i) for i in ids], axis=0)
        border = w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2))
        weight = weight + np.where(foreground, 0.0, border)
    if mask is not None:
        weight = np.where(mask, weight, 0.0)
    return weight


def plain_distances(labels):
    """d1, d2 by the definition (inf where there are fewer objects)."""
    ids = np.unique(labels[labels > 0])
    distances = [ndi.distance_transform_edt(labels != i) for i in ids]
    distances += [np.full(labels.shape, np.inf)] * 2
    distances = np.sort(distances, axis=0)
    return distances[0], distances[1]


def worked_example():
    labels = np.zeros((40, 40), np.int32)
    labels[15:25, 9:19] = 1
    labels[15:25, 21:31] = 2
    return labels


def test_worked_example_from_the_issue():
    labels = worked_example()
    w = weight_map(labels)
    assert w.dtype == np.float32 and w.shape == labels.shape
    assert w[20, 19] == pytest.approx(8.495559, abs=1e-5)
    assert w[20, 20] == pytest.approx(8.495559, abs=1e-5)
    assert w[0, 0] == pytest.approx(0.142857, abs=1e-6)
    assert np.all(w[labels > 0] == 1.0)


def test_worked_example_components():
    parts = weight_map_components(worked_example())
    assert parts.d1[20, 19] == 1 and parts.d2[20, 19] == 2
    assert parts.border[20, 19] == pytest.approx(8.352702, abs=1e-5)
    assert parts.class_weight[20, 19] == pytest.approx(1 / 7, abs=1e-7)
    assert parts.d1[20, 12] == 0 and parts.d2[20, 12] == 9  # object pixel: nearest other
    np.testing.assert_allclose(parts.total, parts.class_weight + parts.border, atol=1e-6)
    assert parts.cutoff == pytest.approx(cutoff_distance(SIGMA))


def test_matches_plain_definition_on_the_worked_example():
    labels = worked_example()
    np.testing.assert_allclose(weight_map(labels), plain_weight_map(labels), atol=TOLERANCE)


def test_zero_or_one_object_gets_class_weight_only():
    empty = np.zeros((20, 30), np.uint16)
    assert np.all(weight_map(empty) == 1.0)
    one = empty.copy()
    one[5:10, 5:25] = 7  # 100 of 600 pixels
    w = weight_map(one)
    assert np.all(w[one > 0] == 1.0)
    assert np.allclose(w[one == 0], 100 / 500)
    assert np.all(np.isinf(weight_map_components(one).d2))


def test_float_labels_with_integer_values_are_accepted():
    labels = worked_example()
    np.testing.assert_array_equal(weight_map(labels.astype(np.float32)), weight_map(labels))


def test_sparse_large_ids_give_the_same_map():
    labels = worked_example().astype(np.int64)
    relabelled = np.where(labels == 2, 2**40, labels)
    np.testing.assert_array_equal(weight_map(relabelled), weight_map(labels))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([[0.0, 1.5]]), "non-integer"),
        (np.array([[0.0, np.nan]]), "non-integer"),
        (np.array([[0, -1]]), ">= 0"),
        (np.zeros(5, int), "1D"),
        (np.zeros((2, 2, 2, 2), int), "4D"),
        (np.zeros((0, 5), int), "empty"),
        (np.array([["a", "b"]]), "integers"),
    ],
)
def test_bad_labels_give_clear_errors(labels, message):
    with pytest.raises(ValueError, match=message):
        weight_map(labels)


def test_bad_parameters_give_clear_errors():
    labels = worked_example()
    with pytest.raises(ValueError, match="mask shape"):
        weight_map(labels, mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="sigma"):
        weight_map(labels, sigma=0)
    with pytest.raises(ValueError, match="class_weights"):
        weight_map(labels, class_weights=(1.0,))


def test_explicit_class_weights_override_the_balance():
    labels = worked_example()
    parts = weight_map_components(labels, class_weights=(0.5, 2.0))
    assert np.all(parts.class_weight[labels > 0] == 2.0)
    assert np.all(parts.class_weight[labels == 0] == 0.5)
    assert parts.total[20, 19] == pytest.approx(0.5 + 8.352702, abs=1e-5)


def test_mask_counts_balance_inside_and_zeroes_outside():
    labels = worked_example()
    mask = np.zeros(labels.shape, bool)
    mask[10:30, :] = True  # 800 pixels, 200 of them foreground
    w = weight_map(labels, mask=mask)
    assert np.all(w[~mask] == 0)
    assert w[12, 0] == pytest.approx(200 / 600)
    np.testing.assert_allclose(w, plain_weight_map(labels, mask=mask), atol=TOLERANCE)


def test_stack_is_treated_slice_by_slice():
    labels = worked_example()
    other = np.zeros_like(labels)
    other[:5, :5] = 3
    stack = np.stack([labels, other, labels.T])
    w = weight_map(stack)
    assert w.shape == stack.shape
    for z in range(3):
        np.testing.assert_array_equal(w[z], weight_map(stack[z]))


def test_border_term_vanishes_beyond_the_cutoff():
    labels = np.zeros((20, 120), np.int32)
    labels[5:15, 0:10] = 1
    labels[5:15, 110:120] = 2  # 100 px apart: far beyond the cut-off
    parts = weight_map_components(labels)
    assert np.all(parts.border == 0)
    assert np.all(np.isinf(parts.d2[labels == 0]))


# ------------------------------------------------------------------ properties


@st.composite
def label_images(draw):
    """Random small instance label images: up to 8 rectangles and disks, may touch."""
    height, width = draw(st.integers(20, 60)), draw(st.integers(20, 60))
    labels = np.zeros((height, width), np.int32)
    yy, xx = np.indices(labels.shape)
    for object_id in range(1, draw(st.integers(0, 8)) + 1):
        y, x = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        size = draw(st.integers(1, 12))
        if draw(st.booleans()):
            shape = (abs(yy - y) <= size // 2) & (abs(xx - x) <= draw(st.integers(0, 8)))
        else:
            shape = (yy - y) ** 2 + (xx - x) ** 2 <= size**2 / 4
        labels[shape] = object_id
    return labels


@settings(max_examples=40, deadline=None)
@given(labels=label_images(), sigma=st.sampled_from([2.0, 5.0, 8.0]))
def test_matches_plain_definition(labels, sigma):
    parts = weight_map_components(labels, sigma=sigma)
    total = parts.total
    np.testing.assert_allclose(total, plain_weight_map(labels, sigma=sigma), atol=TOLERANCE)
    assert np.all(np.isfinite(total))
    assert total.min() >= parts.class_weight.min()
    assert np.all(parts.border[labels > 0] == 0)
    assert np.all(parts.border >= 0)


@settings(max_examples=30, deadline=None)
@given(labels=label_images(), sigma=st.sampled_from([2.0, 5.0]))
def test_components_match_plain_distances(labels, sigma):
    parts = weight_map_components(labels, sigma=sigma)
    d1, d2 = plain_distances(labels)
    np.testing.assert_allclose(parts.d1, d1, rtol=1e-6)
    within = d1 + d2 < parts.cutoff - 1e-6
    beyond = d1 + d2 > parts.cutoff + 1e-6
    np.testing.assert_allclose(parts.d2[within], d2[within], rtol=1e-6)
    assert np.all(np.isinf(parts.d2[beyond]))


def test_huge_float_and_uint64_ids_are_renumbered():
    labels = worked_example()
    as_float = np.where(labels == 2, 1e18, labels).astype(np.float64)
    as_uint64 = np.where(labels == 2, 2**63 + 5, labels).astype(np.uint64)
    np.testing.assert_array_equal(weight_map(as_float), weight_map(labels))
    np.testing.assert_array_equal(weight_map(as_uint64), weight_map(labels))


@pytest.mark.shared_data
def test_matches_plain_definition_on_real_labels(shared_data):
    tifffile = pytest.importorskip("tifffile")
    isbi = tifffile.imread(shared_data / "isbi2012/train/labels/slice00.tif")[:192, :192]
    dsb = sorted((shared_data / "dsb2018/train/labels").glob("*.tif"))[0]
    for labels in (isbi, tifffile.imread(dsb)):
        np.testing.assert_allclose(weight_map(labels), plain_weight_map(labels), atol=TOLERANCE)


def test_many_touching_objects_match_plain_definition():
    rng = np.random.default_rng(0)
    cells = rng.permutation(12 * 12) + 1  # 144 objects in a grid, shuffled ids
    labels = np.kron(cells.reshape(12, 12), np.ones((9, 9), int))  # 108 x 108, all touching
    labels[rng.random(labels.shape) < 0.15] = 0  # background speckle between them
    labels[:, ::9] = 0  # and one-pixel gaps between columns
    np.testing.assert_allclose(weight_map(labels), plain_weight_map(labels), atol=TOLERANCE)


def test_empty_mask_gives_zero_weight():
    w = weight_map(worked_example(), mask=np.zeros((40, 40), bool))
    assert np.all(w == 0)
