"""Bad input matrix: every case ends in one clear sentence (CLI: exit code 2, one line,
no traceback) before any work, and leaves every file as it was.

Each case failed on the code before this file was written (a traceback, an endless
run, a silently wrong result or a lost file); see the issue on bad input.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings

import numpy as np
import pytest
import tifffile
import torch

import napari_unet.model_io as model_io
import napari_unet.training as training
from napari_unet.atomic_files import STALE_AFTER_S
from napari_unet.cli import main
from napari_unet.commands._files import write_tiff_atomic
from napari_unet.config import MAX_CLASSES, ModelInfo, UNetConfig
from napari_unet.data import prepare_planes
from napari_unet.inference import as_planes
from napari_unet.model import UNet
from napari_unet.model_io import ModelFileError, load_model, save_model
from napari_unet.progress import collect
from napari_unet.sample_data import make_sample
from napari_unet.training import PRESETS, TrainSettings, train_iter
from napari_unet.weights import weight_map, weight_map_components

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = TrainSettings(
    base_channels=4, depth=2, tile_size=60, batch_size=2, iterations=2, minutes=None,
    val_fraction=0.0, precision="fp32",
)  # fmt: skip
UNAVAILABLE_DEVICE = "cuda:99"  # no machine has 100 GPUs


# -- helpers -----------------------------------------------------------------------------
def listing(root) -> dict[str, tuple]:
    """Every path under ``root`` with its mtime and bytes: equal listings = nothing changed."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def one_sentence(capsys) -> str:
    """The CLI's only stderr line (fails on a traceback or a multi-line message)."""
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def write_pairs(root, n=2, shape=(64, 64)):
    for folder in ("images", "labels"):
        (root / folder).mkdir()
    for seed in range(n):
        image, labels = make_sample(shape, n_objects=6, seed=seed)
        tifffile.imwrite(root / "images" / f"a{seed}.tif", (image * 200).astype("uint8"))
        tifffile.imwrite(root / "labels" / f"a{seed}.tif", labels.astype("uint16"))


@pytest.fixture
def train_root(tmp_path, monkeypatch):
    """Two image/label pairs, the tiny preset, and a train_iter that fails the test if
    training starts (so a bad setting that today trains forever fails instead)."""
    write_pairs(tmp_path)
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    real = training.train_iter

    def must_not_train(*args, **kwargs):
        for _ in real(*args, **kwargs):
            raise AssertionError("training started despite bad input")
        raise AssertionError("training ran despite bad input")
        yield

    monkeypatch.setattr(training, "train_iter", must_not_train)
    return tmp_path


def train_argv(root, *extra, out=None):
    out = root / "model.safetensors" if out is None else out
    argv = ["train", "--images", str(root / "images"), "--labels", str(root / "labels")]
    return [*argv, "--out", str(out), "--preset", "tiny", *extra]


# -- train: settings ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--iterations", "-3"], "iterations must be a whole number >= 1, got -3"),
        (["--iterations", "0"], "iterations must be a whole number >= 1, got 0"),
        (["--minutes", "-1"], "minutes must be a number in (0, inf), got -1.0"),
        (["--minutes", "nan"], "minutes must be a number in (0, inf), got nan"),
        (["--minutes", "0"], "minutes must be a number in (0, inf), got 0.0"),
        (["--gap", "-3"], "gap must be a whole number >= 0, got -3"),
        (["--val-fraction", "1"], "val_fraction must be a number in [0, 1), got 1.0"),
        (["--device", UNAVAILABLE_DEVICE], f"device '{UNAVAILABLE_DEVICE}' is not available"),
    ],
)
def test_train_cli_refuses_bad_settings(train_root, capsys, extra, expected):
    before = listing(train_root)
    assert main(train_argv(train_root, *extra)) == 2
    assert expected in one_sentence(capsys)
    assert listing(train_root) == before


# -- train: output and input files --------------------------------------------------------
def out_is_an_input(root):
    return train_argv(root, out=root / "images" / "a0.tif"), "is one of the input files"


def out_is_a_text_file(root):
    (root / "notes.txt").write_text("my notes")
    return train_argv(root, out=root / "notes.txt"), "exists and is not a napari-unet model"


def out_below_a_file(root):
    out = root / "notes.txt" / "model.safetensors"
    (root / "notes.txt").write_text("my notes")
    return train_argv(root, out=out), "is a file, not a folder"


def out_folder_is_full(root, monkeypatch):
    usage = type("usage", (), {"total": 10**9, "used": 10**9, "free": 1000})
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage)
    return train_argv(root), "MiB free but the model needs about"


