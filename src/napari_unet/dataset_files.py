"""A folder or a glob of TIFF files as one dataset for :mod:`napari_unet.distributed`.

Each file is segmented into its own OME-Zarr, ``OUT/<file stem>.ome.zarr``, holding
``labels/<name>`` only (as a single TIFF with another ``--out`` is): NGFF label images
belong to one image each and must match its shape, so one OME-Zarr per image is the NGFF
way; OUT is a plain folder of them. Every file is checked and planned first (so bad input
writes nothing); files whose labels are complete with the same model and settings are
skipped, an interrupted one resumes block by block, and one cluster (chosen once, for
the work of all remaining files) runs the blocks of every file.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

TIFF_SUFFIXES = (".tif", ".tiff")
GLOB_CHARACTERS = "*?["


def is_file_set(path: str | os.PathLike) -> bool:
    """True for a glob pattern or a folder that is not a zarr store."""
    text = str(path)
    if any(c in text for c in GLOB_CHARACTERS) and not Path(text).exists():
        return True
    return Path(text).is_dir() and not is_zarr_store(Path(text))


def is_zarr_store(folder: Path) -> bool:
    return any((folder / name).exists() for name in ("zarr.json", ".zgroup", ".zarray"))


def image_files(pattern: str | os.PathLike) -> list[Path]:
    """The TIFF files of a folder or a glob, sorted by name.

    Raises:
        ValueError: no TIFF file there, or two files whose outputs would be the same.
    """
    path = Path(pattern)
    found = sorted(path.iterdir()) if path.is_dir() else sorted(map(Path, glob.glob(str(path))))
    files = [f for f in found if f.is_file() and f.suffix.lower() in TIFF_SUFFIXES]
    if not files:
        raise ValueError(f"no TIFF files (.tif, .tiff) found in {pattern}")
    seen: dict[str, Path] = {}
    for file in files:
        stem = output_name(file)
        if stem in seen:
            raise ValueError(f"{seen[stem].name} and {file.name} would both write {stem}")
        seen[stem] = file
    return files


def output_name(file: Path) -> str:
    """``cells.ome.tif`` -> ``cells.ome.zarr``; ``a.tif`` -> ``a.ome.zarr``."""
    stem = file.name[: -len(file.suffix)]
    stem = stem[:-4] if stem.lower().endswith(".ome") else stem
    return f"{stem}.ome.zarr"


def segment_files_iter(
    pattern: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    name: str,
    cluster: Any,
    workers: int | None,
    overwrite: bool,
    notify,
    channel_axis: int | None = None,
    block_size: int,
    threshold: float | None,
    expand: int | None,
    min_size: int | None,
    **settings: Any,
) -> Generator[tuple[int, int], None, list]:
    """Segment every TIFF file of ``pattern`` into ``out/<stem>.ome.zarr``'s
    ``labels/<name>`` (arguments as :func:`napari_unet.distributed.segment_dataset_iter`).

    Yields:
        (done, total) tasks of all the files still to do.

    Returns:
        The :class:`~napari_unet.ngff.LabelTarget` of every file, in file order.

    Raises:
        ValueError: bad input (one sentence); nothing is written then.
    """
    from . import distributed

    out = Path(out)
    if out.exists() and (not out.is_dir() or is_zarr_store(out)):
        raise ValueError(f"--out {out} must be a folder (for one OME-Zarr per image)")
    files = image_files(pattern)
    options = (name, channel_axis, block_size, threshold, expand, min_size, settings)
    plans = [distributed.make_plan(f, model, out / output_name(f), *options) for f in files]
    todo = []
    for file, (plan, run) in zip(files, plans):
        resume = distributed.check_existing(plan.target, run, overwrite)
        if resume is True:
            notify(f"{file.name}: already segmented into {plan.target.store}, skipped")
        else:
            if resume == "resume":
                notify(f"{file.name}: {distributed.resume_note(plan)}")
            todo.append((file, plan, run, resume))
    targets = [plan.target for plan, _ in plans]
    if not todo:
        return targets
    if cluster == "auto" and workers is not None:
        cluster = "local"
    if cluster == "auto":
        megapixels = sum(distributed.plan_megapixels(plan) for _, plan, _, _ in todo)
        cluster, workers = distributed.choose_cluster(todo[0][1].model_path, megapixels,
                                                      todo[0][1], notify)  # fmt: skip
    client, owned = distributed.connect(cluster, workers, notify)
    try:
        total = sum(distributed.task_count(plan) for _, plan, _, _ in todo)
        offset = 0
        yield offset, total
        for index, (file, plan, run, resume) in enumerate(todo, 1):
            notify(f"[{index}/{len(todo)}] {file.name} -> {plan.target.store}")
            run_file = distributed.segment_planned(plan, run, resume, client, overwrite, notify)
            for done, _ in run_file:
                yield offset + done, total
            offset += distributed.task_count(plan)
    finally:
        if owned:
            distributed.close(client)
    return targets
