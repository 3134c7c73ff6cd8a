"""``python -m napari_uuds`` = the ``napari-uuds`` command (what ``torchrun ... -m napari_uuds adapt ...`` runs)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
