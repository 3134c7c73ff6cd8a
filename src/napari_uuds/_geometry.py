"""NIfTI geometry carried in napari layer metadata, so edits can be written back on the scan's grid.

Layers hold volumes in canonical (RAS+) voxel order with ``scale`` = voxel size. Their metadata keep
the file's own affine and header; :func:`reference_volume` rebuilds the engine's ``Volume`` from them.
"""
from __future__ import annotations

from typing import Any

import nibabel as nib
import numpy as np
from nibabel.orientations import io_orientation

from .engine.volumes import Volume

KEY = "nifti"


def layer_placement(vol: Volume) -> dict[str, Any]:
    """napari ``scale`` / ``translate`` (and, for an oblique scan, ``affine``) placing canonical voxels in world mm.

    A scan whose axes lie along R, A, S needs only scale and translate. An oblique one (a rotated field of view)
    also gets its rotation as the layer's ``affine`` (world = rotation . (scale . voxel) + origin), so it is shown
    where it lies, as its file says; scale stays the voxel size."""
    from nibabel.orientations import inv_ornt_aff

    if vol.data.ndim != 3:
        return {"scale": vol.spacing, "translate": (0.0, 0.0, 0.0)}
    canon = np.asarray(vol.affine, dtype=float) @ inv_ornt_aff(vol.ornt, vol.file_shape())
    zooms = np.linalg.norm(canon[:3, :3], axis=0)
    rot = canon[:3, :3] / zooms
    if np.allclose(rot, np.eye(3), atol=1e-4):
        return {"scale": tuple(float(z) for z in zooms), "translate": tuple(float(v) for v in canon[:3, 3])}
    aff = np.eye(4)
    aff[:3, :3], aff[:3, 3] = rot, canon[:3, 3]
    return {"scale": tuple(float(z) for z in zooms), "translate": (0.0, 0.0, 0.0), "affine": aff}


def layer_metadata(vol: Volume) -> dict[str, Any]:
    return {KEY: {"affine": np.asarray(vol.affine, dtype=float), "header": vol.header.copy(), "path": vol.path,
                  "name": vol.name}}


def reference_volume(metadata: dict | None, shape: tuple[int, ...], scale=None) -> Volume:
    """The Volume whose grid a layer lives on; without NIfTI metadata, a RAS grid from the layer scale."""
    geo = (metadata or {}).get(KEY)
    if geo is not None:
        aff = np.asarray(geo["affine"], dtype=float)
        hdr = geo["header"].copy()
        return Volume(np.empty(0, np.float32), aff, hdr, io_orientation(aff), geo.get("path", ""), geo.get("name", ""))
    zooms = [float(s) for s in (scale if scale is not None else (1.0, 1.0, 1.0))][-3:]
    aff = np.diag(zooms + [1.0])
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_zooms(zooms)
    return Volume(np.empty(0, np.float32), aff, hdr, io_orientation(aff))
