"""From files (or arrays) to the slice stacks the trainer samples: load, validate, normalise, slice."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import UUDSError
from .randomise import BACKGROUND
from .slices import SliceGeometry, SliceSampler, auto_mm_per_pixel, frame_for_scans, plan_geometry, to_square
from .volumes import NormParams, Volume, load_label, load_volume, normalisation_params


@dataclass
class PreparedVolume:
    volume: Volume
    norm: NormParams
    image: torch.Tensor  # (n, 1, S, S) in [-1, 1]
    geom: SliceGeometry
    label: torch.Tensor | None = None  # (n, 1, S, S) uint8
    label_volume: Volume | None = None
    extra: dict = field(default_factory=dict)


#: slices normalised and resized at a time: a large scan is never copied whole (0.3 GB for 512 x 512 x 300)
CHUNK_SLICES = 32


def slab(axis: int, start: int, stop: int) -> tuple[slice, slice, slice]:
    """Index tuple of the slices ``start`` to ``stop`` along ``axis`` of a 3D volume."""
    idx = [slice(None)] * 3
    idx[axis] = slice(start, stop)
    return tuple(idx)  # type: ignore[return-value]


def slabs(shape: tuple[int, ...], axis: int, chunk: int = CHUNK_SLICES):
    """Index tuples of consecutive slabs of ``chunk`` slices along ``axis``."""
    for i in range(0, shape[axis], chunk):
        yield slab(axis, i, min(i + chunk, shape[axis]))


def plan_for(raw: np.ndarray, norm: NormParams, spacing: tuple[float, float, float], axis: int, size: int,
             mm_per_pixel: float) -> SliceGeometry:
    """The geometry a volume is sliced with (:func:`~.slices.plan_geometry`), without normalising it whole: in
    physical mode the frame is centred on the body, found a slab at a time (1 inside, -1 outside); in fit mode
    each slice is fitted to the frame."""
    if mm_per_pixel <= 0:
        return SliceGeometry(axis, tuple(raw.shape), size)
    inside = np.empty(raw.shape, np.int8)
    for idx in slabs(raw.shape, axis):
        inside[idx] = np.where(norm.apply(raw[idx]) > BACKGROUND, 1, -1)
    return plan_geometry(inside, spacing, axis, size, mm_per_pixel)


def square_slices(get, geom: SliceGeometry, *, fill: float, mode: str) -> torch.Tensor:
    """:func:`~.slices.to_square` a slab at a time: ``get(idx)`` gives the (normalised) slab at ``idx``."""
    parts = []
    for idx in slabs(geom.shape, geom.axis):
        part = get(idx)
        parts.append(to_square(part, geom.axis, geom.size, fill=fill, mode=mode,
                               geom=geom.with_slices(part.shape[geom.axis]))[0])
    return torch.cat(parts)


def prepare_volume(vol: Volume, axis: int, size: int, label: Volume | None = None,
                   mm_per_pixel: float = 0.0) -> PreparedVolume:
    """Normalise and slice a volume (and its labels): fitted to the frame, or at ``mm_per_pixel`` > 0."""
    params = normalisation_params(vol.data)
    geom = plan_for(vol.data, params, vol.spacing, axis, size, mm_per_pixel)
    img = square_slices(lambda idx: params.apply(vol.data[idx]), geom, fill=-1.0, mode="bilinear")
    lab = None
    if label is not None:
        lab = square_slices(lambda idx: label.data[idx].astype(np.float32), geom, fill=0.0, mode="nearest")
        lab = lab.to(torch.uint8)
    return PreparedVolume(vol, params, img, geom, lab, label)


def reslice(prepared: list[PreparedVolume], axis: int, size: int, mm_per_pixel: float) -> list[PreparedVolume]:
    """The same volumes sliced again at ``mm_per_pixel`` (after :func:`choose_mm_per_pixel` saw them all)."""
    return [prepare_volume(p.volume, axis, size, p.label_volume, mm_per_pixel) for p in prepared]


def choose_mm_per_pixel(prepared: list[PreparedVolume], axis: int, size: int) -> float:
    """``--mm-per-pixel auto``: one scale at which every body of the run fits the frame."""
    return auto_mm_per_pixel([(p.norm.apply(p.volume.data), p.volume.spacing) for p in prepared], axis, size)


def choose_image_size(prepared: list[PreparedVolume], axis: int, frame: int) -> int:
    """``--image-size auto``: the frame at the scans' own size (:func:`~.slices.frame_for_scans`)."""
    return frame_for_scans([tuple(p.volume.data.shape) for p in prepared], axis, frame)


def load_source_pairs(images: list[str | Path], labels: list[str | Path], n_classes: int, axis: int, size: int,
                      binarize: bool = False, label_map: dict[int, int] | None = None) -> list[PreparedVolume]:
    if len(images) != len(labels):
        raise UUDSError(f"{len(images)} source image(s) but {len(labels)} source label(s); give one --source-label per --source")
    out = []
    present: set[int] = set()
    for ip, lp in zip(images, labels):
        vol = load_volume(ip)
        lab = load_label(lp, n_classes, binarize=binarize, like=vol, label_map=label_map)
        present |= {int(v) for v in np.unique(lab.data) if v > 0}
        out.append(prepare_volume(vol, axis, size, lab))
    absent = [k for k in range(1, n_classes + 1) if k not in present]
    if absent:  # a class no source voxel shows cannot be learnt: the names and the labels disagree
        raise UUDSError(f"{n_classes} class names but no source label holds the value(s) {absent}: give one "
                        "--class-name per label value present", labels[0])
    return out


def load_targets(images: list[str | Path], axis: int, size: int) -> list[PreparedVolume]:
    return [prepare_volume(load_volume(p), axis, size) for p in images]


def samplers(sources: list[PreparedVolume], targets: list[PreparedVolume], fg_fraction: float, seed: int,
             invert_p: float = 0.0, zoom: float = 1.0) -> tuple[SliceSampler, SliceSampler]:
    """Batches of labelled source and unlabelled target slices; ``zoom`` (scale augmentation) applies to the
    source only, where the labels teach an object's size."""
    src = SliceSampler([p.image for p in sources], [p.label for p in sources], fg_fraction, seed,
                       invert_p=invert_p, zoom=zoom)
    tgt = SliceSampler([p.image for p in targets], None, 0.0, seed + 1)
    return src, tgt
