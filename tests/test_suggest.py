"""suggest.py: the most uncertain windows, outside the annotated area, never overlapping."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.data import region_mask
from napari_unet.suggest import suggest_regions, window_means


def test_window_means_match_a_direct_mean():
    plane = np.random.default_rng(0).random((9, 13))
    means = window_means(plane, 4)
    assert means.shape == (6, 10)
    assert means[2, 7] == pytest.approx(plane[2:6, 7:11].mean())


def test_picks_the_known_most_uncertain_window_first():
    rng = np.random.default_rng(1)
    uncertainty = rng.random((120, 90)) * 0.05
    uncertainty[70:90, 30:50] += 0.3  # the hot spot, exactly one 20 px window
    uncertainty[10:20, 10:20] += 0.3  # smaller: a quarter of a window
    best, second = suggest_regions(uncertainty, size=20, count=2)
    assert (best.z, best.top, best.left, best.size) == (None, 70, 30, 20)
    assert best.score == pytest.approx(uncertainty[70:90, 30:50].mean())
    assert second.score < best.score
    assert region_mask(uncertainty.shape, [best.corners()]).sum() == 400
    assert region_mask(uncertainty.shape, [best.corners()])[best.slices()].all()


def test_avoids_the_annotated_area_and_never_overlaps():
    uncertainty = np.zeros((100, 100))
    uncertainty[40:60, 40:60] = 1.0
    annotated = np.zeros((100, 100), bool)
    annotated[45, 45] = True  # one annotated pixel inside the hot spot
    regions = suggest_regions(uncertainty, size=16, count=6, annotated=annotated)
    covered = np.zeros((100, 100), int)
    for region in regions:
        covered[region.slices()] += 1
        assert not annotated[region.slices()].any()
    assert covered.max() == 1 and len(regions) == 6
    assert regions[0].score > 0.5  # still next to the hot spot, just not on the mark


def test_stacks_suggest_per_plane_and_return_z():
    uncertainty = np.zeros((3, 40, 50))
    uncertainty[2, 5:15, 30:40] = 1.0
    (region,) = suggest_regions(uncertainty, size=10, count=1)
    assert (region.z, region.top, region.left) == (2, 5, 30)
    assert region.corners().shape == (4, 3) and (region.corners()[:, 0] == 2).all()


def test_fewer_windows_when_everything_is_annotated_and_size_is_clipped():
    uncertainty = np.ones((30, 20))
    assert suggest_regions(uncertainty, size=10, count=3, annotated=np.ones((30, 20), bool)) == []
    (region,) = suggest_regions(uncertainty, size=64, count=2)
    assert region.size == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uncertainty": np.zeros(5), "size": 2, "count": 1}, "2D map"),
        ({"uncertainty": np.full((4, 4), np.nan), "size": 2, "count": 1}, "NaN"),
        ({"uncertainty": np.zeros((4, 4)), "size": 0, "count": 1}, "at least 1"),
        ({"uncertainty": np.zeros((4, 4)), "size": 2, "count": 1,
          "annotated": np.zeros((3, 4), bool)}, "annotated mask shape"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        suggest_regions(**kwargs)
