"""Overlap-tile inference engine: seamless stitching, inputs, devices, bad input, OOM."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.config import ModelInfo, UNetConfig
from napari_unet.devices import choose_device
from napari_unet.inference import predict, predict_iter, segment, segment_iter
from napari_unet.model import UNet
from napari_unet.normalization import normalize
from napari_unet.postprocess import labels_from_probabilities
from napari_unet.progress import collect
from napari_unet.tiling import tile_layout

EXACT = {"precision": "fp32", "device": "cpu"}  # bf16 (the CPU default) is not exact


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(depth=2, in_channels=1, n_classes=2, task="instance", seed=0) -> UNet:
    torch.manual_seed(seed)
    info = ModelInfo(task=task, class_names=[f"c{i}" for i in range(n_classes)])
    config = UNetConfig(in_channels=in_channels, n_classes=n_classes, base_channels=4, depth=depth)
    return UNet(config, info).eval()


def whole_image_pass(model: UNet, image: np.ndarray) -> np.ndarray:
    """Reference: ONE forward pass over the image mirrored by the context margin on the
    leading side and by as little as makes a valid input on the trailing side
    (np.pad reflect, independent of the tiling code), cropped back to the image."""
    config = model.config
    planes = image[None] if image.ndim == 2 else image
    height, width = planes.shape[-2:]
    margin = config.context_margin
    after_y = config.input_size_for_output(height) - height - margin
    after_x = config.input_size_for_output(width) - width - margin
    x = normalize(planes, **model.info.normalization)
    x = np.pad(x, ((0, 0), (margin, after_y), (margin, after_x)), mode="reflect")
    with torch.no_grad():
        logits = model(torch.from_numpy(x)[None])
    return torch.softmax(logits, dim=1)[0, :, :height, :width].numpy()


def structured(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (np.sin(yy / 7.0) * np.cos(xx / 5.0) + 0.3 * rng.random(shape)).astype(np.float32)


@pytest.mark.parametrize(
    ("depth", "shape", "tiles"),
    [
        (2, (83, 121), [52, 68, 100]),  # tiles far smaller than the image
        (3, (157, 63), [100, 124, 180]),
        (4, (301, 157), [220, 316]),  # output 36: stride 32, not 36
        (4, (5, 7), [236]),  # image much smaller than one tile
    ],
)
def test_stitched_tiles_equal_one_whole_image_pass(depth, shape, tiles):
    model = tiny(depth)
    image = structured(shape)
    reference = whole_image_pass(model, image)
    for tile_size in tiles:
        probs = predict(model, image, tile_size=tile_size, **EXACT)
        assert probs.shape == (2, *shape) and probs.dtype == np.float32
        np.testing.assert_allclose(
            probs, reference, rtol=0, atol=1e-5, err_msg=f"tile {tile_size}"
        )


def test_the_equality_check_detects_tiles_off_the_pooling_grid():
    """Abutting output tiles (stride = output size, 4 mod 16 at depth 4) are misaligned:
    stitching them differs from the whole-image pass far beyond float rounding."""
    model = tiny(depth=4)
    config = model.config
    image = structured((120, 120))
    reference = whole_image_pass(model, image)
    tile, margin = 252, config.context_margin
    out = config.output_size(tile)  # 68 = 4 mod 16
    x = normalize(image[None], **model.info.normalization)
    padded = np.pad(x, ((0, 0), (margin, 400), (margin, 400)), mode="reflect")
    stitched = np.zeros_like(reference)
    for oy in range(0, 120, out):
        for ox in range(0, 120, out):
            with torch.no_grad():
                crop = torch.from_numpy(padded[None, :, oy : oy + tile, ox : ox + tile].copy())
                p = torch.softmax(model(crop), 1)[0].numpy()
            h, w = min(out, 120 - oy), min(out, 120 - ox)
            stitched[:, oy : oy + h, ox : ox + w] = p[:, :h, :w]
    assert np.abs(stitched - reference).max() > 1e-3


def test_progress_counts_tiles_and_the_model_is_left_untouched():
    model = tiny(depth=2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    generator = predict_iter(model, structured((90, 90)), tile_size=60, **EXACT)
    steps, probs = collect(generator)
    assert steps[0][0] == 0 and steps[-1][0] == steps[-1][1] > 1
    assert [d for d, _ in steps] == sorted(d for d, _ in steps)
    assert probs.shape == (2, 90, 90)
    assert model.training  # the caller's mode (e.g. mid-training) is kept
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_default_settings_stay_close_to_fp32():
    model = tiny(depth=3)
    image = structured((200, 150))
    exact = predict(model, image, **EXACT)
    fast = predict(model, image)  # device default (bf16 autocast on CPU)
    assert np.abs(fast - exact).max() < 0.05


def balance(model: UNet, image: np.ndarray) -> UNet:
    """Shift the head's foreground bias so about half the pixels are foreground."""
    probs = whole_image_pass(model, image)
    margin = np.log(probs[1] / probs[0])
    with torch.no_grad():
        model.head.bias[1] -= float(np.median(margin))
    return model


