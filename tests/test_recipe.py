"""The recipe chosen from the annotation: what it measures and what it picks."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import find_boundaries

from napari_unet.config import UNetConfig
from napari_unet.recipe import NEAR_PX, builtin_start, choose_recipe, describe_annotation
from napari_unet.sample_data import make_nuclei

CONFIG = UNetConfig(1, 2, 16, 3)


def tissue(shape=(256, 256), cells=40, seed=0) -> np.ndarray:
    """Voronoi cells filling the plane, split by 2 px background membranes (EM-like)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, shape[0], (cells, 2))
    yy, xx = np.indices(shape)
    owner = np.argmin(
        (yy[..., None] - centres[:, 0]) ** 2 + (xx[..., None] - centres[:, 1]) ** 2, -1
    )
    labels = owner.astype(np.int32) + 1
    labels[find_boundaries(labels, mode="thick")] = 0
    return labels


def two_squares(gap: int) -> np.ndarray:
    labels = np.zeros((64, 96), np.int32)
    labels[20:40, 10:30] = 1
    labels[20:40, 30 + gap : 50 + gap] = 2
    return labels


@pytest.mark.parametrize(("gap", "touching"), [(0, 1.0), (NEAR_PX, 1.0), (NEAR_PX + 3, 0.0)])
def test_objects_count_as_touching_up_to_a_thin_gap(gap, touching):
    assert describe_annotation([two_squares(gap)]).touching == touching


def test_stats_measure_fill_size_and_count_inside_the_mask_only():
    labels = two_squares(10)
    mask = np.zeros(labels.shape, bool)
    mask[:, :32] = True  # only the first square is annotated
    stats = describe_annotation([labels], [mask])
    assert stats.objects == 1 and stats.annotated_px == mask.sum()
    assert stats.fill == pytest.approx(400 / mask.sum())
    assert stats.median_diameter == pytest.approx(np.sqrt(4 * 400 / np.pi))


def test_em_like_tissue_gets_the_dense_recipe_and_nuclei_the_sparse_one():
    dense = choose_recipe(describe_annotation([tissue(seed=s) for s in range(2)]))
    assert dense.stats.dense
    assert dense.changes == {"gap": 2, "select_by": "rand_error"}
    assert "dense tissue" in dense.summary()
    sparse = choose_recipe(describe_annotation([make_nuclei(seed=0)[1]]))
    assert not sparse.stats.dense
    assert sparse.changes == {"gap": 1, "select_by": "ap50"}


def test_tiles_grow_for_large_objects_within_the_planes():
    small = describe_annotation([make_nuclei(seed=0)[1]])
    assert "tile_size" not in choose_recipe(small, config=CONFIG, tile_size=188).changes
    large = np.zeros((600, 600), np.int32)
    large[100:220, 100:220] = 1  # 120 px across: the 100 px output of a 188 tile is too small
    stats = describe_annotation([large])
    tile = choose_recipe(stats, config=CONFIG, tile_size=188).changes["tile_size"]
    assert CONFIG.output_size(tile) >= 2 * stats.median_diameter
    assert CONFIG.output_size(tile - CONFIG.pool_factor) < 2 * stats.median_diameter
    capped = choose_recipe(stats, config=CONFIG, tile_size=188, max_tile=300).changes
    assert capped["tile_size"] <= 300 and CONFIG.is_valid_input(capped["tile_size"])


def test_width_follows_the_measured_speed_and_the_budget():
    stats = describe_annotation([make_nuclei(seed=0)[1]])
    slow = choose_recipe(stats, steps_per_s={16: 3.0, 32: 1.2}, minutes=10)
    assert slow.changes["base_channels"] == 16 and "would not get" in slow.summary()
    assert "the wider network trains at 1.2 steps/s here" in slow.summary()
    fast = choose_recipe(stats, steps_per_s={16: 30.0, 32: 12.0}, minutes=10)
    assert fast.changes["base_channels"] == 32 and "12.0 steps/s" in fast.summary()


SHAPES = [
    {"tile": 188, "batch": 4, "mpx_per_s": 0.15},
    {"tile": 260, "batch": 2, "mpx_per_s": 0.20},
    {"tile": 372, "batch": 1, "mpx_per_s": 0.26},
]


