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


def _fragmented_planes(with_fragment: list[bool]):
    """Planes of one 20 x 20 cell each and a predictor whose foreground probability dips
    near the cell's edge on the planes marked: there a 4 x 4 fragment (16 px) splits off,
    which only a smallest object of 20 px drops (see test_postprocess)."""
    truth = np.zeros((40, 40), np.int32)
    truth[10:30, 10:30] = 1
    probabilities = []
    for fragment in with_fragment:
        foreground = np.where(truth > 0, 0.9, 0.1).astype(np.float32)
        if fragment:
            foreground[24:26, 10:30] = 0.2
            foreground[26:30, 14:30] = 0.2
        probabilities.append(np.stack([1 - foreground, foreground]))
    planes = [
        Plane(np.full((1, 40, 40), n, np.float32), None, np.ones((40, 40)), truth)
        for n in range(len(with_fragment))
    ]
    model = UNet(UNetConfig(base_channels=4, depth=2)).eval()
    predictor = Predictor.prepare(model, device="cpu", precision="fp32")
    predictor.probabilities = lambda image, **_: probabilities[int(image[0, 0, 0])]
    return predictor, planes


@pytest.mark.parametrize(
    ("fragments", "stored", "min_size"),
    [
        (1, {"threshold": 0.5, "expand": 1, "min_size": 10}, 10),  # a lead on 1 plane of 10
        (10, {"threshold": 0.5, "expand": 1, "min_size": 10}, 20),  # better on every plane
        (1, {}, 20),  # nothing stored: the tuned choice, however slight its lead
    ],
)
def test_a_model_keeps_its_stored_settings_unless_the_tuned_ones_are_clearly_better(
    fragments, stored, min_size
):
    predictor, planes = _fragmented_planes([n < fragments for n in range(10)])
    predictor.model.info.postprocess = dict(stored)

    found = validate(predictor, planes, "ap50")

    assert found["min_size"] == min_size
    expected_ap = 1.0 if min_size == 20 else 10 / (10 + fragments)  # fragments are FPs
    assert found["ap50"] == pytest.approx(expected_ap)
    if min_size == 10:  # kept whole: the stored threshold too, not the tuned one (0.3)
        assert found["threshold"] == 0.5
