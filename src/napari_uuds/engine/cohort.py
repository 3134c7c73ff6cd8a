"""Cohort prediction: many volumes streamed through one model, slices batched across volume boundaries.

``napari-uuds predict --image DIR|GLOB|FILE ...`` runs this. Volumes are read one at a time as the batches need
them and each is handed back (and can be written and dropped) as soon as its last slice is segmented, so memory
holds the model, the volumes that the current batch spans (usually one, two at a boundary) and their outputs, not
the cohort. A batch is always full except the cohort's last: the tail of one volume is topped up with the head of
the next, which keeps a GPU's batches the size they were tuned for. A file that cannot be read is reported and
skipped; the others go on.
"""
from __future__ import annotations

import glob
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import nibabel as nib
import numpy as np
import torch
from nibabel.orientations import io_orientation

from .dataset import plan_for, slab
from .errors import UUDSError
from .infer import VolumePrediction, assemble_range, finish_seg, predict_slices, release_host_memory, square_slab
from .model import UUDS
from .slices import SliceGeometry
from .volumes import NIFTI_SUFFIXES, NormParams, Volume, load_volume, normalisation_params
from .zsmooth import halo, widen


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def expand_images(specs: list[str]) -> list[Path]:
    """Files, folders (the NIfTI files directly inside, sorted) and glob patterns (``*``, ``?``, ``[``; ``**``
    recurses) -> one list of files, in the order given, each once. A spec that names nothing is an error."""
    out: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and is_nifti(q))
            if not found:
                raise UUDSError("folder holds no NIfTI file (.nii or .nii.gz)", p)
        elif p.exists():
            found = [p]
        elif glob.has_magic(spec):
            found = sorted(Path(q) for q in glob.glob(spec, recursive=True) if Path(q).is_file() and is_nifti(Path(q)))
            if not found:
                raise UUDSError("pattern matches no NIfTI file", spec)
        else:
            raise UUDSError("no such file or folder", p)
        out += [q for q in found if q not in out]
    return out


def header_size(path: Path, axis: int) -> tuple[int, int]:
    """(slices along the model's axis of the canonical orientation, voxels) of a NIfTI file, from its header alone."""
    img = nib.load(str(path))
    shape = img.shape[:3]
    for j, (k, _) in enumerate(io_orientation(img.affine)):
        if int(k) == axis:
            return int(shape[j]), int(np.prod(shape))
    raise UUDSError("affine has no clear axis orientation", path)


@dataclass
class CohortResult:
    """One file of the cohort: its prediction, or why it was skipped."""
    index: int
    path: Path
    volume: Volume | None = None
    prediction: VolumePrediction | None = None
    error: str = ""
    seconds: float = 0.0


@dataclass
class _Open:
    """A volume being segmented: its outputs fill in as its slices come back from the batches."""
    index: int
    path: Path
    volume: Volume
    t0: float
    norm: NormParams
    plan: SliceGeometry
    seg: np.ndarray = field(init=False)
    ent: np.ndarray = field(init=False)
    syn: np.ndarray = field(init=False)
    left: int = field(init=False)  # slices not segmented yet

    def __post_init__(self) -> None:
        shape = self.volume.data.shape
        self.seg, self.ent = np.empty(shape, np.uint8), np.empty(shape, np.float32)
        self.syn = np.empty(shape, np.float32)
        self.left = shape[self.plan.axis]


def iter_cohort(model: UUDS, paths: list[Path], batch_size: int = 16, domain_prompt: str | None = None,
                progress: Callable[[int], None] | None = None,
                load: Callable[[Path], Volume] = load_volume) -> Iterator[CohortResult]:
    """Segment ``paths`` with ``model``, yielding each file's :class:`CohortResult` as soon as it is complete
    (skipped files at once, in their place in the stream). ``progress(n)``: n more slices done."""
    cfg = model.cfg
    axis = cfg.axis
    if domain_prompt is not None:
        model.domain_prompt.set_text(cfg.domain_text(domain_prompt))
    todo: list[tuple[_Open, int, int]] = []  # (volume, first slice, end) ranges of the next batch
    filled = 0

    def run() -> Iterator[CohortResult]:
        nonlocal todo, filled
        parts, plans = [], []
        for vol, a, b in todo:
            h = halo(cfg, vol.volume.spacing)  # round 25: the neighbours' slices, where they vote
            a0, b0 = widen(a, b, vol.volume.data.shape[axis], h)
            sl, geom, body = square_slab(cfg, vol.volume.data, vol.norm, vol.plan, slab(axis, a0, b0))
            parts.append(sl)
            plans.append((vol, slab(axis, a, b), geom, body, a - a0, b - a0, h > 0))
        batch = torch.cat(parts)
        core = sum(b - a for _, a, b in todo)  # the halos' slices are not counted as progress
        s, p = predict_slices(model, batch, batch_size)  # forward passes of at most batch_size slices
        if progress is not None:
            progress(core)
        at = 0
        for vol, idx, geom, body, lo, hi, smooth in plans:
            n = geom.shape[axis]
            out = assemble_range(s[at:at + n], p[at:at + n], geom, body, False, lo, hi, smooth)
            vol.seg[idx], vol.ent[idx], vol.syn[idx] = out.seg, out.entropy, out.synthetic
            vol.left -= hi - lo
            at += n
            if vol.left == 0:  # the volume is whole: its post-processing, as predict_volume ends
                vol.seg, report = finish_seg(cfg, vol.seg, vol.volume.data, vol.norm, vol.volume.spacing)
                yield CohortResult(vol.index, vol.path, vol.volume,
                                   VolumePrediction(vol.syn, None, vol.seg, vol.ent, report),
                                   seconds=time.perf_counter() - vol.t0)
        todo, filled = [], 0
        release_host_memory(collect=False)

    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        try:
            volume = load(path)
        except UUDSError as exc:
            yield CohortResult(i, path, error=exc.problem)
            continue
        except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
            yield CohortResult(i, path, error=str(exc) or type(exc).__name__)
            continue
        norm = normalisation_params(volume.data)
        vol = _Open(i, path, volume, t0, norm,
                    plan_for(volume.data, norm, volume.spacing, axis, cfg.image_size, cfg.mm_per_pixel))
        n = vol.left
        a = 0
        while a < n:
            take = min(n - a, batch_size - filled)
            todo.append((vol, a, a + take))
            filled += take
            a += take
            if filled == batch_size:
                yield from run()
    if todo:
        yield from run()
