"""Training on several processes (DistributedDataParallel over gloo on the CPU, 2 ranks):
``napari-unet train --nproc 2`` and torchrun, agreement with one process, a rank that
dies, resuming on another number of ranks, and the command's errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet import training
from napari_unet.checkpoints import BEST_NAME, LAST_NAME, load_train_state
from napari_unet.cli import main
from napari_unet.model_io import load_model
from napari_unet.progress import collect
from napari_unet.sample_data import make_sample

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform != "linux", reason="/proc")]

TESTS = Path(__file__).resolve().parent
SRC = str(TESTS.parent / "src")
#: a tiny network and fixed settings (no measurement of the machine: fp32, NCHW)
TINY = [
    "--precision", "fp32", "--seed", "0", "--val-fraction", "0.34",
    "--set", "base_channels=8", "--set", "depth=2", "--set", "tile_size=60",
    "--set", "batch_size=2", "--set", "channels_last=false", "--set", "val_every=3",
]  # fmt: skip


def write_pairs(root: Path) -> list[str]:
    """Three 64 x 64 image/label pairs; returns the --images/--labels arguments."""
    for folder in ("images", "labels"):
        (root / folder).mkdir(exist_ok=True)
    for seed, name in enumerate("abc"):
        image, labels = make_sample((64, 64), n_objects=6, seed=seed)
        tifffile.imwrite(root / "images" / f"{name}.tif", (image * 200).astype("uint8"))
        tifffile.imwrite(root / "labels" / f"{name}.tif", labels.astype("uint16"))
    return ["--images", str(root / "images"), "--labels", str(root / "labels")]


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **extra}


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(nproc), *args]  # fmt: skip


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """``napari-unet train --nproc 2`` for 6 steps with checkpoints: (folder, result)."""
    root = tmp_path_factory.mktemp("ddp")
    argv = [*write_pairs(root), "--out", str(root / "model.safetensors"), "--iterations", "6"]
    argv += [*TINY, "--checkpoints", str(root / "checkpoints"), "--nproc", "2"]
    command = [sys.executable, "-m", "napari_unet", "train", *argv]
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, done


def test_nproc_trains_one_model_and_states_the_effective_batch(two_rank_run):
    root, done = two_rank_run
    model = load_model(root / "model.safetensors")
    training_info = model.info.training
    assert training_info["world_size"] == 2 and training_info["backend"] == "gloo"
    assert training_info["effective_batch_size"] == 4 and training_info["effective_lr"] == 2e-3
    assert model.info.history["iterations"] == 6
    assert "effective batch 4, learning rate 0.002" in done.stdout
    assert done.stdout.count("trained 6 steps") == 1  # only rank 0 prints
    for name in (BEST_NAME, LAST_NAME):
        load_model(root / "checkpoints" / name)
    assert load_train_state(root / "checkpoints")[1]["world_size"] == 2


def test_two_ranks_train_as_one_process_with_the_whole_batch(tmp_path):
    """Rank r trains on tiles r::2 of the draw one process makes for the whole batch,
    and each rank's loss is divided by the mean weight sum over the ranks, so the
    averaged gradient is the whole batch's: with augmentation and dropout off the
    losses and weights agree up to float32 rounding (summation order differs between
    one batch and two halves plus an all-reduce: ~1e-7 relative per step, measured
    2e-7; we allow 1e-5)."""
    sys.path.insert(0, str(TESTS))
    try:
        from _ddp_losses import losses_and_weights
    finally:
        sys.path.remove(str(TESTS))
    out = tmp_path / "two.json"
    command = torchrun(2, str(TESTS / "_ddp_losses.py"), str(out), "2")
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads(out.read_text())
    one_losses, one_model = losses_and_weights(batch_size=4)
    assert len(two["losses"]) == len(one_losses) == 4
    np.testing.assert_allclose(two["losses"], one_losses, rtol=1e-5)
    for name, values in one_model.state_dict().items():
        np.testing.assert_allclose(two["weights"][name], values.flatten().numpy(), atol=1e-5)


def rank_process(marker: str, rank: int) -> int | None:
    """The pid of the training process of ``rank`` whose environment holds ``marker``."""
    for entry in Path("/proc").iterdir():
        try:
            variables = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in variables and f"RANK={rank}".encode() in variables:
            return int(entry.name)
    return None


def start_and_wait_for_a_checkpoint(command, tmp_path, checkpoints) -> subprocess.Popen:
    """Start ``command`` (marked with ``tmp_path`` so its ranks can be found) and wait,
    at most 240 s, until it has written its first ``last`` checkpoint."""
    run = subprocess.Popen(
        command, env=environment(NAPARI_UNET_TEST_RUN=str(tmp_path)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not (checkpoints / LAST_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return run


def test_a_killed_rank_ends_the_run_and_keeps_the_best_model(tmp_path):
    checkpoints, out = tmp_path / "checkpoints", tmp_path / "model.safetensors"
    argv = [*write_pairs(tmp_path), "--out", str(out), "--iterations", "100000", *TINY]
    marker = f"NAPARI_UNET_TEST_RUN={tmp_path}"
    command = torchrun(2, "-m", "napari_unet", "train", *argv, "--checkpoints", str(checkpoints))
    run = start_and_wait_for_a_checkpoint(command, tmp_path, checkpoints)
    try:
        victim = rank_process(marker, rank=1)
        assert victim is not None, "rank 1 not found"
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode != 0
    # rank 0 notices the failed collective, or, when the agent's SIGTERM comes first and
    # the last all-reduce had completed, stops gracefully: either way --out is saved
    failed = "(rank 0): error: another training process failed or was stopped"
    rescued = f"the best model so far was saved to {out}"
    stopped = f"; saved {out}"  # rank 0 stopped gracefully
    assert (failed in stderr and rescued in stderr) or stopped in stdout, stderr
    model = load_model(out)
    assert model.info.history["iterations"] >= 3 and model.info.history["best_val"]
    _, state = load_train_state(checkpoints)  # a matching pair, or it raises
    assert state["optimizer"]["state"]
    load_model(checkpoints / BEST_NAME)


def test_ctrl_c_stops_every_rank_and_saves_the_model(tmp_path):
    """SIGINT to ``napari-unet train --nproc 2`` reaches every rank once (through
    torchrun's agent); they stop at the same step and rank 0 saves --out."""
    checkpoints, out = tmp_path / "checkpoints", tmp_path / "model.safetensors"
    argv = [*write_pairs(tmp_path), "--out", str(out), "--iterations", "100000", *TINY]
    argv += ["--checkpoints", str(checkpoints), "--nproc", "2"]
    command = [sys.executable, "-m", "napari_unet", "train", *argv]
    run = start_and_wait_for_a_checkpoint(command, tmp_path, checkpoints)
    try:
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 130, stderr[-3000:]
    assert "stopping after this step" in stdout + stderr
    steps = load_model(out).info.history["iterations"]
    assert 3 <= steps < 100_000 and f"trained {steps} steps" in stdout
    marker = f"NAPARI_UNET_TEST_RUN={tmp_path}"
    assert rank_process(marker, 0) is None and rank_process(marker, 1) is None


def test_resume_on_one_rank_restores_the_optimiser_state(two_rank_run, monkeypatch):
    root, _ = two_rank_run
    _, saved = load_train_state(root / "checkpoints")
    assert saved["optimizer"]["state"], "the 2-rank run saved an empty optimiser state"
    made = []
    make_optimizer = training.make_optimizer

    def recording(*args):
        made.append(make_optimizer(*args))
        return made[-1]

    monkeypatch.setattr(training, "make_optimizer", recording)
    images = [tifffile.imread(p) for p in sorted((root / "images").iterdir())]
    labels = [tifffile.imread(p) for p in sorted((root / "labels").iterdir())]
    settings = training.TrainSettings(
        base_channels=8, depth=2, tile_size=60, batch_size=2, iterations=saved["iteration"],
        minutes=None, precision="fp32", channels_last=False, val_fraction=0.34,
    )  # fmt: skip
    collect(training.train_iter(images, labels, settings=settings, resume=root / "checkpoints"))
    restored = made[0].state_dict()  # no step taken: the budget was used up
    assert restored["state"].keys() == saved["optimizer"]["state"].keys()
    for index, values in saved["optimizer"]["state"].items():
        for key, value in values.items():
            torch.testing.assert_close(restored["state"][index][key], value)


def test_resume_continues_the_step_count_on_another_number_of_ranks(two_rank_run, tmp_path):
    root, _ = two_rank_run
    out, checkpoints = tmp_path / "model.safetensors", tmp_path / "checkpoints"
    argv = ["train", *write_pairs(tmp_path), "--out", str(out), "--iterations", "8", *TINY]
    argv += ["--resume", str(root / "checkpoints"), "--checkpoints", str(checkpoints)]
    assert main(argv) == 0
    _, state = load_train_state(checkpoints)
    assert state["iteration"] == 8 and state["world_size"] == 1
    adam_steps = {float(values["step"]) for values in state["optimizer"]["state"].values()}
    assert adam_steps == {8.0}  # 6 restored + 2 new; a fresh optimiser would count 2
    assert load_model(out).info.history["iterations"] == 8


def test_nproc_and_resume_errors_are_one_sentence(tmp_path, capsys, monkeypatch):
    argv = ["train", *write_pairs(tmp_path), "--out", str(tmp_path / "m.safetensors")]
    assert main([*argv, "--nproc", "0"]) == 2
    assert "--nproc must be a whole number >= 1, got 0" in capsys.readouterr().err
    assert main([*argv, "--set", "widht=3"]) == 2
    assert "unknown setting 'widht' in --set" in capsys.readouterr().err
    assert main([*argv, "--resume", str(tmp_path), "--start-from", "nuclei"]) == 2
    assert "cannot be combined with --start-from" in capsys.readouterr().err
    assert main([*argv, "--resume", str(tmp_path)]) == 2
    assert f"cannot resume from {tmp_path}" in capsys.readouterr().err
    monkeypatch.setattr("napari_unet.devices.choose_device", lambda _: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main([*argv, "--nproc", "2", "--device", "cuda"]) == 2
    assert "--nproc 2 needs 2 GPUs but this machine has 1" in capsys.readouterr().err
