"""The one device/precision policy: measured choices, the cache, overrides."""

from __future__ import annotations

import json

import pytest
import torch

from napari_unet import hardware
from napari_unet.config import UNetConfig
from napari_unet.hardware import RunSettings, choose, choose_iter
from napari_unet.model import UNet
from napari_unet.predictor import Predictor
from napari_unet.progress import collect

CPU = torch.device("cpu")


@pytest.fixture
def offered(monkeypatch):
    """Pretend the CPU offers bf16 natively, so that it is a measured candidate."""
    monkeypatch.setattr(hardware, "candidate_precisions", lambda device: (["fp32", "bf16"], []))


@pytest.fixture
def fp32_only(monkeypatch):
    """Pretend the CPU has no native reduced precision, whatever this machine has (an AMX
    Xeon offers bf16 and fp16), for tests about tiles and the cache."""
    monkeypatch.setattr(hardware, "candidate_precisions", lambda device: (["fp32"], []))


def tiny(base: int = 4, depth: int = 2) -> UNet:
    torch.manual_seed(0)
    return UNet(UNetConfig(base_channels=base, depth=depth))


def timer_of(seconds_per_mpx: dict[str, float], tile_bonus=None):
    """Fake timings: seconds per output megapixel by precision (optionally scaled per tile)."""
    calls = []

    def timer(settings: RunSettings, tile: int) -> float:
        calls.append((settings, tile))
        bonus = 1.0 if tile_bonus is None else tile_bonus(tile)
        pixels = settings.batch_size * (tile - 12) ** 2 / 1e6
        layout = 0.9 if settings.channels_last else 1.0
        return seconds_per_mpx[settings.precision] * pixels * layout * bonus

    timer.calls = calls
    return timer


def test_fp32_is_chosen_where_bf16_measures_slower(cache, offered):
    choice = choose(tiny(), CPU, timer=timer_of({"fp32": 1.0, "bf16": 8.0}))
    assert choice.settings.precision == "fp32"
    assert choice.settings.channels_last  # the faster layout of the fake timings
    assert "bf16" in choice.reason


def test_bf16_is_chosen_where_it_measures_faster_and_agrees(cache, offered, monkeypatch):
    monkeypatch.setattr(hardware._Bench, "agrees", lambda self, settings, tile: True)
    choice = choose(tiny(), CPU, timer=timer_of({"fp32": 1.0, "bf16": 0.3}))
    assert choice.settings.precision == "bf16"


def test_a_faster_precision_whose_labels_differ_is_refused(cache, offered, monkeypatch):
    monkeypatch.setattr(hardware._Bench, "agrees", lambda self, settings, tile: False)
    choice = choose(tiny(), CPU, timer=timer_of({"fp32": 1.0, "bf16": 0.3}))
    assert choice.settings.precision == "fp32"
    assert "labels differ from fp32" in choice.reason


def test_bf16_is_not_timed_where_the_cpu_has_no_native_bf16(cache, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2", "avx512f"})
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    timer = timer_of({"fp32": 1.0, "bf16": 0.1})
    choice = choose(tiny(), CPU, timer=timer)
    assert {settings.precision for settings, _ in timer.calls} == {"fp32"}
    assert choice.settings.precision == "fp32"
    assert "no native bf16" in choice.reason


def test_the_largest_tile_is_the_fastest_measured_one(cache, fp32_only):
    model = tiny()
    config = model.config
    middle = hardware._valid_near(config, 860)

    def prefer_middle(tile):  # cost per pixel lowest at the middle tile
        return 1.0 if tile == middle else 1.5

    choice = choose(model, CPU, timer=timer_of({"fp32": 1.0}, prefer_middle))
    assert choice.settings.max_tile == middle
    grows = choose(model, CPU, remeasure=True, timer=timer_of({"fp32": 1.0}, lambda t: 1e3 / t))
    assert grows.settings.max_tile == hardware._valid_near(config, max(hardware.TILE_TARGETS))


def test_measurement_yields_progress_and_is_cached_and_reused(cache, fp32_only):
    model = tiny()
    steps, choice = collect(choose_iter(model, CPU, timer=timer_of({"fp32": 1.0})))
    assert steps[0][0] == 0 and steps[-1][0] == steps[-1][1] > 0
    assert not choice.from_cache and cache.is_file()

    def must_not_measure(settings, tile):
        raise AssertionError("the cached choice should have been used")

    again = choose(model, CPU, timer=must_not_measure)
    assert again.from_cache and again.settings == choice.settings
    remeasured = choose(model, CPU, remeasure=True, timer=timer_of({"fp32": 1.0}))
    assert not remeasured.from_cache


def test_the_cache_is_per_network_size_torch_version_and_device(cache, fp32_only, monkeypatch):
    model = tiny()
    choose(model, CPU, timer=timer_of({"fp32": 1.0}))
    for changed in (
        lambda: monkeypatch.setattr(torch, "__version__", "9.9.9"),
        lambda: monkeypatch.setattr(hardware, "cpu_name", lambda: "another CPU"),
    ):
        changed()
        timer = timer_of({"fp32": 1.0})
        assert not choose(model, CPU, timer=timer).from_cache and timer.calls
    wider = tiny(base=6)
    timer = timer_of({"fp32": 1.0})
    assert not choose(wider, CPU, timer=timer).from_cache and timer.calls


def test_a_damaged_cache_is_measured_again(cache, fp32_only):
    cache.write_text("{not json")
    choice = choose(tiny(), CPU, timer=timer_of({"fp32": 1.0}))
    assert not choice.from_cache
    assert json.loads(cache.read_text())["version"] == hardware.CACHE_VERSION


def test_real_measurement_of_a_tiny_network(cache):
    choice = choose(tiny(), CPU)
    assert choice.settings.precision in ("fp32", "bf16", "fp16")
    assert choice.mpx_per_s > 0 and choice.timings
    assert UNetConfig(base_channels=4, depth=2).is_valid_input(choice.settings.max_tile)


def test_predictor_takes_given_settings_over_the_measured_ones(cache, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("nothing should be measured when every setting is given")
        yield

    monkeypatch.setattr(hardware, "choose_iter", refuse)
    given = {"precision": "bf16", "channels_last": True, "batch_size": 2, "tile_size": 60}
    predictor = Predictor.prepare(tiny(), device="cpu", **given)
    assert predictor.settings == RunSettings("bf16", True, 60, 2)
    assert predictor.tile_size == 60


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"precision": "fp8"}, "precision must be one of"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"tile_size": 101}, "not valid"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_predictor_refuses_bad_settings_before_measuring(cache, kwargs, message):
    with pytest.raises(ValueError, match=message):
        Predictor.prepare(tiny(), **kwargs)
    assert not cache.exists()
