"""How the network runs fastest on this machine: measured once, cached, explained.

The one policy for precision (fp32 / bf16 / fp16 autocast), memory format
(channels_last or not), the largest tile and the batch size, for inference and
for training's autocast. A capability check only prunes what cannot pay off
(bf16 on a CPU without native bf16 instructions is emulated and 10-15x slower);
everything else is decided by timing the network on this device:

1. precision x memory format on a probe tile (output ~256 px); a reduced
   precision counts only if its labels agree with fp32's (:func:`agrees`);
2. the largest tile (input ~572, ~860, ~1212 px) with the winner: the one with the
   most output megapixels per second (larger tiles recompute less mirrored context);
3. the batch size, on accelerators only (a CPU convolution already uses every core).

The choice is cached per (device, torch version, network width and depth; for a CPU,
its model name and CPU count) in ``hardware.json`` in the user's cache directory
(``$NAPARI_UNET_CACHE_DIR`` overrides it), reused next time, and re-measured on request
(``napari-unet info --remeasure``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import UNetConfig

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
CACHE_ENV = "NAPARI_UNET_CACHE_DIR"
CACHE_FILE = "hardware.json"
CACHE_VERSION = 1
PROBE_OUTPUT = 256  # px, output edge of the tile that compares precisions and formats
TILE_TARGETS = (572, 860, 1212)  # px, input edges tried as the largest tile
ACCELERATOR_BATCHES = (1, 2, 4, 8)
MIN_TIMED_S = 0.15  # repeat a fast pass until this much was timed (at most 3 passes)
SLOW_FACTOR = 3.0  # a first pass this much slower than the best is not repeated
MAX_PASS_S = 15.0  # no larger tile is tried once one pass takes this long
AGREEMENT = 0.999  # share of confident fp32 labels a reduced precision must keep
CONFIDENT_MARGIN = 0.1  # fp32 top-2 probability gap that makes a label "confident"

Progress = Generator[tuple[int, int], None, "Choice"]


def layout_name(channels_last: bool) -> str:
    """The memory format's name in messages: ``"channels_last"`` or ``"contiguous"``."""
    return "channels_last" if channels_last else "contiguous"


def hopeless(first_s: float, best_s: float | None) -> bool:
    """Whether a candidate whose first (warm-up) run took ``first_s`` seconds is not worth
    repeating: :data:`SLOW_FACTOR` times slower than the best candidate so far."""
    return best_s is not None and first_s > SLOW_FACTOR * best_s


