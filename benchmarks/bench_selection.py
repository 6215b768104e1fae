"""Is the returned model among the best of its run? Plain weights vs. their moving
average (``TrainSettings.ema``), same data, seed and step budget.

For each arm, every validated snapshot and the returned model are scored on held-out
images (snapshots with the fixed post-processing threshold 0.5 / growth = gap, the
returned model with its tuned one). Reported per arm: the held-out score of the
returned model, the best and worst snapshot of the second half of the run, and their
spread (how much a snapshot's luck matters)::

    python benchmarks/bench_selection.py --data ../shared/data/isbi2012/train \
        --steps 600 --val-every 75 --json benchmarks/results/selection_isbi.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _machine import cpu_model
from bench_finetune import score
from bench_training import load_split
from napari_unet.postprocess import Postprocess
from napari_unet.progress import drain
from napari_unet.training import PRESETS, train_iter


def rand_error(model, held_out, post: Postprocess | None) -> float:
    """Mean adapted Rand error on ``held_out`` (``post`` None: the model's own)."""
    return score(model, held_out, post)["rand_error"]


def run_arm(settings, train_pairs, held_out) -> dict:
    snapshots = []

    def keep(record) -> None:
        if record.val is not None and record.preview_model is not None:
            snapshots.append((record.iteration, record.val, record.preview_model))

    images, labels = [p[0] for p in train_pairs], [p[1] for p in train_pairs]
    final = drain(train_iter(images, labels, settings=settings), keep)
    fixed = Postprocess(threshold=0.5, expand=settings.gap)
    curve = [
        {"step": step, "val": val, "held_out": rand_error(model.cpu(), held_out, fixed)}
        for step, val, model in snapshots
    ]
    late = [p["held_out"] for p in curve[len(curve) // 2 :]]
    result = {
        "curve": curve,
        "returned": rand_error(final.cpu(), held_out, None),
        "returned_fixed_post": rand_error(final.cpu(), held_out, fixed),
        "late_best": min(late),
        "late_worst": max(late),
        "late_spread": max(late) - min(late),
    }
    print({k: v for k, v in result.items() if k != "curve"}, flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--val-every", type=int, default=75)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    train_pairs, held_out = load_split(args.data, every=4)
    print(f"machine: {cpu_model()}; {len(train_pairs)} training, {len(held_out)} held-out")
    result = {"machine": cpu_model(), "data": str(args.data), "steps": args.steps, "runs": {}}
    for seed in args.seeds:
        for ema in (0.0, args.ema):
            settings = PRESETS["dense"].replace(
                iterations=args.steps, minutes=None, val_every=args.val_every,
                val_every_s=None, preview_every_s=0.0, seed=seed, ema=ema, device="cpu",
            )  # fmt: skip
            print(f"seed {seed}, ema {ema}:", flush=True)
            result["runs"][f"seed{seed}_ema{ema}"] = run_arm(settings, train_pairs, held_out)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
