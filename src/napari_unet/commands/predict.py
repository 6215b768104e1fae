"""``napari-unet predict``: label images (and optionally probabilities) with a trained model.

One label TIFF per input, NAME.tif for an input NAME.tif or NAME.tiff, in ``--out``
(with ``--probabilities`` also NAME_probabilities.tif, with ``--uncertainty``
NAME_uncertainty.tif). ``--tta flips|d4`` averages 4 or 8 flipped/rotated copies
(4x or 8x the time). Inputs are files, folders (their
``*.tif``/``*.tiff``) or glob patterns. Outputs are checked before any work: two
inputs that would write the same output file are refused, and so is an output that
already exists unless ``--overwrite`` is given (an input is never overwritten). Each
output is written to a temporary file and renamed, so an error never leaves a partial
file; any bad input (unreadable model or image, wrong channels, NaN pixels, ...) stops
with one message and exit code 2.
"""

from __future__ import annotations

import argparse
import glob
import time
from pathlib import Path

from ..atomic_files import check_can_create
from ..tta import MODES as TTA_MODES
from ._files import drain_with_bar, read_image, write_tiff_atomic

IMAGE_SUFFIXES = (".tif", ".tiff")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment images with a trained model (overlap-tile inference)",
        description=__doc__.replace("``", ""),
    )
    parser.add_argument("--model", required=True, help="model file (.safetensors)")
    parser.add_argument(
        "--images", required=True, nargs="+", metavar="PATH", help="image files, folders, globs"
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder (created)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace output files that already exist in --out (never the inputs)",
    )
    parser.add_argument(
        "--probabilities",
        action="store_true",
        help="also write NAME_probabilities.tif (float32, class axis first)",
    )
    parser.add_argument(
        "--tta",
        choices=tuple(TTA_MODES),
        default="none",
        help="test-time augmentation: average the predictions of flipped (flips: 4 copies, "
        "4x the time) or flipped and rotated (d4: 8 copies, 8x the time) images",
    )
    parser.add_argument(
        "--uncertainty",
        action="store_true",
        help="also write NAME_uncertainty.tif (float32, the TTA copies' disagreement, "
        "0..0.5); needs --tta",
    )
    parser.add_argument("--tile-size", type=int, help="input tile edge in px (default: auto)")
    parser.add_argument("--batch-size", type=int, help="tiles per forward pass (default: auto)")
    parser.add_argument("--device", help="cpu, cuda[:N] or mps (default: best available)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), help="autocast (default: per device)"
    )
    parser.add_argument(
        "--channel-axis",
        type=int,
        help="axis holding the image's channels (default: the last axis for a model taking "
        "several channels; a 1-channel model refuses a last axis of 2-4 without it)",
    )
    parser.add_argument(
        "--min-size", type=int, default=None, help="drop smaller objects, px (default: model's)"
    )
    parser.add_argument(
        "--expand",
        type=int,
        default=None,
        help="grow objects by N px (default: chosen in training, else the model's gap)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="foreground probability threshold (default: chosen in training, else 0.5)",
    )
    parser.add_argument(
        "--join-slices", action="store_true", help="link objects across stack slices"
    )
    parser.set_defaults(func=run)


def find_images(patterns: list[str]) -> list[Path]:
    """Files named by ``patterns`` (files, folders, globs), in order, without duplicates."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
        else:
            raise ValueError(f"no such image file or folder: {pattern}")
        if not matches:
            raise ValueError(f"no TIFF images found for {pattern!r}")
        found.extend(p for p in matches if p not in found)
    names = [p.name for p in found]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"several inputs share the file name {clashes[0]!r}; outputs would clash")
    return found


def output_files(
    images: list[Path],
    out_dir: Path,
    probabilities: bool,
    overwrite: bool,
    uncertainty: bool = False,
) -> dict[Path, list[Path]]:
    """Input -> its output files (labels, then probabilities, then uncertainty), checked
    before any work.

    Raises:
        ValueError: two inputs would write the same file, an output is an input, or
            an output exists and ``overwrite`` is False.
        OSError: ``out_dir`` cannot be created or written.
    """
    outputs = {
        path: [out_dir / f"{path.stem}.tif"]
        + ([out_dir / f"{path.stem}_probabilities.tif"] if probabilities else [])
        + ([out_dir / f"{path.stem}_uncertainty.tif"] if uncertainty else [])
        for path in images
    }
    writer: dict[Path, Path] = {}
    for path, targets in outputs.items():
        for target in targets:
            if target in writer:
                raise ValueError(
                    f"{writer[target].name} and {path.name} would both write {target}; "
                    "rename one or segment them into different --out folders"
                )
            writer[target] = path
    for target in writer:
        if target.exists() and any(target.resolve() == i.resolve() for i in images):
            raise ValueError(f"{target} would overwrite an input; choose another --out folder")
        if target.exists() and not overwrite:
            raise ValueError(
                f"{target} already exists; pass --overwrite to replace it or choose another "
                "--out folder"
            )
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder")
    check_can_create(out_dir / "probe")
    return outputs


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..model_io import load_model
    from ..postprocess import Postprocess
    from ..predictor import Predictor

    if args.uncertainty and args.tta == "none":
        raise ValueError("--uncertainty needs test-time augmentation: add --tta flips or d4")
    images = find_images(args.images)
    outputs = output_files(
        images, args.out, args.probabilities, args.overwrite, uncertainty=args.uncertainty
    )
    model = load_model(args.model)
    try:
        post = Postprocess.of_model(
            model.info,
            threshold=args.threshold,
            expand=args.expand,
            min_size=args.min_size,
        )
    except ValueError as error:
        raise ValueError(f"--{error}") from None
    predictor = drain_with_bar(
        Predictor.prepare_iter(
            model,
            tile_size=args.tile_size,
            batch_size=args.batch_size,
            device=args.device,
            precision=args.precision,
            tta=args.tta,
        ),
        "measuring this machine (once)",
        "step",
    )
    for path in images:
        start = time.perf_counter()
        image = read_image(path)
        result = drain_with_bar(
            predictor.labels_iter(
                image,
                channel_axis=args.channel_axis,
                post=post,
                join_slices=args.join_slices,
                with_probabilities=args.probabilities,
                with_uncertainty=args.uncertainty,
            ),
            path.name,
            "tile",
        )
        labels, *extras = result if isinstance(result, tuple) else (result,)
        args.out.mkdir(parents=True, exist_ok=True)
        for target, array in zip(outputs[path], (labels, *extras)):
            write_tiff_atomic(target, array)
        count = int(labels.max()) if model.info.task == "instance" else len(np.unique(labels))
        what = "objects" if model.info.task == "instance" else "classes"
        print(
            f"{path.name}: {image.shape} -> {count} {what} in {time.perf_counter() - start:.1f} s"
        )
    return 0
