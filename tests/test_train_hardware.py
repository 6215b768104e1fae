"""Training's own measurement: the optimiser step's precision, memory format and tile shape."""

from __future__ import annotations

import pytest
import torch

from napari_unet import hardware, train_hardware
from napari_unet.config import UNetConfig
from napari_unet.hardware import Choice, RunSettings
from napari_unet.model import UNet
from napari_unet.train_hardware import choose_training, tile_shapes
from napari_unet.train_settings import PRESETS
from napari_unet.training import run_settings

CPU = torch.device("cpu")
DEFAULT = UNetConfig(base_channels=16, depth=3)


@pytest.fixture
def inference_prefers_channels_last(monkeypatch):
    """Inference measured channels_last faster (as on the AVX2 EPYC), fp32 only."""
    rows = [{"precision": "fp32", "channels_last": cl, "agrees": None} for cl in (False, True)]
    choice = Choice(RunSettings("fp32", True, 572, 1), 1.0, "inference", rows)
    monkeypatch.setattr(hardware, "choose", lambda *a, **k: choice)
    return choice


def step_timer(channels_last_factor=1.2, per_input_px=1.0, calls=None):
    """Fake step seconds: proportional to the input area, channels_last slower."""

    def timer(settings: RunSettings, tile: int) -> float:
        if calls is not None:
            calls.append((settings, tile))
        layout = channels_last_factor if settings.channels_last else 1.0
        return per_input_px * settings.batch_size * tile**2 / 1e6 * layout

    return timer


def test_shapes_keep_the_reference_input_area():
    shapes = tile_shapes(DEFAULT)
    assert shapes[0] == (188, 4)  # the fast preset's own step
    area = 4 * 188**2
    for tile, batch in shapes:
        assert DEFAULT.is_valid_input(tile) and batch * tile**2 <= area
        assert batch * (tile + DEFAULT.pool_factor) ** 2 > area  # the largest that fits
    assert [batch for _, batch in shapes] == [4, 2, 1]


def test_training_takes_the_layout_its_step_measures_faster_not_inferences(
    cache, inference_prefers_channels_last
):
    model = UNet(DEFAULT)
    choice = choose_training(model, CPU, timer=step_timer(channels_last_factor=1.2))
    assert not choice.settings.channels_last and choice.settings.precision == "fp32"
    formats = [r for r in choice.timings if r["stage"] == "format"]
    assert {r["channels_last"] for r in formats} == {False, True}
    assert "fp32 contiguous" in choice.reason and "fp32 channels_last" in choice.reason
    run = run_settings(model, CPU, PRESETS["fast"])
    assert not run.channels_last and run.max_tile == 572  # validation tiles: inference's
    faster = choose_training(
        model, CPU, remeasure=True, timer=step_timer(channels_last_factor=0.8)
    )
    assert faster.settings.channels_last


def test_the_shape_with_most_output_pixels_per_second_wins(cache, inference_prefers_channels_last):
    model = UNet(DEFAULT)
    # time proportional to the input area: the largest tile crops the least context
    choice = choose_training(model, CPU, timer=step_timer())
    shapes = [r for r in choice.timings if r["stage"] == "shape"]
    assert [(r["tile"], r["batch"]) for r in shapes] == tile_shapes(DEFAULT)
    assert (choice.settings.max_tile, choice.settings.batch_size) == (372, 1)
    assert choice.mpx_per_s == max(r["mpx_per_s"] for r in shapes)

    def large_tiles_slow(settings, tile):  # e.g. caches overflow
        return step_timer()(settings, tile) * (3.0 if tile > 188 else 1.0)

    slow = choose_training(model, CPU, remeasure=True, timer=large_tiles_slow)
    assert (slow.settings.max_tile, slow.settings.batch_size) == (188, 4)


def test_reduced_precision_is_timed_only_where_inference_found_it_agreeing(cache, monkeypatch):
    model = UNet(DEFAULT)
    for agrees, timed in ((True, {"fp32", "bf16"}), (False, {"fp32"})):
        rows = [{"precision": "fp32", "agrees": None}, {"precision": "bf16", "agrees": agrees}]
        choice = Choice(RunSettings(), 1.0, "", rows)
        monkeypatch.setattr(hardware, "choose", lambda *a, _c=choice, **k: _c)
        calls = []
        choose_training(model, CPU, remeasure=True, timer=step_timer(calls=calls))
        assert {settings.precision for settings, _ in calls} == timed


def test_the_training_choice_is_cached_apart_from_inferences(
    cache, inference_prefers_channels_last
):
    model = UNet(DEFAULT)
    first = choose_training(model, CPU, timer=step_timer())
    assert not first.from_cache and first.key.endswith(train_hardware.KEY_SUFFIX)

    def must_not_measure(settings, tile):
        raise AssertionError("measured again")

    again = choose_training(model, CPU, timer=must_not_measure)
    assert again.from_cache and again.settings == first.settings
    wider = UNet(UNetConfig(base_channels=8, depth=3))
    calls = []
    choose_training(wider, CPU, timer=step_timer(calls=calls))
    assert calls  # another network size is measured on its own


def test_real_measurement_of_a_small_network(cache):
    model = UNet(UNetConfig(base_channels=4, depth=2))
    choice = choose_training(model, CPU)
    assert choice.mpx_per_s > 0 and all(r["s"] > 0 for r in choice.timings)
    assert model.training  # the model itself was not touched (a copy was trained)
    assert model.config.is_valid_input(choice.settings.max_tile)


def test_a_hopeless_candidate_runs_one_step_only(monkeypatch):
    """A format whose first step is far slower than the best so far (fp16 emulated on a
    CPU took 7.6 s a step where bf16 took 34 ms) is not stepped again."""
    bench = train_hardware._StepBench(UNet(UNetConfig(base_channels=4, depth=2)), CPU, None)
    steps = []
    monkeypatch.setattr(bench, "step_for", lambda settings, tile: lambda: steps.append(tile))
    settings = RunSettings("fp32", False, 92, 1)
    bench._seconds(settings, 92, slower_than=1e-9)
    assert len(steps) == 1
    steps.clear()
    bench._seconds(settings, 92, slower_than=None)
    assert len(steps) > 1  # an ordinary candidate is timed after its warm-up step