def test_the_tile_shape_that_trains_most_pixels_per_second_is_taken_within_the_planes():
    stats = describe_annotation([make_nuclei(seed=0)[1]])
    kwargs = {"config": CONFIG, "tile_size": 188, "batch_size": 4, "shapes": SHAPES}
    largest = choose_recipe(stats, **kwargs)
    assert (largest.changes["tile_size"], largest.changes["batch_size"]) == (372, 1)
    assert "1 x 372 px tiles" in largest.summary() and "0.26" in largest.summary()
    # 256 px planes: a 372 px tile's 284 px output would learn from mirrored copies
    small_planes = choose_recipe(stats, **kwargs, max_output=256).changes
    assert (small_planes["tile_size"], small_planes["batch_size"]) == (260, 2)
    assert CONFIG.output_size(260) <= 256
    tiny_planes = choose_recipe(stats, **kwargs, max_output=150).changes
    assert "batch_size" not in tiny_planes and "tile_size" not in tiny_planes
    within_noise = [dict(row, mpx_per_s=0.155) for row in SHAPES[1:]]
    noise = choose_recipe(stats, **{**kwargs, "shapes": SHAPES[:1] + within_noise}).changes
    assert "batch_size" not in noise  # a 3 % gain is not worth a different step


def test_large_objects_keep_a_tile_that_spans_them():
    large = np.zeros((900, 900), np.int32)
    large[100:300, 100:300] = 1  # 225 px across: the object rule asks for a larger tile
    stats = describe_annotation([large])
    recipe = choose_recipe(stats, config=CONFIG, tile_size=188, batch_size=4, shapes=SHAPES)
    wanted = choose_recipe(stats, config=CONFIG, tile_size=188).changes["tile_size"]
    assert recipe.changes["tile_size"] == wanted  # not measured at 4 tiles: kept as asked
    assert "batch_size" not in recipe.changes


def test_nuclei_like_annotations_start_from_the_builtin_model():
    nuclei = describe_annotation([make_nuclei(seed=0)[1]])
    name, reason = builtin_start(nuclei)
    assert name == "nuclei" and "built-in nuclei" in reason
    assert builtin_start(nuclei, in_channels=3) is None  # it reads one channel
    assert builtin_start(describe_annotation([tissue(seed=0)])) is None  # dense tissue
    large = np.zeros((600, 600), np.int32)
    large[100:220, 100:220] = 1
    assert builtin_start(describe_annotation([large])) is None  # 135 px across
    recipe = choose_recipe(
        nuclei, steps_per_s={16: 30.0, 32: 12.0}, minutes=10, start=(name, reason)
    )
    assert recipe.start_from == "nuclei" and "base_channels" not in recipe.changes
    assert reason in recipe.summary() and "lr" not in recipe.changes
    slower = choose_recipe(nuclei, start=(name, reason), lr=0.002)
    assert slower.changes["lr"] == pytest.approx(0.0005)
    assert "learning rate 0.0005" in slower.summary()


def test_builtin_start_only_when_allowed_and_then_no_width_is_measured(monkeypatch):
    from napari_unet import train_recipe
    from napari_unet.training import PRESETS

    calls = []
    monkeypatch.setattr(train_recipe, "measure_steps_per_s", lambda *a: calls.append(1) or {})
    labels = [make_nuclei(seed=0)[1]]
    base = PRESETS["fast"].replace(minutes=5.0, iterations=None)
    settings, recipe = train_recipe.choose_settings(labels, base=base, builtin_allowed=True)
    assert recipe.start_from == "nuclei" and calls == [] and settings.lr == base.lr / 4
    _, recipe = train_recipe.choose_settings(labels, base=base)
    assert recipe.start_from is None and calls == [1]
    _, recipe = train_recipe.choose_settings(
        labels, base=base, builtin_allowed=True, in_channels=2
    )
    assert recipe.start_from is None


