"""Which of "none" (this process) and "local" (a LocalCluster) segments a dataset faster.

The cheap path first: the work (output megapixels) divided by the in-process throughput
:mod:`napari_unet.hardware` measured for this network size (cached) estimates the time
in this process. Below :data:`MIN_WORK_S` a LocalCluster cannot pay for starting its
processes and loading the model in each, so "none" is chosen without measuring anything
else. Above it, one measurement (cached in ``clusters.json`` beside ``hardware.json``,
keyed like it, plus the worker count) times the same one-tile pass in this process and on
a LocalCluster of one one-thread worker per CPU, with the cluster's start-up time; the
smaller estimated total wins:

    in this process:  work / in-process rate
    local cluster:    start-up + work / cluster rate
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

#: s: estimated in-process work below which a LocalCluster is not considered
MIN_WORK_S = 60.0
CACHE_FILE = "clusters.json"
TIMED_S = 1.0  # s: each rate is timed over at least this long (after one warm-up pass)


@dataclass(frozen=True)
class LocalMeasurement:
    """One measurement of a LocalCluster against this process, on the same pass.

    Attributes:
        workers: one-thread worker processes in the cluster.
        startup_s: s from starting the cluster to every worker having run a pass.
        in_process_mpx_per_s: output Mpx/s in this process (all its threads).
        cluster_mpx_per_s: output Mpx/s of all workers together, running at once.
    """

    workers: int
    startup_s: float
    in_process_mpx_per_s: float
    cluster_mpx_per_s: float


@dataclass(frozen=True)
class ClusterChoice:
    """``cluster`` ("none" or "local"), ``workers`` (None for "none") and why."""

    cluster: str
    workers: int | None
    reason: str


Measure = Callable[[str, dict, int], LocalMeasurement]


def choose(
    model_path: str,
    megapixels: float,
    settings: dict[str, Any],
    *,
    cpus: int | None = None,
    measure: Measure | None = None,
) -> ClusterChoice:
    """The faster of "none" and "local" for ``megapixels`` of output with this model.

    Args:
        model_path: the model file the workers would load.
        megapixels: output pixels to segment (planes x Y x X), in millions.
        settings: the run settings fixed for every worker (``Predictor.prepare``
            arguments: device, precision, channels_last, batch_size, tile_size).
        cpus: CPUs of this machine (default ``os.cpu_count()``).
        measure: ``measure(model_path, settings, workers)`` -> :class:`LocalMeasurement`
            (default :func:`measure_local`; tests pass their own timings).
    """
    from . import hardware
    from .devices import choose_device
    from .model_io import load_model

    device = choose_device(settings.get("device"))
    cpus = cpus or os.cpu_count() or 1
    if device.type != "cpu":
        return ClusterChoice("none", None, f"the network runs on {device.type}")
    if cpus < 2:
        return ClusterChoice("none", None, "this machine has one CPU")
    model = load_model(model_path)
    rate = hardware.choose(model, device).mpx_per_s
    estimate = megapixels / rate
    if estimate < MIN_WORK_S:
        return ClusterChoice(
            "none",
            None,
            f"about {estimate:.0f} s of work at the {rate:.2g} Mpx/s measured here, less "
            f"than the {MIN_WORK_S:.0f} s for which a local cluster's start-up can pay off",
        )
    key = f"{hardware.cache_key(model.config, device)} | {cpus} workers"
    local = _cached(key)
    if local is None:
        local = (measure or measure_local)(model_path, settings, cpus)
        _store(key, local)
    return decide(megapixels, local)


def decide(megapixels: float, local: LocalMeasurement) -> ClusterChoice:
    """The smaller estimated total time of the two, from one measurement."""
    here = megapixels / local.in_process_mpx_per_s
    there = local.startup_s + megapixels / local.cluster_mpx_per_s
    numbers = (
        f"estimated {there:.0f} s on {local.workers} local workers (start-up "
        f"{local.startup_s:.0f} s, {local.cluster_mpx_per_s:.2g} Mpx/s) against {here:.0f} s "
        f"in this process ({local.in_process_mpx_per_s:.2g} Mpx/s)"
    )
    if there < here:
        return ClusterChoice("local", local.workers, numbers)
    return ClusterChoice("none", None, numbers)


# -- the measurement -----------------------------------------------------------------------
def measure_local(model_path: str, settings: dict, workers: int) -> LocalMeasurement:
    """Time one tile's pass here and on a new LocalCluster of ``workers`` one-thread
    processes (all at once), and the cluster's start-up; the cluster is closed again."""
    from distributed import Client, LocalCluster

    in_process = tile_rate(model_path, settings)
    start = time.perf_counter()
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = Client(cluster, set_as_default=False)
    try:
        client.run(tile_rate, model_path, settings, 0.0)  # imports and loads the model
        startup = time.perf_counter() - start
        rates = client.run(tile_rate, model_path, settings)
    finally:
        client.close()
        cluster.close()
    return LocalMeasurement(workers, startup, in_process, sum(rates.values()))


def tile_rate(model_path: str, settings: dict, seconds: float = TIMED_S) -> float:
    """Output Mpx/s of the segmentation pass over one tile-sized image, timed for at least
    ``seconds`` after one warm-up pass (runs in this process or on a worker)."""
    import numpy as np

    from .model_io import load_model
    from .predictor import Predictor

    predictor = Predictor.prepare(load_model(model_path), **settings)
    config = predictor.model.config
    tile = predictor.tile_size or predictor.settings.max_tile
    edge = config.output_size(tile)
    image = np.random.default_rng(0).random((edge, edge), dtype=np.float32)
    predictor.probabilities(image)
    passes, start = 0, time.perf_counter()
    while passes == 0 or time.perf_counter() - start < seconds:
        predictor.probabilities(image)
        passes += 1
    return passes * edge * edge / (time.perf_counter() - start) / 1e6


# -- the cache -------------------------------------------------------------------------------
def _cache_path():
    from .hardware import cache_path

    return cache_path().with_name(CACHE_FILE)


def _read() -> dict:
    try:
        data = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cached(key: str) -> LocalMeasurement | None:
    try:
        return LocalMeasurement(**_read()[key])
    except (KeyError, TypeError):
        return None


def _store(key: str, measurement: LocalMeasurement) -> None:
    """Add ``measurement`` atomically; a read-only cache only costs a re-measurement."""
    path = _cache_path()
    entries = {**_read(), key: asdict(measurement)}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries, indent=1))
        os.replace(temporary, path)