def truncated_tiff(root):
    data = (root / "images" / "a1.tif").read_bytes()
    (root / "images" / "a1.tif").write_bytes(data[: len(data) // 2])
    return train_argv(root), f"cannot read image {root / 'images' / 'a1.tif'}:"


def junk_png(root):
    (root / "images" / "a1.tif").unlink()
    (root / "images" / "a1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 10)
    return train_argv(root), f"cannot read image {root / 'images' / 'a1.png'}:"


def complex_image(root):
    (root / "images" / "a1.tif").unlink()
    np.save(root / "images" / "a1.npy", np.ones((64, 64), np.complex64))
    expected = f"image {root / 'images' / 'a1.npy'} must hold real numbers, got dtype complex64"
    return train_argv(root), expected


def nan_image(root):
    image = np.ones((64, 64), np.float32)
    image[5, 7] = np.nan
    tifffile.imwrite(root / "images" / "a1.tif", image)
    name = root / "images" / "a1.tif"
    return train_argv(
        root
    ), f"image {name} has 1 NaN or infinite pixel(s), the first at index (5, 7)"


def huge_class_id(root):
    labels = np.ones((64, 64), np.uint32)
    labels[:32] = 2
    labels[3, 4] = 100_000
    tifffile.imwrite(root / "labels" / "a1.tif", labels)
    expected = f"labels {root / 'labels' / 'a1.tif'} uses class 100000 at index (3, 4), but at "
    expected += f"most {MAX_CLASSES} classes"
    return train_argv(root, "--mode", "semantic"), expected


@pytest.mark.parametrize(
    "case",
    [
        out_is_an_input,
        out_is_a_text_file,
        out_below_a_file,
        out_folder_is_full,
        truncated_tiff,
        junk_png,
        complex_image,
        nan_image,
        huge_class_id,
    ],
)
def test_train_cli_refuses_bad_files_before_training(train_root, capsys, monkeypatch, case):
    args = (train_root, monkeypatch) if case is out_folder_is_full else (train_root,)
    argv, expected = case(*args)
    before = listing(train_root)
    assert main(argv) == 2
    assert expected in one_sentence(capsys)
    assert listing(train_root) == before


def test_train_cli_keeps_the_model_when_saving_fails(tmp_path, capsys, monkeypatch):
    write_pairs(tmp_path)
    monkeypatch.setitem(PRESETS, "tiny", TINY)
    rescue_dir = tmp_path / "temp"
    rescue_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(rescue_dir))
    real_save_file, out = model_io.save_file, tmp_path / "models" / "model.safetensors"

    def disk_full_in_models(tensors, filename, metadata=None):
        if os.path.dirname(filename) == str(out.parent):
            raise model_io.SafetensorError(
                "Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                'message: "No space left on device" })'
            )
        return real_save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(model_io, "save_file", disk_full_in_models)
    assert main(train_argv(tmp_path, out=out)) == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    (rescued,) = rescue_dir.glob("napari-unet-rescued-model-*.safetensors")
    assert f"could not save the model to {out} (No space left on device)" in message
    assert f"it was saved to {rescued} instead" in message
    assert load_model(rescued).info.history["iterations"] == TINY.iterations
    assert list(out.parent.iterdir()) == []  # no partial file, no temporary file


# -- train: API ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("iterations", -3), ("iterations", 0), ("iterations", 2.5), ("iterations", True),
        ("minutes", -1.0), ("minutes", float("nan")), ("minutes", 0), ("minutes", float("inf")),
        ("batch_size", 0), ("gap", -3), ("lr", 0.0), ("lr", float("nan")), ("lr", -1e-3),
        ("w0", -1.0), ("sigma", 0.0), ("val_fraction", 1.0), ("val_fraction", -0.1),
        ("momentum", 1.0), ("warmup", 1.0), ("weight_decay", -1.0), ("threads", 0),
        ("val_every", 0), ("val_max_planes", 0), ("refresh_every_s", float("nan")),
    ],
)  # fmt: skip
def test_train_settings_refuse_values_out_of_range(name, value):
    with pytest.raises(ValueError, match=f"^{name} must be .*, got {value!r}$"):
        TINY.replace(**{name: value})


def test_train_settings_bound_the_network_size():
    with pytest.raises(ValueError, match="base_channels is 3000, more than the 512 supported"):
        TINY.replace(base_channels=3000)


def test_train_iter_refuses_an_unavailable_device():
    image, labels = make_sample((64, 64), n_objects=4, seed=0)
    run = train_iter([image], [labels], settings=TINY.replace(device=UNAVAILABLE_DEVICE))
    with pytest.raises(ValueError, match=f"device '{UNAVAILABLE_DEVICE}' is not available"):
        next(run)


