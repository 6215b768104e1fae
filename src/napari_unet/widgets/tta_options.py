"""The test-time augmentation choice of the Segment widget and its uncertainty layer."""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container
from napari.layers import Image

from ..tta import MODES, cost
from ._layers import ImageInput, show_output

#: what each mode is called in the widget (its cost is added)
MODE_NAMES = {"none": "none", "flips": "flips", "d4": "flips + rotations"}


class TTAOptions(Container):
    """Test-time augmentation mode (with its cost) and whether to show the uncertainty.

    Attributes:
        mode: "none", "flips" (4 copies) or "d4" (8 copies), shown with its cost.
        show_uncertainty: add "<image> uncertainty" (enabled only with TTA).
    """

    def __init__(self) -> None:
        choices = [(f"{MODE_NAMES[m]} ({cost(m)})", m) for m in MODES]
        self.mode = ComboBox(
            label="test-time augm.", choices=choices, value="none",
            tooltip="average the predictions of flipped/rotated copies of the image: "
            "often more accurate, and their disagreement shows where the model is unsure",
        )  # fmt: skip
        self.show_uncertainty = CheckBox(text="also show uncertainty", value=True, enabled=False)
        self.show_uncertainty.tooltip = (
            "an image layer of how much the augmented copies disagree (0 = they agree)"
        )
        super().__init__(widgets=[self.mode, self.show_uncertainty], labels=True)
        self.margins = (0, 0, 0, 0)
        self.mode.changed.connect(self._mode_changed)

    def _mode_changed(self, mode: str) -> None:
        self.show_uncertainty.enabled = mode != "none"

    @property
    def wants_uncertainty(self) -> bool:
        return self.mode.value != "none" and self.show_uncertainty.value


def show_uncertainty(
    viewer: Any, uncertainty: np.ndarray, source: Image, placement: ImageInput
) -> Any:
    """Show ``uncertainty`` (float32, the image's spatial shape) as "<image> uncertainty"
    (magma, 0 to its maximum, added onto the layers below), replacing the plugin's
    previous one for ``source``."""
    top = float(uncertainty.max()) if uncertainty.size else 0.0
    return show_output(
        viewer,
        uncertainty,
        kind="image",
        role="uncertainty",
        source=source,
        name=f"{source.name} uncertainty",
        placement=placement,
        colormap="magma",
        blending="additive",
        contrast_limits=(0.0, top if top > 0 else 0.5),
    )
