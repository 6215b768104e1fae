"""OME-Zarr (NGFF 0.4 and 0.5) in and out, through ome-zarr-py (numpy, zarr; no torch).

Reading: :func:`open_source` recognises an OME-Zarr image with ome-zarr-py's reader
(``Multiscales`` node), takes its full-resolution level, the axes (``t``, ``c``, ``z``,
``y``, ``x``) and the physical pixel size from the metadata; a bare zarr array is read as
is (axes by the channel rule of :func:`napari_unet.inference.as_planes`). The result, an
:class:`ImageSource`, is a small picklable description that workers on other machines
open themselves (only the pixels they need are read).

Writing: :class:`LabelTarget` is the ``labels/<name>`` group of an OME-Zarr (the input's
own, or a new one): level ``0`` is created empty and filled block by block by whoever
computes the labels; :func:`finish_labels` then adds the downsampled levels (every 2nd
pixel in y and x, as labels must not be interpolated) and the ``multiscales`` and
``image-label`` metadata with ome-zarr-py's writer, so napari-ome-zarr opens the image and
its labels together. The labels drop the channel axis and keep the image's other axes,
scale and units.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Largest y/x edge of the coarsest level written by :func:`finish_labels`, px.
COARSEST_EDGE = 256
RUN_KEY = "napari_unet"  # label group attribute: the run that made the labels


@dataclass(frozen=True)
class ImageSource:
    """Where an image's full-resolution pixels are and how to read them (picklable).

    Attributes:
        store: path of the zarr store (a folder).
        array_path: the full-resolution array inside the store ("" for a bare array).
        shape: shape of that array.
        axes: axis names, e.g. ("c", "z", "y", "x"); None for a bare zarr array.
        scale: physical size of a pixel per axis (units in ``units``); None: unknown.
        units: unit per axis name (NGFF ``unit``), e.g. {"y": "micrometer"}.
        version: NGFF version ("0.4", "0.5") or None for a bare zarr array.
        channel_axis: axis of the channels; None: the channel rule decides.
        kind: "zarr" or "tiff" (a TIFF file read through tifffile's zarr store).
    """

    store: str
    array_path: str
    shape: tuple[int, ...]
    axes: tuple[str, ...] | None = None
    scale: tuple[float, ...] | None = None
    units: tuple[tuple[str, str], ...] = ()
    version: str | None = None
    channel_axis: int | None = None
    kind: str = "zarr"

    def open(self):
        """The full-resolution array, read-only (zarr; nothing is read yet)."""
        import zarr

        if self.kind == "tiff":
            import tifffile

            return zarr.open_array(tifffile.imread(self.store, aszarr=True, level=0), mode="r")
        return zarr.open_array(store=self.store, path=self.array_path or None, mode="r")

    def image(self):
        """The array as the network reads it: singleton ``t``/``z`` axes dropped.

        Returns:
            (array-like, channel_axis) for :func:`napari_unet.inference.as_planes`.
        """
        array = self.open()
        if self.axes is None:
            return array, self.channel_axis
        import dask.array as da

        view = da.from_array(array, chunks=array.chunks)
        return view[self.squeeze], self.kept_channel_axis

    @property
    def squeeze(self) -> tuple:
        """Index dropping singleton ``t``/``z`` axes of an NGFF image."""
        return tuple(
            0 if a in "tz" and n == 1 else slice(None) for a, n in zip(self.axes, self.shape)
        )

    @property
    def kept_channel_axis(self) -> int | None:
        kept = [a for a, index in zip(self.axes, self.squeeze) if isinstance(index, slice)]
        return kept.index("c") if "c" in kept else None


def open_source(path: str | Path, *, channel_axis: int | None = None) -> ImageSource:
    """Describe the image at ``path``: an OME-Zarr image (NGFF 0.4/0.5), a zarr array or
    a TIFF file (its first series, level 0, read tile by tile where the file is tiled).

    Raises:
        ValueError: no zarr or TIFF there, a zarr group that is not an OME-Zarr image
            (e.g. a plate), or an image with both a ``t`` and a ``z`` axis longer than 1.
    """
    import zarr

    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff") and path.is_file():
        try:
            shape = tuple(ImageSource(str(path), "", (), kind="tiff").open().shape)
        except Exception as error:  # tifffile raises many types for damaged files
            raise ValueError(f"cannot read TIFF {path}: {error}") from None
        return ImageSource(str(path), "", shape, channel_axis=channel_axis, kind="tiff")
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception:  # zarr raises several types for a missing or damaged store
        raise ValueError(f"{path} is not a zarr store (or cannot be read)") from None
    if isinstance(node, zarr.Array):
        return ImageSource(str(path), "", tuple(node.shape), channel_axis=channel_axis)
    multiscales = _ngff_attrs(node).get("multiscales")
    if not multiscales:
        raise ValueError(
            f"{path} is a zarr group but not an OME-Zarr image (no multiscales metadata); "
            "give the image group or the array itself"
        )
    return _ngff_source(path, multiscales[0], node)


def _ngff_attrs(group) -> dict:
    attrs = dict(group.attrs)
    return attrs.get("ome", attrs)


def _ngff_source(path: Path, multiscale: dict, group) -> ImageSource:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    location = parse_url(str(path))
    nodes = list(Reader(location)()) if location is not None else []
    if not nodes or not any(isinstance(spec, Multiscales) for spec in nodes[0].specs):
        raise ValueError(f"ome-zarr cannot read {path} as an OME-Zarr image")
    axes = tuple(axis["name"] for axis in nodes[0].metadata["axes"])
    units = tuple(
        (axis["name"], axis["unit"]) for axis in nodes[0].metadata["axes"] if axis.get("unit")
    )
    dataset = multiscale["datasets"][0]
    scale = next(
        (t["scale"] for t in dataset.get("coordinateTransformations", []) if t["type"] == "scale"),
        None,
    )
    shape = tuple(group[dataset["path"]].shape)
    stack = [a for a, n in zip(axes, shape) if a in "tz" and n > 1]
    if len(stack) > 1:
        raise ValueError(
            f"{path} has both a t and a z axis longer than 1 ({dict(zip(axes, shape))}); "
            "segment one time point at a time"
        )
    return ImageSource(
        str(path),
        dataset["path"],
        shape,
        axes=axes,
        scale=None if scale is None else tuple(float(s) for s in scale),
        units=units,
        version=str(location.version),
        channel_axis=axes.index("c") if "c" in axes else None,
    )


@dataclass(frozen=True)
class LabelTarget:
    """The ``labels/<name>`` group labels are written to (picklable).

    Attributes:
        store: path of the OME-Zarr root (image group) holding ``labels``.
        name: label image name.
        shape: shape of level 0: the image's shape without the channel axis.
        axes: its axis names (None: "yx" or "zyx" from the shape).
        spatial_index: maps a plane ``z`` of the (Z, Y, X) labels to level 0: one entry
            per axis, "z" (the plane), "y", "x" or 0 (a singleton axis).
        chunks: chunk shape of level 0 (blocks write whole chunks).
        version: NGFF version written ("0.4": zarr v2, "0.5": zarr v3).
    """

    store: str
    name: str
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    spatial_index: tuple
    chunks: tuple[int, ...]
    version: str = "0.5"
    scale: tuple[float, ...] | None = None
    units: tuple[tuple[str, str], ...] = ()

    @property
    def group_path(self) -> str:
        return f"labels/{self.name}"

    def level0(self, mode: str = "r+"):
        """Level 0 of the labels (zarr array)."""
        import zarr

        return zarr.open_array(store=self.store, path=f"{self.group_path}/0", mode=mode)

    def key(self, z: int, rows: slice, cols: slice) -> tuple:
        """Index into level 0 of plane ``z``'s ``rows`` x ``cols``."""
        where = {"z": z, "y": rows, "x": cols}
        return tuple(where.get(entry, entry) for entry in self.spatial_index)

    def group(self):
        import zarr

        return zarr.open_group(store=self.store, path=self.group_path, mode="r")


def label_target(
    source: ImageSource, spatial: tuple[int, ...], out: str | Path, name: str, chunk: tuple
) -> LabelTarget:
    """Where labels of ``source`` (spatial shape (Y, X) or (Z, Y, X)) go in ``out``."""
    if source.axes is None:
        axes = ("z", "y", "x")[-len(spatial) :]
        index = tuple(("z", "y", "x")[-len(spatial) :])
        shape, scale, units = spatial, None, ()
    else:
        keep = [i for i, a in enumerate(source.axes) if a != "c"]
        axes = tuple(source.axes[i] for i in keep)
        shape = tuple(source.shape[i] for i in keep)
        scale = None if source.scale is None else tuple(source.scale[i] for i in keep)
        index = tuple(a if a in "yx" else ("z" if shape[j] > 1 else 0) for j, a in enumerate(axes))
        units = tuple(u for u in source.units if u[0] != "c")
    chunks = tuple(
        chunk[0] if entry == "y" else chunk[1] if entry == "x" else 1 for entry in index
    )
    version = source.version if source.version in ("0.4", "0.5") else "0.5"
    if Path(out).resolve() != Path(source.store).resolve():
        version = "0.5"
    return LabelTarget(str(out), name, shape, axes, index, chunks, version, scale, units)


def _format(version: str):
    from ome_zarr.format import FormatV04, FormatV05

    return FormatV04() if version == "0.4" else FormatV05()


def existing_run(target: LabelTarget) -> dict | None:
    """The run settings stored with labels already at ``target`` ({} if the group exists
    but was not made by napari-unet; None if there is none)."""
    return _run_record(target.store, target.group_path)


def unfinished_run(store: str | Path, name: str) -> bool:
    """True when ``labels/<name>`` in the OME-Zarr at ``store`` was begun by napari-unet
    and not completed (a cancelled or killed run, which the same model and settings
    continue)."""
    record = _run_record(str(store), f"labels/{name}")
    return bool(record) and record.get("complete") is False


def _run_record(store: str, group_path: str) -> dict | None:
    import zarr

    try:
        group = zarr.open_group(store=store, path=group_path, mode="r")
    except Exception:  # no such group
        return None
    return dict(_ngff_attrs(group).get(RUN_KEY, group.attrs.get(RUN_KEY, {})))


def check_output_root(target: LabelTarget) -> None:
    """Raise ValueError when ``target.store`` exists but is not a zarr group that labels
    may be added to (a file, a bare array, a non-OME zarr group with content)."""
    import zarr

    root = Path(target.store)
    if not root.exists():
        return
    if not root.is_dir():
        raise ValueError(f"--out {root} is a file, not an OME-Zarr folder")
    try:
        node = zarr.open(store=str(root), mode="r")
    except Exception:
        raise ValueError(f"--out {root} exists and is not a zarr store") from None
    if isinstance(node, zarr.Array):
        raise ValueError(f"--out {root} is a zarr array, not an OME-Zarr group")
    attrs = _ngff_attrs(node)
    if "multiscales" not in attrs and "labels" not in node and list(node.keys()):
        raise ValueError(f"--out {root} is a zarr group that is not an OME-Zarr image")


def create_labels(target: LabelTarget, dtype, *, overwrite: bool, run: dict) -> None:
    """Create empty level 0 of ``target`` (removing a previous label image of that name
    when ``overwrite``), recording ``run`` in the label group's attributes."""
    import zarr

    fmt = _format(target.version)
    root = zarr.open_group(store=target.store, mode="a", zarr_format=fmt.zarr_format)
    labels = root.require_group("labels")
    if target.name in labels:
        if not overwrite:
            raise ValueError(f"labels/{target.name} already exists in {target.store}")
        shutil.rmtree(Path(target.store) / target.group_path)
    group = labels.create_group(target.name)
    group.attrs[RUN_KEY] = {**run, "complete": False}
    group.create_array(
        "0",
        shape=target.shape,
        chunks=target.chunks,
        dtype=dtype,
        fill_value=0,
        **_array_options(fmt, target.axes),
    )


def finish_labels(target: LabelTarget, run: dict) -> None:
    """Downsampled levels, NGFF multiscales and image-label metadata of ``target``
    (level 0 written); marks the run complete. Uses the active dask scheduler."""
    import dask.array as da
    import zarr
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    fmt = _format(target.version)
    group = zarr.open_group(store=target.store, path=target.group_path, mode="a")
    level = da.from_zarr(target.level0(mode="r"))
    step = tuple(2 if a in "yx" else 1 for a in target.axes)
    scale = np.asarray(target.scale or (1.0,) * len(target.axes), dtype=float)
    datasets = [_dataset("0", scale)]
    while max(n for n, a in zip(level.shape, target.axes) if a in "yx") > COARSEST_EDGE:
        index = len(datasets)
        level = level[tuple(slice(None, None, s) for s in step)]
        path = str(index)
        if path in group:
            del group[path]
        array = group.create_array(
            path, shape=level.shape, chunks=target.chunks, dtype=level.dtype, fill_value=0,
            **_array_options(fmt, target.axes),
        )  # fmt: skip
        da.store(level.rechunk(target.chunks), array, lock=False)
        level = da.from_zarr(array)
        datasets.append(_dataset(path, scale * np.asarray(step) ** index))
    units = dict(target.units)
    axes = [{"name": a, "type": "space" if a in "zyx" else "time"} for a in target.axes]
    for axis in axes:
        if axis["name"] in units:
            axis["unit"] = units[axis["name"]]
    write_multiscales_metadata(group, datasets, fmt=fmt, axes=axes, name=target.name)
    add_metadata(
        group, {"image-label": {"version": fmt.version, "source": {"image": "../../"}}}, fmt
    )
    labels = zarr.open_group(store=target.store, path="labels", mode="a")
    names = list(_ngff_attrs(labels).get("labels", []))
    if target.name not in names:
        add_metadata(labels, {"labels": [*names, target.name]}, fmt)
    group.attrs[RUN_KEY] = {**run, "complete": True}


def _array_options(fmt, axes) -> dict:
    """NGFF 0.5: zarr v3 dimension names; NGFF 0.4: "/" as chunk key separator."""
    if fmt.zarr_format == 3:
        return {"dimension_names": list(axes)}
    return {"chunk_key_encoding": {"name": "v2", "separator": "/"}}


def _dataset(path: str, scale: np.ndarray) -> dict:
    return {
        "path": path,
        "coordinateTransformations": [{"type": "scale", "scale": [float(s) for s in scale]}],
    }


def labels_exist(store: str | Path, name: str) -> bool:
    """True when the OME-Zarr at ``store`` has a ``labels/<name>`` group (made by anyone)."""
    import zarr

    try:
        zarr.open_group(store=str(store), path=f"labels/{name}", mode="r")
    except Exception:  # no such group
        return False
    return True


def label_levels(target: LabelTarget) -> list:
    """The levels of ``target``'s multiscale labels, full resolution first (read-only zarr
    arrays, nothing read yet), as listed in its NGFF ``multiscales`` metadata."""
    import zarr

    group = target.group()
    datasets = _ngff_attrs(group)["multiscales"][0]["datasets"]
    return [
        zarr.open_array(store=target.store, path=f"{target.group_path}/{d['path']}", mode="r")
        for d in datasets
    ]
