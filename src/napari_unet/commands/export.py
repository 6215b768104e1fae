"""``napari-unet export``: write a model as a bioimage.io model package (spec 0.5, zip).

MODEL is a model file, a bioimage.io package or a built-in model name (``nuclei``).
The package holds pytorch_state_dict, torchscript and onnx weights, test tensors, a
cover made from the model's own labels of a test image, and a README; tools such as
ilastik, deepImageJ, QuPath, BiaPy and bioimageio.core can run it, and napari-unet
loads it back (``--model OUT.zip``). An existing OUT is replaced only with
``--overwrite``. Needs the ``bioimageio`` extra (``pip install 'napari-unet[bioimageio]'``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ._files import read_image

FORMATS = ("pytorch_state_dict", "torchscript", "onnx")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a model as a bioimage.io model package (zip)",
        description=__doc__.replace("``", ""),
    )
    parser.add_argument("model", help="model file, bioimage.io package or built-in name")
    parser.add_argument("--to", required=True, choices=("bioimageio",), help="package format")
    parser.add_argument("out", type=Path, help="package to write (.zip)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    parser.add_argument("--name", help="model name (default: from MODEL)")
    parser.add_argument("--description", help="one-line description (default: from MODEL)")
    parser.add_argument(
        "--author", action="append", help="author name (repeat for several; default: $USER)"
    )
    parser.add_argument(
        "--license", default="CC-BY-4.0", help="SPDX licence id (default: %(default)s)"
    )
    parser.add_argument(
        "--image", type=Path, help="test image for the test tensors and the cover "
        "(default: a generated sample)"
    )  # fmt: skip
    parser.add_argument(
        "--formats",
        default=",".join(FORMATS),
        help="weight formats, comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--test", action="store_true", help="run bioimageio.core's model test on OUT"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model_io import load_model
    from ..models import BUILTIN

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or "pytorch_state_dict" not in formats:
        raise ValueError(f"--formats takes pytorch_state_dict plus any of {', '.join(FORMATS)}")
    if args.out.exists() and not args.overwrite:
        raise ValueError(f"{args.out} already exists; pass --overwrite to replace it")
    exporter = _exporter()
    model = load_model(args.model)
    image = read_image(args.image) if args.image is not None else None
    builtin = BUILTIN.get(args.model) if not Path(args.model).exists() else None
    stem = args.model if builtin else Path(args.model).name.split(".")[0]
    out = exporter(
        model, args.out,
        name=args.name or f"napari-unet {stem}",
        description=args.description or _description(model, builtin),
        authors=args.author or [os.environ.get("USER") or "napari-unet user"],
        license=args.license, image=image, weight_formats=formats, overwrite=args.overwrite,
    )  # fmt: skip
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB; weights: {_formats(out)})")
    if args.test:
        return _test(out)
    return 0


def _exporter():
    from ..bioimageio_export import export_bioimageio, require_extra

    require_extra()
    return export_bioimageio


def _description(model, builtin) -> str:
    if builtin:
        return f"U-Net for {builtin[1]}, trained on {builtin[2]}; made with napari-unet"
    kind = "instance segmentation" if model.info.task == "instance" else "semantic segmentation"
    return f"U-Net ({kind}, {', '.join(model.info.class_names)}) trained with napari-unet"


def _formats(path: Path) -> str:
    from ..bioimageio_import import _Package

    with _Package(path) as package:
        return ", ".join(sorted(package.description().get("weights") or {}))


def _test(path: Path) -> int:
    """Run bioimageio.core's model test; 0 when it passes, 1 otherwise."""
    try:
        from bioimageio.core import test_model
    except ImportError:
        raise ValueError(
            "--test needs bioimageio.core: pip install 'napari-unet[bioimageio]'"
        ) from None
    summary = test_model(path)
    failed = [d.name for d in summary.details if d.status == "failed"]
    print(f"bioimageio.core test: {summary.status}" + (f" ({failed[0]})" if failed else ""))
    return 0 if summary.status == "passed" else 1
