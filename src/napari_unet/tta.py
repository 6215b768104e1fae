"""Test-time augmentation (TTA): the plane's dihedral transforms and how their
predictions are combined into probabilities and an uncertainty map. numpy only.

Each input tile is flipped/rotated, run through the network and its output mapped
back by the inverse transform, so every copy predicts the same output pixels; the
probabilities are the mean of the copies. A valid U-Net input tile keeps every
pooling stage an even size, so a transformed tile is a valid tile with the same
output pixels and the mapping back is exact (non-square tiles included).

Modes (:data:`MODES`): ``"none"`` (1 pass), ``"flips"`` (identity, left-right,
up-down, both: 4 passes), ``"d4"`` (the 8 flips and quarter turns of the dihedral
group: 8 passes). The time cost is the number of passes.

Uncertainty (:func:`combine`): per pixel, the largest standard deviation across the
copies of any class probability. For two classes (instance models) that is the
standard deviation of the foreground probability. It is chosen over the fraction of
copies disagreeing with the majority's thresholded label because it needs no
threshold, is continuous (ranking regions by it is stable) and also counts copies
that agree on the label but not on the confidence. Range 0 (all copies agree) to 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Transform:
    """An element of the dihedral group of the square acting on the last two axes.

    Attributes:
        quarter_turns: counter-clockwise quarter turns (0-3), applied after the mirror.
        mirrored: mirror left-right (the last axis) first.
    """

    quarter_turns: int
    mirrored: bool

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``array`` (..., Y, X) transformed: (..., Y, X) or (..., X, Y) for odd turns."""
        if self.mirrored:
            array = np.flip(array, axis=-1)
        return np.rot90(array, self.quarter_turns, axes=(-2, -1))

    def invert(self, array: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`apply`: maps a transformed array back."""
        array = np.rot90(array, -self.quarter_turns, axes=(-2, -1))
        return np.flip(array, axis=-1) if self.mirrored else array


IDENTITY = Transform(0, False)
#: mode -> the transforms whose predictions are averaged (identity first)
MODES: dict[str, tuple[Transform, ...]] = {
    "none": (IDENTITY,),
    "flips": (IDENTITY, Transform(0, True), Transform(2, True), Transform(2, False)),
    "d4": tuple(Transform(turns, mirrored) for mirrored in (False, True) for turns in range(4)),
}


def check_mode(mode: str) -> str:
    """``mode`` if it names a TTA mode, else ValueError with the choices."""
    if mode not in MODES:
        raise ValueError(f"unknown tta {mode!r}: choose one of {', '.join(map(repr, MODES))}")
    return mode


def transforms(mode: str) -> tuple[Transform, ...]:
    """The transforms of ``mode`` (ValueError for an unknown one)."""
    return MODES[check_mode(mode)]


def cost(mode: str) -> str:
    """The time cost of ``mode`` in words, e.g. ``"8x slower"``."""
    passes = len(transforms(mode))
    return "no extra cost" if passes == 1 else f"{passes}x slower"


def combine(copies: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean probabilities and uncertainty of the copies mapped back.

    Args:
        copies: T arrays (B, n_classes, h, w) of class probabilities, one per transform.

    Returns:
        (probabilities, uncertainty): float32 (B, n_classes, h, w) mean, and float32
        (B, h, w) largest per-class standard deviation across the copies (None for
        one copy).
    """
    if len(copies) == 1:
        return np.asarray(copies[0], dtype=np.float32), None
    stacked = np.stack(copies)
    mean = stacked.mean(axis=0, dtype=np.float32)
    spread = stacked.std(axis=0, dtype=np.float32).max(axis=1)
    return mean, spread
