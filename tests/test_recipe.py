"""The recipe chosen from the annotation: what it measures and what it picks."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import find_boundaries

from napari_unet.config import UNetConfig
from napari_unet.recipe import NEAR_PX, choose_recipe, describe_annotation
from napari_unet.sample_data import make_nuclei

CONFIG = UNetConfig(1, 2, 16, 3)


def tissue(shape=(256, 256), cells=40, seed=0) -> np.ndarray:
    """Voronoi cells filling the plane, split by 2 px background membranes (EM-like)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, shape[0], (cells, 2))
    yy, xx = np.indices(shape)
    owner = np.argmin(
        (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2, -1
    )
    labels = owner.astype(np.int32) + 1
    labels[find_boundaries(labels, mode="thick")] = 0
    return labels


def two_squares(gap: int) -> np.ndarray:
    labels = np.zeros((64, 96), np.int32)
    labels[20:40, 10:30] = 1
    labels[20:40, 30 + gap : 50 + gap] = 2
    return labels


@pytest.mark.parametrize(("gap", "touching"), [(0, 1.0), (NEAR_PX, 1.0), (NEAR_PX + 3, 0.0)])
def test_objects_count_as_touching_up_to_a_thin_gap(gap, touching):
    assert describe_annotation([two_squares(gap)]).touching == touching


def test_stats_measure_fill_size_and_count_inside_the_mask_only():
    labels = two_squares(10)
    mask = np.zeros(labels.shape, bool)
    mask[:, :32] = True  # only the first square is annotated
    stats = describe_annotation([labels], [mask])
    assert stats.objects == 1 and stats.annotated_px == mask.sum()
    assert stats.fill == pytest.approx(400 / mask.sum())
    assert stats.median_diameter == pytest.approx(np.sqrt(4 * 400 / np.pi))


def test_em_like_tissue_gets_the_dense_recipe_and_nuclei_the_sparse_one():
    dense = choose_recipe(describe_annotation([tissue(seed=s) for s in range(2)]))
    assert dense.stats.dense
    assert dense.changes == {"gap": 2, "select_by": "rand_error"}
    assert "dense tissue" in dense.summary()
    sparse = choose_recipe(describe_annotation([make_nuclei(seed=0)[1]]))
    assert not sparse.stats.dense
    assert sparse.changes == {"gap": 1, "select_by": "ap50"}


def test_tiles_grow_for_large_objects_within_the_planes():
    small = describe_annotation([make_nuclei(seed=0)[1]])
    assert "tile_size" not in choose_recipe(small, config=CONFIG, tile_size=188).changes
    large = np.zeros((600, 600), np.int32)
    large[100:220, 100:220] = 1  # 120 px across: the 100 px output of a 188 tile is too small
    stats = describe_annotation([large])
    tile = choose_recipe(stats, config=CONFIG, tile_size=188).changes["tile_size"]
    assert CONFIG.output_size(tile) >= 2 * stats.median_diameter
    assert CONFIG.output_size(tile - CONFIG.pool_factor) < 2 * stats.median_diameter
    capped = choose_recipe(stats, config=CONFIG, tile_size=188, max_tile=300).changes
    assert capped["tile_size"] <= 300 and CONFIG.is_valid_input(capped["tile_size"])


def test_width_follows_the_measured_speed_and_the_budget():
    stats = describe_annotation([make_nuclei(seed=0)[1]])
    slow = choose_recipe(stats, steps_per_s={16: 3.0, 32: 1.2}, minutes=10)
    assert slow.changes["base_channels"] == 16 and "would not get" in slow.summary()
    fast = choose_recipe(stats, steps_per_s={16: 30.0, 32: 12.0}, minutes=10)
    assert fast.changes["base_channels"] == 32 and "12.0 steps/s" in fast.summary()
