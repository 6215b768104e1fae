"""Segment whole datasets block by block, in one process or on a dask.distributed cluster.

:func:`segment_dataset` reads an OME-Zarr image or a zarr array (:mod:`napari_unet.ngff`)
and writes NGFF labels (``labels/<name>``) straight into the output store. The labels
equal :func:`napari_unet.inference.segment` on the whole image, id for id:

* the client computes each plane's normalisation percentiles once (the same
  :func:`~napari_unet.normalization.percentile_range` call as the whole-image pass) and
  chooses the run settings (tile, batch, precision) once, so every worker runs the same;
* a **band** task (:func:`~napari_unet.block_tasks.run_band`) runs the whole-image
  pass's own tile batches (:meth:`~napari_unet.predictor.Predictor.forward_tiles`) for
  the tile rows it owns, each tile reading its exact context margin from the image
  (mirrored at the image's edges only), thresholds the foreground and labels its blocks
  (:func:`napari_unet.block_labels.label_block`), writing block-local ids to a scratch
  array and a small summary file; semantic models write class ids directly;
* the client stitches the summaries into one table per plane
  (:func:`napari_unet.block_labels.final_table`), then **write** tasks map, grow and write
  each block of level 0; :func:`napari_unet.ngff.finish_labels` adds the pyramid and the
  NGFF metadata.

Every worker process loads the model once (:func:`~napari_unet.block_tasks.predictor`).
Each finished task leaves a marker in ``OUT/.napari-unet-work/<name>``, so re-running
the same command after an interruption skips finished blocks; tasks are idempotent, so a
killed worker's blocks are simply recomputed elsewhere by dask. The work folder is
removed when the labels are complete.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable, Generator, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from . import block_labels, ngff
from .block_labels import BandGrid
from .block_tasks import Plan, run_band, write_block

WORK_FOLDER = ".napari-unet-work"
DEFAULT_BLOCK_SIZE = 1024  # px: blocks of about 1024 x 1024 px per task
CLUSTERS = ("none", "local")
DEFAULT_SCHEDULER_PORT = 8786  # dask's, for an address given without a port
CONNECT_TIMEOUT_S = 5


# -- the Python function ---------------------------------------------------------------
def segment_dataset(
    image: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    **options: Any,
):
    """:func:`segment_dataset_iter` with progress reported to ``on_progress(done, total)``.

    Returns:
        The :class:`~napari_unet.ngff.LabelTarget` written (complete); for a folder or a
        glob of TIFF files, the list of their targets in file order.
    """
    from .progress import drain

    run = segment_dataset_iter(image, model, out, **options)
    try:
        return drain(run, None if on_progress is None else lambda step: on_progress(*step))
    finally:
        run.close()  # an exception in on_progress: close the cluster, cancel the tasks


def segment_dataset_iter(
    image: str | os.PathLike,
    model: str | os.PathLike,
    out: str | os.PathLike,
    *,
    name: str = "unet",
    cluster: Any = "auto",
    workers: int | None = None,
    overwrite: bool = False,
    channel_axis: int | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    threshold: float | None = None,
    expand: int | None = None,
    min_size: int | None = None,
    on_message: Callable[[str], None] | None = None,
    **settings: Any,
) -> Generator[tuple[int, int], None, Any]:
    """Segment ``image`` with the model file ``model`` into ``out``'s ``labels/<name>``.

    Args:
        image: an OME-Zarr image (NGFF 0.4/0.5; full-resolution level), a zarr array, a
            TIFF file, or a folder or glob of TIFF files (each segmented into its own
            OME-Zarr ``out/<file stem>.ome.zarr``, see :mod:`napari_unet.dataset_files`).
        model: model file (.safetensors) or built-in name; every worker loads it once.
        out: an OME-Zarr folder (created; may be ``image`` itself to add the labels to
            the input's own ``labels`` group); for a set of files, a folder.
        name: label image name.
        cluster: "auto" (whichever of "none" and "local" is estimated faster, see
            :mod:`napari_unet.cluster_choice`), "none" (this process), "local" (a
            LocalCluster of ``workers`` one-thread worker processes), a scheduler
            address, or a ``distributed.Client``.
        overwrite: replace labels of that name made by another model, other settings,
            or another program.
        block_size: about the edge of one task's block, px.
        threshold, expand, min_size: instance post-processing (None: the model's).
        on_message: called with one-line notes (cluster choice, dashboard link, resumed
            blocks, files skipped).
        settings: ``device``, ``precision``, ``tile_size``, ``batch_size``,
            ``channels_last`` (None: measured on this machine, then used by every worker),
            ``tta`` (test-time augmentation, :data:`napari_unet.tta.MODES`; default none).

    Yields:
        (done, total) tasks (bands, then block writes); for a set of files, files.

    Returns:
        The :class:`~napari_unet.ngff.LabelTarget` written (complete), or the list of
        targets for a set of files.

    Raises:
        ValueError: bad input (one sentence); nothing is written then.
    """
    from . import dataset_files

    notify = on_message or (lambda message: None)
    options = {"name": name, "overwrite": overwrite, "channel_axis": channel_axis,
               "block_size": block_size, "threshold": threshold, "expand": expand,
               "min_size": min_size, **settings}  # fmt: skip
    if dataset_files.is_file_set(image):
        return (
            yield from dataset_files.segment_files_iter(
                image, model, out, cluster=cluster, workers=workers, notify=notify, **options
            )
        )
    plan, run = make_plan(image, model, out, name, channel_axis, block_size, threshold, expand,
                          min_size, settings)  # fmt: skip
    resume = check_existing(plan.target, run, overwrite)
    if resume == "resume":
        notify(resume_note(plan))
    if resume is True:
        notify(f"labels/{name} in {out} are already complete")
        return plan.target
    if cluster == "auto" and workers is not None:
        cluster = "local"  # a worker count only makes sense for a local cluster
    if cluster == "auto":
        cluster, workers = choose_cluster(plan.model_path, plan_megapixels(plan), plan, notify)
    client, owned = connect(cluster, workers, notify)
    try:
        return (yield from segment_planned(plan, run, resume, client, overwrite, notify))
    finally:
        if owned:
            close(client)


def segment_planned(plan: Plan, run: dict, resume, client, overwrite: bool, notify) -> Generator:
    """Run a checked plan (:func:`make_plan`) on ``client`` (None: this process)."""
    if not resume:
        shutil.rmtree(plan.work, ignore_errors=True)
        ngff.create_labels(plan.target, np.int32, overwrite=overwrite, run=run)
    _prepare_work(plan, run, resume)
    yield from _execute(plan, client)
    _finish(plan, run, client)
    return plan.target


def resume_note(plan: Plan) -> str:
    """ "resuming: k of n bands already done" for an interrupted run of ``plan``."""
    bands = [(z, b) for z in range(len(plan.lo_hi)) for b in range(plan.grid.n_bands)]
    skipped = sum(plan.marker("bands", z, b).exists() for z, b in bands)
    return f"resuming: {skipped} of {len(bands)} bands already done"


def plan_megapixels(plan: Plan) -> float:
    """Output megapixels of a plan: planes x Y x X, in millions."""
    return len(plan.lo_hi) * plan.grid.height * plan.grid.width / 1e6


def choose_cluster(model_path: str, megapixels: float, plan: Plan, notify):
    """("none" or "local", workers) for ``megapixels`` of output with ``plan``'s run
    settings, by :func:`napari_unet.cluster_choice.choose`; says which and why through
    ``notify``."""
    from .cluster_choice import choose

    choice = choose(model_path, megapixels, dict(plan.settings))
    notify(f"cluster: {choice.cluster} ({choice.reason})")
    return choice.cluster, choice.workers


def close(client) -> None:
    """Close a client and the cluster it started."""
    cluster_object = client.cluster
    client.close()
    cluster_object.close()


def make_plan(image, model, out, name, channel_axis, block_size, threshold, expand, min_size,
              settings) -> tuple[Plan, dict]:  # fmt: skip
    """Validate everything (nothing written) and fix the run: settings, percentiles."""
    import dask

    from .inference import SETTINGS, as_planes
    from .model_io import content_sha256, load_model
    from .models import resolve
    from .normalization import percentile_range
    from .postprocess import Postprocess
    from .predictor import Predictor
    from .tiling import tile_layout

    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise TypeError(f"unexpected keyword arguments: {sorted(unknown)}")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"label name {name!r} must be a plain, non-empty name")
    if block_size < 1:
        raise ValueError(f"block size must be positive, got {block_size}")
    source = ngff.open_source(image, channel_axis=channel_axis)
    model = resolve(model)  # a built-in name (nuclei) -> its file, which workers load
    net = load_model(model)
    post = Postprocess.of_model(net.info, threshold=threshold, expand=expand, min_size=min_size)
    view, axis = source.image()
    planes, spatial = as_planes(view, net.config.in_channels, axis)
    predictor = Predictor.prepare(net, **settings)
    tile = predictor.tile_for(spatial[-2:])
    fixed = {
        "device": settings.get("device"),
        "precision": predictor.settings.precision,
        "channels_last": predictor.settings.channels_last,
        "batch_size": predictor.settings.batch_size,
        "tile_size": tile,
        "tta": predictor.tta,
    }
    grid = BandGrid.of(tile_layout(spatial[-2:], tile, net.config), block_size)
    target = ngff.label_target(source, spatial, out, name, grid.block_shape)
    ngff.check_output_root(target)
    low, high = net.info.normalization["low"], net.info.normalization["high"]
    with dask.config.set(scheduler="threads"):  # here: the input may not be picklable
        lo_hi = tuple(percentile_range(planes[z], low, high) for z in range(len(planes)))
    if not all(np.isfinite(np.concatenate(r)).all() for r in lo_hi):
        raise ValueError("the image contains NaN or infinite pixels")
    run = {
        "model_sha256": content_sha256(model),  # of the content: saves of one model agree
        "image": str(Path(source.store).resolve() / source.array_path),
        "image_shape": list(source.shape),
        **{k: v for k, v in fixed.items() if k != "device"},
        "threshold": post.threshold,
        "expand": post.expand,
        "min_size": post.min_size,
        "block_shape": list(grid.block_shape),
    }
    work = str(Path(out) / WORK_FOLDER / name)
    plan = Plan(source, target, str(Path(model).resolve()), tuple(fixed.items()), lo_hi,
                net.info.task, post.threshold, post.expand, post.min_size, grid, work)  # fmt: skip
    return plan, run


def check_existing(target: ngff.LabelTarget, run: dict, overwrite: bool) -> bool | None:
    """What to do with labels already at ``target``: False (none, or ``overwrite``:
    start afresh), True (complete with this run: nothing to do), "resume" (begun by
    this run).

    Raises:
        ValueError: labels of that name made by another program; :class:`OtherRun`: by
            another model or other settings.
    """
    existing = ngff.existing_run(target)
    where = f"labels/{target.name} in {target.store}"
    if existing is None or overwrite:
        return False
    if not existing:
        raise ValueError(
            f"{where} already exists and was not made by napari-unet; choose another "
            "--name or pass --overwrite to replace it"
        )
    stored = {k: v for k, v in existing.items() if k != "complete"}
    stored.setdefault("tta", "none")  # written before runs recorded their TTA
    if stored != json.loads(json.dumps(run)):
        changed = sorted(k for k in set(stored) | set(run) if stored.get(k) != run.get(k))
        raise OtherRun(where, changed)
    return True if existing.get("complete") else "resume"


class OtherRun(ValueError):
    """Labels of that name were made by another model or other settings.

    Attributes:
        where: "labels/<name> in <store>".
        changed: the names of the run settings that differ (e.g. "model", "threshold").
    """

    def __init__(self, where: str, changed: list[str]) -> None:
        self.where, self.changed = where, changed
        super().__init__(
            f"{where} was made by another model or other settings ({', '.join(changed)}); "
            "pass --overwrite to replace it or choose another --name"
        )


# -- clusters ----------------------------------------------------------------------------
def connect(cluster: Any, workers: int | None = None, notify=None):
    """(client, owned): None for "none"; a new LocalCluster's client for "local" (owned:
    close it afterwards); a client of the scheduler at an address; a given Client.
    ``notify`` receives the dashboard link.

    Raises:
        ValueError: a scheduler that cannot be reached, or a bad worker count.
    """
    if workers is not None and workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if workers is not None and cluster != "local":
        raise ValueError("--workers sets the size of a local cluster; use it with --cluster local")
    if cluster is None or cluster == "none":
        return None, False
    from distributed import Client, LocalCluster

    if isinstance(cluster, Client):
        client, owned = cluster, False
    elif cluster == "local":
        local = LocalCluster(n_workers=workers or 2, threads_per_worker=1, processes=True)
        client, owned = Client(local, set_as_default=False), True
    else:
        client, owned = _scheduler_client(str(cluster)), False
    if notify is not None:
        notify(f"dask dashboard: {client.dashboard_link}")
    return client, owned


def _scheduler_client(address: str):
    """A Client of the scheduler at ``address``, not made dask's default (napari's own
    dask arrays keep computing here).

    Raises:
        ValueError: nothing answers there. A tcp or tls address is first tried with a
            plain socket: distributed's Client starts its IO-loop thread before it
            connects and leaves it running when it cannot, for as long as the process
            lives (a napari session, a test run).
    """
    from distributed import Client
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme in ("tcp", "tls"):
            host_port = parse_host_port(location, default_port=DEFAULT_SCHEDULER_PORT)
            socket.create_connection(host_port, timeout=CONNECT_TIMEOUT_S).close()
        return Client(address, timeout=f"{CONNECT_TIMEOUT_S}s", set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise ValueError(f"cannot reach the dask scheduler at {address}: {error}") from None


# -- the run -----------------------------------------------------------------------------
def _prepare_work(plan: Plan, run: dict, resume) -> None:
    import zarr

    work = Path(plan.work)
    for kind in ("bands", "written"):
        (work / kind).mkdir(parents=True, exist_ok=True)
    (work / "run.json").write_text(json.dumps(run, indent=1))
    if plan.task == "instance" and not (work / "ids").exists():
        planes = len(plan.lo_hi)
        zarr.create_array(
            store=str(work / "ids"), shape=(planes, plan.grid.height, plan.grid.width),
            chunks=(1, *plan.grid.block_shape), dtype=np.int32, fill_value=0,
        )  # fmt: skip


def _execute(plan: Plan, client) -> Generator[tuple[int, int], None, None]:
    grid, planes = plan.grid, len(plan.lo_hi)
    n_blocks = len(grid.blocks()) if plan.task == "instance" else 0
    bands = [(z, b) for z in range(planes) for b in range(grid.n_bands)]
    total = task_count(plan)
    done = 0
    yield done, total
    summaries: dict = {}
    for item, result in _map(client, run_band, plan, bands):
        summaries[item] = result
        done += 1
        yield done, total
    if plan.task != "instance":
        return
    next_id, jobs = 0, []
    for z in range(planes):
        per_block = {}
        for band in range(grid.n_bands):
            per_block.update(summaries[(z, band)])
        ordered = [per_block[i] for i in range(n_blocks)]
        table, offsets, count = block_labels.final_table(
            grid, ordered, min_size=plan.min_size, offset=next_id
        )
        if table.max() > np.iinfo(np.int32).max:
            raise ValueError(f"object ids up to {table.max()} do not fit into int32 labels")
        next_id += count
        shared = _share(client, (table, offsets))
        jobs.extend((z, block, shared) for block in range(n_blocks))
    for _ in _map(client, write_block, plan, jobs):
        done += 1
        yield done, total


def task_count(plan: Plan) -> int:
    """Tasks of a plan: a band task per band and plane, then (instance models) a write
    task per block and plane."""
    planes = len(plan.lo_hi)
    n_blocks = len(plan.grid.blocks()) if plan.task == "instance" else 0
    return planes * (plan.grid.n_bands + n_blocks)


def _share(client, value):
    """``value`` for tasks: as it is without a client, else the future of a task that
    returns it, which dask computes again if every worker holding it dies (scattered
    data would be lost with them, and the run with it)."""
    return value if client is None else client.submit(_same, value, pure=False)


def _same(value):
    return value


def _map(client, function, plan: Plan, items: list) -> Iterable:
    """(item, result) of ``function(plan, *item)`` per item, as they finish."""
    if client is None:
        for item in items:
            yield item, function(plan, *item)
        return
    from distributed import as_completed

    plan_future = _share(client, plan)
    futures = {
        client.submit(function, plan_future, *item, pure=False, retries=1): item for item in items
    }
    try:
        for future in as_completed(futures):
            yield futures[future], future.result()
    finally:
        client.cancel(list(futures))


def _finish(plan: Plan, run: dict, client) -> None:
    ngff.finish_labels(plan.target, run)
    shutil.rmtree(plan.work, ignore_errors=True)
    work_root = Path(plan.work).parent
    if work_root.exists() and not any(work_root.iterdir()):
        work_root.rmdir()
