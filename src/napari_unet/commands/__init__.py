"""Sub-commands of the ``napari-unet`` console script, one module each."""