@dataclass(frozen=True)
class RunSettings:
    """How a network runs on a device.

    Attributes:
        precision: "fp32", "bf16" or "fp16" (autocast dtype; fp32 is exact).
        channels_last: NHWC memory format.
        max_tile: largest input tile edge in px (a valid input size of the network).
        batch_size: tiles per forward pass.
    """

    precision: str = "fp32"
    channels_last: bool = False
    max_tile: int = 572
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            known = list(PRECISIONS)
            raise ValueError(f"precision must be one of {known}, got {self.precision!r}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")

    @property
    def layout(self) -> str:
        """``"channels_last"`` or ``"contiguous"``: the memory format's name."""
        return layout_name(self.channels_last)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device):
        """The autocast context of this precision on ``device`` (none for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=PRECISIONS[self.precision])

    def describe(self) -> str:
        tiles = f"tiles up to {self.max_tile} px"
        return f"{self.precision}, {self.layout}, {tiles}, batch {self.batch_size}"


@dataclass
class Choice:
    """The settings chosen for one (device, network size), and why.

    Attributes:
        settings: the winner.
        mpx_per_s: its measured throughput in output megapixels per second (full tiles
            of ``settings.max_tile``).
        reason: one line: what was compared and what won.
        timings: every measured candidate (precision, channels_last, tile, batch, s, mpx_per_s,
            agrees).
        key: the cache key (device, torch, width, depth).
        measured_at: ISO date and time of the measurement.
        from_cache: True when read from the cache file instead of measured now.
    """

    settings: RunSettings
    mpx_per_s: float
    reason: str
    timings: list[dict[str, Any]] = field(default_factory=list)
    key: str = ""
    measured_at: str = ""
    from_cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("from_cache")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Choice:
        data = dict(data)
        data["settings"] = RunSettings(**data["settings"])
        return cls(**data, from_cache=True)


# -- what the device offers ----------------------------------------------------------------
def cpu_flags() -> set[str]:
    """Instruction-set flags of this CPU (``/proc/cpuinfo``; empty where unavailable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what platform reports)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def native_cpu_precisions(flags: set[str] | None = None) -> dict[str, bool]:
    """Which reduced precisions this CPU computes natively (not emulated).

    bf16: AVX512-BF16 or AMX-BF16 (x86), the ``bf16`` feature (Arm). fp16:
    AVX512-FP16 or AMX-FP16 (x86), half-precision arithmetic ``asimdhp`` (Arm).
    """
    flags = cpu_flags() if flags is None else flags
    torch_says = any(
        getattr(torch.cpu, name, lambda: False)()
        for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return {
        "bf16": torch_says or bool(flags & {"avx512_bf16", "amx_bf16", "bf16"}),
        "fp16": bool(flags & {"avx512_fp16", "amx_fp16", "asimdhp"}),
    }


def candidate_precisions(device: torch.device) -> tuple[list[str], list[str]]:
    """(precisions worth timing on ``device``, one line per precision left out and why)."""
    if device.type == "cuda":
        reduced = ["bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp16"]
        skipped = [] if "bf16" in reduced else ["bf16: not supported by this GPU"]
        return ["fp32", *reduced], skipped
    if device.type == "mps":
        return ["fp32", "fp16"], ["bf16: not offered on MPS"]
    native = native_cpu_precisions()
    kept = ["fp32", *(name for name, fast in native.items() if fast)]
    skipped = [
        f"{name}: this CPU has no native {name} instructions (emulated, ~10x slower)"
        for name, fast in native.items()
        if not fast
    ]
    return kept, skipped


def device_signature(device: torch.device) -> str:
    """What the measurement depends on besides the network: the device (for a CPU, its
    model and CPU count)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda {torch.cuda.get_device_name(index)}"
    if device.type == "mps":
        return f"mps {platform.machine()} {platform.processor()}".strip()
    # the machine's CPU count, not torch's thread count: that is set per thread (OpenMP),
    # so a worker thread and the UI thread would look up different keys
    return f"cpu {cpu_name()} ({os.cpu_count()} CPUs)"


def cache_key(config: UNetConfig, device: torch.device) -> str:
    return (
        f"{device_signature(device)} | torch {torch.__version__} | "
        f"base {config.base_channels} depth {config.depth}"
    )


# -- the cache -------------------------------------------------------------------------------
def cache_path() -> Path:
    """``$NAPARI_UNET_CACHE_DIR/hardware.json``, else the user's cache directory."""
    folder = os.environ.get(CACHE_ENV)
    if not folder:
        import platformdirs

        folder = platformdirs.user_cache_dir("napari-unet", appauthor=False)
    return Path(folder) / CACHE_FILE


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(data, dict) and data.get("version") == CACHE_VERSION
    return data.get("choices", {}) if ok else {}


def write_choice(key: str, choice: Choice) -> None:
    """Stamp ``choice`` with ``key`` and the time now, and add it atomically; a read-only
    cache only costs a re-measurement next time."""
    choice.key, choice.measured_at = key, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    path = cache_path()
    choices = {**_read_cache(), key: choice.to_dict()}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"version": CACHE_VERSION, "choices": choices}, indent=1))
        os.replace(temporary, path)


def cached_choice(config: UNetConfig, device: torch.device) -> Choice | None:
    """The cached choice for this network size on ``device``, or None."""
    return read_choice(cache_key(config, device))


def read_choice(key: str) -> Choice | None:
    """The choice cached under ``key``, or None (absent or unreadable)."""
    entry = _read_cache().get(key)
    try:
        return Choice.from_dict(entry) if entry else None
    except (TypeError, ValueError):
        return None


# -- measuring -------------------------------------------------------------------------------
Timer = Callable[[RunSettings, int], float]


def choose_iter(
    model: torch.nn.Module,
    device: torch.device,
    *,
    remeasure: bool = False,
    timer: Timer | None = None,
) -> Progress:
    """The cached choice for ``model``'s size on ``device``, else measure and cache it.

    Args:
        model: a :class:`~napari_unet.model.UNet` (its weights serve the agreement check;
            it is not modified).
        device: where it will run.
        remeasure: ignore the cache.
        timer: ``timer(settings, tile) -> seconds`` per forward pass, replacing the
            real timing (tests).

    Yields:
        (done, total) candidates measured.

    Returns:
        the :class:`Choice`.
    """
    config = model.config
    key = cache_key(config, device)
    if not remeasure:
        choice = cached_choice(config, device)
        if choice is not None:
            return choice
    bench = _Bench(model, device, timer)
    choice = yield from _measure(bench, config, device)
    write_choice(key, choice)
    return choice


