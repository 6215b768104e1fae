"""Validation scores a model as it would be returned: for instances with the threshold
and growth tuned on the validation planes, so that model selection compares networks,
not one fixed post-processing's fit to each of them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.config import UNetConfig
from napari_unet.data import Plane
from napari_unet.model import UNet
from napari_unet.predictor import Predictor
from napari_unet.progress import collect
from napari_unet.sample_data import make_sample
from napari_unet.training import TrainSettings, train_iter
from napari_unet.validation import evaluate, validate


def _squares(size: int = 48, side: int = 10, step: int = 14) -> np.ndarray:
    labels = np.zeros((size, size), np.int32)
    starts = range(2, size - side, step)
    for n, (y, x) in enumerate(((y, x) for y in starts for x in starts), start=1):
        labels[y : y + side, x : x + side] = n
    return labels


def _unsure_predictor(labels: np.ndarray) -> Predictor:
    """A Predictor whose foreground probability is 0.4 on every object and 0.1 elsewhere:
    right objects, but below the stored threshold of 0.5."""
    model = UNet(UNetConfig(base_channels=4, depth=2)).eval()
    predictor = Predictor.prepare(model, device="cpu", precision="fp32")
    foreground = np.where(labels > 0, 0.4, 0.1).astype(np.float32)
    probabilities = np.stack([1 - foreground, foreground])
    predictor.probabilities = lambda image, **_: probabilities
    return predictor


@pytest.mark.parametrize("select_by", ["ap50", "rand_error"])
def test_validate_scores_with_the_post_processing_tuned_on_the_planes(select_by):
    labels = _squares()
    plane = Plane(np.zeros((1, *labels.shape), np.float32), None, np.ones(labels.shape), labels)
    predictor = _unsure_predictor(labels)

    stored = evaluate(predictor, [plane])
    tuned = validate(predictor, [plane], select_by)

    assert stored["ap50"] == 0.0  # nothing passes threshold 0.5
    assert tuned["ap50"] == 1.0 and tuned["threshold"] < 0.4
    assert tuned["rand_error"] < stored["rand_error"]


def test_every_validation_record_says_how_it_was_tuned_and_the_best_one_is_returned():
    samples = [make_sample((64, 64), n_objects=6, seed=s) for s in range(3)]
    images, labels = [s[0] for s in samples], [s[1] for s in samples]
    settings = TrainSettings(
        base_channels=4, depth=2, tile_size=60, batch_size=2, iterations=6, minutes=None,
        val_fraction=0.34, val_every=2, val_every_s=None, precision="fp32", seed=0,
    )  # fmt: skip
    torch.manual_seed(0)
    records, model = collect(train_iter(images, labels, settings=settings))

    validations = [r.val for r in records if r.val is not None]
    assert len(validations) >= 3
    assert all({"threshold", "expand", "min_size", "ap50"} <= set(v) for v in validations)
    best = max(validations, key=lambda v: v["ap50"])  # the first of equals is kept
    assert model.info.history["best_val"]["ap50"] == best["ap50"]
    chosen = model.info.history["best_val"]
    assert model.info.postprocess == {k: chosen[k] for k in ("threshold", "expand", "min_size")}
