"""Segmentation metrics on label images (numpy/scipy/scikit-image, no torch).

Label images are integer arrays of any dimension; 0 is background, every other
value one object. Definitions:

- *Instance matching* at IoU threshold t: a ground-truth object g and a
  predicted object p may be matched when IoU(g, p) = |g ∩ p| / |g ∪ p| >= t;
  each object is matched at most once, maximising the number of matches (then
  their summed IoU) with the Hungarian algorithm. For t > 0.5 a match is unique
  anyway. Matched predictions are true positives (TP), unmatched predictions
  false positives (FP), unmatched ground-truth objects false negatives (FN).
- *Average precision* AP@t = TP / (TP + FP + FN) with the counts summed over
  all images (Data Science Bowl 2018 / StarDist convention).
- *Foreground IoU*: IoU of the binary masks ``label > 0``.
- *Rand error*: 1 - adapted Rand F-score (ISBI 2012 / SNEMI3D), counted over
  the ground-truth foreground only (ground-truth label 0 is ignored) and with
  every predicted background pixel a segment of its own (a singleton), so
  background in the prediction costs recall but never merges objects (or,
  optionally, predicted background as one segment: plain scikit-image).
- *Pixel error*: fraction of pixels whose foreground/background differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from skimage.metrics import adapted_rand_error
from skimage.segmentation import relabel_sequential


@dataclass(frozen=True)
class Matching:
    """Matched object pairs of a ground truth and a prediction.

    Attributes:
        gt_ids, pred_ids: labels of the matched objects, pairwise, shape (TP,).
        ious: IoU of each matched pair, shape (TP,).
        n_gt, n_pred: number of objects in the ground truth and the prediction.
    """

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    ious: np.ndarray
    n_gt: int
    n_pred: int

    @property
    def tp(self) -> int:
        return len(self.gt_ids)

    @property
    def fp(self) -> int:
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        return self.n_gt - self.tp


def match_instances(gt: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> Matching:
    """Match objects of ``gt`` and ``pred`` (same shape) at IoU >= ``iou`` (see module doc).

    The IoU of every overlapping pair comes from a sparse contingency table, and
    the assignment is solved per connected group of candidate pairs, so images
    with thousands of objects take milliseconds.
    """
    gt, pred = _check_pair(gt, pred)
    if not 0.0 < iou <= 1.0:
        raise ValueError(f"IoU threshold must be in (0, 1], got {iou}")
    gt_ids, gt_index = _compact(gt)
    pred_ids, pred_index = _compact(pred)
    # contingency table: overlap[i, j] = pixels with gt_ids[i] and pred_ids[j]
    # (CSR construction sums the per-pixel ones in linear time; COO gives the pairs)
    overlap = sparse.csr_matrix(
        (np.ones(gt.size, dtype=np.int64), (gt_index, pred_index)),
        shape=(len(gt_ids), len(pred_ids)),
    ).tocoo()
    gt_area = np.bincount(overlap.row, overlap.data, minlength=len(gt_ids))
    pred_area = np.bincount(overlap.col, overlap.data, minlength=len(pred_ids))
    rows, cols, inter = overlap.row, overlap.col, overlap.data
    pair_iou = inter / (gt_area[rows] + pred_area[cols] - inter)
    keep = (gt_ids[rows] != 0) & (pred_ids[cols] != 0) & (pair_iou >= iou)
    rows, cols, pair_iou = rows[keep], cols[keep], pair_iou[keep]

    matched = _assign(rows, cols, pair_iou, len(gt_ids), len(pred_ids))
    return Matching(
        gt_ids=gt_ids[rows[matched]],
        pred_ids=pred_ids[cols[matched]],
        ious=pair_iou[matched],
        n_gt=int(np.count_nonzero(gt_ids)),
        n_pred=int(np.count_nonzero(pred_ids)),
    )


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels present (ascending) and each pixel's index into them (flat).

    Same as ``np.unique(labels, return_inverse=True)``, but through a lookup
    table (no sort) unless the label values are much larger than the image.
    """
    flat = labels.ravel()
    if flat.size == 0 or int(flat.max()) > 4 * flat.size:
        ids, index = np.unique(flat, return_inverse=True)
        return ids, index.ravel()
    flat = flat.astype(np.intp, copy=False)
    ids = np.flatnonzero(np.bincount(flat))
    lookup = np.zeros(ids[-1] + 1, dtype=np.intp)
    lookup[ids] = np.arange(len(ids))
    return ids, lookup[flat]


