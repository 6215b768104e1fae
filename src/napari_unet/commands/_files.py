"""File helpers shared by the sub-commands (not a sub-command: the leading underscore
keeps :func:`napari_unet.cli.build_parser` from registering it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_tiff_atomic(path: Path, data) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, then rename,
    so an error never leaves a partial file (zlib-compressed TIFF)."""
    import tifffile

    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        tifffile.imwrite(temporary, data, compression="zlib")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
