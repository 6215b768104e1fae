"""The benchmark scripts run end to end on tiny inputs (their ``--smoke`` modes or the
smallest settings), each in seconds; the weight-map benchmark has its own smoke test
(tests/test_bench_weight_map_smoke.py).

Each script is run as a user runs it: ``python benchmarks/NAME.py ...`` in a fresh
process with this checkout's ``src`` on the path. The measured figures are not checked
(they depend on the machine), only that every case ran and reported consistent fields.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def write_sample_folder(root: Path, count: int = 10) -> None:
    """``root/images`` and ``root/labels``: ``count`` generated 64 x 64 TIFF pairs."""
    import numpy as np
    import tifffile

    from napari_unet.sample_data import make_sample

    for folder in ("images", "labels"):
        (root / folder).mkdir(parents=True)
    for k in range(count):
        image, labels = make_sample((64, 64), n_objects=5, seed=k)
        tifffile.imwrite(root / "images" / f"{k:02d}.tif", image)
        tifffile.imwrite(root / "labels" / f"{k:02d}.tif", labels.astype(np.int32))


def test_bench_memory_smoke(tmp_path):
    out = tmp_path / "memory.json"
    done = run_script("bench_memory.py", "--smoke", "--json", str(out))
    assert done.returncode == 0, done.stderr
    assert "machine:" in done.stdout
    results = json.loads(out.read_text())
    assert [r["case"] for r in results] == ["numpy-segment", "zarr-predict", "zarr-segment"]
    for r in results:
        assert r["tiles"] >= 1
        assert 0 < r["rss_before_mib"] <= r["rss_peak_mib"]
        assert r["added_mib"] == r["rss_peak_mib"] - r["rss_before_mib"]
        assert r["probabilities_mib"] == 2 * r["labels_mib"]
        assert f"| {r['case']} | {r['edge']}x{r['edge']} |" in done.stdout


def test_bench_memory_rejects_a_bad_case():
    done = run_script("bench_memory.py", "--cases", "numpy-segment:big")
    assert done.returncode == 2
    assert "a case is NAME:EDGE" in done.stderr


def test_bench_inference_smoke(tmp_path):
    out = tmp_path / "inference.json"
    done = run_script("bench_inference.py", "--smoke", "--json", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["info"]["repeats"] == 1
    rows = {row["run"]: row for row in result["rows"]}
    assert {"baseline", "product"} <= set(rows)
    assert rows["baseline"]["speedup"] == 1
    for row in rows.values():
        assert row["seconds"] > 0
        assert 0 <= row["label_agreement"] <= 1


def test_bench_training_throughput_smoke():
    done = run_script("bench_training.py", "throughput", "--steps", "2", "--repeats", "1")
    assert done.returncode == 0, done.stderr
    assert "output px/s against the plain loop" in done.stdout
    for run in ("plain loop", "engine, inference's layout", "engine, training's layout"):
        assert f"  {run} " in done.stdout


def test_bench_training_ddp_smoke(tmp_path):
    out = tmp_path / "ddp.json"
    args = ["ddp", "--ranks", "1", "2", "--steps", "2", "--tile", "92", "--size", "128"]
    done = run_script("bench_training.py", *args, "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    cores = os.cpu_count()
    assert [(r["ranks"], r["threads"]) for r in rows] == [(1, cores), (2, max(1, cores // 2))]
    for row in rows:
        assert row["samples_per_s"] == pytest.approx(row["steps_per_s"] * 4 * row["ranks"])


def test_bench_training_accuracy_and_plot_smoke(tmp_path):
    import tifffile

    from napari_unet.sample_data import make_sample

    data = tmp_path / "data"
    for folder in ("images", "labels"):
        (data / folder).mkdir(parents=True)
    for seed in range(5):  # every 5th file is held out: 4 training, 1 held-out image
        image, labels = make_sample((128, 128), n_objects=10, seed=seed)
        tifffile.imwrite(data / "images" / f"s{seed}.tif", image)
        tifffile.imwrite(data / "labels" / f"s{seed}.tif", labels)
    result = tmp_path / "accuracy.json"
    done = run_script(
        "bench_training.py", "accuracy", "--data", str(data), "--minutes", "0.04",
        "--snapshot-s", "0.5", "--seeds", "0", "1", "--json", str(result),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "recipe chosen from the annotation" in done.stdout  # the CLI's default path
    record = json.loads(result.read_text())
    curve = record["curve"]
    assert curve and all(0 <= point["ap50"] <= 1 for point in curve)
    runs = record["runs"]
    assert [run["seed"] for run in runs] == [0, 1] and all(run["recipe"] for run in runs)
    finals = [run["returned"]["ap50"] for run in runs]
    assert record["summary"]["ap50"]["mean"] == pytest.approx(sum(finals) / 2)
    assert record["summary"]["ap50"]["min"] == min(finals)
    for run in runs:  # each selection rule picks one of the run's snapshots
        picks, held_out = run["selection"], [p["ap50"] for p in run["curve"][:-1]]
        assert held_out, "no snapshot to choose from"
        assert picks["best"] == max(held_out) and picks["worst"] == min(held_out)
        assert {picks["by_stored"], picks["by_tuned"]} <= set(held_out)

    for kind in ("curve", "seeds"):
        plot = tmp_path / f"{kind}.png"
        done = run_script("plot_training.py", kind, str(plot), str(result))
        assert done.returncode == 0, done.stderr
        assert plot.read_bytes().startswith(b"\x89PNG")


def test_sweep_postprocess_smoke(tmp_path, shared_data):
    import torch

    from napari_unet.config import UNetConfig
    from napari_unet.model import UNet
    from napari_unet.model_io import save_model
    from napari_unet.postprocess import TUNE_EXPANDS, TUNE_THRESHOLDS

    torch.manual_seed(0)
    model = save_model(UNet(UNetConfig(base_channels=4, depth=2)), tmp_path / "m.safetensors")
    data = shared_data / "isbi2012" / "train"
    done = run_script("sweep_postprocess.py", str(model), "--data", str(data), "--limit", "1")
    assert done.returncode == 0, done.stderr
    assert "1 held-out images" in done.stdout
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    assert len(rows) == len(TUNE_THRESHOLDS) * len(TUNE_EXPANDS)
    assert all(0 <= float(ap) <= 1 and 0 <= float(rand) <= 1 for *_, ap, rand in rows)


def test_bench_finetune_smoke(tmp_path):
    """Both arms train, snapshots are scored at the planned steps (the fine-tuned arm
    also before any training), and the plot is written."""
    import tifffile

    from napari_unet.sample_data import make_sample

    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for index in range(2):
        image, labels = make_sample((128, 128), n_objects=10, seed=index)
        tifffile.imwrite(tmp_path / "images" / f"s{index}.tif", image)
        tifffile.imwrite(tmp_path / "labels" / f"s{index}.tif", labels)
    out, picture = tmp_path / "finetune.json", tmp_path / "finetune.png"
    done = run_script(
        "bench_finetune.py", "--data", str(tmp_path), "--train", "s0", "--held-out", "s1",
        "--steps", "3", "--json", str(out), "--plot", str(picture),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    arms = json.loads(out.read_text())["arms"]
    steps = {name: [p["step"] for p in arm["curve"]] for name, arm in arms.items()}
    assert steps == {"fine-tuned from nuclei": [0, 1, 2, 3], "from scratch": [1, 2, 3]}
    for arm in arms.values():
        assert all(0 <= p["ap50"] <= 1 and 0 <= p["rand_error"] <= 1 for p in arm["curve"])
        assert set(arm["returned"]) >= {"ap50", "ap75", "rand_error", "postprocess"}
    assert picture.stat().st_size > 10_000


def test_builtin_model_script_retunes_a_model_without_training_it(tmp_path):
    """``scripts/train_builtin_nuclei.py --retune`` on a tiny data folder: the weights
    and the training record stay, the post-processing is tuned again (now with the
    smallest object kept) and what it replaced is recorded."""
    import torch

    from napari_unet.config import ModelInfo, UNetConfig
    from napari_unet.model import UNet
    from napari_unet.model_io import load_model, save_model

    write_sample_folder(tmp_path / "data")
    torch.manual_seed(0)
    info = ModelInfo(
        postprocess={"threshold": 0.5, "expand": 1},  # as saved before min_size was tuned
        training={"machine": "the training machine"},
        history={"iterations": 7, "seconds": 1.5},
    )
    save_model(UNet(UNetConfig(base_channels=4, depth=2), info=info), tmp_path / "in.safetensors")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_builtin_nuclei.py"),
         "--data", str(tmp_path / "data"), "--retune", str(tmp_path / "in.safetensors"),
         "--out", str(tmp_path / "out.safetensors"), "--json", str(tmp_path / "out.json")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    before = load_model(tmp_path / "in.safetensors")
    after = load_model(tmp_path / "out.safetensors")
    for name, tensor in before.state_dict().items():
        assert torch.equal(tensor, after.state_dict()[name])
    assert set(after.info.postprocess) == {"threshold", "expand", "min_size"}
    assert after.info.training["machine"] == "the training machine"
    retuned = after.info.history["retuned"]
    assert retuned["before"] == {"threshold": 0.5, "expand": 1}
    assert retuned["validation"]["min_size"] == after.info.postprocess["min_size"]
    assert after.info.history["iterations"] == 7
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["retune"].endswith("in.safetensors") and "ap50" in record["held_out"]
    assert record["retuned"]["validation"] == retuned["validation"]


def test_bench_keep_stored_smoke(tmp_path):
    """Each seed reports the grid's choice, the one validation keeps and a held-out
    score for both; a model without stored settings is refused."""
    import torch

    from napari_unet.config import ModelInfo, UNetConfig
    from napari_unet.model import UNet
    from napari_unet.model_io import save_model

    write_sample_folder(tmp_path / "data")
    out = tmp_path / "keep.json"
    done = run_script("bench_keep_stored.py", "--data", str(tmp_path / "data"),
                      "--seeds", "0", "1", "--json", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    runs = json.loads(out.read_text())["runs"]
    assert [r["seed"] for r in runs] == [0, 1]
    for r in runs:
        assert set(r["kept"]) == set(r["grid"]) == {"threshold", "expand", "min_size"}
        assert 0 <= r["held_out_grid"] <= 1 and 0 <= r["held_out_kept"] <= 1
        assert r["win_rate"] is None or 0 <= r["win_rate"] <= 1

    torch.manual_seed(0)
    bare = save_model(UNet(UNetConfig(base_channels=4, depth=2), ModelInfo()),
                      tmp_path / "bare.safetensors")  # fmt: skip
    refused = run_script("bench_keep_stored.py", "--data", str(tmp_path / "data"),
                         "--model", str(bare))  # fmt: skip
    assert refused.returncode == 2 and "stores no tuned post-processing" in refused.stderr
