"""Instance labels of a 2D foreground mask larger than memory, block by block (numpy,
scipy, scikit-image; no torch).

:func:`instances_from_foreground_iter` gives the same labels, id for id, as
:func:`napari_unet.postprocess.instances_from_foreground` on the whole plane
(4-connected components, objects under ``min_size`` px dropped, ids 1..N in raster order
of each object's first pixel, grown by ``expand`` px), reading the mask and writing the
labels one block at a time. Memory: O(block² + objects + plane width), never the plane.

1. **Label pass.** Each block is labelled on its own (``scipy.ndimage.label``, 4-connected)
   with provisional ids unique across the plane, written to a scratch array (a zarr
   store in a temporary folder). Per provisional id: its size and its first pixel in
   raster order; per block border: the pairs of ids facing each other across it.
2. **Merge.** Connected components of the graph of facing pairs
   (``scipy.sparse.csgraph``) are the objects; their sizes are summed, small ones
   dropped, the rest numbered 1..N by first pixel: a lookup table provisional -> final.
3. **Write pass.** Each block plus a halo of ``expand`` px is read from the scratch
   array, mapped through the table, grown with ``skimage.segmentation.expand_labels`` and
   cropped to the block.

The halo makes the growth exact: a pixel takes the id of its nearest object pixel when
that one is at most ``expand`` px away, and every object pixel that close lies within
``expand`` px along each axis, so inside the window. Between equidistant objects
scipy's feature transform (Maurer's algorithm, behind ``expand_labels``) keeps every
site that is nearest somewhere and takes the first of equals along each axis, so pixels
further away do not change which one wins: ties go the same way as on the whole plane.
The tests check this on random masks full of ties.
"""

from __future__ import annotations

import tempfile
from collections.abc import Generator

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.segmentation import expand_labels

from .postprocess import DEFAULT_EXPAND, DEFAULT_MIN_SIZE
from .progress import drain

DEFAULT_BLOCK_SIZE = 1024  # px; ~40 MiB of working memory per block with a small halo

Progress = Generator[tuple[int, int], None, int]


class PlaneView:
    """One plane ``array[index]`` of a stack, read and written lazily (``zarr[z]`` would
    read the whole plane): ``view[rows, cols]`` is ``array[index, rows, cols]``."""

    def __init__(self, array, index: int) -> None:
        self.array, self.index = array, index
        self.shape = tuple(array.shape[1:])
        self.dtype = np.dtype(array.dtype)

    def __getitem__(self, key):
        return self.array[(self.index, *_as_tuple(key))]

    def __setitem__(self, key, value) -> None:
        self.array[(self.index, *_as_tuple(key))] = value


def _as_tuple(key) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def block_slices(shape: tuple[int, int], block_size: int) -> list[tuple[slice, slice]]:
    """Row-major (rows, cols) slices of the blocks covering ``shape``; edge blocks are
    cut to the plane."""
    height, width = shape
    return [
        (slice(y, min(y + block_size, height)), slice(x, min(x + block_size, width)))
        for y in range(0, height, block_size)
        for x in range(0, width, block_size)
    ]


