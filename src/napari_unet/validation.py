"""Validation during training: metrics of a model on held-out planes and the
instance post-processing (threshold, smallest object, growth) tuned on them, all through the one
prediction path (:class:`napari_unet.predictor.Predictor`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import metrics
from .data import Plane
from .postprocess import Postprocess, keep_unless_clearly_beaten, tune_instances
from .predictor import Predictor


def evaluate(predictor: Predictor, planes: Sequence[Plane]) -> dict[str, float]:
    """Validation metrics of ``predictor``'s model on held-out planes, restricted to
    their annotated region, with the model's stored post-processing.

    Instance: ``ap50`` (TP/(TP+FP+FN) at IoU 0.5 over all planes), ``iou``
    (foreground IoU), ``rand_error`` (foreground-restricted). Semantic: ``iou``
    (mean over classes) and ``pixel_error``.
    """
    data = ValidationSet.of(predictor, planes)
    return data.scores([predictor.to_labels(p) for p in data.probabilities])


def validate(predictor: Predictor, planes: Sequence[Plane], select_by: str) -> dict[str, float]:
    """The validation metrics a model would be returned with: for instances, those of
    the post-processing tuned on ``planes`` (:func:`tune_postprocess`, which adds
    ``threshold``, ``expand`` and ``min_size``); for classes, :func:`evaluate`'s.

    Scoring every validated snapshot with its own tuned post-processing is what
    training's model selection compares: with the stored one (threshold 0.5, growth
    1 px), dense tissue read a Rand error ten times the tuned one and the choice
    between snapshots followed the post-processing rather than the network. A model
    that already carries tuned settings (one being fine-tuned) keeps them unless the
    new choice is clearly better (:func:`~napari_unet.postprocess.keep_unless_clearly_beaten`).
    """
    if predictor.model.info.task == "instance":
        info = predictor.model.info
        stored = Postprocess.of_model(info) if info.postprocess else None
        return tune_postprocess(predictor, planes, select_by, incumbent=stored)
    return evaluate(predictor, planes)


def tune_postprocess(
    predictor: Predictor,
    planes: Sequence[Plane],
    select_by: str,
    *,
    incumbent: Postprocess | None = None,
) -> dict[str, float]:
    """Instance threshold, smallest object and growth that score best by ``select_by``
    on validation planes (see :func:`napari_unet.postprocess.tune_instances`), or
    ``incumbent`` where that choice does not beat it in a share
    :data:`~napari_unet.postprocess.SWITCH_CONFIDENCE` of bootstrap resamples of the
    planes; with the metrics there."""
    data = ValidationSet.of(predictor, planes)
    foreground = [p[1] for p in data.probabilities]
    found = tune_instances(  # each choice is scored by the selecting metric alone
        foreground,
        data.truths,
        lambda truths, preds: score(data.scores(preds, only=select_by), select_by),
    )
    post = keep_unless_clearly_beaten(
        foreground, Postprocess.of_tuned(found), incumbent,
        lambda ours, theirs: metrics.bootstrap_win_rate(
            select_by, data.parts(select_by, ours), data.parts(select_by, theirs)
        ),
    )  # fmt: skip
    preds = [predictor.to_labels(p, post) for p in data.probabilities]
    return {**post.as_dict(), **data.scores(preds)}


@dataclass
class ValidationSet:
    """Validation planes as a predictor sees them.

    Attributes:
        probabilities: (n_classes, Y, X) of each (normalised) plane.
        truths: each plane's labels cropped to its annotated region's box, 0 outside
            the region.
        boxes: (box slices, region inside the box) of each plane.
        task: "instance" or "semantic".
    """

    probabilities: list[np.ndarray]
    truths: list[np.ndarray]
    boxes: list[tuple[tuple[slice, slice], np.ndarray]]
    task: str

    @classmethod
    def of(cls, predictor: Predictor, planes: Sequence[Plane]) -> ValidationSet:
        probabilities, truths, boxes = [], [], []
        for plane in planes:
            region = plane.weight > 0
            rows, cols = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
            box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            probabilities.append(predictor.probabilities(plane.image, channel_axis=0,
                                                         normalized=True))  # fmt: skip
            truths.append(np.where(region[box], plane.labels[box], 0))
            boxes.append((box, region[box]))
        return cls(probabilities, truths, boxes, predictor.model.info.task)

    def cropped(self, labels: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Whole-plane labels cropped to the boxes and masked to the regions (semantic
        labels as painted: class id + 1)."""
        shift = 1 if self.task == "semantic" else 0  # 1 = background, 2.. = classes
        return [
            np.where(inside, lab[box] + shift, 0) for lab, (box, inside) in zip(labels, self.boxes)
        ]

    def scores(self, labels: Sequence[np.ndarray], only: str | None = None) -> dict[str, float]:
        """Metrics of whole-plane ``labels`` against the truths (instances: only the one
        named, if given)."""
        preds, gts = self.cropped(labels), self.truths
        if self.task == "semantic":
            return _semantic_scores(gts, preds)
        measures = {
            "ap50": lambda: metrics.average_precision(gts, preds, iou=0.5),
            "iou": lambda: np.mean([metrics.foreground_iou(g, p) for g, p in zip(gts, preds)]),
            "rand_error": lambda: np.mean([metrics.rand_error(g, p) for g, p in zip(gts, preds)]),
        }
        return {k: float(m()) for k, m in measures.items() if only in (None, k)}

    def parts(self, metric: str, labels: Sequence[np.ndarray]) -> np.ndarray:
        """Per-plane parts of an instance ``metric`` (:func:`napari_unet.metrics.image_parts`)."""
        return metrics.image_parts(metric, self.truths, self.cropped(labels))


def _semantic_scores(gts: list[np.ndarray], preds: list[np.ndarray]) -> dict[str, float]:
    """Mean IoU over the painted classes and the pixel error, on annotated pixels."""
    gt = np.concatenate([g.ravel() for g in gts])
    pr = np.concatenate([p.ravel() for p in preds])
    annotated = gt > 0
    ious = [
        np.sum((gt == c) & (pr == c) & annotated) / np.sum(((gt == c) | (pr == c)) & annotated)
        for c in np.unique(gt[annotated])
    ]
    return {
        "iou": float(np.mean(ious)),
        "pixel_error": float(np.mean(gt[annotated] != pr[annotated])),
    }


def score(metrics: dict[str, float], select_by: str = "ap50") -> float:
    """The number the best model maximises: AP@0.5 (or minus the Rand error, for
    ``select_by="rand_error"``) for instances, mean IoU for classes."""
    if select_by == "rand_error" and "rand_error" in metrics:
        return -metrics["rand_error"]
    return metrics["ap50"] if "ap50" in metrics else metrics.get("iou", 0.0)
