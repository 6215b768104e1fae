"""The default cluster is whichever of this process and a LocalCluster is estimated
faster: the choice follows the (mocked) measurements, small inputs never start a
cluster, a measurement is cached, and the CLI says what it chose and why."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from napari_unet import cluster_choice, hardware
from napari_unet.cli import main
from napari_unet.cluster_choice import MIN_WORK_S, LocalMeasurement, choose, measure_local
from napari_unet.model_io import save_model
from test_distributed import EXACT, blobs, tiny, write_ome

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def model_path(tmp_path, monkeypatch):
    """A tiny model measured (mocked) at 1 output Mpx/s in this process; a fresh cache."""
    monkeypatch.setenv(hardware.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(hardware, "choose", lambda model, device: SimpleNamespace(mpx_per_s=1.0))
    return str(save_model(tiny(), tmp_path / "tiny.safetensors"))


def measured(startup_s, here, there, calls):
    def measure(path, settings, workers):
        calls.append(workers)
        return LocalMeasurement(workers, startup_s, here, there)

    return measure


def test_small_inputs_stay_in_process_without_measuring_a_cluster(model_path):
    def never(*args):
        raise AssertionError("a small input must not start a cluster")

    choice = choose(model_path, MIN_WORK_S * 0.9, {}, cpus=8, measure=never)
    assert choice.cluster == "none" and "54 s of work" in choice.reason
    assert choose(model_path, 1e6, {}, cpus=1, measure=never).cluster == "none"


def test_choice_follows_the_measurements_and_is_cached(model_path):
    calls = []
    # 600 s in this process; the cluster: 20 s start-up + 600 / 3 s
    fast = choose(model_path, 600, {}, cpus=4, measure=measured(20, 1.0, 3.0, calls))
    assert (fast.cluster, fast.workers) == ("local", 4) and calls == [4]
    assert "220 s on 4 local workers" in fast.reason and "600 s in this process" in fast.reason
    again = choose(model_path, 600, {}, cpus=4, measure=measured(20, 1.0, 0.1, calls))
    assert again == fast and calls == [4]  # from the cache, not measured again
    # the cluster is slower per pixel (the processes compete for the cores): stay here
    slow = choose(model_path, 600, {}, cpus=2, measure=measured(20, 1.0, 0.9, calls))
    assert slow.cluster == "none" and calls == [4, 2]
    # start-up dominates for little work
    assert cluster_choice.decide(70, LocalMeasurement(2, 60, 1.0, 4.0)).cluster == "none"
    assert cluster_choice.decide(700, LocalMeasurement(2, 60, 1.0, 4.0)).cluster == "local"


def test_cli_says_which_cluster_it_chose_and_why(model_path, tmp_path, capsys):
    image = write_ome(tmp_path / "image.zarr", blobs((100, 90)), "yx")
    argv = ["segment", str(image), "--model", model_path, "--out", str(image),
            "--block-size", "64", "--precision", "fp32", "--tile-size", "92",
            "--batch-size", "3"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "cluster: none (about 0 s of work at the 1 Mpx/s measured here" in err


def test_real_measurement_on_a_one_worker_cluster(tmp_path, monkeypatch):
    from test_distributed import SRC

    monkeypatch.setenv("PYTHONPATH", SRC)
    path = str(save_model(tiny(), tmp_path / "tiny.safetensors"))
    result = measure_local(path, dict(EXACT), 1)
    assert result.workers == 1 and result.startup_s > 0
    assert result.in_process_mpx_per_s > 0 and result.cluster_mpx_per_s > 0