def test_stack_is_predicted_slice_by_slice_with_unique_ids():
    stack = np.stack([structured((60, 70), seed=s) for s in range(3)])
    model = balance(tiny(depth=2), stack[0])
    probs = predict(model, stack, tile_size=48, **EXACT)
    assert probs.shape == (2, 3, 60, 70)
    for z in range(3):
        np.testing.assert_allclose(probs[:, z], whole_image_pass(model, stack[z]), atol=1e-5)
    labels = segment(model, stack, min_size=1, **EXACT)
    assert labels.shape == stack.shape and labels.dtype == np.int32
    per_slice = [set(np.unique(labels[z])) - {0} for z in range(3)]
    assert not (per_slice[0] & per_slice[1]) and not (per_slice[1] & per_slice[2])
    ids = np.unique(labels[labels > 0])
    assert ids.size > 3 and np.array_equal(ids, np.arange(1, ids.size + 1))  # 1..N, no gaps
    joined = segment(model, stack, min_size=1, join_slices=True, **EXACT)
    assert np.array_equal(joined > 0, labels > 0) and joined.max() <= labels.max()


def test_segment_is_postprocessed_prediction():
    model = tiny(depth=2)
    image = structured((70, 50))
    probs = predict(model, image, **EXACT)
    expected = labels_from_probabilities(probs, min_size=3, expand=1)
    assert np.array_equal(segment(model, image, min_size=3, expand=1, **EXACT), expected)
    semantic = tiny(depth=2, n_classes=3, task="semantic")
    classes = segment(semantic, image, **EXACT)
    assert np.array_equal(classes, np.argmax(predict(semantic, image, **EXACT), axis=0))


def test_channels_last_axis_or_named_axis():
    model = tiny(depth=2, in_channels=3)
    rgb = np.stack([structured((50, 40), seed=s) for s in range(3)], axis=-1)
    last = predict(model, rgb, **EXACT)
    first = predict(model, np.moveaxis(rgb, -1, 0).copy(), channel_axis=0, **EXACT)
    np.testing.assert_allclose(last, first, atol=1e-6)
    assert last.shape == (2, 50, 40)
    with pytest.raises(ValueError, match="3 input channels"):
        predict(model, rgb[..., 0], **EXACT)
    grey_model = tiny(depth=2)
    with pytest.raises(ValueError, match="RGB"):
        predict(grey_model, rgb, **EXACT)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float64])
def test_any_numeric_dtype(dtype):
    model = tiny(depth=2)
    image = (np.random.default_rng(0).random((40, 40)) * 200).astype(dtype)
    expected = predict(model, image.astype(np.float32), **EXACT)
    np.testing.assert_allclose(predict(model, image, **EXACT), expected, atol=1e-6)


