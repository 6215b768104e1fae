"""Reproduce the built-in ``nuclei`` model (src/napari_unet/models/nuclei.safetensors).

Trains (in four stages, then re-tunes the post-processing; see docs/models.md) the
``fast`` preset (base_channels 16, depth 3) on the DSB 2018 fluorescence nuclei (CC0)
in ``../shared/data/dsb2018/train``
(images/NAME.tif + labels/NAME.tif), holding out every 5th file in name order exactly
as benchmarks/bench_training.py does, then segments the held-out images with the
trained model's own settings and reports AP@0.5 and AP@0.75
(:func:`napari_unet.metrics.average_precision`). The held-out scores, the data, its
licence and the machine are stored in the model (``info.history["held_out"]``,
``info.training``), and everything is written as JSON::

    python scripts/train_builtin_nuclei.py --minutes 37 --threads 1 --seed 0 \
        --json stage1.json --out stage1.safetensors
    python scripts/train_builtin_nuclei.py --init stage1.safetensors --minutes 55 \
        --threads 1 --seed 1 --set lr=0.001 --json stage2.json --out stage2.safetensors
    python scripts/train_builtin_nuclei.py --init stage2.safetensors --minutes 55 \
        --threads 1 --seed 2 --set lr=0.0005 --set tile_size=260 --set batch_size=2 \
        --json stage3.json --out stage3.safetensors
    python scripts/train_builtin_nuclei.py --init stage3.safetensors --minutes 55 \
        --threads 1 --seed 4 --set lr=0.0002 --set ema=0.999 --set val_max_planes=48 \
        --set tile_size=260 --set batch_size=2 --json stage4.json --out stage4.safetensors
    python scripts/train_builtin_nuclei.py --retune stage4.safetensors --seed 4 \
        --set val_fraction=0.999 --set val_max_planes=1000 \
        --json benchmarks/results/builtin_nuclei.json \
        --out src/napari_unet/models/nuclei.safetensors

``--init MODEL`` continues training from a model (its width and depth are kept).
``--average A B ...`` trains nothing: it averages the weights of models of one network
shape that started from the same model (a "model soup", Wortsman et al. 2022), tunes
the post-processing (threshold, smallest object, growth) on the ``--seed`` validation
split of the training images, and scores and records the result the same way.
``--retune MODEL`` trains nothing either: it tunes a model's post-processing on that
split again (e.g. after a setting joined the tuned ones) and keeps its weights and
history.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import cpu_model  # noqa: E402
from bench_training import load_split  # noqa: E402
from napari_unet import metrics  # noqa: E402
from napari_unet.inference import segment  # noqa: E402
from napari_unet.model_io import save_model  # noqa: E402
from napari_unet.postprocess import Postprocess, without_settings  # noqa: E402
from napari_unet.progress import drain  # noqa: E402
from napari_unet.training import PRESETS, train_iter  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "dsb2018" / "train"
DATA_NOTE = (
    "DSB 2018 nuclei, stage 1 training images (fluorescence subset as shared in "
    "../shared/data/dsb2018/train), CC0; every 5th file in name order held out"
)


def held_out_scores(model, held_out) -> dict[str, float]:
    """AP@0.5 and AP@0.75 of ``model`` (its stored post-processing) on ``held_out``."""
    gts = [labels for _, labels in held_out]
    start = time.perf_counter()
    preds = [segment(model, image) for image, _ in held_out]
    seconds = time.perf_counter() - start
    return {
        "ap50": round(metrics.average_precision(gts, preds, iou=0.5), 4),
        "ap75": round(metrics.average_precision(gts, preds, iou=0.75), 4),
        "images": len(held_out),
        "segment_seconds": round(seconds, 1),
    }


def tuned_on_validation(model, images, labels, settings) -> dict[str, float]:
    """Tune ``model``'s post-processing by AP@0.5 on the validation split ``settings``
    draws from the training images, store it in the model, and return the tuning's
    validation record (settings and scores)."""
    from napari_unet.predictor import Predictor
    from napari_unet.training import split_planes
    from napari_unet.validation import tune_postprocess

    val_planes = split_planes(images, labels, settings=settings)[1]
    tuned = tune_postprocess(Predictor.prepare(model, device="cpu"), val_planes, "ap50")
    model.info.postprocess = Postprocess.of_tuned(tuned).as_dict()
    return tuned


def retuned(path: Path, images, labels, settings) -> torch.nn.Module:
    """The model at ``path`` with its post-processing tuned again on the validation
    split; its history keeps the training's and records the earlier settings."""
    from napari_unet.model_io import load_model

    model = load_model(path, device="cpu")
    before = model.info.postprocess
    tuned = tuned_on_validation(model, images, labels, settings)
    model.info.history["retuned"] = {
        "before": before, "validation": tuned, "val_planes": settings.val_max_planes,
        "seed": settings.seed,
    }  # fmt: skip
    print(f"retuned {path.name}: {before} -> {model.info.postprocess}; {tuned}", flush=True)
    return model