def label_steps(shape: tuple[int, int], block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Progress steps of :func:`instances_from_foreground_iter`: two per block."""
    return 2 * len(block_slices(shape, block_size))


def instances_from_foreground_iter(
    foreground,
    out,
    *,
    min_size: int = DEFAULT_MIN_SIZE,
    expand: int = DEFAULT_EXPAND,
    block_size: int = DEFAULT_BLOCK_SIZE,
    offset: int = 0,
    scratch=None,
) -> Progress:
    """Write instance labels of a 2D mask into ``out`` block by block.

    Args:
        foreground: (Y, X) array-like with numpy slicing (zarr, dask, memmap, numpy);
            nonzero = foreground.
        out: (Y, X) integer array-like that supports slice assignment; every pixel is
            written (0 = background).
        min_size: objects with fewer foreground px are dropped.
        expand: px each object grows into the background without merging (0: none).
        block_size: edge of the blocks read, labelled and written, px.
        offset: added to every object id (ids offset+1..offset+N), e.g. to keep ids
            unique across the planes of a stack.
        scratch: (Y, X) int array for the provisional ids (int64 if the plane has 2**31
            px or more); None: a zarr store in a temporary folder, removed afterwards.

    Yields:
        (done, total) blocks, two passes: total = :func:`label_steps`.

    Returns:
        N, the number of objects written.
    """
    shape = tuple(foreground.shape)
    if len(shape) != 2:
        raise ValueError(f"expected a 2D foreground mask, got shape {shape}")
    if tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {shape}")
    if min_size < 0 or expand < 0:
        raise ValueError(f"min_size and expand must be >= 0, got {min_size} and {expand}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if not np.issubdtype(np.dtype(out.dtype), np.integer):
        raise ValueError(f"out must have an integer dtype, got {out.dtype}")
    id_dtype = np.int32 if shape[0] * shape[1] < 2**31 else np.int64
    with tempfile.TemporaryDirectory(prefix="napari-unet-labels-") as folder:
        if scratch is None:
            import zarr

            chunks = (min(block_size, shape[0]), min(block_size, shape[1]))
            scratch = zarr.create_array(
                store=folder, shape=shape, chunks=chunks, dtype=id_dtype, fill_value=0
            )
        elif tuple(scratch.shape) != shape:
            raise ValueError(f"scratch has shape {tuple(scratch.shape)}, expected {shape}")
        blocks = block_slices(shape, block_size)
        total = 2 * len(blocks)
        yield 0, total
        parts = yield from _label_pass(foreground, scratch, blocks, total, id_dtype)
        table = final_ids(*parts, min_size=min_size, offset=offset)
        n_objects = int(table.max() - offset) if table.max() > 0 else 0
        if n_objects and table.max() > np.iinfo(np.dtype(out.dtype)).max:
            raise ValueError(
                f"object ids up to {table.max()} do not fit into out's dtype {out.dtype}"
            )
        yield from _write_pass(scratch, out, table, blocks, expand, len(blocks), total)
    return n_objects


def _label_pass(foreground, scratch, blocks, total: int, id_dtype):
    """Provisional ids per block, written to ``scratch``; yields progress, returns
    (count, sizes, first pixels, facing pairs) over all provisional ids."""
    width = foreground.shape[1]
    above = np.zeros(width, dtype=id_dtype)  # ids of the row above the current block row
    left = None  # ids of the column left of the current block
    sizes, firsts, pairs = [np.zeros(1, np.int64)], [np.zeros(1, np.int64)], []
    count = 0
    for done, (rows, cols) in enumerate(blocks, start=1):
        mask = np.asarray(foreground[rows, cols]) != 0
        ids, n = ndimage.label(mask)  # 4-connected, 1..n in raster order of first pixel
        ids = ids.astype(id_dtype, copy=False)
        if n:
            flat = ids.ravel()
            first = np.searchsorted(np.maximum.accumulate(flat), np.arange(1, n + 1))
            fy, fx = np.divmod(first, ids.shape[1])
            firsts.append((fy + rows.start) * width + fx + cols.start)
            sizes.append(np.bincount(flat, minlength=n + 1)[1:])
            ids[ids > 0] += count
            count += n
        if cols.start > 0:
            pairs.append(_facing(left, ids[:, 0]))
        if rows.start > 0:
            pairs.append(_facing(above[cols], ids[0]))
        left = ids[:, -1].copy()
        above[cols] = ids[-1]
        scratch[rows, cols] = ids
        yield done, total
    pairs = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=id_dtype)
    return count, np.concatenate(sizes), np.concatenate(firsts), pairs


def _facing(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Unique (id, id) pairs of foreground pixels facing each other across a border."""
    both = (a > 0) & (b > 0)
    return np.unique(np.stack([a[both], b[both]], axis=1), axis=0)


def final_ids(count, sizes, firsts, pairs, *, min_size: int, offset: int) -> np.ndarray:
    """Lookup table provisional id -> final id (0: background or dropped)."""
    graph = coo_matrix(
        (np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])),
        shape=(count + 1, count + 1),
    )
    n_objects, obj = connected_components(graph, directed=False)
    obj_size = np.bincount(obj, weights=sizes, minlength=n_objects)
    obj_first = np.full(n_objects, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(obj_first, obj[1:], firsts[1:])
    keep = obj_size >= max(min_size, 1)
    keep[obj[0]] = False  # the background node 0 is an object of its own
    kept = np.flatnonzero(keep)
    final = np.zeros(n_objects, dtype=np.int64)
    final[kept[np.argsort(obj_first[kept], kind="stable")]] = np.arange(1, kept.size + 1)
    final[kept] += offset
    return final[obj]


def _write_pass(scratch, out, table, blocks, expand: int, start: int, total: int):
    """Final ids per block (grown by ``expand`` px using a halo) into ``out``."""
    height, width = out.shape
    dtype = np.dtype(out.dtype)
    for done, (rows, cols) in enumerate(blocks, start=start + 1):
        y0, x0 = max(0, rows.start - expand), max(0, cols.start - expand)
        y1, x1 = min(height, rows.stop + expand), min(width, cols.stop + expand)
        window = table[np.asarray(scratch[y0:y1, x0:x1])]
        if expand > 0 and window.any():
            window = expand_labels(window, distance=expand)
        crop = window[rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0]
        out[rows, cols] = crop.astype(dtype, copy=False)
        yield done, total


def join_steps(shape: tuple[int, int, int], block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Progress steps of :func:`join_slices_iter` for a (Z, Y, X) stack."""
    z = shape[0]
    return (2 * z - 1) * len(block_slices(shape[1:], block_size)) if z > 1 else 0


def join_slices_iter(labels, *, block_size: int = DEFAULT_BLOCK_SIZE) -> Progress:
    """:func:`napari_unet.postprocess.join_slices` in place, block by block: objects that
    overlap in neighbouring slices of a (Z, Y, X) integer array-like get one id, ids
    renumbered 1..N in order of the smallest id joined. Memory O(block² + objects).

    Yields:
        (done, total) blocks: one pass over neighbouring slice pairs, one rewriting
        every slice (total = :func:`join_steps`).

    Returns:
        N, the number of objects after joining.
    """
    shape = tuple(labels.shape)
    if len(shape) != 3:
        raise ValueError(f"join_slices needs a (Z, Y, X) stack, got shape {shape}")
    total = join_steps(shape, block_size)
    yield 0, total
    blocks = block_slices(shape[1:], block_size)
    pairs, present = [np.zeros((0, 2), np.int64)], [np.zeros(0, np.int64)]
    done = 0
    for z in range(shape[0] - 1):
        for rows, cols in blocks:
            upper = np.asarray(labels[z, rows, cols]).astype(np.int64, copy=False)
            lower = np.asarray(labels[z + 1, rows, cols]).astype(np.int64, copy=False)
            pairs.append(_facing(upper, lower))
            present.append(np.unique(upper))
            if z == shape[0] - 2:
                present.append(np.unique(lower))
            done += 1
            yield done, total
    ids = np.unique(np.concatenate(present))
    ids = ids[ids > 0]
    if shape[0] < 2 or ids.size == 0:
        return int(ids.size)
    pairs = np.concatenate(pairs)
    n = int(ids[-1]) + 1
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    joined = np.unique(component[ids])
    table = np.zeros(n, dtype=np.int64)
    table[ids] = np.searchsorted(joined, component[ids]) + 1
    dtype = np.dtype(labels.dtype)
    for z in range(shape[0]):
        for rows, cols in blocks:
            labels[z, rows, cols] = table[np.asarray(labels[z, rows, cols])].astype(dtype)
            done += 1
            yield done, total
    return int(joined.size)


def instances_from_foreground(foreground, out, **kwargs) -> int:
    """:func:`instances_from_foreground_iter` without progress; returns N."""
    return drain(instances_from_foreground_iter(foreground, out, **kwargs))
