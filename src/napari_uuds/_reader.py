"""napari reader for NIfTI (.nii, .nii.gz): images become Image layers, label volumes Labels layers.

Volumes are shown in canonical RAS voxel order (so scans of different orientations overlay) with the
voxel size as layer scale, the origin as translate and, for an oblique scan, its rotation as the layer's affine
(``_geometry.layer_placement``); the file's affine and header ride along in the layer metadata.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ._geometry import layer_metadata, layer_placement
from .engine.volumes import NIFTI_SUFFIXES, load_volume

MAX_LABEL_VALUES = 16


def _is_nifti(path) -> bool:
    return isinstance(path, (str, Path)) and str(path).lower().endswith(NIFTI_SUFFIXES)


def napari_get_reader(path):
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(_is_nifti(p) for p in paths):
        return None
    return read_nifti


def looks_like_labels(data: np.ndarray) -> bool:
    """Non-negative near-integers with at most 16 distinct values (masks stored as 0.99999997 included)."""
    if data.min() < 0:
        return False
    sub = data.ravel()[:: max(1, data.size // 2_000_000)]
    rounded = np.rint(sub)
    if np.abs(sub - rounded).max() > 1e-3:
        return False
    values = np.unique(rounded)
    return len(values) <= MAX_LABEL_VALUES and values.max() < 256


def read_nifti(path):
    paths = path if isinstance(path, list) else [path]
    layers = []
    for p in paths:
        vol = load_volume(p, check_constant=False)
        kwargs = {"name": vol.name, **layer_placement(vol), "metadata": layer_metadata(vol)}
        if looks_like_labels(vol.data):
            layers.append((np.rint(vol.data).astype(np.uint8), kwargs, "labels"))
        else:
            kwargs["colormap"] = "gray"
            layers.append((vol.data, kwargs, "image"))
    return layers
