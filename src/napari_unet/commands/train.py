"""``napari-unet train``: train a U-Net on folders of images and labels (matched by name)."""

from __future__ import annotations

import argparse
import signal
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
            "Ctrl-C stops early and still saves the best model."
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
        default="new",
        help="new (a random network), a built-in model (nuclei), a model file or a "
        "bioimage.io package to fine-tune; its width, depth, normalisation and "
        "post-processing are kept, the post-processing re-tuned on validation data "
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


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..model_io import check_model_destination, read_model_info, save_model_or_rescue
    from ..progress import drain
    from ..training import PRESETS, train_iter

    if args.preset is not None and args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
    changes = {"device": args.device, "seed": args.seed}
    if args.minutes is not None or args.iterations is not None:
        changes.update(minutes=args.minutes, iterations=args.iterations)
    for name in ("val_fraction", "select_by", "gap", "precision", "ema"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    overrides = {n: changes[n] for n in ("select_by", "gap") if n in changes}
    settings = PRESETS[args.preset or "fast"].replace(**changes)  # validates every setting
    pairs = find_pairs(args.images, args.labels)
    init = None if args.init == "new" else args.init
    config = read_model_info(init)[0] if init is not None else settings.config()
    check_model_destination(args.out, config, inputs=[p for pair in pairs for p in pair])
    images, labels = read_pairs(pairs, args.mode)
    print(f"training on {len(pairs)} image/label pair(s) from {args.images}")
    if init is not None:
        print(f"starting from {init} ({config.base_channels} base channels, depth {config.depth})")
    recipe = None
    if args.preset is None:
        from ..train_recipe import choose_settings

        settings, recipe = choose_settings(
            labels, base=settings, mode=args.mode, new_network=init is None
        )
        settings = settings.replace(**overrides)  # options given on the command line win
        print(recipe.summary() + ("; " + _given(overrides) if overrides else ""))

    stop = {"requested": False}

    def on_interrupt(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        tqdm.write("stopping after this step (Ctrl-C again to abort) ...")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    run_ = train_iter(
        images,
        labels,
        mode=args.mode,
        settings=settings,
        init_model=init,
        should_stop=lambda: stop["requested"],
    )
    bar_format = "{l_bar}{bar}| {elapsed}<{remaining} {postfix}"
    bar = LazyBar(total=1000, unit="‰", bar_format=bar_format)

    def show(record: StepRecord) -> None:
        bar().update(int(record.progress * 1000) - bar().n)
        postfix = {"step": record.iteration, "loss": f"{record.loss:.3f}"}
        if record.best is not None:
            postfix["best"] = f"{record.best:.3f}"
        bar().set_postfix(postfix, refresh=False)

    try:
        with bar:
            model = drain(run_, show)
    finally:
        signal.signal(signal.SIGINT, previous)

    if recipe is not None:
        model.info.training["recipe"] = recipe.reasons
    save_model_or_rescue(model.to("cpu"), args.out)
    history = model.info.history
    best = history.get("best_val")
    print(f"trained {history['iterations']} steps in {history['seconds']:.0f} s; saved {args.out}")
    used = model.info.training
    layout = "channels_last" if used.get("channels_last_used") else "contiguous"
    print(f"ran in {used.get('precision_used')} ({layout}) on {used.get('device_used')}")
    if best:
        print("validation (best model): " + ", ".join(f"{k} {v:.4f}" for k, v in best.items()))
    if model.info.postprocess:
        tuned = history["postprocess_val"]
        print(
            f"segmentation settings chosen on validation: threshold {tuned['threshold']}, "
            f"expand {tuned['expand']} px (AP@0.5 {tuned['ap50']:.4f}, "
            f"Rand error {tuned['rand_error']:.4f})"
        )
    else:
        print("no validation data held out (single small image or --val-fraction 0)")
    return 0


def _given(overrides: dict) -> str:
    return "given on the command line: " + ", ".join(f"{k} {v}" for k, v in overrides.items())
