"""Block-by-block instance labels equal whole-plane post-processing, id for id."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage.segmentation import expand_labels

from napari_unet.chunked_labels import (
    PlaneView,
    instances_from_foreground,
    instances_from_foreground_iter,
    label_steps,
)
from napari_unet.postprocess import instances_from_foreground as whole_plane
from napari_unet.progress import collect


def blockwise(foreground, **kwargs) -> np.ndarray:
    out = np.full(foreground.shape, -1, dtype=np.int32)  # -1: a pixel left unwritten
    scratch = np.zeros(foreground.shape, dtype=np.int32)
    n = instances_from_foreground(foreground, out, scratch=scratch, **kwargs)
    assert n == len(np.unique(out[out > 0]))
    return out


def blobs(shape, seed, sigma=1.5, level=0.53) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), sigma) > level


@pytest.mark.parametrize("block_size", [3, 7, 16, 25, 64, 500])
@pytest.mark.parametrize(("min_size", "expand"), [(0, 0), (1, 1), (10, 1), (25, 3), (4, 6)])
def test_equals_the_whole_plane_result(block_size, min_size, expand):
    foreground = blobs((83, 121), seed=block_size + expand)
    expected = whole_plane(foreground, min_size=min_size, expand=expand)
    labels = blockwise(foreground, min_size=min_size, expand=expand, block_size=block_size)
    assert expected.max() > 10
    np.testing.assert_array_equal(labels, expected)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    shape=st.tuples(st.integers(1, 60), st.integers(1, 60)),
    density=st.sampled_from([0.1, 0.3, 0.5, 0.7]),
    min_size=st.integers(0, 12),
    expand=st.integers(0, 5),
    block_size=st.integers(1, 40),
)
def test_random_masks_full_of_ties_match_id_for_id(
    seed, shape, density, min_size, expand, block_size
):
    """Single-pixel noise makes many objects equidistant from a background pixel: the
    ties of the growth must go the same way in blocks as on the whole plane."""
    foreground = np.random.default_rng(seed).random(shape) < density
    expected = whole_plane(foreground, min_size=min_size, expand=expand)
    labels = blockwise(foreground, min_size=min_size, expand=expand, block_size=block_size)
    np.testing.assert_array_equal(labels, expected)


def test_growth_with_a_halo_equals_growth_of_the_whole_plane_for_any_labels():
    """The write pass's premise, on label images whose neighbouring objects tie often."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        labels = np.where(rng.random((50, 47)) < 0.05, rng.integers(1, 9, (50, 47)), 0)
        expand = int(rng.integers(1, 6))
        expected = expand_labels(labels, expand)
        for block in (6, 13):
            for y in range(0, 50, block):
                for x in range(0, 47, block):
                    y0, x0 = max(0, y - expand), max(0, x - expand)
                    window = expand_labels(
                        labels[y0 : y + block + expand, x0 : x + block + expand], expand
                    )
                    np.testing.assert_array_equal(
                        window[y - y0 : y - y0 + block, x - x0 : x - x0 + block],
                        expected[y : y + block, x : x + block],
                    )


def test_u_shaped_object_joined_only_far_away_is_one_object():
    foreground = np.zeros((40, 50), dtype=bool)
    foreground[2:38, 3:5] = True  # left arm, crosses 4 blocks of 10
    foreground[2:38, 44:46] = True  # right arm
    foreground[36:38, 3:46] = True  # joined at the bottom only
    foreground[10:12, 20:30] = True  # a bar between the arms, in two blocks
    labels = blockwise(foreground, min_size=1, expand=0, block_size=10)
    assert labels[2, 3] == labels[2, 45] == 1  # first pixel in raster order: id 1
    assert labels[10, 20] == labels[10, 29] == 2
    assert set(np.unique(labels)) == {0, 1, 2}