def averaged(paths: list[Path], images, labels, settings) -> torch.nn.Module:
    """The mean of the weights of the models at ``paths`` (one network shape), with its
    post-processing tuned on the validation split ``settings`` draws; its history
    sums the models' steps and training seconds and names them."""
    from napari_unet.model_io import load_model

    models = [load_model(path, device="cpu") for path in paths]
    if len({m.config for m in models}) != 1:
        raise SystemExit("--average needs models of one network shape")
    soup = models[0]
    states = [m.state_dict() for m in models]
    soup.load_state_dict({k: sum(s[k].float() for s in states) / len(states) for k in states[0]})
    tuned = tuned_on_validation(soup, images, labels, settings)
    soup.info.history = {
        "iterations": sum(m.info.history["iterations"] for m in models),
        "seconds": sum(m.info.history["seconds"] for m in models),
        "averaged": [
            {
                "file": p.name,
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                "steps": m.info.history["iterations"],
                "started_from": m.info.training.get("started_from"),
            }
            for p, m in zip(paths, models)
        ],
        "best_val": without_settings(tuned),
    }
    print(f"averaged {len(models)} models; validation after tuning: {tuned}", flush=True)
    return soup


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", help="override a setting: key=json_value")
    parser.add_argument(
        "--init", help="model file or built-in name to continue from (its width/depth are kept)"
    )
    parser.add_argument(
        "--average", type=Path, nargs="+", help="average these models' weights; no training"
    )
    parser.add_argument(
        "--retune", type=Path, help="tune this model's post-processing again; no training"
    )
    parser.add_argument("--out", type=Path, required=True, help="model file to write")
    parser.add_argument("--json", type=Path, required=True, help="record of the run")
    args = parser.parse_args(argv)

    changes = {"minutes": args.minutes, "iterations": None, "threads": args.threads}
    changes |= {"seed": args.seed, "device": "cpu", "preview_every_s": 1e9}
    for item in args.set or []:
        key, value = item.split("=", 1)
        changes[key] = json.loads(value)
    settings = PRESETS["fast"].replace(**changes)
    train_pairs, held_out = load_split(args.data)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine = f"{cpu_model()}, torch {torch.__version__}, {args.threads} thread(s)"
    print(f"{started} on {machine}, python {platform.python_version()}", flush=True)
    print(f"{len(train_pairs)} training / {len(held_out)} held-out images; {changes}", flush=True)

    def show(record) -> None:
        if record.val is not None:
            minutes = record.elapsed / 60
            print(f"  {minutes:5.1f} min step {record.iteration}: {record.val}", flush=True)

    images, labels = [p[0] for p in train_pairs], [p[1] for p in train_pairs]
    if args.average:
        model = averaged(args.average, images, labels, settings)
    elif args.retune:
        model = retuned(args.retune, images, labels, settings)
    else:
        run = train_iter(images, labels, settings=settings, init_model=args.init)
        model = drain(run, show).cpu()
    history = model.info.history
    print(f"trained {history['iterations']} steps in {history['seconds']} s", flush=True)
    scores = held_out_scores(model, held_out)
    print(f"held-out: {scores}", flush=True)
    history["held_out"] = {"ap50": scores["ap50"], "ap75": scores["ap75"], "images": len(held_out)}
    ran = {"machine": machine, "started": started}
    if args.retune:  # the training's own record stays as it was
        history["retuned"] |= ran
    else:
        model.info.training |= {"data": DATA_NOTE, **ran}
    save_model(model, args.out)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    record = {
        "started": started, "machine": machine, "python": platform.python_version(),
        "data": str(args.data), "init": args.init,
        "retune": None if args.retune is None else str(args.retune),
        "average": [str(p) for p in args.average or []], "settings": settings.to_dict(),
        "steps": history["iterations"],
        "train_seconds": history["seconds"], "held_out": scores,
        "postprocess": model.info.postprocess, "best_val": history.get("best_val"),
        "retuned": history.get("retuned"),
        "file": str(args.out), "bytes": args.out.stat().st_size, "sha256": digest,
    }  # fmt: skip
    args.json.write_text(json.dumps(record, indent=1, default=float))
    print(f"saved {args.out} ({record['bytes'] / 2**20:.2f} MiB, sha256 {digest[:12]})")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
