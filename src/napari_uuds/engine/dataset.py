"""From files (or arrays) to the slice stacks the trainer samples: load, validate, normalise, slice."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import UUDSError
from .slices import SliceGeometry, SliceSampler, auto_mm_per_pixel, plan_geometry, to_square
from .volumes import NormParams, Volume, load_label, load_volume, normalise


@dataclass
class PreparedVolume:
    volume: Volume
    norm: NormParams
    image: torch.Tensor  # (n, 1, S, S) in [-1, 1]
    geom: SliceGeometry
    label: torch.Tensor | None = None  # (n, 1, S, S) uint8
    label_volume: Volume | None = None
    extra: dict = field(default_factory=dict)


def prepare_volume(vol: Volume, axis: int, size: int, label: Volume | None = None,
                   mm_per_pixel: float = 0.0) -> PreparedVolume:
    """Normalise and slice a volume (and its labels): fitted to the frame, or at ``mm_per_pixel`` > 0."""
    norm_data, params = normalise(vol.data)
    plan = plan_geometry(norm_data, vol.spacing, axis, size, mm_per_pixel)
    img, geom = to_square(norm_data, axis, size, fill=-1.0, mode="bilinear", geom=plan)
    lab = None
    if label is not None:
        lab, _ = to_square(label.data.astype(np.float32), axis, size, fill=0.0, mode="nearest", geom=plan)
        lab = lab.to(torch.uint8)
    return PreparedVolume(vol, params, img, geom, lab, label)


def reslice(prepared: list[PreparedVolume], axis: int, size: int, mm_per_pixel: float) -> list[PreparedVolume]:
    """The same volumes sliced again at ``mm_per_pixel`` (after :func:`choose_mm_per_pixel` saw them all)."""
    return [prepare_volume(p.volume, axis, size, p.label_volume, mm_per_pixel) for p in prepared]


def choose_mm_per_pixel(prepared: list[PreparedVolume], axis: int, size: int) -> float:
    """``--mm-per-pixel auto``: one scale at which every body of the run fits the frame."""
    return auto_mm_per_pixel([(p.norm.apply(p.volume.data), p.volume.spacing) for p in prepared], axis, size)


def load_source_pairs(images: list[str | Path], labels: list[str | Path], n_classes: int, axis: int, size: int,
                      binarize: bool = False, label_map: dict[int, int] | None = None) -> list[PreparedVolume]:
    if len(images) != len(labels):
        raise UUDSError(f"{len(images)} source image(s) but {len(labels)} source label(s); give one --source-label per --source")
    out = []
    for ip, lp in zip(images, labels):
        vol = load_volume(ip)
        lab = load_label(lp, n_classes, binarize=binarize, like=vol, label_map=label_map)
        out.append(prepare_volume(vol, axis, size, lab))
    return out


def load_targets(images: list[str | Path], axis: int, size: int) -> list[PreparedVolume]:
    return [prepare_volume(load_volume(p), axis, size) for p in images]


def samplers(sources: list[PreparedVolume], targets: list[PreparedVolume], fg_fraction: float, seed: int,
             invert_p: float = 0.0) -> tuple[SliceSampler, SliceSampler]:
    src = SliceSampler([p.image for p in sources], [p.label for p in sources], fg_fraction, seed,
                       invert_p=invert_p)
    tgt = SliceSampler([p.image for p in targets], None, 0.0, seed + 1)
    return src, tgt
