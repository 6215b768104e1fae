"""The files of a bioimage.io package: weights in three formats, cover, README, environment.

Helpers of :mod:`napari_unet.bioimageio_export` (which describes the package).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .model import UNet
from .normalization import normalize
from .postprocess import Postprocess

PAPER_SHORT = "Ronneberger, Fischer & Brox, MICCAI 2015 (doi:10.1007/978-3-319-24574-4_28)"


def write_weights(
    net: UNet, folder: Path, raw: np.ndarray, formats: tuple[str, ...]
) -> dict[str, Path]:
    """Write the state dict and the requested conversions; format -> file.

    ``raw`` (N, C, Y, X) is the example input used to trace torchscript and onnx.
    A conversion that fails is left out with a RuntimeWarning naming the reason.
    """
    unknown = set(formats) - {"pytorch_state_dict", "torchscript", "onnx"}
    if unknown:
        raise ValueError(f"unknown weight format {sorted(unknown)[0]!r}")
    files = {"pytorch_state_dict": folder / "weights.pt"}
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    torch.save(state, files["pytorch_state_dict"])  # tensors only: loads with weights_only
    low, high = net.info.normalization["low"], net.info.normalization["high"]
    example = torch.from_numpy(np.stack([normalize(sample, low, high) for sample in raw]))
    writers = {"torchscript": _write_torchscript, "onnx": _write_onnx}
    for name in (f for f in formats if f in writers):
        target = folder / ("weights_torchscript.pt" if name == "torchscript" else "weights.onnx")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and deprecation notices
                writers[name](net, example, target)
        except Exception as error:  # a converter may fail in many ways; the rest stays valid
            warnings.warn(
                f"{name} weights left out of the package: {error}", RuntimeWarning, stacklevel=2
            )
            continue
        files[name] = target
    return files


def _write_torchscript(net: UNet, example: torch.Tensor, target: Path) -> None:
    """Traced TorchScript: sizes stay dynamic (checked against eager on another size)."""
    traced = torch.jit.trace(net, example, check_trace=False)
    bigger = torch.nn.functional.pad(example, (net.config.pool_factor,) * 4, mode="reflect")
    with torch.no_grad():
        if not torch.allclose(traced(bigger), net(bigger), atol=1e-4, rtol=1e-4):
            raise RuntimeError("the traced network differs from the original on another size")
    torch.jit.save(traced, str(target))


def _write_onnx(net: UNet, example: torch.Tensor, target: Path) -> None:
    """ONNX via torch's TorchScript-based exporter, batch and spatial axes dynamic."""
    axes = {0: "batch", 2: "y", 3: "x"}
    torch.onnx.export(
        net, (example,), str(target), dynamo=False, opset_version=17,
        input_names=["raw"], output_names=["logits"],
        dynamic_axes={"raw": axes, "logits": axes},
    )  # fmt: skip


def write_samples(folder: Path, raw: np.ndarray, probabilities: np.ndarray) -> None:
    """The test tensors as TIFF for people (the spec's sample tensors): the raw tile
    (C, Y, X) and its probabilities (classes, Y, X), batch axis dropped."""
    import tifffile

    tifffile.imwrite(folder / "sample_input.tif", raw[0], photometric="minisblack")
    tifffile.imwrite(folder / "sample_output.tif", probabilities[0], photometric="minisblack")


def write_cover(net: UNet, plane: np.ndarray, target: Path) -> None:
    """A 2:1 PNG: the test image (left) and the model's labels over it (right)."""
    from skimage.color import label2rgb
    from skimage.io import imsave

    from .inference import segment

    config = net.config
    size = config.valid_input_sizes(config.min_input_size(), 512)[-1]
    image = plane[0] if config.in_channels == 1 else plane
    labels = segment(
        net, image, channel_axis=None if config.in_channels == 1 else 0, device="cpu",
        precision="fp32", channels_last=False, batch_size=1, tile_size=size,
    )  # fmt: skip
    grey = np.clip(normalize(plane[:1])[0], 0, 1)
    overlay = label2rgb(labels, image=grey, alpha=0.35, bg_label=0)
    picture = np.concatenate([np.repeat(grey[..., None], 3, axis=2), overlay], axis=1)
    imsave(target, (picture * 255).astype(np.uint8), check_contrast=False)


