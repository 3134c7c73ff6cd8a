"""napari sample: the spinal-cord subject (MIT), T2 + labels as source, T1 as target."""
from __future__ import annotations

from pathlib import Path

from ._reader import read_nifti

CORD = Path(__file__).parent / "sample_data" / "cord"


def make_cord_sample():
    layers = read_nifti([str(CORD / "t2.nii.gz"), str(CORD / "t2_seg.nii.gz"), str(CORD / "t1.nii.gz")])
    names = ["T2 (source)", "T2 cord labels", "T1 (target)"]
    for (_, kwargs, _), name in zip(layers, names):
        kwargs["name"] = name
    layers[1][1]["metadata"]["class_names"] = ["spinal cord"]  # what the labels are: the widget fills it in
    return layers
