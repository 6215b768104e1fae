"""Training engine: records, budgets, stopping, saving, resuming, refresh, bad input."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch

from napari_unet.config import UNetConfig
from napari_unet.data import Plane
from napari_unet.inference import predict
from napari_unet.model import UNet
from napari_unet.model_io import load_model
from napari_unet.normalization import normalize
from napari_unet.predictor import Predictor
from napari_unet.progress import collect
from napari_unet.sample_data import make_sample
from napari_unet.training import (
    BEST_NAME,
    LAST_NAME,
    PRESETS,
    TrainSettings,
    ValidationSet,
    _learning_rate,
    train,
    train_iter,
)

TINY = TrainSettings(
    base_channels=4,
    depth=2,
    tile_size=60,
    batch_size=2,
    iterations=4,
    minutes=None,
    val_fraction=0.0,
    precision="fp32",
    preview_every_s=0.0,
)


@pytest.fixture(scope="module")
def pairs():
    samples = [make_sample((64, 64), n_objects=6, seed=s) for s in range(3)]
    return [s[0] for s in samples], [s[1] for s in samples]


def test_records_and_budget_by_iterations(pairs):
    records, model = collect(train_iter(*pairs, settings=TINY))
    assert [r.iteration for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r.loss) and r.lr > 0 for r in records)
    assert records[-1].progress == 1.0
    assert not records[0].preview_model.training
    assert model.info.training["gap"] == 1 and model.info.task == "instance"
    assert model.info.history["iterations"] == 4


def test_budget_by_minutes_stops_in_time(pairs):
    settings = TINY.replace(iterations=None, minutes=1.5 / 60)
    records, _ = collect(train_iter(*pairs, settings=settings))
    assert 1.4 < records[-1].elapsed < 10.0  # one step past the budget at most


def test_should_stop_ends_between_steps_and_saves_loadable_models(pairs, tmp_path):
    settings = TINY.replace(iterations=1000, val_fraction=0.34, val_every=2)
    run = train_iter(*pairs, settings=settings, out_dir=tmp_path, should_stop=lambda: calls())
    count = iter(range(100))

    def calls():
        return next(count) >= 5

    records, model = collect(run)
    assert max(r.iteration for r in records) == 5
    assert set(records[-1].val) >= {"ap50", "iou", "rand_error"}
    best, last = load_model(tmp_path / BEST_NAME), load_model(tmp_path / LAST_NAME)
    assert last.info.history["iterations"] == 5
    x = torch.rand(1, 1, 60, 60)
    torch.testing.assert_close(best(x), model.cpu()(x))  # returned model is the best one


def test_training_learns_the_sample():
    image, labels = make_sample((96, 96), n_objects=8, seed=0)
    settings = TINY.replace(iterations=40, lr=1e-2, precision="auto")
    records, _ = collect(train_iter([image], [labels], settings=settings))
    first = np.mean([r.loss for r in records[:5]])
    last = np.mean([r.loss for r in records[-5:]])
    assert last < 0.7 * first


def test_seeded_runs_are_reproducible(pairs):
    a, _ = collect(train_iter(*pairs, settings=TINY))
    b, _ = collect(train_iter(*pairs, settings=TINY))
    assert [r.loss for r in a] == [r.loss for r in b]


def test_fine_tune_from_file_and_channel_mismatch(pairs, tmp_path):
    _, model = collect(train_iter(*pairs, settings=TINY, out_dir=tmp_path))
    _, tuned = collect(train_iter(*pairs, settings=TINY, init_model=tmp_path / LAST_NAME))
    assert tuned.config == model.config
    rgb = [np.stack([i, i, i], -1) for i in pairs[0]]
    with pytest.raises(ValueError, match="input channel"):
        collect(train_iter(rgb, pairs[1], settings=TINY, init_model=tmp_path / LAST_NAME))


def test_semantic_scribbles(pairs):
    scribbles = np.zeros((64, 64), np.uint8)
    scribbles[2:10, 2:30] = 1
    scribbles[30:40, 30:40] = 2
    scribbles[50:60, 5:15] = 3
    _, model = collect(train_iter([pairs[0][0]], [scribbles], mode="semantic", settings=TINY))
    assert model.config.n_classes == 3 and model.info.task == "semantic"


def test_refresh_updates_data_and_recomputes_only_changed_weights(pairs):
    images, labels = pairs
    more = [lab.copy() for lab in labels]
    more[0][:5, :5] = 99
    calls = []

    def refresh():
        calls.append(1)
        return (images, more, None) if len(calls) == 1 else None

    settings = TINY.replace(refresh_every_s=0.0, iterations=3)
    records, _ = collect(train_iter(images, labels, settings=settings, refresh=refresh))
    assert len(calls) >= 2 and len(records) == 3


def test_full_disk_while_saving_keeps_the_previous_file(pairs, tmp_path, monkeypatch):
    collect(train_iter(*pairs, settings=TINY, out_dir=tmp_path))
    before = (tmp_path / LAST_NAME).read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("napari_unet.model_io.save_file", no_space)
    with pytest.raises(OSError, match=r"could not save the model .* No space left"):
        collect(train_iter(*pairs, settings=TINY, out_dir=tmp_path))
    assert (tmp_path / LAST_NAME).read_bytes() == before


def test_presets_and_schedule():
    paper = PRESETS["paper"]
    assert paper.optimizer == "sgd" and paper.momentum == 0.99 and paper.batch_size == 1
    assert paper.base_channels == 64 and paper.config().output_size(paper.tile_size) == 388
    assert "fast" in PRESETS
    dense = PRESETS["dense"]
    assert (dense.gap, dense.select_by) == (2, "rand_error")
    assert dense.replace(gap=1, select_by="ap50") == PRESETS["fast"]  # otherwise "fast"
    settings = TrainSettings(lr=1.0, warmup=0.1)
    assert _learning_rate(settings, 0.05) == pytest.approx(0.5)
    assert _learning_rate(settings, 0.1) == pytest.approx(1.0)
    assert _learning_rate(settings, 1.0) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="not valid"):
        TrainSettings(tile_size=101)


def test_train_drains(pairs):
    model = train(*pairs, settings=TINY)
    assert model.config.base_channels == 4


def test_validation_pass_sees_the_image_as_inference_does():
    """Validation runs the Predictor on training's normalised planes; it must see them as
    ``predict`` sees the raw image (normalisation, reflect mirroring, tiles), or training
    would be scored on other input than it is used on."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=2)).eval()
    image = np.random.default_rng(0).random((37, 41)).astype(np.float32)
    norm = model.info.normalization
    plane = normalize(image[None], norm["low"], norm["high"])
    predictor = Predictor.prepare(model, device="cpu", precision="fp32")
    held_out = Plane(plane, None, np.ones((37, 41), np.float32), np.zeros((37, 41), int))
    ours = ValidationSet.of(predictor, [held_out]).probabilities[0]
    reference = predict(model, image, precision="fp32", device="cpu")
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_returned_model_carries_the_segmentation_settings_tuned_on_validation(pairs, tmp_path):
    from napari_unet.inference import segment
    from napari_unet.model_io import read_model_info
    from napari_unet.postprocess import TUNE_EXPANDS, TUNE_MIN_SIZES, TUNE_THRESHOLDS

    settings = TINY.replace(iterations=6, val_fraction=0.34, select_by="rand_error")
    _, model = collect(train_iter(*pairs, settings=settings, out_dir=tmp_path))
    chosen = model.info.postprocess
    assert chosen["threshold"] in TUNE_THRESHOLDS and chosen["expand"] in TUNE_EXPANDS
    assert chosen["min_size"] in TUNE_MIN_SIZES
    tuned = model.info.history["best_val"]
    assert tuned["threshold"] == chosen["threshold"] and "rand_error" in tuned
    assert read_model_info(tmp_path / BEST_NAME)[1].postprocess == chosen
    image = pairs[0][0]
    np.testing.assert_array_equal(
        segment(model, image), segment(model, image, **chosen)
    )  # segment uses them by default


def test_select_by_must_be_known():
    with pytest.raises(ValueError, match="select_by must be one of"):
        TINY.replace(select_by="loss")


def test_training_autocasts_with_the_precision_its_step_measured(pairs, monkeypatch):
    from napari_unet import hardware, train_hardware

    step = hardware.Choice(hardware.RunSettings("bf16", True, 260, 2), 1.0, "fake step")
    inference = hardware.Choice(hardware.RunSettings("fp32", False, 572, 1), 1.0, "fake")
    asked = []

    def fake_choose_training(model, device, **kwargs):
        asked.append(model.config)
        return step

    monkeypatch.setattr(train_hardware, "choose_training", fake_choose_training)
    monkeypatch.setattr(hardware, "choose", lambda *a, **k: inference)
    auto = TINY.replace(precision="auto", channels_last=None, iterations=2)
    model = train(*pairs, settings=auto)
    assert asked and asked[0].base_channels == TINY.base_channels
    assert model.info.training["precision_used"] == "bf16"
    assert model.info.training["channels_last_used"] is True
    fixed = train(*pairs, settings=auto.replace(precision="fp32", channels_last=False))
    assert fixed.info.training["precision_used"] == "fp32"
    assert fixed.info.training["channels_last_used"] is False
