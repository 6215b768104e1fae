"""Where to annotate next: suggested regions against random regions of the same area.

A simulated annotator on ISBI 2012 (or any images/ + labels/ folder of instance labels).
Round 0: one ``--size`` px square per training slice, around a random object pixel, is
annotated (its ground-truth labels are revealed, everything else is masked out of the
loss) and a model is trained for ``--iterations`` steps. Each later round adds ``--count`` windows
of the same size to the annotation, either

- ``suggested``: the product's suggestion (:func:`napari_unet.suggest.suggest_regions`
  on the d4 test-time-augmentation uncertainty of the current model, outside the
  annotated area), or
- ``random``: the same function on a map of uniform noise, i.e. random non-overlapping
  windows outside the annotated area (the baseline),

and fine-tunes that strategy's previous model for ``--finetune`` steps. After every
round the model segments the last ``--eval`` slices (never annotated) and the mean
foreground-restricted Rand error (``metrics.rand_error``) and pixel error are recorded.
Budgets are iterations, not minutes, so machine load changes only the time.

    PYTHONPATH=src python benchmarks/bench_active.py --seeds 0 1 --json active_isbi.json
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
from napari_unet import metrics
from napari_unet.inference import predict, segment
from napari_unet.progress import drain
from napari_unet.suggest import suggest_regions
from napari_unet.training import PRESETS, train_iter

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "isbi2012" / "train"
STRATEGIES = ("suggested", "random")


def load_pairs(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    names = sorted(p.name for p in (folder / "images").glob("*.tif"))
    return [
        (tifffile.imread(folder / "images" / n), tifffile.imread(folder / "labels" / n))
        for n in names
    ]


def first_windows(labels: np.ndarray, size: int, rng) -> np.ndarray:
    """Round 0's annotation: on each slice of a (Z, Y, X) stack one ``size`` px window
    around a random object pixel (training needs an object in every annotated region)."""
    mask = np.zeros(labels.shape, bool)
    for z, plane in enumerate(labels):
        rows, cols = np.nonzero(plane)
        pick = rng.integers(len(rows))
        top = int(np.clip(rows[pick] - size // 2, 0, plane.shape[0] - size))
        left = int(np.clip(cols[pick] - size // 2, 0, plane.shape[1] - size))
        mask[z, top : top + size, left : left + size] = True
    return mask


def new_windows(strategy: str, model, images, annotated, args, rng) -> np.ndarray:
    """The mask of the ``args.count`` windows ``strategy`` adds (Z, Y, X)."""
    if strategy == "suggested":
        score = np.stack([predict(model, image, tta="d4", with_uncertainty=True)[1]
                          for image in images])  # fmt: skip
    else:
        score = rng.random(annotated.shape)
    added = np.zeros(annotated.shape, bool)
    for region in suggest_regions(score, size=args.size, count=args.count, annotated=annotated):
        added[region.slices()] = True
    return added


def train(images, labels, mask, iterations: int, init_model, args, seed: int):
    """A model trained (or fine-tuned from ``init_model``) on the annotated windows only."""
    settings = PRESETS["dense"].replace(
        iterations=iterations, minutes=None, val_fraction=0.0, preview_every_s=1e9,
        threads=args.threads, seed=seed, device="cpu",
    )  # fmt: skip
    masks = list(mask)
    shown = [np.where(m, lab, 0) for m, lab in zip(masks, labels)]  # only revealed labels
    return drain(train_iter(list(images), shown, masks=masks, mode="instance",
                            settings=settings, init_model=init_model))  # fmt: skip


def score(model, held_out) -> dict[str, float]:
    preds = [segment(model, image) for image, _ in held_out]
    truths = [gt for _, gt in held_out]
    return {
        "rand_error": round(float(np.mean(list(map(metrics.rand_error, truths, preds)))), 4),
        "pixel_error": round(float(np.mean(list(map(metrics.pixel_error, truths, preds)))), 4),
    }


def run_seed(pairs, args, seed: int) -> list[dict]:
    """Rows (seed, round, strategy, annotated px, scores) of one simulated annotator."""
    rng = np.random.default_rng(seed)
    train_pairs, held_out = pairs[: args.train], pairs[-args.eval :]
    images = np.stack([image for image, _ in train_pairs])
    labels = np.stack([gt for _, gt in train_pairs])
    mask = first_windows(labels, args.size, rng)
    model = train(images, labels, mask, args.iterations, None, args, seed)
    start = {"seed": seed, "round": 0, "annotated_px": int(mask.sum()), **score(model, held_out)}
    rows = [{**start, "strategy": s} for s in STRATEGIES]
    print(f"seed {seed} round 0: {start}", flush=True)
    state = dict.fromkeys(STRATEGIES, (model, mask))
    for round_ in range(1, args.rounds + 1):
        for strategy in STRATEGIES:
            model, mask = state[strategy]
            mask = mask | new_windows(strategy, model, images, mask, args, rng)
            model = train(images, labels, mask, args.finetune, model, args, seed + round_)
            state[strategy] = (model, mask)
            row = {"seed": seed, "round": round_, "strategy": strategy,
                   "annotated_px": int(mask.sum()), **score(model, held_out)}  # fmt: skip
            rows.append(row)
            print(row, flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    """Mean over seeds per round and strategy."""
    print("| round | annotated px | suggested: Rand error | random: Rand error | "
          "suggested: pixel error | random: pixel error |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for round_ in sorted({r["round"] for r in rows}):

        def mean(strategy, key, round_=round_):
            values = [r[key] for r in rows if r["round"] == round_ and r["strategy"] == strategy]
            return float(np.mean(values))

        cells = [mean("suggested", "annotated_px")] + [
            mean(strategy, key) for key in ("rand_error", "pixel_error") for strategy in STRATEGIES
        ]
        print(f"| {round_} | {cells[0]:.0f} | " + " | ".join(f"{c:.4f}" for c in cells[1:]) + " |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED, help="images/ + labels/ folders")
    parser.add_argument("--train", type=int, default=4, help="slices that may be annotated")
    parser.add_argument("--eval", type=int, default=8, help="last slices scored")
    parser.add_argument("--size", type=int, default=96, help="window edge, px")
    parser.add_argument("--count", type=int, default=4, help="windows added per round")
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
    pairs = load_pairs(args.data)
    start = time.perf_counter()
    rows = [row for seed in args.seeds for row in run_seed(pairs, args, seed)]
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
