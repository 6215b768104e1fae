"""Export a model as a bioimage.io model package (model spec 0.5, built with ``bioimageio.spec``).

The package (a zip file) holds::

    rdf.yaml                     the description (validated by bioimageio.spec)
    weights.pt                   pytorch_state_dict: a plain state dict (tensors only),
                                 architecture napari_unet.model.UNet(config={...})
    weights_torchscript.pt       torchscript (traced), for tools without napari-unet
    weights.onnx                 onnx (opset 17, dynamic batch and size), likewise
    test_input.npy, test_output.npy   the test tensors (bioimageio.core reproduces them)
    sample_input.tif, sample_output.tif   the same, as TIFF for people
    README.md, cover.png, environment.yaml

Tensors: input ``raw`` (batch, channel, y, x), float32 raw intensities; any edge
``min_input_size + k * 2**depth`` px (the U-Net's valid sizes). Preprocessing
``scale_range`` per image and channel with the model's stored percentiles (the
same mapping as :func:`napari_unet.normalization.normalize`). Output ``probabilities``
(batch, class, y, x) = softmax of the logits; each spatial edge is the input edge
minus ``shrink`` px: the network is unpadded, so the context it consumes
(``context_margin`` px each side) is already cropped, which the spec documents as
``size.offset = -shrink`` (its ``halo`` field is for margins a consumer must crop
itself, so it is left out). The labels napari-unet makes from the probabilities
(threshold, growth, minimum size) are written in the README and in
``config.napari_unet``, which also holds the model's UNetConfig and ModelInfo so that
:func:`napari_unet.bioimageio_import.load_package` restores the model exactly.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic_files import atomic_write, check_can_create
from .model import UNet
from .normalization import normalize

PAPER = (
    "Ronneberger O., Fischer P., Brox T. (2015) U-Net: Convolutional Networks for Biomedical "
    "Image Segmentation. MICCAI 2015, LNCS 9351, 234-241."
)
PAPER_DOI = "10.1007/978-3-319-24574-4_28"
ARCHITECTURE = ("napari_unet.model", "UNet")  # import_from, callable
WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")
ONNX_OPSET = 17
PACKAGE_FORMAT = 1  # version of our ``config.napari_unet`` block
COVER_MAX_PX = 512  # the test image is cropped to at most this edge


def export_bioimageio(
    model: UNet,
    out: str | os.PathLike,
    *,
    name: str,
    description: str,
    authors: list[str],
    license: str = "CC-BY-4.0",
    image: np.ndarray | None = None,
    weight_formats: tuple[str, ...] = WEIGHT_FORMATS,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as a bioimage.io model package (zip) to ``out``; returns ``out``.

    Args:
        image: a test image, (Y, X) or (C, Y, X) for several channels, any real dtype;
            its top-left tile becomes the test tensors and the cover shows the model's
            labels of its top-left 512 x 512 px. None: a generated sample
            (:func:`napari_unet.sample_data.make_sample`).
        weight_formats: which of :data:`WEIGHT_FORMATS` to include (pytorch_state_dict
            always is: it is the original the others are converted from).

    Raises:
        ValueError: ``out`` exists and ``overwrite`` is False, the ``bioimageio`` extra
            is missing, or the description is refused by bioimageio.spec (the first
            error, in one sentence).
    """
    require_extra(weight_formats)
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise ValueError(f"{out}: a bioimage.io package is written as a .zip file")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")
    check_can_create(out)
    net = _cpu_copy(model)
    plane = _test_plane(net, image)
    with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as folder:
        descr = _describe(
            net, Path(folder), plane, name=name, description=description,
            authors=authors, license=license, weight_formats=weight_formats,
        )  # fmt: skip
        _save_package(descr, out, Path(folder) / "package.zip")
    return out