def choose(model: torch.nn.Module, device: torch.device, **kwargs: Any) -> Choice:
    """:func:`choose_iter` without progress."""
    from .progress import drain

    return drain(choose_iter(model, device, **kwargs))


def _measure(bench: _Bench, config: UNetConfig, device: torch.device) -> Progress:
    precisions, skipped = candidate_precisions(device)
    probe = config.input_size_for_output(PROBE_OUTPUT)
    tiles = sorted({_valid_near(config, edge) for edge in TILE_TARGETS})
    batches = ACCELERATOR_BATCHES if device.type != "cpu" else (1,)
    total = 2 * len(precisions) + len(tiles) + len(batches) - 1
    done = 0
    yield done, total

    # 1. precision x memory format on the probe tile
    formats = []
    for precision in precisions:
        for channels_last in (False, True):
            settings = RunSettings(precision, channels_last, probe, 1)
            best = min((r["s"] for r in bench.rows if r["s"] is not None), default=None)
            row = bench.time(settings, probe, slower_than=best)
            if precision != "fp32" and row["s"] is not None:
                row["agrees"] = bench.agrees(settings, probe)
            formats.append(row)
            done += 1
            yield done, total
    usable = [r for r in formats if r["s"] is not None and r["agrees"] is not False]
    winner = min(usable, key=lambda r: r["s"])
    precision, channels_last = winner["precision"], winner["channels_last"]

    # 2. the largest tile: every size, until one runs out of memory or takes too long
    best_tile = None
    for tile in tiles:
        row = bench.time(RunSettings(precision, channels_last, tile, 1), tile)
        done += 1
        yield done, total
        if row["s"] is None:
            break  # out of memory
        if best_tile is None or row["mpx_per_s"] > best_tile["mpx_per_s"]:
            best_tile = row
        if row["s"] > MAX_PASS_S:
            break
    done = 2 * len(precisions) + len(tiles)
    tile = best_tile["tile"] if best_tile else probe

    # 3. batch size (accelerators)
    best_batch = best_tile or winner
    for batch in batches[1:]:
        row = bench.time(RunSettings(precision, channels_last, tile, batch), tile)
        done += 1
        yield done, total
        if row["s"] is None or row["mpx_per_s"] < best_batch["mpx_per_s"] * 1.03:
            break
        best_batch = row
    yield total, total

    settings = RunSettings(precision, channels_last, tile, best_batch["batch"])
    reason = _explain(formats, best_batch, skipped)
    return Choice(settings, best_batch["mpx_per_s"], reason, timings=bench.rows)


def _valid_near(config: UNetConfig, edge: int) -> int:
    below, above = config.nearest_valid_inputs(edge)
    return below if below is not None else above


def _explain(formats: list[dict], winner: dict, skipped: list[str]) -> str:
    def name(row):
        return f"{row['precision']} {layout_name(row['channels_last'])}"

    compared = ", ".join(
        f"{name(r)} {r['mpx_per_s']:.3g}" if r["s"] is not None else f"{name(r)} too slow"
        for r in formats
    )
    rejected = [name(r) for r in formats if r["agrees"] is False]
    parts = [f"probe tile Mpx/s: {compared}"]
    if rejected:
        parts.append(f"labels differ from fp32: {', '.join(rejected)}")
    parts.append(f"largest tile {winner['tile']} px, batch {winner['batch']}")
    parts.extend(f"not tried: {line}" for line in skipped)
    return "; ".join(parts)


