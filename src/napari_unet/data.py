"""Training data preparation (numpy only): pairs, annotated regions, targets, weights.

A training *pair* is an image and its labels, optionally with a *mask* of the
annotated region. Everything here is torch-free; :mod:`napari_unet.training` turns
the prepared planes into tensors.

Annotation modes (see docs/training.md):

- ``"instance"``: labels are object ids, 0 = background, every object inside the
  annotated region labelled. The target is foreground/background where each
  object is eroded by ``gap`` px, so touching objects are separated by a
  background line of ``2 * gap`` px that the border weight map emphasises;
  prediction splits connected components and grows them back by ``gap`` px.
- ``"semantic"`` (scribbles): 0 = not annotated (weight 0), 1 = background,
  2.. = classes; the target is ``label - 1`` and the weights balance the classes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from skimage.draw import polygon2mask
from skimage.segmentation import find_boundaries

from .config import MAX_CLASSES
from .normalization import normalize

MODES = ("instance", "semantic")


@dataclass
class Plane:
    """One annotated 2D training plane.

    Attributes:
        image: (C, Y, X) float32, percentile-normalised.
        target: (Y, X) class index per pixel (0 = background), of the smallest integer
            dtype that holds every class (:func:`target_dtype`).
        weight: (Y, X) float32 loss weight; 0 outside the annotated region.
        labels: (Y, X) the annotation as given (object ids or classes), for validation.
        name: where it came from (for messages), e.g. ``"image 2, slice 5"``.
    """

    image: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    labels: np.ndarray
    name: str = ""


def as_channels_first(image: np.ndarray, spatial_shape: tuple[int, ...], channel_axis=None):
    """Return ``image`` as (C, *spatial_shape) given the labels' spatial shape.

    ``channel_axis`` names the channel axis of ``image``; when None an image with
    one more axis than the labels has its channels on the first or last axis
    (whichever does not match the labels' shape).
    """
    image = np.asarray(image)
    if image.shape == tuple(spatial_shape):
        return image[None]
    if channel_axis is None and image.ndim == len(spatial_shape) + 1:
        if image.shape[1:] == tuple(spatial_shape):
            channel_axis = 0
        elif image.shape[:-1] == tuple(spatial_shape):
            channel_axis = -1
    if channel_axis is not None:
        moved = np.moveaxis(image, channel_axis, 0)
        if moved.shape[1:] == tuple(spatial_shape):
            return moved
    raise ValueError(
        f"image shape {image.shape} does not match labels shape {tuple(spatial_shape)} "
        "(the image may have one extra channel axis)"
    )


def check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as a non-negative integer array or raise ValueError."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise ValueError(f"{name} must be integer label images, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{name} contain negative values; labels must be 0, 1, 2, ...")
    return labels


def target_dtype(n_classes: int) -> np.dtype:
    """Smallest integer dtype holding class indices 0 .. n_classes - 1 (uint8 up to 256)."""
    for dtype in (np.uint8, np.int16, np.int32):
        if n_classes - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def check_image(image: np.ndarray, name: str) -> None:
    """Raise ValueError unless ``image`` holds real, finite numbers (names the first bad pixel)."""
    dtype = image.dtype
    if dtype.kind not in "biuf":  # bool, signed, unsigned, float
        raise ValueError(f"{name} must hold real numbers, got dtype {dtype}")
    if np.issubdtype(dtype, np.floating):
        bad = ~np.isfinite(image)
        if bad.any():
            where = tuple(int(i) for i in np.unravel_index(np.argmax(bad), image.shape))
            raise ValueError(
                f"{name} has {int(bad.sum())} NaN or infinite pixel(s), the first at "
                f"index {where}; fix or replace them before training"
            )


def check_classes(labels: np.ndarray, mask: np.ndarray | None, name: str) -> None:
    """Raise ValueError where semantic ``labels`` use a class above :data:`MAX_CLASSES`."""
    region = labels if mask is None else np.where(mask, labels, 0)
    if region.size and region.max() > MAX_CLASSES:
        where = tuple(int(i) for i in np.unravel_index(np.argmax(region), region.shape))
        raise ValueError(
            f"{name} uses class {int(region.max())} at index {where}, but at most "
            f"{MAX_CLASSES} classes are supported (labels: 1 = background, 2, 3, ... = classes)"
        )


def region_mask(shape: tuple[int, int], shapes: Sequence[np.ndarray]) -> np.ndarray:
    """Boolean mask of the union of rectangles/polygons given as (N, 2) (row, col) vertices.

    This is how a napari Shapes layer (rectangles or polygons drawn around the
    annotated part of an image) becomes the annotated region of a 2D plane.
    """
    mask = np.zeros(shape, dtype=bool)
    for vertices in shapes:
        vertices = np.asarray(vertices, dtype=float)[:, -2:]
        mask |= polygon2mask(shape, vertices)
    return mask


def instance_target(labels: np.ndarray, gap: int = 1) -> np.ndarray:
    """Object ids with every object eroded by ``gap`` px (4-connected boundary pixels).

    Touching objects end up separated by ``2 * gap`` px of background, so their
    connected components split; growing components by ``gap`` px restores the size.
    """
    gapped = np.array(labels, copy=True)
    for _ in range(gap):
        gapped[find_boundaries(gapped, connectivity=1, mode="inner", background=0)] = 0
    return gapped


def class_balance(target: np.ndarray, valid: np.ndarray, n_classes: int) -> np.ndarray:
    """Per-pixel weight ``1 / frequency`` of its class in ``valid`` (mean 1 there), 0 outside."""
    counts = np.bincount(target[valid].ravel(), minlength=n_classes).astype(np.float64)
    present = counts > 0
    per_class = np.zeros(n_classes)
    per_class[present] = counts[present].sum() / (present.sum() * counts[present])
    return np.where(valid, per_class[target], 0.0).astype(np.float32)


def labels_key(labels: np.ndarray, mask: np.ndarray | None, *extra) -> str:
    """Hash of a labels plane (+ mask and settings) used to cache its weight map."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (labels, mask):
        if part is not None:
            part = np.ascontiguousarray(part)
            digest.update(str((part.dtype, part.shape)).encode())
            digest.update(part.data)
    digest.update(repr(extra).encode())
    return digest.hexdigest()


class WeightCache:
    """Weight maps and targets keyed by a hash of (labels, mask, settings).

    Repainting one slice recomputes only that slice: unchanged planes hit the cache.
    """

    def __init__(self) -> None:
        self._store: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.misses = 0

    def get(self, labels, mask, mode, gap, w0, sigma, n_classes):
        key = labels_key(labels, mask, mode, gap, w0, sigma, n_classes)
        if key not in self._store:
            self.misses += 1
            self._store[key] = compute_target(labels, mask, mode, gap, w0, sigma, n_classes)
        return self._store[key]

    def __len__(self) -> int:
        return len(self._store)


def compute_target(labels, mask, mode, gap, w0, sigma, n_classes):
    """(target, weight float32) for one labels plane; see the module docstring.

    The target is uint8 for instances and of :func:`target_dtype` for ``n_classes``
    semantic classes."""
    if mode == "instance":
        from .weights import weight_map

        valid = np.ones(labels.shape, bool) if mask is None else mask
        gapped = instance_target(labels, gap)
        weight = weight_map(gapped, w0=w0, sigma=sigma, mask=valid)
        target = (gapped > 0).astype(np.uint8)
    else:
        valid = labels > 0 if mask is None else (labels > 0) & mask
        target = np.where(valid, labels - 1, 0).astype(target_dtype(n_classes))
        weight = class_balance(target, valid, n_classes)
    return target, np.asarray(weight, dtype=np.float32)


def prepare_planes(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None = None,
    *,
    mode: str = "instance",
    gap: int = 1,
    w0: float = 10.0,
    sigma: float = 5.0,
    normalization: dict | None = None,
    channel_axis: int | None = None,
    n_classes: int | None = None,
    cache: WeightCache | None = None,
) -> tuple[list[Plane], int, int]:
    """Validate pairs and turn every annotated 2D plane into a :class:`Plane`.

    Args:
        images: per pair, a 2D/3D (stack) image, optionally with a channel axis.
        labels: per pair, integer labels of the image's spatial shape (2D or a stack).
        masks: per pair, None (whole image annotated) or a bool annotated region of
            the labels' shape. In stacks only slices carrying annotation are used.
        mode: "instance" or "semantic".
        normalization: ``{"low": .., "high": ..}`` percentiles.
        n_classes: force the number of classes (e.g. fine-tuning a model).

    Returns:
        planes, in_channels, n_classes.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} image(s) but {len(labels)} label image(s)")
    if not len(images):
        raise ValueError("no training images given")
    masks = list(masks) if masks is not None else [None] * len(images)
    if len(masks) != len(images):
        raise ValueError(f"got {len(images)} image(s) but {len(masks)} mask(s)")
    norm = normalization or {"low": 1.0, "high": 99.8}
    cache = cache if cache is not None else WeightCache()

    raw = []
    channels = None
    max_label = 0
    for index, (image, lab, mask) in enumerate(zip(images, labels, masks)):
        lab = check_labels(lab, f"labels {index}")
        if lab.ndim not in (2, 3):
            raise ValueError(f"labels {index} must be 2D or a 3D stack, got shape {lab.shape}")
        check_image(np.asarray(image), f"image {index}")
        image = as_channels_first(image, lab.shape, channel_axis)
        if channels is not None and image.shape[0] != channels:
            raise ValueError(
                f"image {index} has {image.shape[0]} channel(s), the others {channels}"
            )
        channels = image.shape[0]
        if mask is not None:
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != lab.shape:
                raise ValueError(
                    f"mask {index} shape {mask.shape} does not match labels shape {lab.shape}"
                )
        stack = lab.ndim == 3
        for z in range(lab.shape[0]) if stack else [None]:
            plane_labels = lab[z] if stack else lab
            plane_mask = None if mask is None else (mask[z] if stack else mask)
            annotated = (
                plane_mask.any()
                if plane_mask is not None
                else (plane_labels.any() if stack or mode == "semantic" else True)
            )
            if not annotated:
                continue
            plane_image = image[:, z] if stack else image
            where = f"{index}" + (f", slice {z}" if stack else "")
            name = f"image {where}"
            if mode == "semantic":
                check_classes(plane_labels, plane_mask, f"labels {where}")
            raw.append((plane_image, plane_labels, plane_mask, name))
            region = plane_labels if plane_mask is None else plane_labels[plane_mask]
            max_label = max(max_label, int(region.max()) if region.size else 0)

    if not raw:
        raise ValueError("no annotated slice found: paint labels (or draw the annotated region)")
    if mode == "instance":
        found = n_classes or 2
        for _, plane_labels, plane_mask, name in raw:
            region = plane_labels if plane_mask is None else plane_labels[plane_mask]
            if not region.any():
                raise ValueError(f"{name}: no object labelled inside the annotated region")
    else:
        found = n_classes or max_label
        if max_label < 2:
            raise ValueError(
                "a semantic annotation needs at least two classes: 1 = background and "
                "2, 3, ... = classes (0 = not annotated)"
            )
        if max_label > found:
            raise ValueError(f"labels use class {max_label} but the model has {found} classes")

    planes = []
    for plane_image, plane_labels, plane_mask, name in raw:
        target, weight = cache.get(plane_labels, plane_mask, mode, gap, w0, sigma, found)
        normed = normalize(plane_image, norm["low"], norm["high"])
        planes.append(Plane(normed.astype(np.float32), target, weight, plane_labels, name))
    return planes, channels, found


def split_validation(
    planes: list[Plane], fraction: float, rng: np.random.Generator, max_planes: int | None = None
) -> tuple[list[Plane], list[Plane]]:
    """Hold out ``fraction`` of the planes (at least one, at most ``max_planes``) for validation.

    With a single plane, a band of its annotated area (``fraction`` of the rows
    containing weight) is held out instead: its weights go to 0 in the training
    copy and everything else to 0 in the validation copy.
    """
    if fraction <= 0:
        return planes, []
    if len(planes) >= 2:
        n_val = min(len(planes) - 1, max(1, round(fraction * len(planes))))
        n_val = min(n_val, max_planes) if max_planes else n_val
        order = rng.permutation(len(planes))
        val = {int(i) for i in order[:n_val]}
        return (
            [p for i, p in enumerate(planes) if i not in val],
            [p for i, p in enumerate(planes) if i in val],
        )
    (plane,) = planes
    rows = np.flatnonzero((plane.weight > 0).any(axis=1))
    if rows.size < 8:
        return planes, []
    cut = rows[round((1 - fraction) * (rows.size - 1))]
    train_weight = plane.weight.copy()
    train_weight[cut:] = 0
    val_weight = plane.weight.copy()
    val_weight[:cut] = 0
    return (
        [Plane(plane.image, plane.target, train_weight, plane.labels, plane.name)],
        [
            Plane(
                plane.image, plane.target, val_weight, plane.labels, f"{plane.name} (rows {cut}+)"
            )
        ],
    )
