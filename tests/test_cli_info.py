"""``napari-unet info``: device, instruction sets, settings in use and why, throughput."""

from __future__ import annotations

import torch

from napari_unet import hardware
from napari_unet.cli import main
from napari_unet.config import UNetConfig
from napari_unet.model import UNet
from napari_unet.model_io import save_model


def test_info_measures_once_then_reads_the_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(hardware.CACHE_ENV, str(tmp_path / "cache"))
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_model(UNet(UNetConfig(base_channels=5, depth=2)), path)
    assert main(["info", "--model", str(path), "--device", "cpu"]) == 0
    first = capsys.readouterr().out
    for field in ("device", "instruction sets", "settings", "why", "throughput", "training"):
        assert field in first
    assert "training  not measured yet" in first
    assert main(["info", "--model", str(path), "--device", "cpu", "--training"]) == 0
    timed = capsys.readouterr().out
    assert "training step: fp32" in timed and "fastest step" in timed
    assert "measured now" in first and "Mpx/s" in first and "base 5 channels" in first
    assert main(["info", "--model", str(path), "--device", "cpu"]) == 0
    cached = capsys.readouterr().out
    assert "read from the cache" in cached and "fastest step" in cached
    assert main(["info", "--model", str(path), "--device", "cpu", "--remeasure"]) == 0
    assert "measured now" in capsys.readouterr().out


def test_info_with_an_unknown_preset_or_device_is_one_sentence(capsys):
    assert main(["info", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["info", "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "device" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