def _assign(rows: np.ndarray, cols: np.ndarray, ious: np.ndarray, n_rows: int, n_cols: int):
    """Indices of the candidate pairs (rows[k], cols[k]) chosen by an optimal matching."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.intp)
    # Each connected group of candidate pairs is an independent assignment problem;
    # groups of a single pair (the usual case) are matched directly.
    graph = sparse.coo_matrix((np.ones(len(rows)), (rows, n_rows + cols)), (n_rows + n_cols,) * 2)
    _, group = connected_components(graph, directed=False)
    pair_group = group[rows]
    sizes = np.bincount(pair_group)
    chosen = [np.flatnonzero(sizes[pair_group] == 1)]
    for g in np.flatnonzero(sizes > 1):
        pairs = np.flatnonzero(pair_group == g)
        r_ids, r = np.unique(rows[pairs], return_inverse=True)
        c_ids, c = np.unique(cols[pairs], return_inverse=True)
        # weight 1 + small IoU share: more matches always win, then higher summed IoU
        weight = np.zeros((len(r_ids), len(c_ids)))
        weight[r, c] = 1.0 + ious[pairs] / (len(pairs) + 1)
        best_r, best_c = linear_sum_assignment(weight, maximize=True)
        lookup = {(i, j): k for i, j, k in zip(r, c, pairs)}
        chosen.append(
            np.array([lookup[i, j] for i, j in zip(best_r, best_c) if weight[i, j] > 0], int)
        )
    return np.sort(np.concatenate(chosen))


def instance_counts(gt: np.ndarray, pred: np.ndarray, iou: float = 0.5) -> tuple[int, int, int]:
    """(TP, FP, FN) of the instance matching at IoU >= ``iou``."""
    m = match_instances(gt, pred, iou)
    return m.tp, m.fp, m.fn


def average_precision(
    gts: np.ndarray | Sequence[np.ndarray],
    preds: np.ndarray | Sequence[np.ndarray],
    iou: float = 0.5,
) -> float:
    """AP@``iou`` = TP / (TP + FP + FN), counts summed over all image pairs.

    Args:
        gts, preds: one label image each, or equally long sequences of label
            images (an ndarray is always one image, of any dimension).

    Returns:
        A value in [0, 1]; 1.0 when there are no objects at all (nothing to
        find, nothing found).
    """
    if isinstance(gts, np.ndarray):
        gts = [gts]
    if isinstance(preds, np.ndarray):
        preds = [preds]
    if len(gts) != len(preds):
        raise ValueError(f"got {len(gts)} ground-truth images but {len(preds)} predictions")
    tp = fp = fn = 0
    for gt, pred in zip(gts, preds):
        counts = instance_counts(gt, pred, iou)
        tp, fp, fn = tp + counts[0], fp + counts[1], fn + counts[2]
    total = tp + fp + fn
    return 1.0 if total == 0 else tp / total


def image_parts(metric: str, gts: Sequence[np.ndarray], preds: Sequence[np.ndarray]) -> np.ndarray:
    """Per-image parts of ``metric`` whose sums over images give it
    (:func:`score_of_parts`), shape (images, k): ``"ap50"``: TP, FP, FN at IoU 0.5;
    ``"rand_error"``: the image's Rand error and 1 (the metric is their mean)."""
    if metric == "ap50":
        return np.array([instance_counts(g, p, 0.5) for g, p in zip(gts, preds)], float)
    if metric == "rand_error":
        return np.array([(rand_error(g, p), 1.0) for g, p in zip(gts, preds)], float)
    raise ValueError(f"metric must be 'ap50' or 'rand_error', got {metric!r}")