def write_readme(net: UNet, target: Path, name: str, description: str, license: str) -> None:
    """The package's documentation (markdown), with the '## Validation' section the
    spec asks for."""
    info, config = net.info, net.config
    history = info.history or {}
    training = info.training or {}
    lines = [
        f"# {name}",
        "",
        description,
        "",
        "## Model",
        "",
        f"The U-Net of {PAPER_SHORT}, unpadded 3x3 convolutions, as in the paper, with "
        f"{config.base_channels} feature maps at the first level and depth {config.depth}; "
        f"{config.in_channels} input channel(s), classes {', '.join(info.class_names)}. "
        "Made and exported with napari-unet (`napari_unet.model.UNet`).",
        "",
        f"- input: any edge of {config.min_input_size()} + k * {config.pool_factor} px; "
        f"output edge = input edge - {config.shrink} px ({config.context_margin} px of "
        "context are consumed on each side).",
        f"- preprocessing: per image and channel, the {info.normalization['low']} and "
        f"{info.normalization['high']} percentiles are mapped to 0 and 1.",
        "- output: class probabilities (softmax of the logits).",
        "",
        "## Post-processing (done by napari-unet, not by the package)",
        "",
        *_postprocess_lines(info),
        "",
        "## Training",
        "",
        *_training_lines(training, history),
        "",
        "## Validation",
        "",
        *_validation_lines(history),
        "",
        "## Licence and citation",
        "",
        f"Licence of this package: {license}. Cite the U-Net paper: {PAPER_SHORT}.",
        "",
    ]
    target.write_text("\n".join(lines), encoding="utf-8")


def _postprocess_lines(info) -> list[str]:
    if info.task != "instance":
        return ["Class ids are the argmax of the probabilities (0 = background)."]
    post = Postprocess.of_model(info)  # what napari-unet segments with
    return [
        f"Objects are the connected components of `foreground > {post.threshold}`; "
        f"components smaller than {post.min_size} px are dropped and each object is then "
        f"grown by {post.expand} px into the background (training keeps a thin background "
        "line between touching objects; growing closes it). These settings were chosen on "
        "validation data at the end of training."
    ]


def _training_lines(training: dict, history: dict) -> list[str]:
    if not training:
        return ["No training record is stored with this model."]
    keys = ("tile_size", "batch_size", "optimizer", "lr", "gap", "seed", "precision_used")
    settings = ", ".join(f"{k} {training[k]}" for k in keys if k in training)
    steps, seconds = history.get("iterations"), history.get("seconds")
    done = f"{steps} steps in {seconds} s" if steps is not None else "steps not recorded"
    lines = [f"Trained with napari-unet: {settings}; {done}."]
    for key, label in (("data", "Training data"), ("machine", "Machine")):
        if training.get(key):
            lines += ["", f"{label}: {training[key]}."]
    return lines


def _validation_lines(history: dict) -> list[str]:
    lines = []
    held_out = history.get("held_out")
    if held_out:
        lines.append(
            "Held-out images: " + ", ".join(f"{k} {v}" for k, v in held_out.items()) + "."
        )
    best = history.get("best_val")
    if best:
        scores = ", ".join(f"{k} {v:.4f}" for k, v in best.items() if isinstance(v, float))
        lines.append(f"Validation split held out during training: {scores}.")
    lines.append(
        "To validate on your own data: segment annotated images and compute the average "
        "precision at IoU 0.5 (`napari_unet.metrics.average_precision`)."
    )
    return lines


def write_environment(target: Path) -> None:
    """A conda environment file naming what the pytorch_state_dict weights need."""
    target.write_text(
        "name: napari-unet\nchannels: [conda-forge]\ndependencies:\n"
        "  - python>=3.10\n  - pytorch>=2.2\n  - pip\n  - pip:\n      - napari-unet\n",
        encoding="utf-8",
    )
