"""Training benchmarks: throughput against a plain PyTorch loop, and accuracy on real data.

Throughput (engine vs. a plain loop written below, same tile size, width and batch,
run side by side, medians of repeats)::

    flock /tmp/napari-unet-cpu.lock python benchmarks/bench_training.py throughput

Accuracy (train for M minutes on the training split of a shared data set, evaluate
snapshots on the held-out split: every 5th file in name order)::

    flock /tmp/napari-unet-cpu.lock python benchmarks/bench_training.py accuracy \
        --data ../shared/data/dsb2018/train --minutes 10 --json dsb.json

DistributedDataParallel (the product's ``train_iter`` on 1 and 2 ranks started by torchrun,
gloo on the CPU: each rank gets cores // ranks threads and 4 tiles per step)::

    flock /tmp/napari-unet-cpu.lock python benchmarks/bench_training.py ddp --ranks 1 2

All print the machine, torch version and thread count with the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F

from _machine import cpu_model
from napari_unet import hardware
from napari_unet.config import UNetConfig
from napari_unet.model import UNet
from napari_unet.postprocess import Postprocess
from napari_unet.predictor import Predictor
from napari_unet.progress import drain
from napari_unet.sample_data import make_sample
from napari_unet.training import (
    PRESETS,
    TrainSettings,
    score,
    split_planes,
    train_iter,
    tune_postprocess,
)
from napari_unet.validation import evaluate


def machine() -> str:
    return (
        f"{cpu_model()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, python {platform.python_version()}"
    )


# -- throughput ----------------------------------------------------------------------
def plain_loop_steps(settings: TrainSettings, image, labels, steps: int, seed: int) -> float:
    """Steps/s of a plain loop: fp32, NCHW, random crops + flips/rot90, weighted CE."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = settings.config()
    model = UNet(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    size, out = settings.tile_size, config.output_size(settings.tile_size)
    margin = (size - out) // 2
    padded = np.pad(image, margin, mode="reflect")
    target = (labels > 0).astype(np.int64)
    start = time.perf_counter()
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(settings.batch_size):
            y0, x0 = rng.integers(0, image.shape[0] - out), rng.integers(0, image.shape[1] - out)
            k = int(rng.integers(4))
            xs.append(np.rot90(padded[y0 : y0 + size, x0 : x0 + size], k).copy())
            ys.append(np.rot90(target[y0 : y0 + out, x0 : x0 + out], k).copy())
        x = torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))
        y = torch.from_numpy(np.stack(ys))
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


def engine_steps(settings: TrainSettings, image, labels, steps: int) -> float:
    run = train_iter([image], [labels], settings=settings.replace(iterations=steps + 3))
    times = []
    for record in run:
        times.append(record.elapsed)
    return steps / (times[-1] - times[2])  # excluding the first 3 steps (setup)


