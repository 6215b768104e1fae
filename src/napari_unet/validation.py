"""Validation during training: metrics of a model on held-out planes and the
instance post-processing (threshold, smallest object, growth) tuned on them, all through the one
prediction path (:class:`napari_unet.predictor.Predictor`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .data import Plane
from .postprocess import Postprocess, tune_instances
from .predictor import Predictor


def evaluate(predictor: Predictor, planes: Sequence[Plane]) -> dict[str, float]:
    """Validation metrics of ``predictor``'s model on held-out planes, restricted to
    their annotated region, with the model's stored post-processing.

    Instance: ``ap50`` (TP/(TP+FP+FN) at IoU 0.5 over all planes), ``iou``
    (foreground IoU), ``rand_error`` (foreground-restricted). Semantic: ``iou``
    (mean over classes) and ``pixel_error``.
    """
    probabilities, truths, scorer = _validation_set(predictor, planes)
    return scorer(truths, [predictor.to_labels(p) for p in probabilities])


def validate(predictor: Predictor, planes: Sequence[Plane], select_by: str) -> dict[str, float]:
    """The validation metrics a model would be returned with: for instances, those of
    the post-processing tuned on ``planes`` (:func:`tune_postprocess`, which adds
    ``threshold``, ``expand`` and ``min_size``); for classes, :func:`evaluate`'s.

    Scoring every validated snapshot with its own tuned post-processing is what
    training's model selection compares: with the stored one (threshold 0.5, growth
    1 px), dense tissue read a Rand error ten times the tuned one and the choice
    between snapshots followed the post-processing rather than the network.
    """
    if predictor.model.info.task == "instance":
        return tune_postprocess(predictor, planes, select_by)
    return evaluate(predictor, planes)


def tune_postprocess(
    predictor: Predictor, planes: Sequence[Plane], select_by: str
) -> dict[str, float]:
    """Instance threshold, smallest object and growth that score best by ``select_by``
    on validation planes (see :func:`napari_unet.postprocess.tune_instances`), with the
    metrics there."""
    probabilities, truths, scorer = _validation_set(predictor, planes)
    found = tune_instances(  # each choice is scored by the selecting metric alone
        [p[1] for p in probabilities],
        truths,
        lambda truths, preds: score(scorer(truths, preds, only=select_by), select_by),
    )
    post = Postprocess.of_tuned(found)
    preds = [predictor.to_labels(p, post) for p in probabilities]
    return {**post.as_dict(), **scorer(truths, preds)}


def _validation_set(predictor: Predictor, planes: Sequence[Plane]):
    """Probabilities (n_classes, Y, X) of each (normalised) plane, their truths cropped
    to the annotated region's box, and ``scorer(truths, labels, only=None)`` -> metrics
    (instances: only the one named, if given), which crops whole-plane labels to the
    same boxes and masks them to the region (semantic labels are compared as painted:
    class id + 1)."""
    from . import metrics

    task = predictor.model.info.task
    probabilities, truths, boxes = [], [], []
    for plane in planes:
        region = plane.weight > 0
        rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
        box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        probs = predictor.probabilities(plane.image, channel_axis=0, normalized=True)
        probabilities.append(probs)
        truths.append(np.where(region[box], plane.labels[box], 0))
        boxes.append((box, region[box]))

    def scorer(gts, labels, only: str | None = None) -> dict[str, float]:
        if task == "semantic":  # class ids as painted: 1 = background, 2.. = classes
            labels = [lab + 1 for lab in labels]
        preds = [np.where(inside, lab[box], 0) for lab, (box, inside) in zip(labels, boxes)]
        if task == "semantic":
            gt = np.concatenate([g.ravel() for g in gts])
            pr = np.concatenate([p.ravel() for p in preds])
            annotated = gt > 0
            ious = [
                np.sum((gt == c) & (pr == c) & annotated)
                / np.sum(((gt == c) | (pr == c)) & annotated)
                for c in np.unique(gt[annotated])
            ]
            return {
                "iou": float(np.mean(ious)),
                "pixel_error": float(np.mean(gt[annotated] != pr[annotated])),
            }
        measures = {
            "ap50": lambda: metrics.average_precision(gts, preds, iou=0.5),
            "iou": lambda: np.mean([metrics.foreground_iou(g, p) for g, p in zip(gts, preds)]),
            "rand_error": lambda: np.mean([metrics.rand_error(g, p) for g, p in zip(gts, preds)]),
        }
        return {k: float(m()) for k, m in measures.items() if only in (None, k)}

    return probabilities, truths, scorer


def score(metrics: dict[str, float], select_by: str = "ap50") -> float:
    """The number the best model maximises: AP@0.5 (or minus the Rand error, for
    ``select_by="rand_error"``) for instances, mean IoU for classes."""
    if select_by == "rand_error" and "rand_error" in metrics:
        return -metrics["rand_error"]
    return metrics["ap50"] if "ap50" in metrics else metrics.get("iou", 0.0)