def require_extra(weight_formats: tuple[str, ...] = WEIGHT_FORMATS) -> None:
    """Raise ValueError (one sentence) when a package the export needs is missing."""
    import importlib

    needed = ["bioimageio.spec"] + (["onnx"] if "onnx" in weight_formats else [])
    for name in needed:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ValueError(
                f"bioimage.io export needs the bioimageio extra ({name} is missing): "
                "pip install 'napari-unet[bioimageio]'"
            ) from None


def _cpu_copy(model: UNet) -> UNet:
    import copy

    return copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()


def _test_plane(net: UNet, image: np.ndarray | None) -> np.ndarray:
    """The test image as a float32 (C, Y, X) plane of at least one test tile."""
    if image is None:
        from .sample_data import make_sample

        image = make_sample((256, 256), n_objects=24, seed=0)[0]
    plane = np.asarray(image, dtype=np.float32)
    plane = plane[None] if plane.ndim == 2 else plane
    if plane.ndim != 3:
        raise ValueError(f"the test image must be (Y, X) or (C, Y, X), got shape {image.shape}")
    net.config.check_channels(plane.shape[0])
    plane = plane[:, :COVER_MAX_PX, :COVER_MAX_PX]  # the cover needs no more
    tile = _test_tile_size(net)
    pad = [(0, 0)] + [(0, max(0, tile - n)) for n in plane.shape[1:]]
    return np.pad(plane, pad, mode="reflect") if any(p[1] for p in pad) else plane


def _test_tile_size(net: UNet) -> int:
    """Input edge of the test tensors: the smallest valid one with >= 64 px of output."""
    return net.config.input_size_for_output(64)


def _probabilities(net: UNet, raw: np.ndarray) -> np.ndarray:
    """Softmax output (N, classes, y, x) for raw (N, C, Y, X), normalised per image as
    the package's preprocessing describes."""
    low, high = net.info.normalization["low"], net.info.normalization["high"]
    x = np.stack([normalize(sample, low, high) for sample in raw])
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(x)), dim=1).numpy()


def _describe(net: UNet, folder: Path, plane: np.ndarray, **fields: Any):
    """The ModelDescr, with every file it names written into ``folder``."""
    from bioimageio.spec.model import v0_5 as spec

    from . import _bioimageio_files as files

    tile = _test_tile_size(net)
    raw = plane[None, :, :tile, :tile].copy()
    np.save(folder / "test_input.npy", raw)
    np.save(folder / "test_output.npy", _probabilities(net, raw))
    files.write_samples(folder, raw, np.load(folder / "test_output.npy"))
    weights = files.write_weights(net, folder, raw, fields["weight_formats"])
    files.write_cover(net, plane, folder / "cover.png")
    files.write_readme(
        net, folder / "README.md", fields["name"], fields["description"], fields["license"]
    )
    files.write_environment(folder / "environment.yaml")
    return spec.ModelDescr(
        name=fields["name"],
        description=fields["description"],
        authors=[spec.Author(name=a) for a in fields["authors"]],
        cite=[spec.CiteEntry(text=PAPER, doi=spec.Doi(PAPER_DOI))],
        license=spec.LicenseId(fields["license"]),
        documentation=spec.FileDescr(source=folder / "README.md"),
        covers=[spec.FileDescr(source=folder / "cover.png")],
        tags=_tags(net),
        inputs=[_input_descr(net, folder)],
        outputs=[_output_descr(net, folder)],
        weights=_weights_descr(spec, net, folder, weights),
        config=spec.Config(napari_unet=package_config(net)),
    )


def package_config(net: UNet) -> dict[str, Any]:
    """Our block of the description: enough to rebuild the UNet and its ModelInfo."""
    from .model_io import _to_json

    return {
        "format_version": PACKAGE_FORMAT,
        "config": net.config.to_dict(),
        "info": json.loads(_to_json(net.info.to_dict())),
    }


def _tags(net: UNet) -> list[str]:
    task = "instance-segmentation" if net.info.task == "instance" else "semantic-segmentation"
    return ["unet", "2d", "segmentation", task, "pytorch", "napari-unet"]


