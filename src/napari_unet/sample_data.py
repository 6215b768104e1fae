"""A generated sample: touching, irregular cells and their instance labels (numpy only)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries


def make_sample(
    shape: tuple[int, int] = (256, 256), n_objects: int = 36, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Make a fluorescence-like image of touching, irregular cells.

    Half of the cells are placed against another one, so the sample has the
    thin contacts the U-Net border weights are for. Touching cells share a
    slightly darker seam, as real membranes do.

    Returns:
        image: float32 (Y, X), values about 0..1.
        labels: int32 (Y, X), 0 = background, 1..N = cells (touching, no gap).
    """
    rng = np.random.default_rng(seed)
    radii = rng.uniform(0.045, 0.07, n_objects) * min(shape)
    centres = np.empty((n_objects, 2))
    for i in range(n_objects):
        if i % 2 and i > 0:  # put every second cell against an earlier one
            j = rng.integers(i)
            angle = rng.uniform(0, 2 * np.pi)
            gap = 0.9 * (radii[i] + radii[j])
            centres[i] = centres[j] + gap * np.array([np.sin(angle), np.cos(angle)])
        else:
            centres[i] = rng.uniform(0.08, 0.92, 2) * shape
    centres = np.clip(centres, 0, np.array(shape) - 1)

    yy, xx = np.indices(shape, dtype=np.float32)
    # distance to each centre relative to its radius; the nearest one owns the pixel
    scaled = np.stack([np.hypot(yy - cy, xx - cx) / r for (cy, cx), r in zip(centres, radii)])
    owner = scaled.argmin(axis=0)
    wobble = ndi.gaussian_filter(rng.normal(size=shape), 3.0)
    wobble *= 0.18 / wobble.std()
    foreground = scaled.min(axis=0) + wobble < 1.0
    labels = np.where(foreground, owner + 1, 0).astype(np.int32)
    labels = _keep_largest_piece(labels)

    brightness = rng.uniform(0.55, 1.0, labels.max() + 1)
    texture = 1.0 + 0.15 * ndi.gaussian_filter(rng.normal(size=shape), 1.5) / 0.15
    image = np.where(labels > 0, brightness[labels], 0.0) * np.clip(texture, 0.6, 1.4)
    seams = find_boundaries(labels, mode="inner") & (ndi.grey_erosion(labels, size=3) > 0)
    image[seams] *= 0.3
    image = ndi.gaussian_filter(image, 1.0) + 0.08
    image += rng.normal(scale=0.04, size=shape)
    return image.astype(np.float32), labels


def _keep_largest_piece(labels: np.ndarray) -> np.ndarray:
    """Keep each label's largest connected piece and renumber ids 1..N."""
    out = np.zeros_like(labels)
    next_id = 1
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        pieces, n = ndi.label(labels[box] == index)
        if n == 0:
            continue
        largest = 1 + int(np.argmax(np.bincount(pieces.ravel())[1:]))
        out[box][pieces == largest] = next_id
        next_id += 1
    return out


def sample_layers() -> list[tuple]:
    """npe2 sample-data contribution: the image and its instance labels as layers."""
    image, labels = make_sample()
    return [
        (image, {"name": "cells"}, "image"),
        (labels, {"name": "cells labels"}, "labels"),
    ]


def make_nuclei(
    shape: tuple[int, int] = (512, 512), n_objects: int = 120, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Make a fluorescence image of nuclei like those of DSB 2018: the built-in
    ``nuclei`` model's kind of image (its training data is not shipped).

    Nuclei are ellipses with semi-axes of 7-14 px (about 200-600 px in area, as many
    DSB nuclei), a third of them placed against another one; blurred, unevenly bright, on a
    dark background with camera noise.

    Returns:
        image: float32 (Y, X), values about 0..1.
        labels: int32 (Y, X), 0 = background, 1..N = nuclei.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.indices(shape, dtype=np.float32)
    labels = np.zeros(shape, np.int32)
    centres: list[np.ndarray] = []
    for index in range(1, n_objects + 1):
        a, b = rng.uniform(9, 14), rng.uniform(7, 11)
        if centres and rng.random() < 1 / 3:  # pressed against an earlier nucleus
            angle = rng.uniform(0, 2 * np.pi)
            centre = centres[rng.integers(len(centres))] + 1.1 * (a + b) * np.array(
                [np.sin(angle), np.cos(angle)]
            )
        else:
            centre = rng.uniform(a, np.array(shape) - a)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - centre[0], xx - centre[1]
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        labels[inside & (labels == 0)] = index
        centres.append(centre)
    labels = _keep_largest_piece(labels)

    brightness = rng.uniform(0.35, 1.0, labels.max() + 1)
    texture = 1.0 + 0.05 * ndi.gaussian_filter(rng.normal(size=shape), 1.2) / 0.12
    image = np.where(labels > 0, brightness[labels], 0.0) * np.clip(texture, 0.5, 1.5)
    image = ndi.gaussian_filter(image, 1.0) + 0.03
    image = rng.poisson(image * 200) / 200.0 + rng.normal(scale=0.01, size=shape)
    return image.astype(np.float32), labels


def nuclei_layers() -> list[tuple]:
    """npe2 sample-data contribution: generated nuclei (the built-in model's kind of
    image) and their labels."""
    image, labels = make_nuclei()
    return [
        (image, {"name": "nuclei"}, "image"),
        (labels, {"name": "nuclei labels"}, "labels"),
    ]