def score_of_parts(metric: str, sums: np.ndarray) -> np.ndarray:
    """The metric of summed :func:`image_parts` (..., k) as a score, higher is better:
    AP@0.5 (1.0 with nothing to find and nothing found), or minus the Rand error."""
    if metric == "ap50":
        total = sums.sum(-1)
        return np.where(total > 0, sums[..., 0] / np.maximum(total, 1), 1.0)
    return -sums[..., 0] / sums[..., 1]


def bootstrap_win_rate(
    metric: str,
    candidate: np.ndarray,
    incumbent: np.ndarray,
    *,
    resamples: int = 2000,
    seed: int = 0,
) -> float:
    """Share of bootstrap resamples of the images (drawn with replacement, the same
    draws for both) in which ``candidate`` scores strictly higher than ``incumbent``.

    Args:
        candidate, incumbent: :func:`image_parts` of two segmentations of the same
            images, shape (images, k).

    Returns:
        A value in [0, 1]: near 1 when the candidate is better on most images, near
        0.5 or below when its lead rests on a few of them (0 when they score the same).
    """
    n = len(candidate)
    if n == 0 or n != len(incumbent):
        raise ValueError(f"need the same images, got {n} and {len(incumbent)}")
    draws = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    ours = score_of_parts(metric, candidate[draws].sum(1))
    theirs = score_of_parts(metric, incumbent[draws].sum(1))
    return float(np.mean(ours > theirs))


def foreground_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """IoU of the foreground masks (``label > 0``); 1.0 when both are empty."""
    gt, pred = _check_pair(gt, pred)
    union = np.count_nonzero((gt > 0) | (pred > 0))
    return 1.0 if union == 0 else np.count_nonzero((gt > 0) & (pred > 0)) / union


def rand_error(gt: np.ndarray, pred: np.ndarray, *, background_singletons: bool = False) -> float:
    """1 - adapted Rand F-score over the ground-truth foreground (ISBI 2012 convention).

    Pixels where ``gt == 0`` are ignored. Within the rest, predicted background is
    one segment like any other (plain :func:`skimage.metrics.adapted_rand_error`, the
    metric the team reports), or, with ``background_singletons=True``, every
    predicted background pixel is a segment of its own (SNEMI3D convention). 0 means
    the prediction splits the ground-truth foreground exactly as the ground truth
    does; 0.0 too when ``gt`` has no foreground (nothing to evaluate).
    """
    gt, pred = _check_pair(gt, pred)
    if not np.any(gt):
        return 0.0
    # small consecutive labels keep skimage's contingency table small
    gt = relabel_sequential(gt.astype(np.int64))[0]
    pred = relabel_sequential(pred.astype(np.int64))[0]
    if background_singletons:
        background = pred == 0
        pred[background] = pred.max() + 1 + np.arange(np.count_nonzero(background))
    error, _, _ = adapted_rand_error(gt, pred, ignore_labels=(0,))
    return float(error)


def pixel_error(gt: np.ndarray, pred: np.ndarray) -> float:
    """Fraction of pixels whose foreground/background (``label > 0``) differs."""
    gt, pred = _check_pair(gt, pred)
    return float(np.mean((gt > 0) != (pred > 0))) if gt.size else 0.0


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"label images differ in shape: {gt.shape} vs {pred.shape}")
    for name, labels in (("ground truth", gt), ("prediction", pred)):
        if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
            raise ValueError(f"{name} must be an integer label image, got dtype {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise ValueError(f"{name} has negative labels; labels must be >= 0")
    return gt, pred
