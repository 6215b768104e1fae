"""Overlap-tile layout: coverage, pooling alignment, mirrored reads."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.config import UNetConfig
from napari_unet.tiling import auto_tile_size, axis_tiles, read_tile, reflect_indices, tile_layout

PAPER = UNetConfig()


@pytest.mark.parametrize("length", [2, 5, 17, 100])
@pytest.mark.parametrize("pad", [1, 7, 250])
def test_reflect_indices_match_numpy_reflect_padding(length, pad):
    values = np.arange(length)
    padded = np.pad(values, pad, mode="reflect")
    assert np.array_equal(values[reflect_indices(-pad, length + pad, length)], padded)


def test_reflect_refuses_a_one_pixel_axis():
    with pytest.raises(ValueError, match="at least 2"):
        reflect_indices(-3, 4, 1)


def test_paper_tile_uses_a_pool_aligned_stride_not_the_output_size():
    axis = axis_tiles(1000, 572, PAPER)
    assert (axis.tile, axis.output) == (572, 388)
    assert axis.stride == 384  # 388 is 4 mod 16; abutting tiles would not be aligned
    assert all(origin % PAPER.pool_factor == 0 for origin in axis.origins)
    assert PAPER.is_valid_input(axis.padded_length)


@pytest.mark.parametrize("length", [2, 3, 100, 388, 389, 777, 1024, 2049])
@pytest.mark.parametrize("tile", [236, 572, 1052])
def test_tiles_cover_every_pixel_exactly_as_needed(length, tile):
    axis = axis_tiles(length, tile, PAPER)
    covered = np.zeros(length, dtype=bool)
    for origin in axis.origins:
        covered[origin : origin + axis.output] = True
    assert covered.all()
    assert axis.origins[-1] < length  # no tile is wasted beyond the image
    assert axis.tile <= tile and PAPER.is_valid_input(axis.tile)


def test_a_short_axis_gets_one_smaller_tile():
    axis = axis_tiles(100, 1052, PAPER)
    assert len(axis.origins) == 1
    assert axis.tile == PAPER.input_size_for_output(100)


def test_invalid_or_too_small_tile_sizes_are_refused():
    with pytest.raises(ValueError, match="not valid"):
        axis_tiles(1000, 500, PAPER)
    with pytest.raises(ValueError, match="pooling grid"):
        axis_tiles(1000, 188, PAPER)  # 4 px output tiles cannot step by 16 px


def test_layout_writes_every_pixel_from_a_tile_of_one_shape():
    layout = tile_layout((300, 500), 252, PAPER)
    hits = np.zeros((300, 500), dtype=int)
    for tile in layout:
        assert (len(tile.rows), len(tile.cols)) == layout.tile_shape
        hits[tile.out_rows, tile.out_cols] += 1
        assert (
            tile.crop_rows.stop - tile.crop_rows.start == tile.out_rows.stop - tile.out_rows.start
        )
    assert hits.min() >= 1
    assert len(layout) == len(list(layout))


def test_read_tile_equals_slicing_the_reflect_padded_image():
    rng = np.random.default_rng(1)
    image = rng.random((2, 40, 30))
    config = UNetConfig(depth=2, base_channels=4)
    margin = config.context_margin
    layout = tile_layout((40, 30), 44, config)
    padded = np.pad(image, ((0, 0), (margin, 200), (margin, 200)), mode="reflect")
    for tile in layout:
        oy, ox = tile.out_rows.start, tile.out_cols.start
        expected = padded[:, oy : oy + layout.y.tile, ox : ox + layout.x.tile]
        assert np.array_equal(read_tile(image, tile.rows, tile.cols), expected)


def test_auto_tile_prefers_one_tile_when_the_image_fits():
    assert auto_tile_size((1024, 1024), PAPER, 1212) == 1212
    assert auto_tile_size((300, 200), PAPER, 1212) == PAPER.input_size_for_output(300)
    big = auto_tile_size((4096, 4096), PAPER, 1052)
    assert PAPER.is_valid_input(big) and big <= 1052
