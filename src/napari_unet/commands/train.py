"""``napari-unet train``: train a U-Net on folders of images and labels (matched by name)."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from ..train_record import StepRecord
from ._files import LazyBar, read_image

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp", ".npy")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a U-Net on image/label folders",
        description=(
            "Train a U-Net on pairs IMAGES/NAME + LABELS/NAME (same file stem). Labels are "
            "object ids (instance mode) or 0 = unannotated, 1 = background, 2.. = classes "
            "(semantic mode). Settings and --out are checked before training starts; "
            "Ctrl-C stops early and still saves the best model. Several processes "
            "(DistributedDataParallel): --nproc N, or start this command with torchrun."
        ),
    )
    parser.add_argument("--images", required=True, type=Path, help="folder of images")
    parser.add_argument("--labels", required=True, type=Path, help="folder of label images")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="model file to write (.safetensors); an existing file is replaced only if it "
        "is a napari-unet model; if saving fails the model is kept in the temp folder",
    )
    parser.add_argument(
        "--minutes", type=float, help="wall-clock budget, > 0 (default: the preset's)"
    )
    parser.add_argument(
        "--iterations", type=int, help="optimiser steps budget, >= 1 (default: the preset's)"
    )
    parser.add_argument(
        "--preset", default=None, help="settings preset: fast, dense (EM), paper (default: "
        "chosen from the annotation and this machine's speed, starting from fast; the "
        "choice and its reasons are printed)"
    )  # fmt: skip
    parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda[:N], mps (default: %(default)s)"
    )
    parser.add_argument(
        "--mode",
        choices=("instance", "semantic"),
        default="instance",
        help="what the labels are: instance = object ids (0 = background); semantic = "
        "0 unannotated, 1 background, 2.. classes (default: %(default)s)",
    )
    parser.add_argument(
        "--start-from",
        "--init",
        dest="init",
        default="auto",
        help="new (a random network), a built-in model (nuclei), a model file or a "
        "bioimage.io package to fine-tune; its width, depth, normalisation and "
        "post-processing are kept, the post-processing re-tuned on validation data. "
        "auto: without --preset, the built-in nuclei model when the labels look like its "
        "training data (one channel, separate objects 8-50 px across), else new "
        "(default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--val-fraction",
        type=float,
        help="share of images held out for validation, in [0, 1) (default: the preset's)",
    )
    parser.add_argument(
        "--select-by",
        choices=("ap50", "rand_error"),
        help="validation metric that picks the best model and its segmentation threshold "
        "(default: the preset's, ap50 except dense; rand_error for dense tissue such as EM)",
    )
    parser.add_argument(
        "--gap",
        type=int,
        help="px background line kept between touching objects, >= 0 (default: the preset's)",
    )
    parser.add_argument(
        "--ema",
        type=float,
        help="decay of a moving average of the weights in [0, 1), e.g. 0.99; validation and "
        "the saved model use the averaged weights (default: the preset's, 0 = off)",
    )
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="autocast precision; auto = the one measured fastest for this network on this "
        "machine, as inference uses (see napari-unet info) (default: the preset's)",
    )
    parser.add_argument(
        "--set",
        action="append",
        metavar="NAME=VALUE",
        help="any training setting (e.g. batch_size=8, lr=0.001, tile_size=124; JSON "
        "values), after the preset and the options above; repeatable",
    )
    parser.add_argument(
        "--checkpoints",
        type=Path,
        help="folder for best.safetensors (on every improvement) and last.safetensors + "
        "last.train_state.pt (at every validation and at the end), for --resume",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        help="a --checkpoints folder to continue from: its last weights, optimiser state "
        "and step count (--iterations counts all steps); any number of processes",
    )
    parser.add_argument(
        "--nproc",
        type=int,
        help="train one model on N processes of this machine (DistributedDataParallel, "
        "started with torchrun): one per GPU on CUDA, else CPU processes sharing the cores",
    )
    parser.set_defaults(func=run)


def find_pairs(images: Path, labels: Path) -> list[tuple[Path, Path]]:
    """(image, label) file pairs with the same stem, sorted by name."""
    for folder in (images, labels):
        if not folder.is_dir():
            raise ValueError(f"{folder} is not a folder")

    def by_stem(folder: Path) -> dict[str, Path]:
        return {
            p.stem: p
            for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        }

    image_files, label_files = by_stem(images), by_stem(labels)
    names = sorted(image_files.keys() & label_files.keys())
    if not names:
        raise ValueError(f"no image in {images} has a label file of the same name in {labels}")
    return [(image_files[n], label_files[n]) for n in names]


def read_pairs(pairs: list[tuple[Path, Path]], mode: str) -> tuple[list, list]:
    """Images and labels of ``pairs``, checked as training checks them, so that a
    message names the file (NaN pixels, complex values, too many classes)."""
    from ..data import check_classes, check_image

    images, labels = [], []
    for image_path, label_path in pairs:
        images.append(read_image(image_path))
        check_image(images[-1], f"image {image_path}")
        labels.append(read_image(label_path))
        if mode == "semantic":
            check_classes(labels[-1], None, f"labels {label_path}")
    return images, labels


def settings_from(args: argparse.Namespace):
    """The TrainSettings of the preset (fast when none is given), the options and ``--set
    NAME=VALUE``, and the settings given on the command line that a recipe must keep.

    Raises:
        ValueError: an unknown preset or setting, or a value out of range.
    """
    import dataclasses
    import json

    from ..train_settings import PRESETS, TrainSettings

    if args.preset is not None and args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    changes = {"device": args.device, "seed": args.seed}
    if args.minutes is not None or args.iterations is not None:
        changes.update(minutes=args.minutes, iterations=args.iterations)
    for name in ("val_fraction", "select_by", "gap", "precision", "ema"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    overrides = {n: changes[n] for n in ("select_by", "gap") if n in changes}
    names = [f.name for f in dataclasses.fields(TrainSettings)]
    for item in args.set or []:
        name, _, text = item.partition("=")
        if name not in names:
            raise ValueError(f"unknown setting {name!r} in --set; choose from {', '.join(names)}")
        try:
            changes[name] = overrides[name] = json.loads(text)
        except json.JSONDecodeError:
            changes[name] = overrides[name] = text  # a plain word, e.g. optimizer=sgd
    settings = PRESETS[args.preset or "fast"].replace(**changes)  # validates every setting
    return settings, overrides


def run(args: argparse.Namespace) -> int:
    from ..ddp import launched_by_torchrun

    if args.nproc is not None:
        return _launch(args)
    if launched_by_torchrun():
        return _run_rank(args)
    return _train(args)


def _launch(args: argparse.Namespace) -> int:
    """``--nproc N``: check everything here, then run this command on N ranks."""
    from ..ddp import launched_by_torchrun
    from ._torchrun import launch, without_option

    if args.nproc < 1:
        raise ValueError(f"--nproc must be a whole number >= 1, got {args.nproc}")
    if launched_by_torchrun():
        raise ValueError("--nproc starts its own processes; under torchrun leave it out")
    settings, _ = settings_from(args)
    if args.nproc == 1:
        return _train(args)
    _check_gpus(settings.device, args.nproc)
    _inputs(args, settings)  # bad input: one message here, not one per rank
    return launch(args.nproc, without_option(args.argv[1:], "--nproc"))


def _check_gpus(device: str, nproc: int) -> None:
    """Raise unless ``nproc`` processes fit the GPUs (when ``device`` is CUDA)."""
    import torch

    from ..devices import choose_device

    if choose_device(None if device == "auto" else device).type != "cuda":
        return
    count = torch.cuda.device_count()
    if nproc > count:
        raise ValueError(f"--nproc {nproc} needs {nproc} GPUs but this machine has {count}")


def _inputs(args: argparse.Namespace, settings):
    """(pairs, images, labels, start-from model or None, its config) after checking the
    paths and --out."""
    from ..model_io import check_model_destination, read_model_info

    if args.resume is not None and args.init not in ("new", "auto"):
        raise ValueError("--resume continues a run; it cannot be combined with --start-from")
    pairs = find_pairs(args.images, args.labels)
    init = None if args.init in ("new", "auto") else args.init
    if args.resume is not None:
        from ..checkpoints import load_train_state

        config = read_model_info(load_train_state(args.resume)[0])[0]
    else:
        config = read_model_info(init)[0] if init is not None else settings.config()
    check_model_destination(args.out, config, inputs=[p for pair in pairs for p in pair])
    images, labels = read_pairs(pairs, args.mode)
    return pairs, images, labels, init, config


def _run_rank(args: argparse.Namespace) -> int:
    """One rank of a torchrun job: join the process group, train, leave."""
    from .. import ddp

    ranks = ddp.ranks_from_environment()
    settings, overrides = settings_from(args)
    device = ddp.rank_device(settings.device, ranks)
    changes = {"device": str(device)}
    if device.type == "cpu" and settings.threads is None:
        changes["threads"] = ddp.cpu_threads(ranks)
    ddp.start(ranks, device)
    try:
        return _train(args, (settings.replace(**changes), overrides), ranks)
    except ddp.RankFailure as failure:  # before training started (e.g. choosing the recipe)
        return _after_failure(args, failure, ranks)
    finally:
        ddp.stop()


def _after_failure(args: argparse.Namespace, failure, ranks) -> int:
    """Rank 0 saves the best model so far to --out; every rank says why it ended."""
    from ..model_io import save_model_or_rescue

    message = f"napari-unet train (rank {ranks.rank}): error: {failure}"
    if failure.model is not None:
        save_model_or_rescue(failure.model.to("cpu"), args.out)
        message += f"; the best model so far was saved to {args.out}"
    print(message, file=sys.stderr, flush=True)
    return 1


def _train(args: argparse.Namespace, chosen=None, ranks=None) -> int:
    """Train and save --out (rank 0); ``chosen``: ``settings_from(args)``, adapted to
    the rank."""
    from tqdm import tqdm

    from ..ddp import SINGLE, RankFailure
    from ..model_io import save_model_or_rescue
    from ..progress import drain
    from ..training import train_iter

    ranks = ranks or SINGLE
    settings, overrides = chosen or settings_from(args)
    say = print if ranks.is_main else _quiet
    pairs, images, labels, init, config = _inputs(args, settings)
    say(f"training on {len(pairs)} image/label pair(s) from {args.images}")
    if init is not None:
        say(f"starting from {init} ({config.base_channels} base channels, depth {config.depth})")
    if args.resume is not None:
        say(f"resuming the run in {args.resume}")
    reasons = None
    if args.preset is None:
        recipe = _with_recipe(settings, overrides, images, labels, args, ranks)
        settings, reasons, summary, start = recipe
        say(summary)
        if start is not None:
            init = start
    if ranks.distributed:
        say(_distributed_summary(settings, ranks))

    stop = {"requested": False}

    def on_interrupt(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        if ranks.is_main:
            tqdm.write("stopping after this step (Ctrl-C again to abort) ...")

    stop_signals = (signal.SIGINT, signal.SIGTERM) if ranks.distributed else (signal.SIGINT,)
    previous = {s: signal.signal(s, on_interrupt) for s in stop_signals}
    run_ = train_iter(
        images,
        labels,
        mode=args.mode,
        settings=settings,
        init_model=init,
        resume=args.resume,
        out_dir=args.checkpoints,
        should_stop=lambda: stop["requested"],
        ranks=ranks,
    )
    bar_format = "{l_bar}{bar}| {elapsed}<{remaining} {postfix}"
    bar = LazyBar(total=1000, unit="‰", bar_format=bar_format, disable=not ranks.is_main)

    def show(record: StepRecord) -> None:
        bar().update(int(record.progress * 1000) - bar().n)
        postfix = {"step": record.iteration, "loss": f"{record.loss:.3f}"}
        if record.best is not None:
            postfix["best"] = f"{record.best:.3f}"
        bar().set_postfix(postfix, refresh=False)

    try:
        with bar:
            model = drain(run_, show)
    except RankFailure as failure:
        # still under the stop handlers: torchrun's agent sends SIGTERM as soon as a
        # rank dies, which must not cut rank 0's saving of the best model short
        return _after_failure(args, failure, ranks)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if not ranks.is_main:
        return 0

    if reasons is not None:
        model.info.training["recipe"] = reasons
    save_model_or_rescue(model.to("cpu"), args.out)
    _summary(model, args.out)
    return 0


def _with_recipe(settings, overrides: dict, images, labels, args: argparse.Namespace, ranks):
    """(settings, reasons, summary line, built-in model to start from or None) of the
    recipe for ``labels``; settings given on the command line (``overrides``) win.
    Rank 0 chooses (it times steps), every rank takes its choice."""
    from ..ddp import broadcast

    chosen = None
    if ranks.is_main:
        from ..train_recipe import choose_settings, in_channels_hint

        new_network = args.init in ("new", "auto") and args.resume is None
        # a network shape given on the command line asks for a new network of that shape
        builtin_allowed = args.init == "auto" and not {"base_channels", "depth"} & set(overrides)
        settings, recipe = choose_settings(
            labels, base=settings, mode=args.mode, new_network=new_network,
            builtin_allowed=builtin_allowed, in_channels=in_channels_hint(images, labels),
        )  # fmt: skip
        summary = recipe.summary() + ("; " + _given(overrides) if overrides else "")
        chosen = (settings.replace(**overrides), recipe.reasons, summary, recipe.start_from)
    return broadcast(chosen, ranks)


def _given(overrides: dict) -> str:
    return "given on the command line: " + ", ".join(f"{k} {v}" for k, v in overrides.items())


def _quiet(*args, **kwargs) -> None:
    """print() for the ranks that do not print."""


def _distributed_summary(settings, ranks) -> str:
    from ..ddp import backend

    threads = f", {settings.threads} CPU thread(s) each" if settings.threads else ""
    return (
        f"DistributedDataParallel: {ranks.world_size} processes ({backend()} on "
        f"{settings.device}{threads}); {settings.batch_size} tiles per process per step, "
        f"effective batch {settings.batch_size * ranks.world_size}, learning rate "
        f"{settings.lr:g} (not scaled with the batch)"
    )


def _summary(model, out: Path) -> None:
    """Print what was trained and how it scored."""
    from ..hardware import layout_name

    history = model.info.history
    best = history.get("best_val")
    print(f"trained {history['iterations']} steps in {history['seconds']:.0f} s; saved {out}")
    used = model.info.training
    layout = layout_name(bool(used.get("channels_last_used")))
    print(f"ran in {used.get('precision_used')} ({layout}) on {used.get('device_used')}")
    if best:
        from ..postprocess import without_settings

        scores = without_settings(best)
        print("validation (best model): " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
    if best and "threshold" in best:  # an instance model's validation, tuned
        print(
            f"segmentation settings chosen on validation: threshold {best['threshold']}, "
            f"min size {best['min_size']} px, expand {best['expand']} px"
        )
    else:
        print("no validation data held out (single small image or --val-fraction 0)")
