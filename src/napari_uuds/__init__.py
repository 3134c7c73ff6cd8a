"""napari-uuds: UUDS cross-domain segmentation (engine, CLI, napari plugin)."""
__version__ = "0.1.0"
