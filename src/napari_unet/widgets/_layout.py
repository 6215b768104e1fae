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
