"""napari writers: Labels and Image layers to NIfTI on the grid of the scan they belong to."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._geometry import reference_volume
from .engine.errors import UUDSError
from .engine.volumes import NIFTI_SUFFIXES, save_like


def nifti_path(path: str | Path) -> Path:
    """The path as written: ``.nii.gz`` is added unless it already ends in .nii or .nii.gz."""
    p = Path(path)
    if not p.name.lower().endswith(NIFTI_SUFFIXES):
        p = p.with_name(p.name + ".nii.gz")
    return p


def _write(path: str, data, attributes: dict, dtype) -> list[str]:
    arr = np.asarray(data)
    if arr.ndim != 3:
        raise UUDSError(f"only 3D layers can be saved as NIfTI (this one is {arr.ndim}D)", path)
    ref = reference_volume(attributes.get("metadata"), arr.shape, attributes.get("scale"))
    expected = ref.file_shape(arr.shape)
    hdr_shape = tuple(int(s) for s in ref.header.get_data_shape()[:3])
    if hdr_shape and hdr_shape != expected:
        raise UUDSError(f"layer shape {arr.shape} does not match its scan's grid {hdr_shape}", path)
    out = nifti_path(path)
    save_like(arr.astype(dtype), ref, out, dtype=dtype)
    return [str(out)]


def write_labels(path: str, data, attributes: dict) -> list[str]:
    return _write(path, data, attributes, np.uint8 if np.asarray(data).max() < 256 else np.int32)


def write_image(path: str, data, attributes: dict) -> list[str]:
    return _write(path, data, attributes, np.float32)


def export_layer(layer, path: str | Path, overwrite: bool = False) -> Path:
    """Write a Labels or Image layer as NIfTI on its scan's grid (atomic); never replaces a file without
    ``overwrite``."""
    import os

    if layer is None:
        raise UUDSError("choose a layer to export")
    path = nifti_path(path)
    if path.exists() and not overwrite:
        raise UUDSError("already exists; confirm to replace it", path)
    if not path.parent.exists():
        raise UUDSError("folder does not exist", path.parent)
    if not os.access(path.parent, os.W_OK):
        raise UUDSError("folder is not writable: choose another", path.parent)
    attrs = {"metadata": layer.metadata, "scale": layer.scale}
    writer = write_labels if type(layer).__name__ == "Labels" else write_image
    return Path(writer(str(path), np.asarray(layer.data), attrs)[0])