def test_prepare_planes_names_the_bad_image_and_labels():
    """The API names the pair by its index (the CLI by its file, above)."""
    image, labels = make_sample((32, 32), n_objects=3, seed=0)
    bad = image.astype(np.float32)
    bad[2, 3] = np.inf
    with pytest.raises(ValueError, match=r"^image 1 has 1 NaN or infinite pixel\(s\), the first"):
        prepare_planes([image, bad], [labels, labels])
    with pytest.raises(ValueError, match=r"^image 0 must hold real numbers, got dtype complex"):
        prepare_planes([image.astype(np.complex64)], [labels])
    classes = np.ones((2, 32, 32), np.int32)
    classes[1, 4, 5] = 5000
    with pytest.raises(ValueError, match=r"^labels 0, slice 1 uses class 5000 at index \(4, 5\)"):
        prepare_planes([np.stack([image, image])], [classes], mode="semantic")


def test_class_ids_above_255_keep_their_class():
    image = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    labels = np.ones((64, 64), np.uint16)
    labels[:, 40:] = 258
    planes, _, n_classes = prepare_planes([image], [labels], mode="semantic")
    assert n_classes == 258 and planes[0].target[0, 50] == 257  # not 257 % 256
    records, model = collect(train_iter([image], [labels], mode="semantic", settings=TINY))
    assert len(records) == TINY.iterations and model.config.n_classes == 258


def test_erased_labels_during_training_keep_the_last_good_data():
    image, labels = make_sample((64, 64), n_objects=4, seed=0)
    settings = TINY.replace(iterations=3, refresh_every_s=0.0)

    def erase():
        return [image], [np.zeros_like(labels)], None

    with pytest.warns(RuntimeWarning, match="new annotation was not used"):
        records, model = collect(train_iter([image], [labels], settings=settings, refresh=erase))
    assert [r.iteration for r in records] == [1, 2, 3]
    assert "no object labelled inside the annotated region" in records[0].notice
    assert model.info.history["iterations"] == 3


# -- predict ------------------------------------------------------------------------------
@pytest.fixture
def predict_root(tmp_path):
    torch.manual_seed(0)
    save_model(UNet(UNetConfig(base_channels=4, depth=2), ModelInfo()), tmp_path / "m.safetensors")
    (tmp_path / "in").mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (40, 40), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in" / "a0.tiff", pixels)
    return tmp_path


def predict_argv(root, *extra, images=None, out=None):
    images = [str(root / "in" / "a0.tiff")] if images is None else images
    out = root / "out" if out is None else out
    argv = ["predict", "--model", str(root / "m.safetensors"), "--out", str(out)]
    return [*argv, "--device", "cpu", "--images", *images, *extra]


def unrelated_output_exists(root):
    (root / "out").mkdir()
    tifffile.imwrite(root / "out" / "a0.tif", np.full((5, 5), 7, np.uint8))
    return predict_argv(root), f"{root / 'out' / 'a0.tif'} already exists; pass --overwrite"


def two_inputs_one_output(root):
    tifffile.imwrite(root / "in" / "a0.tif", np.zeros((40, 40), np.uint8))
    images = [str(root / "in" / "a0.tif"), str(root / "in" / "a0.tiff")]
    return predict_argv(root, images=images), "a0.tif and a0.tiff would both write"


def probabilities_clash(root):
    tifffile.imwrite(root / "in" / "a0_probabilities.tif", np.zeros((40, 40), np.uint8))
    images = [str(root / "in" / "a0.tiff"), str(root / "in" / "a0_probabilities.tif")]
    expected = "a0.tiff and a0_probabilities.tif would both write"
    return predict_argv(root, "--probabilities", images=images), expected


def batch_size_zero(root):
    return predict_argv(root, "--batch-size", "0"), "batch_size must be at least 1, got 0"


def out_is_a_file(root):
    (root / "notes.txt").write_text("my notes")
    return predict_argv(root, out=root / "notes.txt"), "is a file, not a folder"


def two_channel_image(root):
    tifffile.imwrite(root / "in" / "a0.tiff", np.zeros((96, 96, 2), np.uint8))
    return predict_argv(root), "looks like it has 2 channels"


def truncated_input(root):
    data = (root / "in" / "a0.tiff").read_bytes()
    (root / "in" / "a0.tiff").write_bytes(data[:300])
    return predict_argv(root), f"cannot read image {root / 'in' / 'a0.tiff'}:"


def bad_model_device(root):
    return predict_argv(root, "--device", UNAVAILABLE_DEVICE), "is not available"


@pytest.mark.parametrize(
    "case",
    [
        unrelated_output_exists,
        two_inputs_one_output,
        probabilities_clash,
        batch_size_zero,
        out_is_a_file,
        two_channel_image,
        truncated_input,
        bad_model_device,
    ],
)
def test_predict_cli_refuses_bad_input_and_changes_nothing(predict_root, capsys, case):
    argv, expected = case(predict_root)
    before = listing(predict_root)
    assert main(argv) == 2
    assert expected in one_sentence(capsys)
    assert listing(predict_root) == before