def test_dask_and_zarr_inputs_and_zarr_output_match_numpy():
    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    model = tiny(depth=2)
    image = structured((130, 110))
    expected = predict(model, image, tile_size=60, **EXACT)
    lazy = da.from_array(image, chunks=(50, 50))
    np.testing.assert_allclose(predict(model, lazy, tile_size=60, **EXACT), expected, atol=1e-6)
    stored = zarr.zeros(image.shape, chunks=(64, 64), dtype=image.dtype)
    stored[...] = image
    out = zarr.zeros((2, *image.shape), chunks=(1, 64, 64), dtype=np.float32)
    result = predict(model, stored, tile_size=60, out=out, **EXACT)
    assert result is out
    np.testing.assert_allclose(out[...], expected, atol=1e-6)
    labels_out = zarr.zeros(image.shape, chunks=(64, 64), dtype=np.int32)
    segment(model, stored, out=labels_out, **EXACT)
    assert np.array_equal(labels_out[...], segment(model, image, **EXACT))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]] * 10), "NaN or infinite"),
        (np.full((20, 20), np.inf), "NaN or infinite"),
        (np.zeros((0, 10)), "empty"),
        (np.zeros((1, 1)), "too small"),
        (np.zeros((1, 50)), "too small"),
        (np.zeros((10, 10), dtype=complex), "real numbers"),
        (np.zeros((2, 3, 4, 5, 6)), "2D image"),
    ],
)
def test_bad_images_give_one_clear_error(image, message):
    with pytest.raises(ValueError, match=message):
        predict(tiny(depth=2), image, **EXACT)


def test_nan_in_a_lazy_image_is_reported():
    da = pytest.importorskip("dask.array")
    image = structured((60, 60))
    image[30, 30] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predict(tiny(depth=2), da.from_array(image, chunks=30), **EXACT)


def test_bad_settings_are_refused():
    model, image = tiny(depth=2), structured((50, 50))
    with pytest.raises(ValueError, match="not valid"):
        predict(model, image, tile_size=45, **EXACT)
    with pytest.raises(ValueError, match="precision"):
        predict(model, image, precision="fp8")
    with pytest.raises(ValueError, match="not available"):
        predict(model, image, device="cuda:7")
    with pytest.raises(ValueError, match="out has shape"):
        predict(model, image, out=np.zeros((2, 5, 5), np.float32), **EXACT)


def test_out_of_memory_halves_batch_then_tile_and_still_matches(monkeypatch):
    model = tiny(depth=2)
    image = structured((120, 100))
    reference = whole_image_pass(model, image)
    original = UNet.forward
    failures = {"left": 2}

    def flaky_forward(self, x):
        if failures["left"] > 0:
            failures["left"] -= 1
            raise torch.OutOfMemoryError("simulated")
        return original(self, x)

    monkeypatch.setattr(UNet, "forward", flaky_forward)
    notices = []
    generator = predict_iter(
        model, image, tile_size=100, batch_size=2, on_notice=notices.append, **EXACT
    )
    steps, probs = collect(generator)
    assert "1 tile(s) per batch" in notices[0] and "px tiles" in notices[1]
    assert steps[-1][0] == steps[-1][1]
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        failures["left"] = 1
        predict(model, image, tile_size=100, batch_size=2, **EXACT)


def test_out_of_memory_with_the_smallest_tile_is_a_clear_error(monkeypatch):
    def always_oom(self, x):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(UNet, "forward", always_oom)
    with pytest.raises(MemoryError, match="smaller tile_size"):
        predict(
            tiny(depth=2), structured((80, 80)), tile_size=44, on_notice=lambda m: None, **EXACT
        )