def _input_descr(net: UNet, folder: Path):
    from bioimageio.spec.model import v0_5 as spec

    config, norm = net.config, net.info.normalization
    return spec.InputTensorDescr(
        id=spec.TensorId("raw"),
        description="raw image intensities (any range); one 2D plane per batch entry",
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(
                channel_names=[spec.Identifier(f"c{i}") for i in range(config.in_channels)]
            ),
            *(
                spec.SpaceInputAxis(
                    id=spec.AxisId(axis),
                    size=spec.ParameterizedSize(
                        min=config.min_input_size(), step=config.pool_factor
                    ),
                )
                for axis in ("y", "x")
            ),
        ],
        test_tensor=spec.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=spec.FileDescr(source=folder / "sample_input.tif"),
        data=spec.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[
            spec.ScaleRangeDescr(
                kwargs=spec.ScaleRangeKwargs(
                    axes=(spec.AxisId("y"), spec.AxisId("x")),
                    min_percentile=float(norm["low"]),
                    max_percentile=float(norm["high"]),
                )
            )
        ],
    )


def _output_descr(net: UNet, folder: Path):
    from bioimageio.spec.model import v0_5 as spec

    shrink = net.config.shrink
    return spec.OutputTensorDescr(
        id=spec.TensorId("probabilities"),
        description=(
            f"class probabilities (softmax); edges are the input's minus {shrink} px "
            f"(unpadded network: {shrink // 2} px context per side)"
        ),
        axes=[
            spec.BatchAxis(),
            spec.ChannelAxis(channel_names=[_identifier(n) for n in net.info.class_names]),
            *(
                spec.SpaceOutputAxis(
                    id=spec.AxisId(axis),
                    size=spec.SizeReference(
                        tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId(axis), offset=-shrink
                    ),
                )
                for axis in ("y", "x")
            ),
        ],
        test_tensor=spec.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=spec.FileDescr(source=folder / "sample_output.tif"),
        data=spec.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        postprocessing=[spec.SoftmaxDescr(kwargs=spec.SoftmaxKwargs(axis=spec.AxisId("channel")))],
    )


def _identifier(name: str):
    from bioimageio.spec.model import v0_5 as spec

    text = "".join(c if c.isalnum() else "_" for c in name).strip("_") or "class"
    return spec.Identifier(text if not text[0].isdigit() else f"c{text}")


def _weights_descr(spec, net: UNet, folder: Path, weights: dict[str, Path]):
    version = spec.Version(torch.__version__.split("+")[0])
    import_from, callable_ = ARCHITECTURE
    entries: dict[str, Any] = {
        "pytorch_state_dict": spec.PytorchStateDictWeightsDescr(
            source=weights["pytorch_state_dict"],
            architecture=spec.ArchitectureFromLibraryDescr(
                import_from=import_from,
                callable=spec.Identifier(callable_),
                kwargs={"config": net.config.to_dict()},
            ),
            pytorch_version=version,
            dependencies=spec.FileDescr(source=folder / "environment.yaml"),
        )
    }
    if "torchscript" in weights:
        entries["torchscript"] = spec.TorchscriptWeightsDescr(
            source=weights["torchscript"], pytorch_version=version, parent="pytorch_state_dict"
        )
    if "onnx" in weights:
        entries["onnx"] = spec.OnnxWeightsDescr(
            source=weights["onnx"], opset_version=ONNX_OPSET, parent="pytorch_state_dict"
        )
    return spec.WeightsDescr(**entries)


def _save_package(descr, out: Path, scratch: Path) -> None:
    """Validate ``descr`` and write the zip to ``scratch``, then copy it to ``out``
    atomically (a failure leaves no partial ``out``)."""
    import shutil

    from bioimageio.spec import save_bioimageio_package

    save_bioimageio_package(descr, output_path=scratch)
    with atomic_write(out) as tmp:
        shutil.copyfile(scratch, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a package is meant to be shared
