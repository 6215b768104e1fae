"""Small layout helpers for the widgets' magicgui containers."""

from __future__ import annotations

from typing import Any

from magicgui.widgets import Container


def row(*widgets: Any, label: str = "") -> Container:
    """Widgets side by side, with one label (or none) in the parent's label column."""
    container = Container(widgets=list(widgets), layout="horizontal", labels=False, label=label)
    container.margins = (0, 0, 0, 0)
    return container


def column(*widgets: Any) -> Container:
    """Widgets spanning the dock's width (no label column), e.g. progress and status."""
    container = Container(widgets=list(widgets), labels=False)
    container.margins = (0, 0, 0, 0)
    return container


def fixed_lines(label: Any, lines: int) -> Any:
    """Give a Label room for ``lines`` lines of wrapped text, whatever its text.

    A label whose size follows its text makes the dock re-layout the main
    window whenever the text changes; with the window shown under a software
    OpenGL renderer that costs a few hundred ms of UI time. A fixed height and a
    width that ignores the text keep live status updates from moving anything.
    """
    from qtpy.QtWidgets import QSizePolicy

    native = label.native
    native.setWordWrap(True)
    native.setFixedHeight(lines * native.fontMetrics().lineSpacing() + 4)
    native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    return label