def test_device_choice_is_overridable(monkeypatch):
    monkeypatch.delenv("NAPARI_UNET_DEVICE", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available() and torch.backends.mps.is_available():
        expected = "mps"
    assert choose_device().type == expected
    assert choose_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("NAPARI_UNET_DEVICE", "cpu")
    assert choose_device().type == "cpu"
    with pytest.raises(ValueError, match=r"unsupported|unknown"):
        choose_device("tpu")


def test_segment_iter_yields_progress():
    """Tiles, then the labelling's blocks (two passes over one block here)."""
    from napari_unet.chunked_labels import label_steps

    model = tiny(depth=2)
    tiles = len(tile_layout((60, 60), 48, model.config))
    total = tiles + label_steps((60, 60))
    steps = list(segment_iter(model, structured((60, 60)), tile_size=48, **EXACT))
    assert tiles > 1 and steps[0] == (0, total) and steps[-1] == (total, total)
    assert [done for done, _ in steps] == sorted(done for done, _ in steps)


def test_benchmark_smoke_mode_runs_and_reports_agreement(monkeypatch):
    import importlib.util
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # as when the script is run directly
    script = benchmarks / "bench_inference.py"
    spec = importlib.util.spec_from_file_location("bench_inference", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--smoke"])
    rows = {row["run"]: row for row in result["rows"]}
    assert set(rows) == {"baseline", "product", "fp32 reference"}
    assert rows["fp32 reference"]["label_agreement"] == 1.0
    assert rows["product"]["label_agreement"] > 0.9
    assert all(row["mpx_per_s"] > 0 for row in rows.values())


def test_objects_grow_back_by_the_gap_the_model_was_trained_with():
    model = tiny(depth=2)
    image = structured((70, 50))
    probs = predict(model, image, **EXACT)
    model.info.training["gap"] = 2
    expected = labels_from_probabilities(probs, min_size=1, expand=2)
    assert np.array_equal(segment(model, image, min_size=1, **EXACT), expected)


def test_lazy_multichannel_stack_matches_numpy():
    da = pytest.importorskip("dask.array")
    model = tiny(depth=2, in_channels=2)
    stack = np.stack(
        [np.stack([structured((40, 44), seed=z + c) for c in range(2)]) for z in range(3)]
    )  # (Z, C, Y, X)
    expected = predict(model, stack, channel_axis=1, **EXACT)
    assert expected.shape == (2, 3, 40, 44)
    lazy = da.from_array(stack, chunks=(1, 2, 20, 20))
    np.testing.assert_allclose(predict(model, lazy, channel_axis=1, **EXACT), expected, atol=1e-6)
    np.testing.assert_allclose(
        predict(model, stack[1], channel_axis=0, **EXACT), expected[:, 1], atol=1e-6
    )


@pytest.mark.parametrize(
    ("planes", "task", "join"),
    [
        (1, "instance", False),
        (3, "instance", False),
        (3, "instance", True),
        (2, "semantic", False),
    ],
)
def test_segment_into_out_is_bounded_and_equals_the_in_memory_labels(
    monkeypatch, planes, task, join
):
    """With ``out=`` labels are made block by block (blocks of 32 px here, so objects
    cross many blocks); they equal the in-memory result id for id, progress included."""
    zarr = pytest.importorskip("zarr")
    import napari_unet.predictor as predictor
    from napari_unet.chunked_labels import join_steps, label_steps

    monkeypatch.setattr(predictor, "LABEL_BLOCK_SIZE", 32)
    shape = (planes, 90, 110) if planes > 1 else (90, 110)
    image = np.stack([structured(shape[-2:], seed=z) for z in range(planes)]).reshape(shape)
    n_classes = 3 if task == "semantic" else 2
    model = balance(tiny(depth=2, n_classes=n_classes, task=task), image.reshape(-1, 110)[:90])
    options = {"min_size": 5, "expand": 2, "threshold": 0.55, "join_slices": join}
    options.update(tile_size=60, **EXACT)
    expected = segment(model, image, **options)
    stored = zarr.create_array(
        store={}, shape=shape, chunks=(1, 50, 50)[-len(shape) :], dtype="f4"
    )
    stored[...] = image
    out = zarr.create_array(store={}, shape=shape, chunks=(1, 40, 40)[-len(shape) :], dtype="i4")
    steps, result = collect(segment_iter(model, stored, out=out, **options))
    assert result is out
    if task == "instance":
        assert expected.max() > (2 if join else 5 * planes)  # objects across 32 px blocks
    np.testing.assert_array_equal(out[...], expected)
    total = len(tile_layout((90, 110), 60, model.config)) * planes
    if task == "instance":  # the labelling's blocks are counted after the tiles
        total += label_steps((90, 110), 32) * planes + (join_steps(shape, 32) if join else 0)
    assert steps == [(done, total) for done in range(total + 1)]  # one tile per batch
