"""``napari-unet train``: pairs by file name, model written, clear errors."""

from __future__ import annotations

import tifffile

from napari_unet.cli import main
from napari_unet.model_io import load_model
from napari_unet.sample_data import make_sample
from napari_unet.training import PRESETS, TrainSettings

TINY = TrainSettings(base_channels=4, depth=2, tile_size=60, batch_size=2, val_fraction=0)


def write_pairs(root, names):
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for seed, name in enumerate(names):
        image, labels = make_sample((64, 64), n_objects=6, seed=seed)
        tifffile.imwrite(root / "images" / f"{name}.tif", (image * 200).astype("uint8"))
        tifffile.imwrite(root / "labels" / f"{name}.tif", labels.astype("uint16"))


def test_train_cli_writes_a_loadable_model(tmp_path, capsys, monkeypatch):
    write_pairs(tmp_path, ["a", "b"])
    (tmp_path / "images" / "unlabelled.tif").write_bytes(b"ignored: no label file")
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    out = tmp_path / "model.safetensors"
    argv = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels")]
    argv += ["--out", str(out), "--iterations", "3", "--preset", "tiny"]
    assert main(argv) == 0
    model = load_model(out)
    assert model.info.history["iterations"] == 3
    printed = capsys.readouterr().out
    assert "2 image/label pair(s)" in printed and "trained 3 steps" in printed


def test_train_cli_select_by_and_gap_reach_the_model(tmp_path, capsys, monkeypatch):
    write_pairs(tmp_path, ["a", "b", "c"])
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    out = tmp_path / "model.safetensors"
    argv = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels")]
    argv += ["--out", str(out), "--iterations", "3", "--preset", "tiny", "--val-fraction", "0.34"]
    assert main([*argv, "--select-by", "rand_error", "--gap", "2"]) == 0
    model = load_model(out)
    assert model.info.training["select_by"] == "rand_error" and model.info.training["gap"] == 2
    assert set(model.info.postprocess) == {"threshold", "expand", "min_size"}
    assert "segmentation settings chosen on validation" in capsys.readouterr().out


def test_train_cli_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    argv = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels")]
    assert main([*argv, "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "no image in" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "m"), "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_train_cli_precision_override_reaches_the_run(tmp_path, capsys, monkeypatch):
    write_pairs(tmp_path, ["a", "b"])
    monkeypatch.setitem(PRESETS, "tiny", TINY.replace(precision="auto"))
    out = tmp_path / "model.safetensors"
    argv = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels")]
    argv += ["--out", str(out), "--iterations", "2", "--preset", "tiny", "--precision", "bf16"]
    assert main(argv) == 0
    assert load_model(out).info.training["precision_used"] == "bf16"
    assert "ran in bf16" in capsys.readouterr().out
