"""Border weight maps of the U-Net paper (Ronneberger et al. 2015, eq. 2).

``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))``

* ``d1``, ``d2``: Euclidean distance (pixels) from ``x`` to the nearest and the
  second-nearest object (two different label ids).
* The border term is applied to background pixels only, and only where at least
  two objects exist.
* ``w_c``: class-balancing weight, inverse class frequency scaled so that the
  rarer of background / foreground has weight 1, counted inside ``mask``.

The border term is below ``1e-6 * w0`` once ``d1 + d2`` exceeds the cut-off
``R = sigma * sqrt(2 * ln(1e6))`` (about 26.3 px for sigma = 5); it is treated as
exactly 0 there. This bounds the difference to the plain definition by ``1e-6 * w0``
(plus float32 rounding) and means distances are only needed within ``R`` of objects
that have another object within ``R``: one distance transform per such object on its
bounding box grown by ``R``, instead of one per object on the whole image, which
makes the cost near-linear in the number of pixels. See docs/weight_map.md.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi

#: The border term is treated as 0 where it is below this fraction of w0.
NEGLIGIBLE = 1e-6


class WeightMapComponents(NamedTuple):
    """The parts of a weight map, each float32 of the labels' shape.

    class_weight: ``w_c`` (0 outside the mask).
    d1: distance to the nearest object (0 on objects, inf without objects).
    d2: distance to the nearest object other than the nearest one (on an object:
        to the nearest other object), given where ``d1 + d2 <= cutoff``; inf
        elsewhere (beyond the cut-off, or fewer than two objects).
    border: ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` on background pixels inside
        the mask where ``d1 + d2 <= cutoff``, else 0.
    total: ``class_weight + border``: the loss weight.
    cutoff: the cut-off distance ``R`` in pixels.
    """

    class_weight: np.ndarray
    d1: np.ndarray
    d2: np.ndarray
    border: np.ndarray
    total: np.ndarray
    cutoff: float


def cutoff_distance(sigma: float) -> float:
    """Distance ``R`` beyond which ``exp(-(d1 + d2)**2 / (2 sigma**2)) < NEGLIGIBLE``."""
    return float(sigma) * math.sqrt(2.0 * math.log(1.0 / NEGLIGIBLE))


def weight_map(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Loss weight of the U-Net paper for an instance label image.

    Args:
        labels: (Y, X) instance labels (0 = background, objects 1..N; integer
            dtype, or floats with integer values), or a (Z, Y, X) stack of them,
            treated slice by slice (class balance counted per slice).
        w0: amplitude of the border term.
        sigma: width of the border term in pixels.
        class_weights: explicit ``(w_background, w_foreground)``; by default the
            classes are balanced: weight ``min(n_bg, n_fg) / n_class`` per class.
        mask: bool, labels' shape: annotated region. Class frequencies are counted
            inside it; the weight is 0 outside it.

    Returns:
        float32 weights of the labels' shape.
    """
    labels, mask, w0, sigma, class_weights = _validate(labels, w0, sigma, class_weights, mask)
    out = np.empty(labels.shape, np.float32)
    for index in np.ndindex(labels.shape[:-2]):  # one 2D slice at a time
        slice_mask = None if mask is None else mask[index]
        class_weight = _class_weight(labels[index], class_weights, slice_mask)
        _, _, border = _border_term(labels[index], w0, sigma, slice_mask)
        out[index] = class_weight + border
    return out


def weight_map_components(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: tuple[float, float] | None = None,
    mask: np.ndarray | None = None,
) -> WeightMapComponents:
    """Like :func:`weight_map`, returning the parts (see :class:`WeightMapComponents`).

    Costs one more full-image distance transform than :func:`weight_map` (for ``d1``
    far from objects, which the weight itself does not need).
    """
    labels, mask, w0, sigma, class_weights = _validate(labels, w0, sigma, class_weights, mask)
    cutoff = cutoff_distance(sigma)
    parts = [np.empty(labels.shape, np.float32) for _ in range(5)]
    class_weight, d1, d2, border, total = parts
    for index in np.ndindex(labels.shape[:-2]):
        slice_mask = None if mask is None else mask[index]
        class_weight[index] = _class_weight(labels[index], class_weights, slice_mask)
        near_d1, near_d2, border[index] = _border_term(labels[index], w0, sigma, slice_mask)
        foreground = labels[index] > 0
        d1[index] = ndi.distance_transform_edt(~foreground) if foreground.any() else np.inf
        d2[index] = np.where(near_d1 + near_d2 <= cutoff, near_d2, np.inf)
        total[index] = class_weight[index] + border[index]
    return WeightMapComponents(class_weight, d1, d2, border, total, cutoff)


# --------------------------------------------------------------------------- 2D


def _class_weight(labels, class_weights, mask) -> np.ndarray:
    """Per-pixel w_c (float32), 0 outside the mask."""
    foreground = labels > 0
    if class_weights is None:
        inside = foreground if mask is None else foreground[mask]
        n_fg = int(np.count_nonzero(inside))
        n_bg = inside.size - n_fg
        if n_fg == 0 or n_bg == 0:  # one class only: nothing to balance
            class_weights = (1.0, 1.0)
        else:
            rarer = min(n_fg, n_bg)
            class_weights = (rarer / n_bg, rarer / n_fg)
    weight = np.where(foreground, *np.float32(class_weights[::-1]))
    if mask is not None:
        weight[~mask] = 0.0
    return weight


def _border_term(labels, w0, sigma, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(d1, d2, border) of one 2D slice, float64.

    d1, d2 are the two smallest object distances over the objects that have another
    object within the cut-off; they equal the true d1, d2 wherever
    ``d1 + d2 <= cutoff`` (elsewhere they may be larger, or inf).
    """
    cutoff = cutoff_distance(sigma)
    d1, d2 = _two_nearest_within(labels, cutoff)
    border = np.zeros(labels.shape, np.float64)
    near = (d1 + d2 <= cutoff) & (labels == 0)
    if mask is not None:
        near &= mask
    border[near] = w0 * np.exp(-((d1[near] + d2[near]) ** 2) / (2.0 * sigma**2))
    return d1, d2, border


def _two_nearest_within(labels: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and second-smallest object distance where their sum is <= cutoff.

    A pixel x with d1 + d2 <= cutoff is within ``cutoff`` of both objects, which are
    then within ``cutoff`` of each other. So each object only needs its distance
    transform on its bounding box grown by ``ceil(cutoff)`` (exact there: the whole
    object is inside the crop), and only if another object lies in that crop.
    Running (d1, d2) = two smallest values, merged crop by crop.
    """
    shape = labels.shape
    d1 = np.full(shape, np.inf)
    d2 = np.full(shape, np.inf)
    margin = math.ceil(cutoff)
    sizes = np.bincount(labels.ravel())
    for object_id, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        crop = tuple(
            slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(box, shape)
        )
        sub = labels[crop]
        if np.count_nonzero(sub) == sizes[object_id]:  # no other object within the cut-off
            continue
        distance = ndi.distance_transform_edt(sub != object_id)
        d1_crop, d2_crop = d1[crop], d2[crop]
        np.minimum(d2_crop, np.maximum(d1_crop, distance), out=d2_crop)
        np.minimum(d1_crop, distance, out=d1_crop)
    return d1, d2


# ------------------------------------------------------------------- validation


def _validate(labels, w0, sigma, class_weights, mask):
    labels = _as_labels(labels)
    return (
        labels,
        _as_mask(mask, labels.shape),
        _as_positive(w0, "w0", allow_zero=True),
        _as_positive(sigma, "sigma"),
        _as_class_weights(class_weights),
    )


def _as_labels(labels) -> np.ndarray:
    """Validate and return a non-negative integer label array (2D or 3D)."""
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise ValueError(
            f"labels must be a 2D image (Y, X) or a stack (Z, Y, X), got {labels.ndim}D "
            f"of shape {labels.shape}."
        )
    if labels.size == 0:
        raise ValueError(f"labels are empty (shape {labels.shape}).")
    if labels.dtype == bool:
        return labels.astype(np.int32)
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise ValueError("labels must hold integer ids; got non-integer float values.")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0 (0 = background), got {labels.min()}.")
    if labels.max() > labels.size:  # sparse or huge ids: renumber (order kept, 0 stays 0)
        values, inverse = np.unique(labels, return_inverse=True)
        return inverse.reshape(labels.shape) + int(values[0] != 0)
    return labels.astype(np.intp, copy=False)


def _as_mask(mask, shape) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"mask shape {mask.shape} differs from labels shape {shape}.")
    return mask.astype(bool, copy=False)


def _as_positive(value, name: str, allow_zero: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value}.")
    return value


def _as_class_weights(class_weights) -> tuple[float, float] | None:
    if class_weights is None:
        return None
    values = tuple(float(v) for v in class_weights)
    if len(values) != 2 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ValueError(
            "class_weights must be two finite numbers >= 0: (w_background, w_foreground), "
            f"got {class_weights!r}."
        )
    return values
