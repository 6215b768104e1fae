"""The tasks of :mod:`napari_unet.distributed`, run on the workers (or in this process).

* :func:`run_band`: the whole-image pass's own batches of tiles for the tile rows of one
  band (:meth:`Predictor.forward_tiles <napari_unet.predictor.Predictor.forward_tiles>`),
  thresholded and labelled block by block (block-local ids into a scratch array, a
  summary per block), or class ids written straight into the labels (semantic models);
* :func:`write_block`: one block of final ids, grown, written into level 0.

Each leaves a marker file last (the band's summaries, or an empty one), so a re-run
skips it; tasks are idempotent (they write whole chunks), so a task whose worker died
can run again anywhere. Each worker process loads the model once (:func:`predictor`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import block_labels, ngff
from .block_labels import BandGrid


@dataclass(frozen=True)
class Plan:
    """Everything a task needs (picklable; sent once per task)."""

    source: ngff.ImageSource
    target: ngff.LabelTarget
    model_path: str
    settings: tuple[tuple[str, Any], ...]  # Predictor.prepare arguments
    lo_hi: tuple  # per plane: (lo, hi) float32 arrays (C, 1, 1)
    task: str
    threshold: float
    expand: int
    min_size: int
    grid: BandGrid
    work: str

    def marker(self, kind: str, z: int, index: int) -> Path:
        return Path(self.work) / kind / f"{z}_{index}.npz"


_WORKER_STATE: dict = {}


def predictor(plan: Plan):
    """(predictor, planes) for this process, loaded once per model and settings."""
    key = (plan.model_path, plan.settings, plan.source)
    if key not in _WORKER_STATE:
        from .inference import as_planes
        from .model_io import load_model
        from .predictor import Predictor

        _WORKER_STATE.clear()
        ready = Predictor.prepare(load_model(plan.model_path), **dict(plan.settings))
        view, axis = plan.source.image()
        planes, _ = as_planes(view, ready.model.config.in_channels, axis)
        _WORKER_STATE[key] = (ready, planes)
    return _WORKER_STATE[key]


def run_band(plan: Plan, z: int, band: int) -> dict:
    """Compute band ``band`` of plane ``z``; returns {block index: summary} (instance)."""
    import dask

    marker = plan.marker("bands", z, band)
    if marker.exists():
        return _load_summaries(marker)
    with dask.config.set(scheduler="synchronous"):
        values = _band_pixels(plan, z, band)
    grid, rows = plan.grid, plan.grid.band_rows(band)
    summaries = {}
    if plan.task == "instance":
        import zarr

        ids_store = zarr.open_array(store=str(Path(plan.work) / "ids"), mode="r+")
        for index in grid.band_blocks(band):
            r, c = grid.blocks()[index]
            local = values[r.start - rows.start : r.stop - rows.start, c]
            ids, summaries[index] = block_labels.label_block(local, r, c, grid.width)
            ids_store[z, r, c] = ids
    else:
        plan.target.level0()[plan.target.key(z, rows, slice(None))] = values
    _save_summaries(marker, summaries)
    return summaries


def _band_pixels(plan: Plan, z: int, band: int) -> np.ndarray:
    """Foreground (instance, bool) or class ids (semantic, int32) of the band's rows,
    from exactly the batches of tiles the whole-image pass runs."""
    from .tiling import tile_layout

    runner, planes = predictor(plan)
    plane = planes[z]
    layout = tile_layout(plane.shape[-2:], dict(plan.settings)["tile_size"], runner.model.config)
    tiles, batch = list(layout), runner.settings.batch_size
    grid, rows = plan.grid, plan.grid.band_rows(band)
    own = plan.grid.band_tiles(band)
    dtype = bool if plan.task == "instance" else np.int32
    values = np.zeros((rows.stop - rows.start, grid.width), dtype=dtype)
    for start in range(own.start // batch * batch, own.stop, batch):
        chunk = tiles[start : start + batch]
        probs = runner.forward_tiles(plane, chunk, plan.lo_hi[z])
        for index, tile, p in zip(range(start, start + batch), chunk, probs):
            if index not in own:
                continue
            p = p[:, tile.crop_rows, tile.crop_cols]
            top = max(tile.out_rows.start, rows.start)
            bottom = min(tile.out_rows.stop, rows.stop)
            p = p[:, top - tile.out_rows.start : bottom - tile.out_rows.start]
            where = (slice(top - rows.start, bottom - rows.start), tile.out_cols)
            values[where] = p[1] > plan.threshold if dtype is bool else np.argmax(p, axis=0)
    return values


def write_block(plan: Plan, z: int, block: int, shared) -> None:
    """Final ids of one block of plane ``z`` into level 0 of the labels."""
    import zarr

    marker = plan.marker("written", z, block)
    if marker.exists():
        return
    table, offsets = shared
    ids = zarr.open_array(store=str(Path(plan.work) / "ids"), mode="r")
    window = block_labels.final_window(
        lambda r, c: ids[z, r, c], plan.grid, block, table, offsets, plan.expand
    )
    rows, cols = plan.grid.blocks()[block]
    plan.target.level0()[plan.target.key(z, rows, cols)] = window.astype(np.int32)
    _save_summaries(marker, {})


def _save_summaries(path: Path, summaries: dict) -> None:
    """Write the summaries of a band (marker of a finished task) atomically."""
    arrays = {f"{i}/{key}": value for i, s in summaries.items() for key, value in s.items()}
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(temporary, **arrays)
    os.replace(temporary, path)


def _load_summaries(path: Path) -> dict:
    summaries: dict = {}
    with np.load(path) as data:
        for key in data.files:
            index, field = key.split("/")
            summaries.setdefault(int(index), {})[field] = data[key]
    return summaries