# -- wired into training: the CLI and the Train widget -------------------------------------
def write_pairs(folder, make_labels, count=2):
    import tifffile

    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for index in range(count):
        labels = make_labels(seed=index)
        image = np.where(labels > 0, 0.8, 0.1).astype(np.float32)
        tifffile.imwrite(folder / "images" / f"p{index}.tif", image)
        tifffile.imwrite(folder / "labels" / f"p{index}.tif", labels)


def test_cli_without_preset_chooses_the_dense_recipe_for_tissue(tmp_path, capsys):
    from napari_unet.cli import main
    from napari_unet.model_io import load_model

    write_pairs(tmp_path, tissue)
    out = tmp_path / "m.safetensors"
    argv = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels")]
    assert main([*argv, "--out", str(out), "--iterations", "2", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "recipe chosen from the annotation: dense tissue" in printed
    training = load_model(out).info.training
    assert training["gap"] == 2 and training["select_by"] == "rand_error"
    assert "dense tissue" in training["recipe"][0]
    # an option given on the command line wins over the recipe; a preset skips it
    assert main([*argv, "--out", str(out), "--iterations", "2", "--gap", "1"]) == 0
    assert "given on the command line: gap 1" in capsys.readouterr().out
    assert load_model(out).info.training["gap"] == 1
    assert main([*argv, "--out", str(out), "--iterations", "2", "--preset", "fast"]) == 0
    assert "recipe" not in capsys.readouterr().out
    assert "recipe" not in load_model(out).info.training


def nuclei_labels(seed):
    return make_nuclei(seed=seed)[1]


def close_to_builtin(model) -> bool:
    """True when ``model``'s first convolution is still (after a few steps) the built-in
    nuclei model's, not a random one."""
    import torch

    from napari_unet.model_io import load_model

    builtin = load_model("nuclei").state_dict()
    first = next(iter(builtin))
    return torch.allclose(model.state_dict()[first], builtin[first], atol=0.05)


def test_cli_without_preset_fine_tunes_the_builtin_model_for_nuclei(tmp_path, capsys):
    from napari_unet.cli import main
    from napari_unet.model_io import load_model

    write_pairs(tmp_path, nuclei_labels)
    out = tmp_path / "m.safetensors"
    argv = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels")]
    argv += ["--out", str(out), "--iterations", "2", "--device", "cpu"]
    assert main(argv) == 0
    assert "fine-tuning it" in capsys.readouterr().out
    model = load_model(out)
    assert model.info.training["started_from"] == "nuclei" and close_to_builtin(model)
    assert main([*argv, "--start-from", "new"]) == 0  # asked for: a new network
    assert "fine-tuning" not in capsys.readouterr().out
    model = load_model(out)
    assert "started_from" not in model.info.training and not close_to_builtin(model)
    assert main([*argv, "--set", "base_channels=8"]) == 0  # a shape asks for a new network
    assert load_model(out).config.base_channels == 8


def test_width_is_measured_only_for_a_new_network_with_a_minutes_budget(monkeypatch):
    from napari_unet import train_recipe
    from napari_unet.training import PRESETS

    calls = []

    def measure(settings, in_channels):
        calls.append(settings.tile_size)
        return {16: 40.0, 32: 20.0}

    monkeypatch.setattr(train_recipe, "measure_steps_per_s", measure)
    labels = [make_nuclei(seed=0)[1]]
    base = PRESETS["fast"].replace(minutes=5.0, iterations=None)
    settings, _ = train_recipe.choose_settings(labels, base=base)
    assert calls == [188] and settings.base_channels == 32 and settings.gap == 1
    settings, _ = train_recipe.choose_settings(labels, base=base, new_network=False)
    assert calls == [188] and settings.base_channels == base.base_channels
    steps = base.replace(minutes=None, iterations=100)
    settings, _ = train_recipe.choose_settings(labels, base=steps)
    assert calls == [188] and settings.base_channels == base.base_channels


def test_the_tile_shape_is_measured_only_for_whole_annotated_planes_and_a_time_budget(
    monkeypatch,
):
    from napari_unet import train_recipe
    from napari_unet.training import PRESETS

    calls = []
    monkeypatch.setattr(train_recipe, "measure_steps_per_s", lambda *a: {16: 3.0, 32: 1.0})

    def shapes(settings, in_channels):
        calls.append(settings.tile_size)
        return SHAPES

    image_labels = make_nuclei(seed=0)[1]
    base = PRESETS["fast"].replace(minutes=5.0, iterations=None)
    settings, recipe = train_recipe.choose_settings(
        [image_labels], base=base, measure_tiles=shapes
    )
    edge = min(image_labels.shape)
    assert calls == [188] and settings.batch_size < 4
    assert CONFIG.output_size(settings.tile_size) <= edge and "px tiles per step" in (
        recipe.summary()
    )
    mask = np.zeros(image_labels.shape, bool)
    mask[:100, :100] = True  # a painted region: most of a large tile would be unlabelled
    sparse, _ = train_recipe.choose_settings(
        [image_labels], [mask], base=base, measure_tiles=shapes
    )
    assert calls == [188] and sparse.batch_size == 4
    steps = base.replace(minutes=None, iterations=100)
    counted, _ = train_recipe.choose_settings([image_labels], base=steps, measure_tiles=shapes)
    assert calls == [188] and counted.batch_size == 4


def test_measured_training_speed_is_positive_for_each_width():
    from napari_unet.train_recipe import measure_steps_per_s
    from napari_unet.training import PRESETS

    settings = PRESETS["fast"].replace(tile_size=124, batch_size=1, device="cpu")
    speeds = measure_steps_per_s(settings, widths=(8, 16), steps=1)
    assert set(speeds) == {8, 16} and all(v > 0 for v in speeds.values())


def test_train_widget_auto_preset_shows_and_stores_the_recipe(make_napari_viewer, qtbot):
    from napari_unet.widgets.model_store import model_store
    from napari_unet.widgets.train_widget import AUTO, TrainWidget

    viewer = make_napari_viewer()
    labels = tissue(seed=0)
    viewer.add_image(np.where(labels > 0, 0.8, 0.1).astype(np.float32), name="em")
    viewer.add_labels(labels, name="cells")
    widget = TrainWidget(viewer)
    assert widget.preset.value == AUTO and widget.recipe_info.native.isHidden()
    widget.budget_unit.value = "iterations"
    widget.budget.value = 3
    widget.device.value = "cpu"
    widget.train()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert not widget.recipe_info.native.isHidden()
    assert "dense tissue" in widget.recipe_info.value
    assert widget.recipe_info.tooltip == widget.recipe_info.value
    training = model_store(viewer).model.info.training
    assert training["gap"] == 2 and "dense tissue" in training["recipe"][0]


def test_train_widget_auto_start_fine_tunes_the_builtin_model_for_nuclei(
    make_napari_viewer, qtbot
):
    from napari_unet.widgets.model_store import model_store
    from napari_unet.widgets.train_widget import TrainWidget

    viewer = make_napari_viewer()
    image, labels = make_nuclei(seed=0)
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="annotation")
    widget = TrainWidget(viewer)
    assert widget.start_from.value == "auto"
    widget.budget_unit.value = "iterations"
    widget.budget.value = 2
    widget.device.value = "cpu"
    widget.train()
    qtbot.waitUntil(lambda: not widget.busy, timeout=120_000)
    assert "built-in nuclei" in widget.recipe_info.value
    model = model_store(viewer).model
    assert model.info.training["started_from"] == "nuclei" and close_to_builtin(model)


def test_step_timing_is_the_median_of_several_steps_after_warm_up():
    """The width measurement must not follow one slow step (two steps timed together
    read the wider network at 6.7 or 9.7 steps/s on the same machine)."""
    import time

    from napari_unet.train_recipe import median_step_seconds

    durations = iter([0.2, 0.2, 0.01, 0.15, 0.01, 0.01, 0.01] + [0.01] * 100)
    calls = []

    def step():
        calls.append(1)
        time.sleep(next(durations))

    seconds = median_step_seconds(step, steps=5, min_seconds=0.1, warmup=2)
    assert 0.01 <= seconds < 0.05  # the warm-up (0.2 s) and the outlier (0.15 s) do not count
    timed = len(calls) - 2
    assert timed >= 5 and 0.15 + 0.01 * (timed - 1) >= 0.1  # enough steps and seconds
