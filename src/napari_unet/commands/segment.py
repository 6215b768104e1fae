"""``napari-unet segment``: segment a whole OME-Zarr image (or a zarr array, a TIFF file,
a folder or glob of TIFF files) block by block, in this process or on a dask.distributed
cluster, into NGFF labels.

The labels go to OUT's ``labels/NAME`` group (OUT may be the input itself, to add the
labels to the image's own labels group; napari-ome-zarr then opens both together), with
a multiscale pyramid and the image-label metadata. They equal those of ``predict`` on the
whole image, id for id. Re-running an interrupted command resumes: finished blocks are
skipped. Labels of that name made by another model or settings, or by another program,
are refused unless ``--overwrite`` is given. A folder or glob of TIFF files gives one
OME-Zarr per file, OUT/<file stem>.ome.zarr; files already done are skipped. Without
``--cluster`` this process or a local cluster is chosen, whichever is estimated faster
(said on the console). See docs/large_data.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._files import LazyBar


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "segment",
        help="segment a whole OME-Zarr image block by block (optionally on a dask cluster)",
        description=__doc__.replace("``", ""),
    )
    parser.add_argument(
        "input",
        type=Path,
        help="OME-Zarr image (NGFF 0.4/0.5), zarr array, TIFF file, or a folder or quoted "
        "glob of TIFF files",
    )
    parser.add_argument("--model", required=True, help="model file (.safetensors)")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="OME-Zarr folder for the labels (may be INPUT); for TIFF files, a folder",
    )
    parser.add_argument("--name", default="unet", help="label image name (default: unet)")
    parser.add_argument(
        "--cluster",
        default="auto",
        help="none (this process), local (a LocalCluster) or a scheduler address such as "
        "tcp://host:8786; default: none or local, whichever is estimated faster",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="LocalCluster worker processes (default 2; given alone, implies --cluster local)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace labels of that name made otherwise"
    )
    parser.add_argument("--block-size", type=int, default=1024, help="block edge, px")
    parser.add_argument("--channel-axis", type=int, help="channel axis of a bare zarr array")
    parser.add_argument("--tile-size", type=int, help="input tile edge in px (default: auto)")
    parser.add_argument("--batch-size", type=int, help="tiles per forward pass (default: auto)")
    parser.add_argument("--device", help="cpu, cuda[:N] or mps (default: best on each worker)")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16", "fp16"), help="autocast (default: per device)"
    )
    parser.add_argument(
        "--tta", choices=("none", "flips", "d4"), default="none",
        help="test-time augmentation: average 4 flips or 8 flips/rotations per tile "
        "(4x or 8x the time) (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--min-size", type=int, help="drop smaller objects, px (default: model's)")
    parser.add_argument("--expand", type=int, help="grow objects by N px (default: the model's)")
    parser.add_argument("--threshold", type=float, help="foreground threshold (default: model's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..distributed import segment_dataset

    settings = {
        "tile_size": args.tile_size,
        "batch_size": args.batch_size,
        "device": args.device,
        "precision": args.precision,
        "tta": args.tta,
    }
    with LazyBar(desc="blocks", unit="task", file=sys.stderr) as bar:
        result = segment_dataset(
            args.input,
            args.model,
            args.out,
            name=args.name,
            cluster=args.cluster,
            workers=args.workers,
            overwrite=args.overwrite,
            channel_axis=args.channel_axis,
            block_size=args.block_size,
            threshold=args.threshold,
            expand=args.expand,
            min_size=args.min_size,
            on_progress=bar.show,
            on_message=lambda message: print(message, file=sys.stderr),
            **settings,
        )
    for target in result if isinstance(result, list) else [result]:
        print(f"labels written to {target.store}/{target.group_path}")
    return 0
