"""Instance labels of blocks computed anywhere, stitched into whole-plane labels (numpy,
scipy, scikit-image; no torch).

The union-find of :mod:`napari_unet.chunked_labels`, split so that each block's part
can run on a different machine and only small summaries travel:

1. :func:`label_block` (a worker): 4-connected components of one block's foreground,
   block-local ids 1..n; its summary holds n, the objects' sizes and first pixels (raster
   index in the plane) and the ids along the block's four edges.
2. :func:`final_table` (the client): provisional ids made unique by per-block offsets,
   pairs of ids facing each other across block borders, then
   :func:`napari_unet.chunked_labels.final_ids`: objects under ``min_size`` px dropped,
   the rest numbered 1..N by first pixel, exactly as on the whole plane.
3. :func:`final_window` (a worker): a block plus a halo of ``expand`` px mapped to final
   ids and grown (the halo argument of :mod:`napari_unet.chunked_labels`).

The result equals :func:`napari_unet.postprocess.instances_from_foreground` on the whole
plane, id for id, for any block grid.

:class:`BandGrid` is the geometry: the plane's overlap tiles (:mod:`napari_unet.tiling`)
grouped into bands of whole tile rows. Tile row ``i`` has the last word on image rows
``[i S, (i + 1) S)`` (stride ``S``) in the whole-image pass, so a band computing only its
own tile rows gives exactly the pixels that pass gives there; blocks are
``band height x block width``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import expand_labels

from .chunked_labels import _facing, final_ids


@dataclass(frozen=True)
class BandGrid:
    """Bands of tile rows and the block grid of a (Y, X) plane.

    Attributes:
        height, width: plane shape, px.
        stride: tile stride (rows owned by one tile row), px.
        tile_rows, tile_cols: tiles per column and per row of the layout.
        rows_per_band: tile rows per band; the block height is ``rows_per_band * stride``.
        block_width: block width, px.
    """

    height: int
    width: int
    stride: int
    tile_rows: int
    tile_cols: int
    rows_per_band: int
    block_width: int

    @classmethod
    def of(cls, layout, block_size: int) -> BandGrid:
        """Grid for a :class:`~napari_unet.tiling.TileLayout` with blocks of about
        ``block_size`` px (height rounded to whole tile rows)."""
        stride = layout.y.stride if len(layout.y.origins) > 1 else layout.y.length
        per_band = max(1, round(block_size / stride))
        return cls(layout.y.length, layout.x.length, stride, len(layout.y.origins),
                   len(layout.x.origins), per_band, max(1, block_size))  # fmt: skip

    @property
    def block_height(self) -> int:
        return self.rows_per_band * self.stride

    @property
    def n_bands(self) -> int:
        return -(-self.tile_rows // self.rows_per_band)

    @property
    def block_shape(self) -> tuple[int, int]:
        """Chunk shape of arrays written block by block."""
        return (min(self.block_height, self.height), min(self.block_width, self.width))

    def band_rows(self, band: int) -> slice:
        """Image rows band ``band`` owns (the last band owns the rest of the plane)."""
        start = band * self.block_height
        stop = self.height if band == self.n_bands - 1 else start + self.block_height
        return slice(start, min(stop, self.height))

    def band_tiles(self, band: int) -> range:
        """Indices (raster order in the layout) of the tiles of band ``band``."""
        first = band * self.rows_per_band
        last = min(first + self.rows_per_band, self.tile_rows)
        return range(first * self.tile_cols, last * self.tile_cols)

    def blocks(self) -> list[tuple[slice, slice]]:
        """(rows, cols) of every block, raster order; blocks never straddle bands."""
        height, width = self.block_shape
        return [
            (slice(y, min(y + height, self.height)), slice(x, min(x + width, self.width)))
            for y in range(0, self.height, height)
            for x in range(0, self.width, width)
        ]

    def band_blocks(self, band: int) -> list[int]:
        """Indices into :meth:`blocks` of the blocks inside band ``band``."""
        rows = self.band_rows(band)
        return [i for i, (r, _) in enumerate(self.blocks()) if rows.start <= r.start < rows.stop]


def label_block(foreground: np.ndarray, rows: slice, cols: slice, width: int):
    """Block-local instance ids of one block and its summary.

    Args:
        foreground: (h, w) bool mask of the block at image ``rows`` x ``cols``.
        width: plane width, px (first pixels are raster indices ``y * width + x``).

    Returns:
        (ids, summary): int32 ids (h, w), 0 = background; summary: dict of ``n``,
        ``sizes`` and ``firsts`` (n,), ``top``/``bottom`` (w,) and ``left``/``right`` (h,)
        edge ids.
    """
    ids, n = ndimage.label(foreground)
    ids = ids.astype(np.int32, copy=False)
    flat = ids.ravel()
    first = np.searchsorted(np.maximum.accumulate(flat), np.arange(1, n + 1))
    fy, fx = np.divmod(first, ids.shape[1])
    summary = {
        "n": np.int64(n),
        "sizes": np.bincount(flat, minlength=n + 1)[1:].astype(np.int64),
        "firsts": ((fy + rows.start) * width + fx + cols.start).astype(np.int64),
        "top": ids[0].copy(),
        "bottom": ids[-1].copy(),
        "left": ids[:, 0].copy(),
        "right": ids[:, -1].copy(),
    }
    return ids, summary


def offsets_of(summaries: list[dict]) -> np.ndarray:
    """Provisional id offset of each block (raster order): ids ``offset + 1..offset + n``."""
    counts = np.array([int(s["n"]) for s in summaries], dtype=np.int64)
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def final_table(grid: BandGrid, summaries: list[dict], *, min_size: int, offset: int):
    """Lookup table provisional id -> final id (0: background or dropped) of a plane.

    Args:
        summaries: :func:`label_block` summaries of ``grid.blocks()``, same order.
        offset: added to every final id (ids unique across the planes of a stack).

    Returns:
        (table, offsets, n_objects).
    """
    offsets = offsets_of(summaries)
    count = int(offsets[-1] + summaries[-1]["n"])
    blocks = grid.blocks()
    starts = sorted({r.start for r, _ in blocks}), sorted({c.start for _, c in blocks})
    n_cols = len(starts[1])
    pairs = [np.zeros((0, 2), dtype=np.int64)]
    for i, s in enumerate(summaries):
        col = i % n_cols
        if col + 1 < n_cols:
            pairs.append(_facing(_global(s["right"], offsets[i]),
                                 _global(summaries[i + 1]["left"], offsets[i + 1])))  # fmt: skip
        if i + n_cols < len(summaries):
            below = summaries[i + n_cols]
            pairs.append(_facing(_global(s["bottom"], offsets[i]),
                                 _global(below["top"], offsets[i + n_cols])))  # fmt: skip
    sizes = np.concatenate([[0], *[s["sizes"] for s in summaries]]).astype(np.int64)
    firsts = np.concatenate([[0], *[s["firsts"] for s in summaries]]).astype(np.int64)
    pairs = np.concatenate(pairs)
    table = final_ids(count, sizes, firsts, pairs, min_size=min_size, offset=offset)
    n_objects = int(table.max() - offset) if table.max() > 0 else 0
    return table, offsets, n_objects


def _global(ids: np.ndarray, offset: int) -> np.ndarray:
    ids = ids.astype(np.int64)
    return np.where(ids > 0, ids + offset, 0)


def final_window(read_ids, grid: BandGrid, block: int, table, offsets, expand: int) -> np.ndarray:
    """Final ids of block ``block``, grown by ``expand`` px (a halo of ``expand`` px of the
    neighbouring blocks is read with ``read_ids(rows, cols)``, block-local ids)."""
    blocks = grid.blocks()
    rows, cols = blocks[block]
    y0, x0 = max(0, rows.start - expand), max(0, cols.start - expand)
    y1, x1 = min(grid.height, rows.stop + expand), min(grid.width, cols.stop + expand)
    window = np.zeros((y1 - y0, x1 - x0), dtype=np.int64)
    (height, width), n_cols = grid.block_shape, -(-grid.width // grid.block_shape[1])
    for by in range(y0 // height, (y1 - 1) // height + 1):
        for bx in range(x0 // width, (x1 - 1) // width + 1):
            index = by * n_cols + bx
            r, c = blocks[index]
            ry0, ry1 = max(r.start, y0), min(r.stop, y1)
            cx0, cx1 = max(c.start, x0), min(c.stop, x1)
            local = np.asarray(read_ids(slice(ry0, ry1), slice(cx0, cx1))).astype(np.int64)
            mapped = table[_global(local, offsets[index])]
            window[ry0 - y0 : ry1 - y0, cx0 - x0 : cx1 - x0] = mapped
    if expand > 0 and window.any():
        window = expand_labels(window, distance=expand)
    return window[rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0]
