"""Sub-commands of the ``napari-unet`` console script: one module each, found by
:func:`napari_unet.cli.build_parser`, each defining ``register(subparsers)``."""