def test_spiral_through_many_blocks_is_one_object():
    spiral = np.zeros((64, 64), dtype=bool)
    top, left, bottom, right = 0, 0, 63, 63
    while top < bottom and left < right:  # a 1-px wall with a 1-px gap, spiralling in
        spiral[top, left : right + 1] = True
        spiral[top : bottom + 1, right] = True
        spiral[bottom, left : right + 1] = True
        spiral[top + 2 : bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
    expected = whole_plane(spiral, min_size=1, expand=0)
    np.testing.assert_array_equal(blockwise(spiral, min_size=1, expand=0, block_size=5), expected)


def test_objects_are_kept_or_dropped_by_their_size_over_all_blocks():
    foreground = np.zeros((30, 30), dtype=bool)
    foreground[9:11, 8:12] = True  # 8 px in four blocks of 10 (2 px each): kept
    foreground[20:22, 20:23] = True  # 6 px, two blocks: dropped
    labels = blockwise(foreground, min_size=7, expand=0, block_size=10)
    assert labels[9, 8] == 1 and labels[10, 11] == 1 and labels[20, 20] == 0
    assert labels.max() == 1


def test_offset_progress_and_a_zarr_scratch_store():
    zarr = pytest.importorskip("zarr")
    foreground = blobs((70, 90), seed=3)
    stored = zarr.create_array(store={}, shape=foreground.shape, chunks=(32, 32), dtype=bool)
    stored[...] = foreground
    out = zarr.create_array(store={}, shape=foreground.shape, chunks=(32, 32), dtype=np.int32)
    steps, n = collect(
        instances_from_foreground_iter(
            stored, out, min_size=5, expand=2, block_size=32, offset=100
        )
    )
    expected = whole_plane(foreground, min_size=5, expand=2)
    np.testing.assert_array_equal(out[...], np.where(expected > 0, expected + 100, 0))
    assert n == expected.max()
    total = label_steps(foreground.shape, 32)
    assert total == 2 * 3 * 3
    assert steps == [(done, total) for done in range(total + 1)]


def test_planes_of_a_stack_are_written_through_a_view():
    stack_out = np.zeros((2, 20, 30), dtype=np.int32)
    foreground = blobs((20, 30), seed=4)
    instances_from_foreground(foreground, PlaneView(stack_out, 1), min_size=1, block_size=8)
    np.testing.assert_array_equal(stack_out[1], whole_plane(foreground, min_size=1))
    assert not stack_out[0].any()


def test_empty_and_full_masks():
    assert not blockwise(np.zeros((9, 9), bool), block_size=4).any()
    full = blockwise(np.ones((9, 9), bool), block_size=4, min_size=1)
    assert (full == 1).all()


def test_bad_arguments_are_refused():
    mask = np.ones((8, 8), dtype=bool)
    with pytest.raises(ValueError, match="out has shape"):
        instances_from_foreground(mask, np.zeros((8, 9), np.int32))
    with pytest.raises(ValueError, match="2D"):
        instances_from_foreground(np.ones((2, 8, 8)), np.zeros((2, 8, 8), np.int32))
    with pytest.raises(ValueError, match="integer dtype"):
        instances_from_foreground(mask, np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="block_size"):
        instances_from_foreground(mask, np.zeros((8, 8), np.int32), block_size=0)
    checker = (np.indices((30, 30)).sum(axis=0) % 2).astype(bool)  # 450 objects
    out = np.full((30, 30), 7, dtype=np.uint8)
    with pytest.raises(ValueError, match="do not fit"):
        instances_from_foreground(checker, out, min_size=1, expand=0)
    assert (out == 7).all()  # refused before writing


@pytest.mark.parametrize("block_size", [5, 16, 100])
def test_join_slices_block_by_block_equals_the_whole_stack(block_size):
    from napari_unet.chunked_labels import join_slices_iter, join_steps
    from napari_unet.postprocess import join_slices

    stack = np.zeros((4, 37, 41), dtype=np.int32)
    offset = 0
    for z in range(4):
        plane = whole_plane(blobs((37, 41), seed=z // 2, level=0.52), min_size=3)
        stack[z] = np.where(plane > 0, plane + offset, 0)
        offset = stack[z].max()
    expected = join_slices(stack)
    assert expected.max() < stack.max()  # slices 0-1 and 2-3 are the same: joined
    steps, n = collect(join_slices_iter(stack, block_size=block_size))
    np.testing.assert_array_equal(stack, expected)
    assert n == expected.max()
    total = join_steps(stack.shape, block_size)
    assert steps == [(done, total) for done in range(total + 1)]


def test_memmap_in_and_out(tmp_path):
    foreground = blobs((50, 60), seed=5)
    stored = np.lib.format.open_memmap(tmp_path / "fg.npy", "w+", bool, foreground.shape)
    stored[...] = foreground
    out = np.lib.format.open_memmap(tmp_path / "labels.npy", "w+", np.int32, foreground.shape)
    instances_from_foreground(stored, out, min_size=3, expand=1, block_size=16)
    np.testing.assert_array_equal(out, whole_plane(foreground, min_size=3, expand=1))


def test_memory_is_bounded_by_the_block_not_the_plane():
    """A 1024² plane labelled in 128² blocks never allocates a plane-sized array: the
    traced peak stays below one int32 plane (4 MiB; measured 1.9, the whole-plane path 40)."""
    import tracemalloc

    zarr = pytest.importorskip("zarr")
    shape = (1024, 1024)
    foreground = zarr.create_array(store={}, shape=shape, chunks=(128, 128), dtype=bool)
    foreground[...] = blobs(shape, seed=6)
    out = zarr.create_array(store={}, shape=shape, chunks=(128, 128), dtype=np.int32)
    scratch = zarr.create_array(store={}, shape=shape, chunks=(128, 128), dtype=np.int32)
    tracemalloc.start()
    try:
        n = instances_from_foreground(
            foreground, out, min_size=5, expand=2, block_size=128, scratch=scratch
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n > 1000
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
