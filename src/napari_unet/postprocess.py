"""Class probabilities -> label images (numpy, scipy, scikit-image; no torch).

Instance models predict background (class 0) and foreground (class 1); training
keeps a 1-2 px background gap between touching objects, so connected components of
the foreground separate them, and growing each component by ``expand`` px
(:func:`skimage.segmentation.expand_labels`) gives the pixels of that gap back.
Semantic models give one class id per pixel. :func:`tune_instances` picks the
foreground threshold, the smallest object kept and the growth that score best on
validation data (as StarDist optimises its thresholds); training stores them in the
model (``ModelInfo.postprocess``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.measure import label as connected_labels
from skimage.segmentation import expand_labels, relabel_sequential

DEFAULT_MIN_SIZE = 10  # px; smaller foreground specks are dropped
DEFAULT_EXPAND = 1  # px each object grows: two objects 2 px apart touch again
DEFAULT_THRESHOLD = 0.5  # foreground probability; 0.5 is the argmax of two classes
TUNE_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
TUNE_EXPANDS = (1, 2, 4, 8, 16)
TUNE_MIN_SIZES = (10, 20, 40)  # px; fragments of large objects are often 10-40 px
TUNED_SETTINGS = ("threshold", "expand", "min_size")  # what tune_instances chooses
#: A tuned choice replaces the settings a model already carries only when it scores
#: higher in at least this share of bootstrap resamples of the validation images
#: (:func:`keep_unless_clearly_beaten`; docs/training.md).
SWITCH_CONFIDENCE = 0.9


@dataclass(frozen=True)
class Postprocess:
    """How instance probabilities become labels (see :func:`labels_from_probabilities`).

    Attributes:
        threshold: foreground is ``probs[1] > threshold`` (0 < threshold < 1).
        expand: px each object grows after labelling (>= 0).
        min_size: objects with fewer foreground px are dropped (>= 0).
    """

    threshold: float = DEFAULT_THRESHOLD
    expand: int = DEFAULT_EXPAND
    min_size: int = DEFAULT_MIN_SIZE

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must lie between 0 and 1, got {self.threshold}")
        if self.expand < 0:
            raise ValueError(f"expand must be 0 or more px, got {self.expand}")
        if self.min_size < 0:
            raise ValueError(f"min_size must be 0 or more px, got {self.min_size}")

    @classmethod
    def of_model(
        cls,
        info,
        *,
        threshold: float | None = None,
        expand: int | None = None,
        min_size: int | None = None,
    ) -> Postprocess:
        """The settings a model was saved with (``ModelInfo``): those training chose on
        validation (``info.postprocess``), else 0.5, the training ``gap`` (else 1) and
        10 px; a value given here overrides the stored one."""
        stored = info.postprocess or {}
        gap = (info.training or {}).get("gap", DEFAULT_EXPAND)
        return cls(
            threshold=float(stored.get("threshold", DEFAULT_THRESHOLD))
            if threshold is None
            else float(threshold),
            expand=int(stored.get("expand", gap)) if expand is None else int(expand),
            min_size=int(stored.get("min_size", DEFAULT_MIN_SIZE))
            if min_size is None
            else int(min_size),
        )

    @classmethod
    def of_tuned(cls, tuned: dict[str, float]) -> Postprocess:
        """The settings a tuned validation chose (its :data:`TUNED_SETTINGS` entries);
        one recorded before ``min_size`` was tuned keeps the default."""
        return cls(
            threshold=float(tuned["threshold"]),
            expand=int(tuned["expand"]),
            min_size=int(tuned.get("min_size", DEFAULT_MIN_SIZE)),
        )

    def as_dict(self) -> dict[str, float]:
        """What a model stores (``ModelInfo.postprocess``)."""
        return {"threshold": self.threshold, "expand": self.expand, "min_size": self.min_size}

    def instances(self, foreground: np.ndarray) -> np.ndarray:
        """int32 objects 1..N of foreground probabilities (Y, X) with these settings."""
        return instances_from_foreground(
            foreground > self.threshold, min_size=self.min_size, expand=self.expand
        )


def labels_from_probabilities(
    probs: np.ndarray,
    *,
    task: str = "instance",
    min_size: int = DEFAULT_MIN_SIZE,
    expand: int = DEFAULT_EXPAND,
    threshold: float = DEFAULT_THRESHOLD,
) -> np.ndarray:
    """int32 labels (Y, X) from probabilities (n_classes, Y, X).

    Args:
        task: "instance" (objects 1..N from the foreground, class 1) or "semantic"
            (argmax class ids, 0 = background).
        min_size: instance objects with fewer predicted foreground px are dropped.
        expand: px each instance object grows into the background (0: none).
        threshold: instance foreground is ``probs[1] > threshold`` (0.5: the argmax).
    """
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(f"expected probabilities (n_classes >= 2, Y, X), got {probs.shape}")
    if task == "semantic":
        return np.argmax(probs, axis=0).astype(np.int32)
    if task != "instance":
        raise ValueError(f"task must be 'instance' or 'semantic', got {task!r}")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must lie between 0 and 1, got {threshold}")
    return instances_from_foreground(probs[1] > threshold, min_size=min_size, expand=expand)


def tune_instances(
    foreground: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    score: Callable[[list[np.ndarray], list[np.ndarray]], float],
    *,
    thresholds: Sequence[float] = TUNE_THRESHOLDS,
    expands: Sequence[int] = TUNE_EXPANDS,
    min_sizes: Sequence[int] = TUNE_MIN_SIZES,
) -> dict[str, float]:
    """The foreground threshold, growth and smallest object kept whose labels score
    best on validation data.

    Threshold and growth are searched together, with objects under ``min_sizes[0]`` px
    dropped; then, at the pair found, the other sizes. Scoring dominates the cost, and
    searching all three together tripled it (24 DSB planes: 25 s against 8 s on one
    thread) for the same choice in the cases measured (docs/training.md).

    Args:
        foreground: foreground probabilities (Y, X) per image.
        truths: ground-truth instance labels (Y, X) per image.
        score: ``score(truths, predictions)``, higher is better (e.g. AP@0.5, or
            minus the Rand error).
        min_sizes: px; objects with fewer foreground px are dropped before growing.

    Returns:
        ``{"threshold": t, "expand": px, "min_size": px, "score": s}`` of the best
        choice (ties: the first in the order given).
    """
    best = {
        "threshold": DEFAULT_THRESHOLD,
        "expand": DEFAULT_EXPAND,
        "min_size": min_sizes[0],
        "score": -np.inf,
    }
    for threshold in thresholds:
        cores = [instances_from_foreground(p > threshold, min_size=min_sizes[0], expand=0)
                 for p in foreground]  # fmt: skip
        growths = [grown_by_each(c, expands) for c in cores]
        for k, expand in enumerate(expands):
            value = float(score(list(truths), [g[k] for g in growths]))
            if value > best["score"]:
                best = {**best, "threshold": float(threshold), "expand": int(expand),
                        "score": value}  # fmt: skip
    components = [connected_labels(p > best["threshold"], connectivity=1) for p in foreground]
    for min_size in min_sizes[1:]:
        kept = [grown_by_each(without_small(c, min_size), [best["expand"]])[0] for c in components]
        value = float(score(list(truths), kept))
        if value > best["score"]:
            best = {**best, "min_size": int(min_size), "score": value}
    return best


def keep_unless_clearly_beaten(
    foreground: Sequence[np.ndarray],
    tuned: Postprocess,
    incumbent: Postprocess | None,
    win_rate: Callable[[list[np.ndarray], list[np.ndarray]], float],
    *,
    confidence: float = SWITCH_CONFIDENCE,
) -> Postprocess:
    """``tuned`` (:func:`tune_instances`' choice) or, when it is not clearly better,
    ``incumbent`` (the settings a model already carries, e.g. tuned on many more
    images before it was fine-tuned; None: take ``tuned``).

    The best of 75 settings on a few validation images wins partly by chance: on 24
    DSB images the built-in model's stored settings lost to others for three seeds of
    six, although those score 0.011-0.024 lower on 85 held-out images (docs/training.md).

    Args:
        foreground: foreground probabilities (Y, X) per validation image.
        win_rate: ``win_rate(candidate_labels, incumbent_labels)``: the share of
            bootstrap resamples of the images in which the candidate scores higher
            (:func:`napari_unet.metrics.bootstrap_win_rate`).
        confidence: the share ``tuned`` must reach to replace ``incumbent``.
    """
    if incumbent is None or tuned == incumbent:
        return tuned
    candidate = [tuned.instances(p) for p in foreground]
    kept = [incumbent.instances(p) for p in foreground]
    return tuned if win_rate(candidate, kept) >= confidence else incumbent


def without_settings(metrics: dict[str, float]) -> dict[str, float]:
    """A tuned validation's scores alone, without the post-processing settings
    (:data:`TUNED_SETTINGS`) it records beside them."""
    return {k: v for k, v in metrics.items() if k not in TUNED_SETTINGS}


def grown_by_each(labels: np.ndarray, distances: Sequence[int]) -> list[np.ndarray]:
    """``skimage.segmentation.expand_labels(labels, d)`` for every ``d`` in
    ``distances`` (px), from one Euclidean distance transform instead of one each."""
    if not labels.any():
        return [labels] * len(distances)
    distance, nearest = ndi.distance_transform_edt(labels == 0, return_indices=True)
    nearest_labels = labels[tuple(nearest)]
    return [np.where(distance <= d, nearest_labels, 0).astype(labels.dtype) for d in distances]


def instances_from_foreground(
    foreground: np.ndarray, *, min_size: int = DEFAULT_MIN_SIZE, expand: int = DEFAULT_EXPAND
) -> np.ndarray:
    """int32 objects 1..N: 4-connected components of a 2D bool mask, small ones dropped,
    the rest grown by ``expand`` px without merging."""
    if min_size < 0 or expand < 0:
        raise ValueError(f"min_size and expand must be >= 0, got {min_size} and {expand}")
    labels = without_small(connected_labels(foreground, connectivity=1), min_size)
    if expand > 0 and labels.max() > 0:
        labels = expand_labels(labels, distance=expand).astype(np.int32)
    return labels


def without_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """int32 ``labels`` without the objects of fewer than ``min_size`` px, renumbered
    1..N in their order."""
    labels = labels.astype(np.int32)
    if min_size > 1 and labels.max() > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels = relabel_sequential(np.where(small[labels], 0, labels))[0].astype(np.int32)
    return labels


def join_slices(labels: np.ndarray) -> np.ndarray:
    """Give objects that overlap between neighbouring slices of a (Z, Y, X) stack one id.

    Ids are renumbered 1..N in order of first appearance; background stays 0.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"join_slices needs a (Z, Y, X) stack, got shape {labels.shape}")
    n = int(labels.max()) + 1
    upper, lower = labels[:-1].ravel(), labels[1:].ravel()
    both = (upper > 0) & (lower > 0)
    links = coo_matrix(
        (np.ones(int(both.sum()), dtype=np.int8), (upper[both], lower[both])), shape=(n, n)
    )
    _, component = connected_components(links, directed=False)
    joined = np.where(labels > 0, component[labels] + 1, 0)
    return relabel_sequential(joined.astype(np.int64))[0].astype(np.int32)
