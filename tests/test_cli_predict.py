"""``napari-unet predict``: outputs per input, folders and globs, clear failures."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import main
from napari_unet.config import ModelInfo, UNetConfig
from napari_unet.inference import predict, segment
from napari_unet.model import UNet
from napari_unet.model_io import save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=2), ModelInfo())
    return save_model(model, tmp_path / "tiny.safetensors"), model


def image(seed, shape=(40, 50)):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def test_writes_one_label_tiff_per_input_with_the_same_name(tmp_path, model_file, capsys):
    path, model = model_file
    inputs = tmp_path / "in"
    inputs.mkdir()
    tifffile.imwrite(inputs / "a.tif", image(1))
    tifffile.imwrite(inputs / "b.tiff", image(2, (3, 30, 30)))
    out = tmp_path / "out"
    args = ["--model", str(path), "--out", str(out), "--device", "cpu", "--precision", "fp32"]
    code = main(["predict", *args, "--images", str(inputs), "--probabilities"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "a.tif",
        "a_probabilities.tif",
        "b.tif",
        "b_probabilities.tif",
    ]
    expected = segment(model, image(1), device="cpu", precision="fp32")
    assert np.array_equal(tifffile.imread(out / "a.tif"), expected)
    probs = predict(model, image(1), device="cpu", precision="fp32")
    np.testing.assert_allclose(tifffile.imread(out / "a_probabilities.tif"), probs, atol=1e-6)
    assert tifffile.imread(out / "b.tif").shape == (3, 30, 30)
    printed = capsys.readouterr().out
    assert "a.tif" in printed and " s" in printed
    # without --probabilities the plane-by-plane segment path gives the same labels
    out2 = tmp_path / "out2"
    args2 = ["--model", str(path), "--out", str(out2), "--device", "cpu", "--precision", "fp32"]
    assert main(["predict", *args2, "--images", str(inputs / "*.tif*")]) == 0
    for name in ("a.tif", "b.tif"):
        assert np.array_equal(tifffile.imread(out2 / name), tifffile.imread(out / name))


@pytest.mark.parametrize(
    ("pixels", "message"),
    [
        (np.full((20, 20), np.nan, dtype=np.float32), "NaN"),
        (np.zeros((1, 1), dtype=np.uint8), "too small"),
        (np.zeros((20, 20, 3), dtype=np.uint8), "RGB"),
    ],
)
def test_bad_image_exits_2_with_one_message_and_no_output(
    tmp_path, model_file, capsys, pixels, message
):
    path, _ = model_file
    tifffile.imwrite(tmp_path / "bad.tif", pixels)
    out = tmp_path / "out"
    code = main(
        ["predict", "--model", str(path), "--images", str(tmp_path / "bad.tif"), "--out", str(out)]
    )
    assert code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert message in error[-1] and "Traceback" not in "\n".join(error)
    assert not out.exists()  # no folder, no label file, no temporary file


def test_unloadable_model_and_missing_images_exit_2(tmp_path, capsys):
    bogus = tmp_path / "model.safetensors"
    bogus.write_bytes(b"not a model")
    tifffile.imwrite(tmp_path / "a.tif", image(0))
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--model",
                str(bogus),
                "--images",
                str(tmp_path / "a.tif"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "model" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert (
        main(
            [
                "predict",
                "--model",
                str(bogus),
                "--images",
                str(tmp_path / "nope*.tif"),
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "no TIFF images" in capsys.readouterr().err


def test_refuses_to_overwrite_its_inputs(tmp_path, model_file, capsys):
    path, _ = model_file
    tifffile.imwrite(tmp_path / "a.tif", image(0))
    before = tifffile.imread(tmp_path / "a.tif")
    code = main(
        [
            "predict",
            "--model",
            str(path),
            "--images",
            str(tmp_path / "a.tif"),
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2 and "overwrite" in capsys.readouterr().err
    assert np.array_equal(tifffile.imread(tmp_path / "a.tif"), before)


def test_threshold_option_and_its_range(tmp_path, model_file, capsys):
    path, model = model_file
    tifffile.imwrite(tmp_path / "a.tif", image(0))
    args = ["predict", "--model", str(path), "--images", str(tmp_path / "a.tif")]
    assert main([*args, "--out", str(tmp_path / "out"), "--threshold", "0.3"]) == 0
    expected = segment(model, image(0), threshold=0.3, expand=1)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "a.tif"), expected)
    assert main([*args, "--out", str(tmp_path / "bad"), "--threshold", "1.5"]) == 2
    assert "--threshold must lie between 0 and 1" in capsys.readouterr().err


def test_tta_flag_writes_tta_labels_and_the_uncertainty(tmp_path, model_file, capsys):
    path, model = model_file
    tifffile.imwrite(tmp_path / "a.tif", image(3, (45, 38)))
    exact = ["--device", "cpu", "--precision", "fp32"]
    args = ["predict", "--model", str(path), "--images", str(tmp_path / "a.tif"), *exact]
    out = tmp_path / "out"
    assert main([*args, "--out", str(out), "--tta", "d4", "--uncertainty"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "a_uncertainty.tif"]
    labels, uncertainty = segment(
        model, image(3, (45, 38)), tta="d4", with_uncertainty=True, device="cpu", precision="fp32"
    )
    assert np.array_equal(tifffile.imread(out / "a.tif"), labels)
    np.testing.assert_allclose(tifffile.imread(out / "a_uncertainty.tif"), uncertainty, atol=1e-6)
    assert main([*args, "--out", str(tmp_path / "no"), "--uncertainty"]) == 2
    assert "--uncertainty needs test-time augmentation" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--out", str(tmp_path / "bad"), "--tta", "rot"])
    assert "invalid choice: 'rot'" in capsys.readouterr().err