class _Bench:
    """Times forward passes of a copy of the model with given settings."""

    def __init__(self, model: torch.nn.Module, device: torch.device, timer: Timer | None):
        import copy

        self.model = copy.deepcopy(model).eval().to(device)
        self.device, self.timer = device, timer
        self.config = model.config
        self.rows: list[dict[str, Any]] = []
        self._references: dict[tuple[bool, int], torch.Tensor] = {}  # fp32 probe outputs

    def _input(self, tile: int, batch: int) -> torch.Tensor:
        """Smooth deterministic test image (B, C, tile, tile) in [0, 1]."""
        generator = torch.Generator().manual_seed(0)
        noise = torch.rand(batch, self.config.in_channels, tile, tile, generator=generator)
        smooth = torch.nn.functional.avg_pool2d(noise, 9, stride=1, padding=4)
        return (smooth - smooth.min()) / (smooth.max() - smooth.min() + 1e-6)

    def forward(self, settings: RunSettings, x: torch.Tensor) -> torch.Tensor:
        net = self.model.to(memory_format=settings.memory_format)
        x = x.to(self.device).contiguous(memory_format=settings.memory_format)
        with torch.inference_mode(), settings.autocast(self.device):
            out = torch.softmax(net(x).float(), dim=1)
        _synchronize(self.device)
        return out

    def _seconds(self, settings: RunSettings, tile: int, slower_than: float | None) -> float:
        if self.timer is not None:
            return self.timer(settings, tile)
        x = self._input(tile, settings.batch_size)
        start = time.perf_counter()
        self.forward(settings, x)
        first = time.perf_counter() - start
        if first > 1.0 or hopeless(first, slower_than):
            return first  # long passes: set-up cost is negligible; hopeless ones: no repeat
        times: list[float] = []
        while len(times) < 3 and sum(times) < MIN_TIMED_S:
            start = time.perf_counter()
            self.forward(settings, x)
            times.append(time.perf_counter() - start)
        return min(times)

    def time(self, settings: RunSettings, tile: int, slower_than: float | None = None) -> dict:
        """Time one candidate; a row with ``s`` None when it ran out of memory."""
        row = {**dataclasses.asdict(settings), "tile": tile, "batch": settings.batch_size}
        row.pop("max_tile"), row.pop("batch_size")
        try:
            seconds = self._seconds(settings, tile, slower_than)
        except torch.OutOfMemoryError:
            _empty_cache(self.device)
            seconds = None
        output = self.config.output_size(tile)
        row.update(
            s=None if seconds is None else round(seconds, 4),
            mpx_per_s=None if seconds is None else settings.batch_size * output**2 / seconds / 1e6,
            agrees=None,
        )
        self.rows.append(row)
        return row

    def agrees(self, settings: RunSettings, tile: int) -> bool:
        """True when ``settings`` keeps the labels of fp32 on the probe image (see
        :data:`AGREEMENT`; labels where fp32 itself hesitates are not counted)."""
        x = self._input(tile, 1)
        key = (settings.channels_last, tile)
        if key not in self._references:  # one fp32 pass per layout, for every precision
            self._references[key] = self.forward(RunSettings(channels_last=key[0]), x)
        reference = self._references[key]
        reduced = self.forward(settings, x)
        top2 = reference.topk(2, dim=1).values
        confident = (top2[:, 0] - top2[:, 1]) >= CONFIDENT_MARGIN
        if not bool(confident.any()):
            return True
        same = reference.argmax(1) == reduced.argmax(1)
        return float(same[confident].float().mean()) >= AGREEMENT


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _empty_cache(device: torch.device) -> None:
    from .devices import empty_cache

    empty_cache(device)


# -- describing ------------------------------------------------------------------------------
SHOWN_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16")


def instruction_sets() -> str:
    """One line: torch's CPU kernel level and the flags that decide precision, e.g.
    ``"torch kernels AVX512; avx2 yes, avx512f yes, avx512_bf16 no, ..."``."""
    flags = cpu_flags()
    shown = ", ".join(f"{name} {'yes' if name in flags else 'no'}" for name in SHOWN_FLAGS)
    native = native_cpu_precisions(flags)
    natives = ", ".join(
        f"native {name} {'yes' if fast else 'no'}" for name, fast in native.items()
    )
    level = torch.backends.cpu.get_cpu_capability()
    return f"torch kernels {level}; {shown}" + (f" ({natives})" if flags else "")


def describe(choice: Choice, device: torch.device) -> str:
    """A short line for the Segment widget: where, how, how fast (measured), e.g.
    ``"runs on cpu · fp32 · channels_last · tiles ≤ 1212 px · 0.87 Mpx/s"``."""
    settings = choice.settings
    parts = [
        f"runs on {device}",
        settings.precision,
        settings.layout,
        f"tiles ≤ {settings.max_tile} px",
        *([f"batch {settings.batch_size}"] if settings.batch_size > 1 else []),
        f"{choice.mpx_per_s:.2g} Mpx/s",
    ]
    return " · ".join(parts)


def summary(model: torch.nn.Module | None, device: str | torch.device | None = None) -> str:
    """One line for the Segment widget: the settings the model will run with here."""
    from .devices import choose_device

    run_device = choose_device(device)
    if model is None:
        return f"runs on {run_device}"
    choice = cached_choice(model.config, run_device)
    if choice is None:
        return f"runs on {run_device} · settings measured at the first run (seconds, once)"
    return describe(choice, run_device)
