"""The "current model" that the widgets of one viewer share.

The Train widget puts the model it trained here; the Segment widget uses it,
or replaces it with one loaded from a file. One store per viewer, so two
viewers (or two tests) never see each other's model.

napari hands each widget it opens from the Plugins menu its own
``PublicOnlyProxy`` of the viewer; the store belongs to the viewer behind the
proxies, so every widget of one viewer shares it however it was made.
"""

from __future__ import annotations

import weakref
from typing import Any

from psygnal import Signal


class ModelStore:
    """Holds one model and a one-line description of where it came from.

    Attributes:
        model: a ``UNet`` or None.
        source: e.g. "trained on cells (2 min, 400 steps)" or "file unet.unet".
        changed: psygnal signal emitted (no arguments) whenever the model changes.
    """

    changed = Signal()

    def __init__(self) -> None:
        self.model: Any = None
        self.source = ""

    def set(self, model: Any, source: str) -> None:
        self.model, self.source = model, source
        self.changed.emit()

    def describe(self) -> str:
        if self.model is None:
            return "no model yet: train one or load a file"
        return f"{self.model.info.task} model, {self.source}"


_STORES: dict[int, ModelStore] = {}


def model_store(viewer: Any) -> ModelStore:
    """The store shared by all widgets of ``viewer`` (created on first use).

    ``viewer`` may be the viewer or a proxy of it (napari's ``PublicOnlyProxy``).
    """
    viewer = unwrap(viewer)
    key = id(viewer)
    if key not in _STORES:
        _STORES[key] = ModelStore()
        weakref.finalize(viewer, _STORES.pop, key, None)
    return _STORES[key]


def unwrap(obj: Any) -> Any:
    """The object behind ``obj``'s proxies, or ``obj`` itself.

    ``wrapt`` proxies, such as napari's ``PublicOnlyProxy``, expose it as ``__wrapped__``.
    """
    for _ in range(10):  # proxies of proxies, never an endless chain
        inner = getattr(obj, "__wrapped__", None)
        if inner is None or inner is obj:
            break
        obj = inner
    return obj
