"""napari widgets: Train, Segment and Weight map (one module each).

Each widget is a magicgui ``Container`` whose controls are attributes; the long
computations they start are generators in :mod:`.jobs`, drained in
``napari.qt.threading`` workers. Train and Segment share the current model
through :func:`.model_store.model_store`.
"""
