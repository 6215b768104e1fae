"""Overlap-tile layout of the paper (Fig. 2), numpy only.

An image of edge ``L`` is mirrored (reflect padding) by the network's context
margin ``m`` on the leading side and by whatever the last tile needs on the
trailing side. Output tiles of edge ``O`` (a valid output size) are placed on a
stride ``S`` that is a multiple of the pool factor ``P = 2**depth`` from a common
origin, so every tile sees the pooling grid exactly as one whole-image pass over
the same padded image would: the stitched result equals that pass up to float
rounding. ``O`` is 4 mod 16 at depth 4, so abutting tiles (``S = O``) would NOT be
aligned; ``S = O - O mod P`` overlaps neighbours by ``O mod P`` px instead.

Coordinates: output tile ``i`` covers image pixels ``[o_i, o_i + O)`` and reads
the padded image at ``[o_i, o_i + T)`` (``T = O + 2m``), i.e. image pixels
``[o_i - m, o_i + O + m)`` with out-of-range indices mirrored by
:func:`reflect_indices`. The padded image is never materialised: each tile reads
the bounding box of its mirrored indices, so lazy images are read tile by tile.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .config import UNetConfig


def reflect_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Image indices of positions ``start..stop-1`` of an image of ``length`` mirrored
    without repeating the edge pixel (numpy's ``"reflect"`` mode, any pad width)."""
    if length < 2:
        raise ValueError(f"cannot mirror an axis of {length} px (need at least 2)")
    period = 2 * (length - 1)
    index = np.arange(start, stop) % period
    return np.where(index >= length, period - index, index)


@dataclass(frozen=True)
class AxisTiles:
    """Tiles along one axis.

    Attributes:
        length: image edge in px.
        tile: input tile edge (a valid input size).
        output: output tile edge, ``tile - shrink``.
        stride: distance between output tile origins, a multiple of the pool factor.
        origins: output tile origins in image pixels (``0, stride, 2 stride, ...``).
        margin: context read on each side of an output tile.
    """

    length: int
    tile: int
    output: int
    stride: int
    origins: tuple[int, ...]
    margin: int

    @property
    def padded_length(self) -> int:
        """Edge of the (virtual) padded image the tiles read: a valid input size."""
        return self.origins[-1] + self.tile


def axis_tiles(length: int, tile_size: int, config: UNetConfig) -> AxisTiles:
    """Tile one axis of ``length`` px with input tiles of at most ``tile_size`` px.

    If the whole axis fits into a smaller tile, that tile is used (one tile, no
    context recomputed). ValueError for an invalid ``tile_size`` or one whose output
    is narrower than the pool factor while several tiles are needed.
    """
    if length < 1:
        raise ValueError(f"cannot tile an empty axis (length {length})")
    if not config.is_valid_input(tile_size):
        raise ValueError(f"tile size: {config._invalid_message(tile_size)}")
    margin, pool = config.context_margin, config.pool_factor
    tile = min(tile_size, config.input_size_for_output(length))
    output = config.output_size(tile)
    stride = output - output % pool
    if output >= length:
        count = 1
    elif stride == 0:
        smallest = config.input_size_for_output(pool)
        raise ValueError(
            f"tile size {tile_size} px gives {output} px output tiles, narrower than the "
            f"pooling grid of {pool} px; use a tile size of at least {smallest} px"
        )
    else:
        count = math.ceil((length - output) / stride) + 1
    origins = tuple(i * stride for i in range(count))
    return AxisTiles(length, tile, output, stride, origins, margin)


@dataclass(frozen=True)
class Tile:
    """One tile: where to read (mirrored image indices) and where to write.

    Attributes:
        rows, cols: image indices (mirrored) of the input tile, length = tile edge.
        out_rows, out_cols: image slices the output tile is written to (clipped).
        crop_rows, crop_cols: the matching slices of the network's output tile.
    """

    rows: np.ndarray
    cols: np.ndarray
    out_rows: slice
    out_cols: slice
    crop_rows: slice
    crop_cols: slice


@dataclass(frozen=True)
class TileLayout:
    """Overlap-tile layout of a 2D plane: one :class:`AxisTiles` per axis."""

    y: AxisTiles
    x: AxisTiles

    @property
    def tile_shape(self) -> tuple[int, int]:
        """Input tile (height, width); every tile of the layout has this shape."""
        return (self.y.tile, self.x.tile)

    def __len__(self) -> int:
        return len(self.y.origins) * len(self.x.origins)

    def __iter__(self) -> Iterator[Tile]:
        for oy, ox in itertools.product(self.y.origins, self.x.origins):
            rows_out, rows_crop = _clip(oy, self.y)
            cols_out, cols_crop = _clip(ox, self.x)
            yield Tile(
                rows=reflect_indices(
                    oy - self.y.margin, oy - self.y.margin + self.y.tile, self.y.length
                ),
                cols=reflect_indices(
                    ox - self.x.margin, ox - self.x.margin + self.x.tile, self.x.length
                ),
                out_rows=rows_out,
                out_cols=cols_out,
                crop_rows=rows_crop,
                crop_cols=cols_crop,
            )


def _clip(origin: int, axis: AxisTiles) -> tuple[slice, slice]:
    stop = min(origin + axis.output, axis.length)
    return slice(origin, stop), slice(0, stop - origin)


def tile_layout(shape: tuple[int, int], tile_size: int, config: UNetConfig) -> TileLayout:
    """Layout for a (Y, X) plane with input tiles of at most ``tile_size`` px per edge."""
    if len(shape) != 2:
        raise ValueError(f"tile_layout needs a 2D (Y, X) shape, got {shape}")
    return TileLayout(*(axis_tiles(int(n), tile_size, config) for n in shape))


def auto_tile_size(shape: tuple[int, int], config: UNetConfig, max_tile: int) -> int:
    """Valid tile edge <= ``max_tile`` that computes the fewest input pixels for ``shape``.

    Larger tiles recompute less mirrored context; a tile larger than an axis needs
    is shrunk to fit it, so among equal costs the smallest such tile is returned.
    """
    low = config.input_size_for_output(config.pool_factor)
    candidates = config.valid_input_sizes(low, max(max_tile, low))
    if not candidates:
        raise ValueError(f"no valid tile size up to {max_tile} px for depth {config.depth}")

    def cost(tile: int) -> tuple[int, int]:
        layout = tile_layout(shape, tile, config)
        pixels = len(layout) * layout.tile_shape[0] * layout.tile_shape[1]
        return pixels, tile

    return min(candidates, key=cost)


def read_tile(plane, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Read mirrored ``rows`` x ``cols`` of a (C, Y, X) array-like (numpy, dask, zarr).

    Only the bounding box of the indices is read from ``plane``, then gathered.
    """
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    box = np.asarray(plane[:, r0:r1, c0:c1])
    return box[:, rows - r0][:, :, cols - c0]
