"""Keeping a model's stored post-processing unless the newly tuned one is clearly better:
the held-out accuracy each rule gives, on the validation splits training draws.

For a model that carries tuned settings (default: the built-in nuclei model) and a data
folder (``images/`` + ``labels/``; every 5th file in name order held out, as in
``bench_training.py accuracy``), for each seed: the validation split ``train_iter`` draws
with that seed, the settings tuned there by the grid alone (the old rule), the share of
bootstrap resamples of the split in which they beat the stored ones, the settings
``validate`` keeps (the rule training uses now), and the held-out score of each (and of
the stored settings)::

    python benchmarks/bench_keep_stored.py --data ../shared/data/dsb2018/train \\
        --seeds 0 1 2 3 4 5 --json keep_stored_dsb.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _machine import cpu_model
from bench_training import evaluate_held_out, load_split
from napari_unet import metrics
from napari_unet.model_io import load_model
from napari_unet.models import resolve
from napari_unet.postprocess import SWITCH_CONFIDENCE, Postprocess
from napari_unet.predictor import Predictor
from napari_unet.training import TrainSettings, run_settings, split_planes
from napari_unet.validation import ValidationSet, tune_postprocess, validate


def held_out_score(model, post: Postprocess, held_out, metric: str, cache: dict) -> float:
    """``metric`` on the held-out pairs, segmented with ``post`` (cached per setting)."""
    if post not in cache:
        model.info.postprocess = post.as_dict()
        cache[post] = evaluate_held_out(model, held_out)[metric]
    return cache[post]


def one_seed(model, stored, train_pairs, held_out, seed, select_by, cache, max_planes) -> dict:
    settings = TrainSettings(seed=seed, val_max_planes=max_planes)
    images, labels = [p[0] for p in train_pairs], [p[1] for p in train_pairs]
    val = split_planes(images, labels, settings=settings,
                       normalization=model.info.normalization)[1]  # fmt: skip
    model.info.postprocess = stored.as_dict()
    device = torch.device("cpu")
    predictor = Predictor(model, device, run_settings(model, device, settings))
    start = time.perf_counter()
    grid = Postprocess.of_tuned(tune_postprocess(predictor, val, select_by))
    kept = Postprocess.of_tuned(validate(predictor, val, select_by))
    seconds = time.perf_counter() - start
    data = ValidationSet.of(predictor, val)
    parts = [data.parts(select_by, [predictor.to_labels(p, post) for p in data.probabilities])
             for post in (grid, stored)]  # fmt: skip
    win_rate = metrics.bootstrap_win_rate(select_by, *parts) if grid != stored else None
    metric = "ap50" if select_by == "ap50" else "rand_error"
    return {
        "seed": seed,
        "validation_planes": len(val),
        "grid": grid.as_dict(),
        "win_rate": win_rate,
        "kept": kept.as_dict(),
        "held_out_stored": held_out_score(model, stored, held_out, metric, cache),
        "held_out_grid": held_out_score(model, grid, held_out, metric, cache),
        "held_out_kept": held_out_score(model, kept, held_out, metric, cache),
        "seconds": round(seconds, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with images/, labels/")
    parser.add_argument("--model", default="nuclei", help="a model file or a built-in name")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--select-by", default="ap50", choices=["ap50", "rand_error"])
    parser.add_argument("--val-max-planes", type=int, default=TrainSettings.val_max_planes,
                        help="validation images at most (default: training's)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)

    torch.set_num_threads(2)
    model = load_model(resolve(args.model))
    if not model.info.postprocess:
        parser.error(f"{args.model} stores no tuned post-processing: nothing to keep")
    stored = Postprocess.of_model(model.info)
    train_pairs, held_out = load_split(args.data)
    print(f"machine: {cpu_model()}, torch {torch.__version__}, 2 threads")
    print(f"{len(train_pairs)} training / {len(held_out)} held-out images; model {args.model}, "
          f"stored {stored.as_dict()}; switch at a win rate >= {SWITCH_CONFIDENCE}")  # fmt: skip
    cache: dict = {}
    runs = []
    for seed in args.seeds:
        run = one_seed(model, stored, train_pairs, held_out, seed, args.select_by, cache,
                       args.val_max_planes)  # fmt: skip
        runs.append(run)
        rate = "-" if run["win_rate"] is None else f"{run['win_rate']:.3f}"
        print(f"seed {seed} ({run['validation_planes']} planes): stored held-out "
              f"{run['held_out_stored']:.4f}; grid {run['grid']} "
              f"held-out {run['held_out_grid']:.4f}; win rate {rate}; kept {run['kept']} "
              f"held-out {run['held_out_kept']:.4f}", flush=True)  # fmt: skip
    summary = {}
    for rule in ("stored", "grid", "kept"):
        values = [run[f"held_out_{rule}"] for run in runs]
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        summary[rule] = {"mean": float(np.mean(values)), "std": spread}
        print(f"held-out, {rule}: {summary[rule]['mean']:.4f} +- {spread:.4f}")
    if args.json:
        record = {"machine": cpu_model(), "data": str(args.data), "model": args.model,
                  "stored": stored.as_dict(), "confidence": SWITCH_CONFIDENCE,
                  "runs": runs, "summary": summary}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