def test_predict_cli_replaces_existing_outputs_only_with_overwrite(predict_root, capsys):
    argv, _ = unrelated_output_exists(predict_root)
    assert main([*argv, "--overwrite"]) == 0
    assert tifffile.imread(predict_root / "out" / "a0.tif").shape == (40, 40)


# -- inference layout ---------------------------------------------------------------------
@pytest.mark.parametrize("channels", [2, 3, 4])
def test_a_short_last_axis_on_a_one_channel_model_is_ambiguous(channels):
    """(Y, X, 2) was segmented as 96 planes of 96 x 2 px; RGB(A) was refused already."""
    with pytest.raises(ValueError, match="but this model takes 1 input channel; convert it"):
        as_planes(np.zeros((96, 96, channels), np.float32), in_channels=1)


@pytest.mark.parametrize("depth", [1, 5, 7])
def test_stacks_still_work_on_a_one_channel_model(depth):
    planes, spatial = as_planes(np.zeros((depth, 32, 33), np.float32), in_channels=1)
    assert planes.shape == (depth, 1, 32, 33) and spatial == (depth, 32, 33)


# -- model files --------------------------------------------------------------------------
def crafted_model(path, config: dict, tensors: dict) -> None:
    """A safetensors file whose description claims ``config`` but holds ``tensors``."""
    info = ModelInfo.default_for(2).to_dict()
    metadata = {"format": "napari-unet", "format_version": "1", "config": json.dumps(config)}
    metadata["info"] = json.dumps(info)
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


@pytest.fixture
def no_real_network(monkeypatch):
    """Fail the test if the loader builds a real (not ``meta``) network."""
    real = model_io.UNet

    def only_on_meta(*args, **kwargs):
        if torch.get_default_device().type != "meta":
            raise AssertionError("a network was allocated before the file was checked")
        return real(*args, **kwargs)

    monkeypatch.setattr(model_io, "UNet", only_on_meta)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"base_channels": 3000}, "base_channels is 3000, more than the 512 supported"),
        ({"n_classes": 100_000}, "n_classes is 100000, more than the 1024 supported"),
        ({"base_channels": 500, "depth": 8}, "do not fit the network described"),
    ],
)
def test_load_model_checks_the_description_before_allocating(
    tmp_path, no_real_network, config, expected
):
    path = tmp_path / "crafted.safetensors"
    crafted_model(path, {"in_channels": 1, "n_classes": 2, **config}, {"x": torch.zeros(1)})
    assert path.stat().st_size < 1000
    with pytest.raises(ModelFileError, match=expected) as error:
        load_model(path)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("device", [UNAVAILABLE_DEVICE, "nonsense"])
def test_load_model_refuses_a_bad_device(tmp_path, device):
    path = save_model(UNet(UNetConfig(base_channels=4, depth=2)), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=repr(device)) as error:
        load_model(path, device=device)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("writer", ["model", "tiff"])
def test_saving_removes_only_our_stale_temporary_files(tmp_path, writer):
    target = tmp_path / ("m.safetensors" if writer == "model" else "labels.tif")
    stale, fresh = (tmp_path / f".{target.name}.{tag}.tmp" for tag in ("abcd_123", "efgh_456"))
    others = [tmp_path / ".other.tif.abcd_123.tmp", tmp_path / f".{target.name}.x.tmp"]
    for path in (stale, fresh, *others):
        path.write_bytes(b"left behind by a killed save")
    old = time.time() - STALE_AFTER_S - 60
    for path in (stale, *others):
        os.utime(path, (old, old))
    if writer == "model":
        save_model(UNet(UNetConfig(base_channels=4, depth=2)), target)
    else:
        write_tiff_atomic(target, np.zeros((4, 4), np.uint8))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(p.name for p in (target, fresh, *others))


# -- weight map ---------------------------------------------------------------------------
def test_weight_map_of_empty_labels_is_the_class_weight_alone():
    """No objects: the paper's border term (needs two objects) is 0, w = w_c = 1."""
    empty = np.zeros((2, 12, 13), np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parts = weight_map_components(empty)
        total = weight_map(empty)
    assert np.all(parts.border == 0) and np.all(parts.class_weight == 1)
    np.testing.assert_array_equal(total, parts.class_weight)


# -- help ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "predict"])
def test_help_is_plain_text_with_defaults(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "``" not in text
    expected = "(default: instance)" if command == "train" else "objects, px (default: model's)"
    assert expected in " ".join(text.split())
