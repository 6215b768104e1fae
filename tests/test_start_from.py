"""``napari-unet train --start-from MODEL``: fine-tuning keeps the starting model's
network, normalisation and classes, and re-tunes its post-processing."""

from __future__ import annotations

import pytest
import tifffile
import torch

from napari_unet.bioimageio_export import export_bioimageio
from napari_unet.cli import main
from napari_unet.config import ModelInfo, UNetConfig
from napari_unet.model import UNet
from napari_unet.model_io import load_model, save_model
from napari_unet.sample_data import make_sample
from napari_unet.training import PRESETS, TrainSettings

TINY = TrainSettings(base_channels=4, depth=2, tile_size=60, batch_size=2, val_fraction=0.34)
UNTUNED = {"threshold": 0.9, "expand": 16}  # not among the values tuning tries


def write_pairs(root, n: int = 3) -> list[str]:
    for folder in ("images", "labels"):
        (root / folder).mkdir()
    for seed in range(n):
        image, labels = make_sample((64, 64), n_objects=6, seed=seed)
        tifffile.imwrite(root / "images" / f"{seed}.tif", (image * 200).astype("uint8"))
        tifffile.imwrite(root / "labels" / f"{seed}.tif", labels.astype("uint16"))
    return ["--images", str(root / "images"), "--labels", str(root / "labels")]


def start_model() -> UNet:
    torch.manual_seed(1)
    info = ModelInfo(normalization={"low": 3.0, "high": 97.0}, postprocess=dict(UNTUNED))
    return UNet(UNetConfig(base_channels=6, depth=2, dropout=0.0), info)


@pytest.mark.parametrize("kind", ["file", "package"])
def test_start_from_keeps_network_and_normalisation_and_retunes(
    tmp_path, monkeypatch, capsys, one_torch_thread, kind
):
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    pairs = write_pairs(tmp_path)
    start = tmp_path / "start.safetensors"
    save_model(start_model(), start)
    if kind == "package":
        start = export_bioimageio(
            start_model(), tmp_path / "start.zip", name="start model", description="d",
            authors=["a"], weight_formats=("pytorch_state_dict",),
        )  # fmt: skip
    out = tmp_path / "tuned.safetensors"
    argv = ["train", *pairs, "--out", str(out), "--iterations", "2", "--preset", "tiny"]
    assert main([*argv, "--start-from", str(start)]) == 0
    assert f"starting from {start}" in capsys.readouterr().out
    model = load_model(out)
    assert model.config == start_model().config  # not the preset's 4 channels
    assert model.info.normalization == {"low": 3.0, "high": 97.0}
    assert set(model.info.postprocess) == {"threshold", "expand", "min_size"}
    assert model.info.postprocess != UNTUNED  # re-tuned on the validation images
    assert model.info.history["best_val"]["threshold"] == model.info.postprocess["threshold"]


def test_start_from_a_tuned_model_without_validation_keeps_its_settings(
    tmp_path, monkeypatch, capsys, one_torch_thread
):
    """Nothing held out: the starting model's post-processing stays, and the summary
    says there was no validation (it used to look up a validation record and fail)."""
    monkeypatch.setitem(PRESETS, "tiny", TINY.replace(val_fraction=0.0))
    start, out = tmp_path / "start.safetensors", tmp_path / "m.safetensors"
    save_model(start_model(), start)
    argv = ["train", *write_pairs(tmp_path, 2), "--out", str(out), "--preset", "tiny"]
    assert main([*argv, "--iterations", "1", "--start-from", str(start)]) == 0
    assert "no validation data held out" in capsys.readouterr().out
    assert load_model(out).info.postprocess == UNTUNED


def test_start_from_new_is_a_fresh_network(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setitem(PRESETS, "tiny", TINY.replace(val_fraction=0.0))
    argv = ["train", *write_pairs(tmp_path, 2), "--out", str(tmp_path / "m.safetensors")]
    assert main([*argv, "--iterations", "1", "--preset", "tiny", "--start-from", "new"]) == 0
    assert load_model(tmp_path / "m.safetensors").config == TINY.config()


def test_start_from_a_missing_model_is_one_line(tmp_path, capsys):
    argv = ["train", *write_pairs(tmp_path, 1), "--out", str(tmp_path / "m.safetensors")]
    assert main([*argv, "--start-from", str(tmp_path / "nothing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_fine_tuning_keeps_the_starting_model_when_no_step_beats_it(one_torch_thread):
    """The starting model is a validation candidate: 2 steps at a destructive learning
    rate score worse, so training returns the weights it started from."""
    from napari_unet.progress import drain
    from napari_unet.sample_data import make_sample
    from napari_unet.training import train_iter

    image, labels = make_sample((128, 128), n_objects=10, seed=0)
    settings = TINY.replace(val_fraction=0.5, iterations=60, seed=0)
    start = drain(train_iter([image], [labels], settings=settings))
    wrecked = settings.replace(iterations=2, lr=5.0, warmup=0.0)
    returned = drain(train_iter([image], [labels], settings=wrecked, init_model=start))
    assert returned.info.history["val"][0]["iteration"] == 0
    for key, value in start.state_dict().items():
        assert torch.equal(returned.state_dict()[key], value), key
