"""``python -m napari_unet``: the ``napari-unet`` command (as torchrun starts it)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
