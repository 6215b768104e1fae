"""Block labels stitched from summaries equal whole-plane instance labels, id for id."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_unet.block_labels import BandGrid, final_table, final_window, label_block
from napari_unet.postprocess import instances_from_foreground


def stitched(mask: np.ndarray, grid: BandGrid, *, min_size: int, expand: int, offset: int = 0):
    """Label every block on its own, stitch on the 'client', write every block."""
    blocks = grid.blocks()
    ids = np.zeros(mask.shape, dtype=np.int32)
    summaries = []
    for rows, cols in blocks:
        ids[rows, cols], summary = label_block(mask[rows, cols], rows, cols, mask.shape[1])
        summaries.append(summary)
    table, offsets, count = final_table(grid, summaries, min_size=min_size, offset=offset)
    out = np.zeros(mask.shape, dtype=np.int64)
    for index, (rows, cols) in enumerate(blocks):
        read = lambda r, c: ids[r, c]  # noqa: E731
        out[rows, cols] = final_window(read, grid, index, table, offsets, expand)
    return out, count


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("height", "width", "block_rows", "block_width"),
                         [(97, 83, 2, 16), (64, 64, 1, 7), (50, 120, 3, 200)])  # fmt: skip
def test_stitched_blocks_equal_whole_plane(seed, height, width, block_rows, block_width):
    rng = np.random.default_rng(seed)
    smooth = ndimage.gaussian_filter(rng.random((height, width)), 1.5)
    mask = smooth > np.quantile(smooth, rng.uniform(0.5, 0.65))  # below percolation
    grid = BandGrid(height, width, stride=8, tile_rows=-(-height // 8), tile_cols=1,
                    rows_per_band=block_rows, block_width=block_width)  # fmt: skip
    for min_size, expand in ((0, 0), (5, 1), (12, 3)):
        expected = instances_from_foreground(mask, min_size=min_size, expand=expand)
        assert expected.max() >= 5
        labels, count = stitched(mask, grid, min_size=min_size, expand=expand)
        assert count == expected.max()
        assert np.array_equal(labels, expected)


def test_offset_shifts_ids_and_empty_masks_have_none():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:15, 30:35] = mask[20:30, 2:8] = True
    grid = BandGrid(40, 40, stride=4, tile_rows=10, tile_cols=1, rows_per_band=2, block_width=9)
    labels, count = stitched(mask, grid, min_size=1, expand=0, offset=100)
    assert count == 2 and set(np.unique(labels)) == {0, 101, 102}
    assert labels[5, 30] == 101  # ids in raster order of first pixels
    empty, count = stitched(np.zeros_like(mask), grid, min_size=1, expand=2)
    assert count == 0 and not empty.any()
