"""File helpers shared by the sub-commands (not a sub-command: the leading underscore
keeps :func:`napari_unet.cli.build_parser` from registering it)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..atomic_files import atomic_write


def read_image(path: Path):
    """The pixels of an image file (.npy, TIFF, or any format scikit-image reads).

    Raises:
        ValueError: one sentence naming the file when it cannot be read (damaged,
            truncated, not an image, no reader for the format).
    """
    import numpy as np

    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path)
        if suffix in (".tif", ".tiff"):
            import tifffile

            return tifffile.imread(path)
        from skimage.io import imread

        return imread(path)
    except Exception as error:  # readers raise many types for damaged files
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ValueError(f"cannot read image {path}: {first_line}") from None


def write_tiff_atomic(path: Path, data) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, then rename,
    so an error never leaves a partial file (zlib-compressed TIFF; see
    :mod:`napari_unet.atomic_files`)."""
    import tifffile

    with atomic_write(path) as temporary:
        tifffile.imwrite(temporary, data, compression="zlib", photometric="minisblack")


class LazyBar:
    """A tqdm progress bar that appears at its first use (``bar()``), so that an error
    raised before the first step leaves stderr with its one-line message alone.

    Usage: ``with LazyBar(total=10) as bar: bar().update(1)``.
    """

    def __init__(self, **options) -> None:
        self.options, self._bar = options, None

    def __call__(self):
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(**self.options)
        return self._bar

    def show(self, done: int, total: int) -> None:
        """Set the bar to ``done`` of ``total`` (a total may change as work is found)."""
        self().total = total
        self().update(done - self().n)

    def __enter__(self) -> LazyBar:
        return self

    def __exit__(self, *exc_info) -> None:
        if self._bar is not None:
            self._bar.close()


def drain_with_bar(generator, desc: str, unit: str) -> Any:
    """Drain a generator of ``(done, total)`` steps behind a :class:`LazyBar` on stderr
    (transient); returns the generator's result."""
    from ..progress import drain

    with LazyBar(desc=desc, unit=unit, leave=False, file=sys.stderr) as bar:
        return drain(generator, lambda step: bar.show(*step))