def throughput(args) -> None:
    """The plain loop against three engine runs, interleaved: today's step (the memory
    format inference measured, 4 x 188 px tiles), the memory format the training step
    measured, and that plus the tile shape measured for the most output pixels per
    second (what the recipe picks for whole annotated planes)."""
    from napari_unet.train_hardware import choose_training

    base = PRESETS["fast"].replace(
        minutes=None, iterations=1, val_fraction=0.0, preview_every_s=1e9, tile_size=args.tile
    )
    image, labels = make_sample((512, 512), n_objects=120, seed=0)
    model = UNet(base.config())
    inference = hardware.choose(model, torch.device("cpu")).settings
    trained = choose_training(model, torch.device("cpu"))
    print(f"machine: {machine()}")
    print(f"inference measured: {inference.describe()}")
    print(f"training measured: {trained.reason}")
    shape = (trained.settings.max_tile, trained.settings.batch_size)
    runs = {
        "engine, inference's layout": base.replace(channels_last=inference.channels_last),
        "engine, training's layout": base,
        f"engine, {shape[1]} x {shape[0]} px": base.replace(
            tile_size=shape[0], batch_size=shape[1]
        ),
    }
    print(
        f"base_channels {base.base_channels}, depth {base.depth}; plain loop: "
        f"{base.batch_size} x {args.tile} px; {args.steps} steps x {args.repeats} repeats"
    )
    rates: dict[str, list[float]] = {"plain loop": [], **{name: [] for name in runs}}
    plain_loop_steps(base, image, labels, 2, 0)  # warm-up
    for repeat in range(args.repeats):
        rates["plain loop"].append(plain_loop_steps(base, image, labels, args.steps, repeat))
        for name, settings in runs.items():
            run = settings.replace(seed=repeat)
            rates[name].append(engine_steps(run, image, labels, args.steps))
        print(f"  repeat {repeat}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in rates.items()))
    every = {"plain loop": base, **runs}
    plain = _output_mpx(base) * statistics.median(rates["plain loop"])
    print("median steps/s, output Mpx/s, output px/s against the plain loop:")
    for name, values in rates.items():
        steps = statistics.median(values)
        mpx = _output_mpx(every[name]) * steps
        print(f"  {name:32s} {steps:6.2f} steps/s {mpx:7.3f} Mpx/s {mpx / plain:5.2f}x")


def _output_mpx(settings: TrainSettings) -> float:
    """Output (labelled) megapixels of one step of ``settings``."""
    return settings.batch_size * settings.config().output_size(settings.tile_size) ** 2 / 1e6


# -- accuracy ------------------------------------------------------------------------
def load_split(root: Path, every: int = 5):
    """(training pairs, held-out pairs) of ``root/images`` + ``root/labels``: every
    ``every``-th file in name order is held out."""
    names = sorted(p.name for p in (root / "images").glob("*.tif"))
    pairs = [
        (tifffile.imread(root / "images" / n), tifffile.imread(root / "labels" / n)) for n in names
    ]
    train = [pair for i, pair in enumerate(pairs) if i % every != every - 1]
    held_out = [pair for i, pair in enumerate(pairs) if i % every == every - 1]
    return train, held_out


def evaluate_held_out(model, held_out) -> dict[str, float]:
    """Segment every held-out image with the product's ``segment`` at its defaults (the
    threshold and growth training chose on its validation split), then score."""
    from napari_unet import metrics
    from napari_unet.inference import segment

    gts = [labels for _, labels in held_out]
    preds = [segment(model, image) for image, _ in held_out]

    def mean(metric, **kwargs) -> float:
        return float(np.mean([metric(g, p, **kwargs) for g, p in zip(gts, preds)]))

    return {
        "ap50": metrics.average_precision(gts, preds, iou=0.5),
        "rand_error": mean(metrics.rand_error),  # skimage.metrics.adapted_rand_error
        "rand_error_snemi": mean(metrics.rand_error, background_singletons=True),
        "pixel_error": mean(metrics.pixel_error),
    }


def accuracy_settings(args, train_pairs, seed: int):
    """The settings ``napari-unet train`` would use: ``--preset auto`` (the default) is
    the CLI without ``--preset`` and ``--start-from`` (the recipe chosen from the
    training labels and the machine, :func:`napari_unet.train_recipe.choose_settings`,
    which may start from a built-in model); a named preset is used as it is. Returns
    (settings, the recipe's reasons or None, the model to start from or None)."""
    changes = {"minutes": args.minutes, "iterations": None, "preview_every_s": args.snapshot_s}
    changes["seed"] = seed
    overrides = {}
    for item in args.set or []:
        key, value = item.split("=", 1)
        overrides[key] = json.loads(value)
    changes |= overrides
    given = None if args.init in ("auto", "new") else args.init
    if args.preset != "auto":
        return PRESETS[args.preset].replace(**changes), None, given
    from napari_unet.train_recipe import choose_settings, in_channels_hint

    images, labels = [p[0] for p in train_pairs], [p[1] for p in train_pairs]
    settings, recipe = choose_settings(
        labels, base=PRESETS["fast"].replace(**changes), new_network=given is None,
        builtin_allowed=args.init == "auto", in_channels=in_channels_hint(images, labels),
    )  # fmt: skip
    print(recipe.summary())
    # as in the CLI, settings given explicitly win over the recipe
    return settings.replace(**overrides), recipe.reasons, given or recipe.start_from


def accuracy_run(args, train_pairs, held_out, seed: int) -> dict:
    """One training run of ``args.minutes`` with ``seed``; held-out scores of its
    snapshots and of the model it returns."""
    settings, reasons, init = accuracy_settings(args, train_pairs, seed)
    print(f"seed {seed}: start from {init or 'a new network'}, settings {settings.to_dict()}")
    snapshots, records, prep_s = [], [], None
    begin = time.perf_counter()
    images, labels = [p[0] for p in train_pairs], [p[1] for p in train_pairs]
    run = train_iter(images, labels, settings=settings, init_model=init)

    def keep(record) -> None:
        nonlocal prep_s
        if not records:
            prep_s = time.perf_counter() - begin - record.elapsed
            print(f"data preparation (targets, weight maps): {prep_s:.0f} s")
        if record.preview_model is not None:
            snapshots.append((record.elapsed / 60, record.preview_model))
        if record.val is not None:
            minutes = record.elapsed / 60
            print(f"  {minutes:5.2f} min step {record.iteration}: {record.val}")
        records.append(dataclasses.replace(record, preview_model=None))

    final = drain(run, keep)
    print(f"trained {records[-1].iteration} steps in {records[-1].elapsed:.0f} s")
    # snapshots get their threshold and growth tuned on the training's own validation
    # split, as train_iter tunes the model it returns
    val_planes = split_planes(images, labels, settings=settings)[1] if snapshots else None
    curve = []
    for minutes, model in [*snapshots, (records[-1].elapsed / 60, final)]:
        model = model.cpu()
        selection = {}
        if model is not final:  # a snapshot holds the post-processing it started with
            predictor = Predictor.prepare(model, device="cpu")
            tuned = tune_postprocess(predictor, val_planes, settings.select_by)
            selection = selection_scores(predictor, val_planes, tuned, settings.select_by)
            model.info.postprocess = Postprocess.of_tuned(tuned).as_dict()
        scores = evaluate_held_out(model, held_out) | model.info.postprocess | selection
        curve.append({"minutes": minutes, **scores})
        print(f"  held-out @ {minutes:5.2f} min: {scores}")
    if args.save:
        from napari_unet.model_io import save_model

        save_model(final, Path(args.save).with_suffix(f".seed{seed}.safetensors"))
    return {
        "seed": seed,
        "settings": settings.to_dict(),
        "recipe": reasons,
        "started_from": init,
        "steps": records[-1].iteration,
        "prep_s": prep_s,
        "curve": curve,
        "returned": curve[-1],
        "selection": selection_summary(curve, selected_metric(settings.select_by)),
        "loss": [(r.elapsed, r.loss) for r in records[:: max(1, len(records) // 500)]],
        "val": [r.val | {"elapsed": r.elapsed} for r in records if r.val is not None],
    }


def selection_scores(predictor, val_planes, tuned: dict, select_by: str) -> dict[str, float]:
    """What each model-selection rule ranks a snapshot by, on the training's own
    validation planes: ``val_stored`` with the fixed post-processing (threshold 0.5,
    growth 1 px: the rule before validation was tuned), ``val_tuned`` with the threshold
    and growth tuned there (``tuned``, :func:`tune_postprocess`'s result: today's rule,
    :func:`napari_unet.validation.validate`). Higher is better (minus the Rand error
    for ``select_by="rand_error"``)."""
    stored = evaluate(predictor, val_planes)
    return {"val_stored": score(stored, select_by), "val_tuned": score(tuned, select_by)}


def selected_metric(select_by: str) -> str:
    """The held-out metric that matches a run's ``select_by``."""
    return "rand_error" if select_by == "rand_error" else "ap50"


def selection_summary(curve: list[dict], metric: str) -> dict[str, float] | None:
    """Held-out ``metric`` of the snapshot each rule picks (first of equals), and of the
    best and worst snapshot (snapshots only: the returned model is not a candidate);
    None without snapshots."""
    candidates = [c for c in curve if "val_tuned" in c]
    if not candidates:
        return None
    sign = -1 if metric == "rand_error" else 1
    held = [c[metric] for c in candidates]
    return {
        "by_stored": max(candidates, key=lambda c: c["val_stored"])[metric],
        "by_tuned": max(candidates, key=lambda c: c["val_tuned"])[metric],
        "best": max(held, key=lambda v: sign * v),
        "worst": min(held, key=lambda v: sign * v),
    }


def spread(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of ``values``."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values)}


def accuracy(args) -> None:
    train_pairs, held_out = load_split(Path(args.data))
    print(f"machine: {machine()}")
    print(f"{len(train_pairs)} training / {len(held_out)} held-out images; preset {args.preset}")
    runs = [accuracy_run(args, train_pairs, held_out, seed) for seed in args.seeds]
    summary = {
        metric: spread([run["returned"][metric] for run in runs])
        for metric in ("ap50", "rand_error")
    }
    for metric, s in summary.items():
        print(
            f"returned model, {len(runs)} seed(s): {metric} {s['mean']:.4f} +- {s['std']:.4f} "
            f"(min {s['min']:.4f}, max {s['max']:.4f})"
        )
    picks = [run["selection"] for run in runs if run["selection"]]
    rules = ("by_stored", "by_tuned", "best", "worst") if picks else ()
    summary["selection"] = {rule: spread([pick[rule] for pick in picks]) for rule in rules}
    metric = selected_metric(runs[0]["settings"]["select_by"])
    for rule, s in summary["selection"].items():
        print(f"snapshot picked {rule}: held-out {metric} {s['mean']:.4f} +- {s['std']:.4f}")
    result = {
        "machine": machine(),
        "data": str(args.data),
        "preset": args.preset,
        "init": args.init,
        "minutes": args.minutes,
        "summary": summary,
        "runs": runs,
    }
    # the first run's fields at the top level, as plot_training.py reads them
    result |= {k: runs[0][k] for k in ("settings", "steps", "prep_s", "curve", "loss", "val")}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


# -- DistributedDataParallel -----------------------------------------------------------
def ddp_settings(args) -> TrainSettings:
    return PRESETS["fast"].replace(
        minutes=None, iterations=args.steps + 3, val_fraction=0.0, preview_every_s=1e9,
        tile_size=args.tile, device="cpu",
    )  # fmt: skip


def ddp_worker(args) -> None:
    """One rank (under torchrun): train, and rank 0 writes the step times to args.json."""
    from napari_unet import ddp

    ranks = ddp.ranks_from_environment()
    settings = ddp_settings(args).replace(threads=ddp.cpu_threads(ranks))
    ddp.start(ranks, torch.device("cpu"))
    try:
        objects = 120 * args.size**2 // 512**2
        image, labels = make_sample((args.size, args.size), n_objects=objects, seed=0)
        times = [r.elapsed for r in train_iter([image], [labels], settings=settings, ranks=ranks)]
    finally:
        ddp.stop()
    if ranks.is_main:
        Path(args.json).write_text(json.dumps({"times": times, "threads": settings.threads}))


def ddp_scaling(args) -> None:
    """Steps/s and samples/s of ``train_iter`` on each number of ranks in ``args.ranks``."""
    import subprocess
    import tempfile

    from napari_unet.training import run_settings

    settings = ddp_settings(args)
    run_settings(UNet(settings.config()), torch.device("cpu"), settings)  # measured once, cached
    print(f"machine: {machine()}")
    print(f"tile {args.tile} px, batch {settings.batch_size} per rank, {args.steps} timed steps")
    rows = []
    for n in args.ranks:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "times.json"
            command = [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(n), __file__, "ddp-worker", "--json", str(out),
                "--steps", str(args.steps), "--tile", str(args.tile), "--size", str(args.size),
            ]  # fmt: skip
            subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            result = json.loads(out.read_text())
        times = result["times"]
        steps_per_s = args.steps / (times[-1] - times[2])  # excluding the first 3 steps
        samples = steps_per_s * settings.batch_size * n
        rows.append({"ranks": n, "threads": result["threads"], "steps_per_s": steps_per_s})
        rows[-1]["samples_per_s"] = samples
        print(
            f"  {n} rank(s) x {result['threads']} thread(s): {steps_per_s:.2f} steps/s, "
            f"{samples:.1f} samples/s (effective batch {settings.batch_size * n})"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--tile", type=int, default=188)
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--repeats", type=int, default=5)
    a = sub.add_parser("accuracy")
    a.add_argument("--data", required=True)
    a.add_argument("--minutes", type=float, default=10.0)
    a.add_argument(
        "--preset", default="auto",
        help="auto (default: as napari-unet train without --preset) or a preset name",
    )  # fmt: skip
    a.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed")
    a.add_argument(
        "--init", default="auto",
        help="as train --start-from: auto (default), new, a model file or built-in name",
    )  # fmt: skip
    a.add_argument("--snapshot-s", type=float, default=120.0)
    a.add_argument("--set", action="append", help="override a setting: key=json_value")
    a.add_argument("--json", help="write the results here")
    a.add_argument("--save", help="save each seed's final model as FILE.seedN.safetensors")
    d = sub.add_parser("ddp")
    d.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    d.add_argument("--steps", type=int, default=20)
    d.add_argument("--tile", type=int, default=188)
    d.add_argument("--size", type=int, default=512, help="edge of the generated sample, px")
    d.add_argument("--json", help="write the results here")
    w = sub.add_parser("ddp-worker")  # one rank, started by the ddp case through torchrun
    w.add_argument("--steps", type=int, required=True)
    w.add_argument("--tile", type=int, required=True)
    w.add_argument("--size", type=int, required=True)
    w.add_argument("--json", required=True)
    args = parser.parse_args(argv)
    UNetConfig()  # fail early on a broken install
    cases = {"throughput": throughput, "accuracy": accuracy, "ddp": ddp_scaling}
    cases["ddp-worker"] = ddp_worker
    cases[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
