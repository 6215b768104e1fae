"""Training with an exponential moving average of the weights (``TrainSettings.ema``)."""

from __future__ import annotations

import pytest
import torch

from napari_unet.progress import drain
from napari_unet.sample_data import make_sample
from napari_unet.training import PRESETS, train_iter

SETTINGS = PRESETS["fast"].replace(
    base_channels=4, depth=2, tile_size=92, batch_size=1, iterations=4, minutes=None,
    val_fraction=0.0, device="cpu", precision="fp32", channels_last=False, seed=3,
)  # fmt: skip


def test_returned_weights_are_the_moving_average_of_the_plain_run():
    """Averaging does not change the steps taken: the plain run's weights after each
    step, averaged with the decay, are the averaged run's result."""
    image, labels = make_sample((128, 128), n_objects=8, seed=0)
    steps = []
    plain = train_iter([image], [labels], settings=SETTINGS.replace(preview_every_s=0.0))
    drain(plain, lambda record: steps.append(record.preview_model.state_dict()))
    decay = 0.7
    averaged = drain(train_iter([image], [labels], settings=SETTINGS.replace(ema=decay)))
    expected = {k: v.clone() for k, v in steps[0].items()}
    for state in steps[1:]:
        for key, value in state.items():
            expected[key] = decay * expected[key] + (1 - decay) * value
    for key, value in averaged.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)
    assert not torch.equal(averaged.state_dict()[key], steps[-1][key])  # not the last step


def test_a_resumed_run_carries_its_moving_average_on(tmp_path):
    from napari_unet.checkpoints import load_train_state

    image, labels = make_sample((128, 128), n_objects=8, seed=0)
    settings = SETTINGS.replace(ema=0.7, iterations=2)
    drain(train_iter([image], [labels], settings=settings, out_dir=tmp_path))
    state = load_train_state(tmp_path)[1]
    assert int(state["ema"]["n_averaged"]) == 2
    more = settings.replace(iterations=5)
    drain(train_iter([image], [labels], settings=more, resume=tmp_path, out_dir=tmp_path))
    # 5 steps averaged: the average went on from the saved one (afresh it would hold 3)
    assert int(load_train_state(tmp_path)[1]["ema"]["n_averaged"]) == 5


@pytest.mark.parametrize("ema", [-0.1, 1.0])
def test_ema_outside_zero_to_one_is_refused(ema):
    with pytest.raises(ValueError, match="ema must be a number in"):
        SETTINGS.replace(ema=ema)


def test_cli_ema_option_reaches_the_settings_stored_in_the_model(tmp_path):
    import tifffile

    from napari_unet.cli import main
    from napari_unet.model_io import load_model

    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    image, labels = make_sample((128, 128), n_objects=8, seed=0)
    tifffile.imwrite(tmp_path / "images" / "a.tif", image)
    tifffile.imwrite(tmp_path / "labels" / "a.tif", labels)
    out = tmp_path / "m.safetensors"
    argv = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels")]
    argv += ["--out", str(out), "--iterations", "2", "--preset", "fast", "--ema", "0.9"]
    assert main(argv) == 0
    assert load_model(out).info.training["ema"] == 0.9
    assert main([*argv[:-1], "1.5"]) == 2  # refused before training, in one sentence
