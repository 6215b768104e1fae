"""Test-time augmentation: accuracy gained and time paid, against no TTA in the same run.

Two cases, each segmenting the same images with ``tta="none"`` (the baseline), ``"flips"``
(4 copies) and ``"d4"`` (8 copies) through the product's one prediction path
(:class:`napari_unet.predictor.Predictor`, its stored post-processing). The modes are
timed image by image in turn, so a change of load on a shared machine hits all of them.

``dsb``: the built-in ``nuclei`` model on the DSB 2018 images it never saw (every 5th
file in name order, ``load_split`` of bench_training.py, as scripts/train_builtin_nuclei.py
holds them out); AP@0.5 and AP@0.75 summed over images (``metrics.average_precision``).

``isbi``: a small model trained here with the CLI (``napari-unet train --preset dense``,
a fixed number of iterations, so machine load changes only the time) on the first
``--train`` ISBI 2012 slices, then scored on the last ``--eval`` slices: mean
foreground-restricted adapted Rand error (``metrics.rand_error``) and pixel error.

    PYTHONPATH=src python benchmarks/bench_tta.py dsb --json tta_dsb.json
    PYTHONPATH=src python benchmarks/bench_tta.py isbi --iterations 1500 --json tta_isbi.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model
from bench_training import load_split
from napari_unet import metrics
from napari_unet.model_io import load_model
from napari_unet.predictor import Predictor
from napari_unet.progress import drain

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MODES = ("none", "flips", "d4")


def segment_all(model, images, modes=MODES) -> tuple[dict, dict]:
    """Labels of every image under every mode, and the seconds each mode took in total
    (modes run in turn on each image)."""
    predictors = {mode: Predictor.prepare(model, tta=mode) for mode in modes}
    labels = {mode: [] for mode in modes}
    seconds = dict.fromkeys(modes, 0.0)
    for image in images:
        for mode, predictor in predictors.items():
            start = time.perf_counter()
            labels[mode].append(drain(predictor.labels_iter(image)))
            seconds[mode] += time.perf_counter() - start
    return labels, seconds


def rows_for(scores: dict, seconds: dict) -> list[dict]:
    """One row per mode: its scores, seconds and time relative to no TTA."""
    return [
        {"tta": mode, **scores[mode], "seconds": round(seconds[mode], 3),
         "time_ratio": round(seconds[mode] / seconds["none"], 2)}
        for mode in seconds
    ]  # fmt: skip


def run_dsb(args) -> dict:
    _, held_out = load_split(args.data)
    held_out = held_out[: args.limit] if args.limit else held_out
    model = load_model(args.model)
    images, truths = [image for image, _ in held_out], [gt for _, gt in held_out]
    labels, seconds = segment_all(model, images)
    scores = {
        mode: {
            "ap50": round(metrics.average_precision(truths, preds, iou=0.5), 4),
            "ap75": round(metrics.average_precision(truths, preds, iou=0.75), 4),
        }
        for mode, preds in labels.items()
    }
    return {"case": "dsb", "model": args.model, "images": len(images),
            "rows": rows_for(scores, seconds)}  # fmt: skip


def train_with_cli(pairs, out: Path, args) -> dict:
    """Train ``napari-unet train --preset dense`` on ``pairs`` in a fresh process (one
    torch thread); returns its wall time and the model file."""
    data = out.parent / "train"
    for folder in ("images", "labels"):
        (data / folder).mkdir(parents=True, exist_ok=True)
    for index, (image, labels) in enumerate(pairs):
        tifffile.imwrite(data / "images" / f"s{index:02d}.tif", image)
        tifffile.imwrite(data / "labels" / f"s{index:02d}.tif", labels)
    command = [sys.executable, "-m", "napari_unet.cli", "train", "--images",
               str(data / "images"), "--labels", str(data / "labels"), "--out", str(out),
               "--preset", "dense", "--iterations", str(args.iterations), "--seed",
               str(args.seed), "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": str(ROOT / "src")}  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return {"train_seconds": round(time.perf_counter() - start, 1)}


def run_isbi(args) -> dict:
    names = sorted(p.name for p in (args.data / "images").glob("*.tif"))
    pairs = [
        (tifffile.imread(args.data / "images" / n), tifffile.imread(args.data / "labels" / n))
        for n in names
    ]
    train, evaluate = pairs[: args.train], pairs[-args.eval :]
    with tempfile.TemporaryDirectory(prefix="bench-tta-") as folder:
        model_file = Path(folder) / "isbi.safetensors"
        trained = train_with_cli(train, model_file, args)
        model = load_model(model_file)
    labels, seconds = segment_all(model, [image for image, _ in evaluate])
    truths = [gt for _, gt in evaluate]
    scores = {
        mode: {
            "rand_error": round(float(np.mean(list(map(metrics.rand_error, truths, preds)))), 4),
            "pixel_error": round(float(np.mean(list(map(metrics.pixel_error, truths, preds)))), 4),
        }
        for mode, preds in labels.items()
    }
    return {"case": "isbi", "train_slices": f"first {len(train)}", "eval_slices":
            f"last {len(evaluate)}", "iterations": args.iterations, **trained,
            "rows": rows_for(scores, seconds)}  # fmt: skip


def print_table(result: dict) -> None:
    rows = result["rows"]
    keys = [k for k in rows[0] if k not in ("tta", "seconds", "time_ratio")]
    print(f"| tta | {' | '.join(keys)} | seconds | time vs none |")
    print("|---" * (len(keys) + 3) + "|")
    for row in rows:
        values = " | ".join(f"{row[k]:.4f}" for k in keys)
        print(f"| {row['tta']} | {values} | {row['seconds']} | {row['time_ratio']}x |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=("dsb", "isbi"))
    parser.add_argument("--data", type=Path, help="images/ + labels/ folder pair")
    parser.add_argument("--model", default="nuclei", help="dsb: the model to score")
    parser.add_argument("--limit", type=int, default=0, help="dsb: first N held-out images")
    parser.add_argument("--train", type=int, default=4, help="isbi: training slices")
    parser.add_argument("--eval", type=int, default=10, help="isbi: scored slices")
    parser.add_argument("--iterations", type=int, default=1500, help="isbi: training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    folder = {"dsb": "dsb2018", "isbi": "isbi2012"}[args.case]
    args.data = args.data or SHARED / folder / "train"
    torch.set_num_threads(args.threads)
    machine = f"{cpu_model()}, torch {torch.__version__}, {args.threads} thread(s)"
    print(f"machine: {machine} (shared with other work: times are indicative)")
    result = (run_dsb if args.case == "dsb" else run_isbi)(args)
    result["machine"] = machine
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
