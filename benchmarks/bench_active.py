"""Where to annotate next: suggested regions against random regions of the same area.

A simulated annotator on ISBI 2012 (or any images/ + labels/ folder of instance labels).
Round 0: one ``--size`` px square per training image, around a random object pixel, is
annotated (its ground-truth labels are revealed, everything else is masked out of the
loss) and a model is trained for ``--iterations`` steps. Each later round adds windows of
the same size to the annotation (``--per-image``: ``--count`` on every training image,
as the Train widget suggests them one image at a time; otherwise ``--count`` over all
images, the best merged by score), either

- ``suggested``: the product's suggestion (:func:`napari_unet.suggest.suggest_regions`
  on the d4 test-time-augmentation uncertainty of the current model, outside the
  annotated area), or
- ``random``: the same function on a map of uniform noise, i.e. random non-overlapping
  windows outside the annotated area (the baseline),

and fine-tunes that strategy's previous model for ``--finetune`` steps. After every
round the model segments the last ``--eval`` held-out images (never annotated) and the
mean foreground-restricted Rand error (``metrics.rand_error``), the pixel error and
AP@0.5 are recorded.
Budgets are iterations, not minutes, so machine load changes only the time.

    PYTHONPATH=src python benchmarks/bench_active.py --count 1 --per-image --json isbi.json
    PYTHONPATH=src python benchmarks/bench_active.py --data ../shared/data/dsb2018/train \
        --split every5 --preset fast --train 8 --eval 20 --size 64 --count 1 --per-image
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import cpu_model
from bench_training import load_split
from napari_unet import metrics
from napari_unet.inference import predict, segment
from napari_unet.progress import drain
from napari_unet.suggest import suggest_regions
from napari_unet.training import PRESETS, train_iter

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "isbi2012" / "train"
STRATEGIES = ("suggested", "random")


def load_pairs(folder: Path, split: str):
    """(pool, held_out) pairs: ``ordered`` takes the first ``--train`` files as the pool
    and the last ``--eval`` as held out (ISBI slices); ``every5`` holds out every 5th
    file in name order as bench_training.py does (DSB)."""
    if split == "every5":
        return load_split(folder)
    names = sorted(p.name for p in (folder / "images").glob("*.tif"))
    pairs = [
        (tifffile.imread(folder / "images" / n), tifffile.imread(folder / "labels" / n))
        for n in names
    ]
    return pairs, pairs


def first_windows(labels: list[np.ndarray], size: int, rng) -> list[np.ndarray]:
    """Round 0's annotation: on each (Y, X) plane one ``size`` px window around a random
    object pixel (training needs an object in every annotated region)."""
    masks = []
    for plane in labels:
        edge = min(size, *plane.shape)
        rows, cols = np.nonzero(plane)
        pick = rng.integers(len(rows))
        top = int(np.clip(rows[pick] - edge // 2, 0, plane.shape[0] - edge))
        left = int(np.clip(cols[pick] - edge // 2, 0, plane.shape[1] - edge))
        mask = np.zeros(plane.shape, bool)
        mask[top : top + edge, left : left + edge] = True
        masks.append(mask)
    return masks


def new_windows(strategy: str, model, images, masks, args, rng) -> list[np.ndarray]:
    """The masks of the windows ``strategy`` adds: ``args.count`` on every plane with
    ``--per-image`` (as the Train widget suggests, one image at a time), else
    ``args.count`` over all planes, each plane's best windows merged by score (the same
    as one stack, any sizes)."""
    candidates = []
    for index, (image, annotated) in enumerate(zip(images, masks)):
        if strategy == "suggested":
            score = predict(model, image, tta="d4", with_uncertainty=True)[1]
        else:
            score = rng.random(annotated.shape)
        regions = suggest_regions(score, size=args.size, count=args.count, annotated=annotated)
        candidates += [(region.score, index, region) for region in regions]
    if not args.per_image:
        candidates = sorted(candidates, key=lambda c: -c[0])[: args.count]
    added = [np.zeros(mask.shape, bool) for mask in masks]
    for _, index, region in candidates:
        added[index][region.slices()] = True
    return added


def train(images, labels, masks, iterations: int, init_model, args, seed: int):
    """A model trained (or fine-tuned from ``init_model``) on the annotated windows only."""
    settings = PRESETS[args.preset].replace(
        iterations=iterations, minutes=None, val_fraction=0.0, preview_every_s=1e9,
        threads=args.threads, seed=seed, device="cpu",
    )  # fmt: skip
    shown = [np.where(m, lab, 0) for m, lab in zip(masks, labels)]  # only revealed labels
    return drain(train_iter(list(images), shown, masks=list(masks), mode="instance",
                            settings=settings, init_model=init_model))  # fmt: skip


def score(model, held_out) -> dict[str, float]:
    preds = [segment(model, image) for image, _ in held_out]
    truths = [gt for _, gt in held_out]
    return {
        "rand_error": round(float(np.mean(list(map(metrics.rand_error, truths, preds)))), 4),
        "pixel_error": round(float(np.mean(list(map(metrics.pixel_error, truths, preds)))), 4),
        "ap50": round(metrics.average_precision(truths, preds, iou=0.5), 4),
    }


def run_seed(pool, held_out, args, seed: int) -> list[dict]:
    """Rows (seed, round, strategy, annotated px, scores) of one simulated annotator."""
    rng = np.random.default_rng(seed)
    images = [image for image, _ in pool[: args.train]]
    labels = [gt for _, gt in pool[: args.train]]
    held_out = held_out[-args.eval :]
    masks = first_windows(labels, args.size, rng)
    model = train(images, labels, masks, args.iterations, None, args, seed)
    annotated = int(sum(m.sum() for m in masks))
    start = {"seed": seed, "round": 0, "annotated_px": annotated, **score(model, held_out)}
    rows = [{**start, "strategy": s} for s in STRATEGIES]
    print(f"seed {seed} round 0: {start}", flush=True)
    state = dict.fromkeys(STRATEGIES, (model, masks))
    for round_ in range(1, args.rounds + 1):
        for strategy in STRATEGIES:
            model, masks = state[strategy]
            added = new_windows(strategy, model, images, masks, args, rng)
            masks = [m | a for m, a in zip(masks, added)]
            model = train(images, labels, masks, args.finetune, model, args, seed + round_)
            state[strategy] = (model, masks)
            annotated = int(sum(m.sum() for m in masks))
            row = {"seed": seed, "round": round_, "strategy": strategy,
                   "annotated_px": annotated, **score(model, held_out)}  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    """Mean over seeds per round and strategy."""
    keys = ("rand_error", "pixel_error", "ap50")
    names = " | ".join(f"{s}: {k}" for k in keys for s in STRATEGIES)
    print(f"| round | annotated px | {names} |")
    print("|---" * (2 + 2 * len(keys)) + "|")
    for round_ in sorted({r["round"] for r in rows}):

        def mean(strategy, key, round_=round_):
            values = [r[key] for r in rows if r["round"] == round_ and r["strategy"] == strategy]
            return float(np.mean(values))

        cells = [mean("suggested", "annotated_px")] + [
            mean(strategy, key) for key in keys for strategy in STRATEGIES
        ]
        print(f"| {round_} | {cells[0]:.0f} | " + " | ".join(f"{c:.4f}" for c in cells[1:]) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED, help="images/ + labels/ folders")
    parser.add_argument("--split", choices=("ordered", "every5"), default="ordered",
                        help="ordered: first --train files annotated, last --eval scored "
                        "(ISBI slices); every5: every 5th file held out (DSB)")  # fmt: skip
    parser.add_argument("--preset", default="dense", help="training preset (fast for DSB)")
    parser.add_argument("--train", type=int, default=4, help="images that may be annotated")
    parser.add_argument("--eval", type=int, default=8, help="held-out images scored (the last)")
    parser.add_argument("--size", type=int, default=96, help="window edge, px")
    parser.add_argument("--count", type=int, default=4, help="windows added per round")
    parser.add_argument("--per-image", action="store_true",
                        help="--count windows on every image, not over all of them")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=400, help="round 0 training steps")
    parser.add_argument("--finetune", type=int, default=250, help="steps in each later round")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    machine = f"{cpu_model()}, torch {torch.__version__}, {args.threads} thread(s)"
    print(f"machine: {machine} (shared with other work)", flush=True)
    pool, held_out = load_pairs(args.data, args.split)
    start = time.perf_counter()
    rows = [row for seed in args.seeds for row in run_seed(pool, held_out, args, seed)]
    seconds = round(time.perf_counter() - start, 1)
    print_table(rows)
    print(f"{seconds} s in all")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "data")}
        record = {"machine": machine, "data": str(args.data), "settings": settings,
                  "seconds": seconds, "rows": rows}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
