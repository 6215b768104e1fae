"""Where to annotate next: the most uncertain square windows outside the annotated area.

The uncertainty map (:func:`napari_unet.tta.combine`: how much the test-time
augmented copies disagree, per pixel) is smoothed with a box of the window size, i.e.
each candidate window is scored by its mean uncertainty. Windows touching an annotated
pixel are skipped; the best window is taken, windows overlapping it are dropped, and so
on until ``count`` windows are found (fewer when no window is left). numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Region:
    """A suggested square window of one plane.

    Attributes:
        z: plane index of a stack, None for a 2D image.
        top, left: first row and column (px).
        size: edge (px).
        score: mean uncertainty inside (the map's units, 0..0.5 for TTA's std).
    """

    z: int | None
    top: int
    left: int
    size: int
    score: float

    def slices(self) -> tuple:
        """Index of the window in an array of the map's shape."""
        window = (slice(self.top, self.top + self.size), slice(self.left, self.left + self.size))
        return window if self.z is None else (self.z, *window)

    def corners(self) -> np.ndarray:
        """(4, 2) or (4, 3) float vertices of the rectangle around the window's pixels
        (pixel centres at integers, so edges at +-0.5): napari Shapes coordinates, and
        :func:`napari_unet.data.region_mask` of them is the window."""
        top, left = self.top - 0.5, self.left - 0.5
        bottom, right = top + self.size, left + self.size
        square = np.array([[top, left], [top, right], [bottom, right], [bottom, left]])
        if self.z is None:
            return square
        return np.column_stack([np.full(4, float(self.z)), square])


def window_means(plane: np.ndarray, size: int) -> np.ndarray:
    """Mean of ``plane`` (Y, X) in every ``size`` x ``size`` window: (Y-size+1, X-size+1),
    entry [r, c] for the window whose top-left pixel is (r, c)."""
    total = np.pad(np.cumsum(np.cumsum(plane, axis=0, dtype=np.float64), axis=1), ((1, 0), (1, 0)))
    sums = (
        total[size:, size:] - total[:-size, size:] - total[size:, :-size] + total[:-size, :-size]
    )
    return sums / (size * size)


def suggest_regions(
    uncertainty: np.ndarray,
    *,
    size: int,
    count: int,
    annotated: np.ndarray | None = None,
) -> list[Region]:
    """The ``count`` most uncertain non-overlapping ``size`` px windows, best first.

    Args:
        uncertainty: (Y, X) or (Z, Y, X) per-pixel uncertainty (finite, >= 0).
        size: window edge in px (clipped to the plane's shorter edge).
        count: how many windows to suggest.
        annotated: bool mask of the same shape; windows touching it are skipped.

    Returns:
        up to ``count`` :class:`Region` s, highest mean uncertainty first; windows of
        one plane never overlap (a stack's planes are independent).

    Raises:
        ValueError: a map that is not 2D/3D or not finite, a size or count below 1,
            or a mask of another shape.
    """
    uncertainty = np.asarray(uncertainty, dtype=np.float64)
    if uncertainty.ndim not in (2, 3) or uncertainty.size == 0:
        raise ValueError(f"expected a 2D map or a stack of them, got shape {uncertainty.shape}")
    if not np.isfinite(uncertainty).all():
        raise ValueError("the uncertainty map contains NaN or infinite values")
    if size < 1 or count < 1:
        raise ValueError(f"size and count must be at least 1, got size {size}, count {count}")
    if annotated is not None and np.shape(annotated) != uncertainty.shape:
        raise ValueError(
            f"annotated mask shape {np.shape(annotated)} differs from the map's "
            f"{uncertainty.shape}"
        )
    planes = uncertainty if uncertainty.ndim == 3 else uncertainty[None]
    marks = None if annotated is None else np.asarray(annotated, bool).reshape(planes.shape)
    size = int(min(size, *planes.shape[1:]))
    scores = np.stack([window_means(plane, size) for plane in planes])
    if marks is not None:
        touched = np.stack([window_means(mark.astype(np.float64), size) for mark in marks])
        scores[touched > 0] = -np.inf
    regions = []
    while len(regions) < count and np.isfinite(scores).any():
        z, top, left = np.unravel_index(int(np.argmax(scores)), scores.shape)
        score = float(scores[z, top, left])
        regions.append(Region(None if uncertainty.ndim == 2 else int(z), int(top), int(left),
                              size, score))  # fmt: skip
        scores[
            z, max(0, top - size + 1) : top + size, max(0, left - size + 1) : left + size
        ] = -np.inf
    return regions
