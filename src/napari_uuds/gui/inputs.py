"""napari layers -> validated volumes: what the widget trains and segments on, with one line of what to do where
a layer cannot serve (the engine's :class:`~..engine.errors.UUDSError`)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._geometry import reference_volume
from ..engine.errors import UUDSError
from ..engine.volumes import Volume


def layer_volume(layer, what: str, labels: bool = False) -> Volume:
    """The layer's voxels on its scan's grid (the reader's metadata, else the layer's scale), checked: 3D, finite,
    not constant (an image)."""
    if layer is None:
        raise UUDSError(f"choose a {what} layer first")
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise UUDSError(f"{what} '{layer.name}' is {data.ndim}D; UUDS needs a 3D volume")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        n = int((~np.isfinite(data)).sum())
        raise UUDSError(f"{what} '{layer.name}' holds {n} NaN or Inf voxels: replace them (e.g. by the background "
                        "value) before training or segmenting")
    ref = reference_volume(layer.metadata, data.shape, layer.scale)
    vol = Volume(data.astype(np.uint8 if labels else np.float32), ref.affine, ref.header, ref.ornt, ref.path,
                 layer.name)
    if not labels and float(data.max()) == float(data.min()):
        raise UUDSError(f"{what} '{layer.name}' is a constant image")
    return vol


@dataclass
class TrainingInputs:
    source: Volume
    labels: Volume
    target: Volume
    #: said to the user when the labels were changed to fit the class names (values merged into one class)
    note: str = ""


def training_inputs(source, source_labels, target, class_names: list[str]) -> TrainingInputs:
    """The source image, its labels (fitted to ``class_names``) and the target image of a training run."""
    if source_labels is None:
        raise UUDSError("training needs source labels: choose a Labels layer for the source")
    src = layer_volume(source, "source image")
    lab = layer_volume(source_labels, "source labels", labels=True)
    tgt = layer_volume(target, "target image")
    if lab.data.shape != src.data.shape:
        raise UUDSError(f"source labels '{source_labels.name}' have shape {lab.data.shape} but the source "
                        f"image has {src.data.shape}: choose the labels drawn on that image")
    if not lab.data.any():
        raise UUDSError(f"source labels '{source_labels.name}' are empty: paint the object first")
    n, note = len(class_names), ""
    if n == 1 and lab.data.max() > 1:  # one class named: every non-zero value is it, and the user is told
        values = ", ".join(str(int(v)) for v in np.unique(lab.data) if v > 0)
        lab.data = (lab.data > 0).astype(np.uint8)
        note = (f"source labels '{source_labels.name}': values {values} merged into the one class "
                f"'{class_names[0]}' (name one class per value, comma-separated, to keep them apart)")
    elif lab.data.max() > n:
        raise UUDSError(f"source labels '{source_labels.name}' hold values up to {int(lab.data.max())} but "
                        f"{n} class names are given: name one class per label value (comma-separated)")
    return TrainingInputs(src, lab, tgt, note)
