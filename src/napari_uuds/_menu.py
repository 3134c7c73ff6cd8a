"""File > IO Utilities > "Save selected layer as NIfTI…": napari's own Save Selected Layers preselects its builtin
TIFF writer, so a ``.nii.gz`` name there fails unless the UUDS writer is chosen under "Files of type". This menu
item writes the selected Image or Labels layer with the UUDS writers directly (labels as integers, on its scan's
grid), from napari's File menu."""
from __future__ import annotations

from napari.viewer import Viewer


def save_selected_as_nifti(viewer: Viewer) -> list[str] | None:
    from napari.utils.notifications import show_error, show_info
    from qtpy.QtWidgets import QFileDialog

    from ._writer import nifti_path, write_image, write_labels
    from .engine.errors import UUDSError

    viewer = getattr(viewer, "__wrapped__", viewer)  # napari injects a PublicOnlyProxy: its layers are proxies too
    layer = viewer.layers.selection.active
    kind = type(layer).__name__ if layer is not None else ""
    if kind not in ("Labels", "Image"):
        show_error("select one Image or Labels layer to save as NIfTI")
        return None
    path, _ = QFileDialog.getSaveFileName(None, f"Save '{layer.name}' as NIfTI",
                                          f"{layer.name.replace(' ', '_')}.nii.gz", "NIfTI (*.nii.gz *.nii)")
    if not path:
        return None
    writer = write_labels if kind == "Labels" else write_image
    try:
        written = writer(str(nifti_path(path)), layer.data, {"metadata": layer.metadata, "scale": layer.scale})
    except (UUDSError, OSError) as exc:
        show_error(f"not saved: {exc}")
        return None
    show_info(f"wrote {written[0]}")
    return written
