"""Volume inference: synthetic source, class probabilities, segmentation and entropy on the scan's grid.

The entropy is cached in :class:`VolumePrediction`; the certain mask for any threshold (Eq. 7) is a
comparison against it and never runs the network again.
"""
from __future__ import annotations

import ctypes
import functools
import gc
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from .body import body_mask
from .dataset import plan_for, slab, slabs
from .losses import certain_mask, entropy_map
from .model import UUDS
from .components import objects_reported
from .zsmooth import halo, smooth_probs, widen
from .refine import snap_to_edges
from .slices import SliceGeometry, from_square, to_square
from .volumes import NormParams, Volume, normalisation_params


@dataclass
class VolumePrediction:
    """All outputs in canonical voxel order (use ``Volume.to_file_order`` or ``save_like`` to go back)."""

    synthetic: np.ndarray  # float32, [-1, 1] (normalised source-like intensities)
    probs: np.ndarray | None  # float32 (C, X, Y, Z), or None where not kept (predict_volume's keep_probs)
    seg: np.ndarray  # uint8 labels
    entropy: np.ndarray  # float32 in [0, 1] (Eq. 5, normalised by ln C)
    #: what the model's ``objects`` setting removed (components.objects_reported); None: every piece kept
    objects: dict | None = None
    #: float32, the network's own entropy: that of the probabilities before the cross-slice smoothing (round 25),
    #: which the review reads (engine/review.py, corrections round 5); None where nothing was smoothed (then it is
    #: ``entropy``) or where it was not asked for (``keep_own``: only the widget and the corrections benchmark review)
    own_entropy: np.ndarray | None = None

    def certain(self, chi: float) -> np.ndarray:
        """Eq. 7 for threshold chi, from the cached entropy."""
        return certain_mask(torch.from_numpy(self.entropy), chi).numpy()

    def put(self, where: tuple, part: "VolumePrediction") -> None:
        """Write ``part`` (a slab's prediction, made with ``keep_own``) into this volume's synthetic source,
        segmentation, entropy and own entropy at ``where`` (the widget's one-slice path). Where only one of the two was
        smoothed, the unsmoothed one's entropy is its own, so this volume must have been predicted with ``keep_own``
        too. ``probs`` and ``objects`` are left as they were: the caller decides the pieces again on the whole volume."""
        for key in ("synthetic", "seg", "entropy"):
            getattr(self, key)[where] = getattr(part, key)
        if self.own_entropy is None and part.own_entropy is not None:
            self.own_entropy = self.entropy.copy()  # the volume so far was not smoothed: its entropy is its own
        if self.own_entropy is not None:
            self.own_entropy[where] = part.entropy if part.own_entropy is None else part.own_entropy


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None (not Linux/glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl and others: nothing to trim
        return None


def release_host_memory(collect: bool = True) -> None:
    """Hand freed heap memory back to the system. glibc keeps freed pages in its (per-thread) arenas: after
    training, the autograd buffers' pages, and during a large prediction, each batch's temporaries; a 512 x 512 x
    300 scan's outputs would be allocated on top of them (0.6 GiB more peak). Linux/glibc only; elsewhere it only
    collects garbage."""
    if collect:
        gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


#: the eight rotations (quarter turns) and mirrorings of a square slice: test-time augmentation ``d8``
D8 = [(k, flip) for flip in (False, True) for k in range(4)]


def _dihedral(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Rotate the last two axes by ``k`` quarter turns, then mirror the last axis (as the training's augmentation)."""
    x = torch.rot90(x, k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def _dihedral_inverse(x: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    return torch.rot90(x.flip(-1) if flip else x, -k, dims=(-2, -1))


@torch.no_grad()
def predict_slices(model: UUDS, slices: torch.Tensor, batch_size: int = 16, domain_prompt: str | None = None,
                   progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, S, S) normalised slices -> (synthetic (n,1,S,S), probs (n,C,S,S)) on the CPU.

    With the model's ``cfg.tta`` = "d8" the probabilities are the mean over the slice's eight rotations and
    mirrorings (each mapped back); the synthetic source is the untransformed slice's."""
    model.eval()
    dev = next(model.parameters()).device
    if domain_prompt is not None:
        model.domain_prompt.set_text(model.cfg.domain_text(domain_prompt))
    with _autocast(dev):
        t_d = model.encode_domain_prompt()
        t_s = model.encode_seg_prompt()
    syns, probs = [], []
    for i in range(0, slices.shape[0], batch_size):
        x = slices[i:i + batch_size].to(dev, non_blocking=True)
        if dev.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(dev):
            syn, logits = model.infer(x, t_d, t_s)
        p = logits.float().softmax(1)
        if model.cfg.tta == "d8":  # the seven other rotations and mirrorings, mapped back
            for k, flip in D8[1:]:
                with _autocast(dev):
                    _, lg = model.infer(_dihedral(x, k, flip), t_d, t_s)
                p += _dihedral_inverse(lg.float().softmax(1), k, flip)
            p /= len(D8)
        syns.append(syn.float().cpu())
        probs.append(p.cpu())
        if progress is not None:
            progress(x.shape[0])
    return torch.cat(syns), torch.cat(probs)


def predict_volume(model: UUDS, volume: Volume, batch_size: int = 16, domain_prompt: str | None = None,
                   progress=None, norm: NormParams | None = None, keep_probs: bool = False,
                   keep: np.ndarray | None = None, keep_own: bool = False) -> VolumePrediction:
    """Segment a whole volume (see :func:`iter_predict_volume`, which yields its progress)."""
    return run_to_end(iter_predict_volume(model, volume, batch_size, domain_prompt, progress, norm, keep_probs, keep,
                                          keep_own))


def run_to_end(steps: Iterator):
    """Run a generator of progress to the end and return what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def iter_predict_volume(model: UUDS, volume: Volume, batch_size: int = 16, domain_prompt: str | None = None,
                        progress=None, norm: NormParams | None = None, keep_probs: bool = False,
                        keep: np.ndarray | None = None, keep_own: bool = False) -> Iterator[tuple[int, int]]:
    """Segment a whole volume, ``batch_size`` slices at a time: normalised, sliced, segmented and put back on the
    grid batch by batch (memory: the scan and the three outputs; the class probabilities on the scan's grid only with
    ``keep_probs``; the network's own entropy, a fourth, only with ``keep_own`` where slices are smoothed: what the
    review reads). ``norm``: the volume's normalisation (default: computed from it). ``keep``: voxels a user painted as
    object (see :func:`finish_seg`). A generator: it yields (slices done, slices in all) after each batch and returns
    the :class:`VolumePrediction`."""
    cfg = model.cfg
    raw = volume.data
    norm = norm if norm is not None else normalisation_params(raw)
    axis, shape = cfg.axis, raw.shape

    full = plan_for(raw, norm, volume.spacing, axis, cfg.image_size, cfg.mm_per_pixel)
    seg, ent, syn = np.empty(shape, np.uint8), np.empty(shape, np.float32), np.empty(shape, np.float32)
    probs = np.empty((cfg.n_classes, *shape), np.float32) if keep_probs else None
    if domain_prompt is not None:
        model.domain_prompt.set_text(cfg.domain_text(domain_prompt))
    h = halo(cfg, volume.spacing)  # round 25: neighbours' slices predicted with each slab, where they vote
    own = np.empty(shape, np.float32) if h > 0 and keep_own else None  # the network's own entropy, for the review
    # one batch of slices at a time, all the way to the grid; with a halo, the slab and its halo fill one batch
    for idx in slabs(shape, axis, max(1, batch_size - 2 * h)):
        a, b = idx[axis].start, idx[axis].stop
        a0, b0 = widen(a, b, shape[axis], h)
        slices, geom, body = square_slab(cfg, raw, norm, full, slab(axis, a0, b0))
        s, p = predict_slices(model, slices, batch_size)
        if progress is not None:
            progress(b - a)  # the halo's slices are not counted
        out = assemble_range(s, p, geom, body, keep_probs, a - a0, b - a0, h > 0, own is not None)
        seg[idx], ent[idx], syn[idx] = out.seg, out.entropy, out.synthetic
        if own is not None:
            own[idx] = out.own_entropy
        if probs is not None:
            probs[(slice(None), *idx)] = out.probs
        del out, s, p, body, slices
        release_host_memory(collect=False)  # this batch's temporaries: back to the system (a few ms)
        yield idx[axis].stop, shape[axis]
    seg, report = finish_seg(cfg, seg, raw, norm, volume.spacing, keep)
    return VolumePrediction(syn, probs, seg, ent, report, own)


def finish_seg(cfg, seg: np.ndarray, raw: np.ndarray, norm: NormParams, spacing, keep: np.ndarray | None = None
               ) -> tuple[np.ndarray, dict | None]:
    """A whole volume's segmentation after the model's post-processing, as every volume prediction ends (one volume,
    a cohort): the boundary refinement (``cfg.refine``, round 18), then the objects kept (``cfg.objects``, rounds 23-24:
    the largest connected piece needs the whole volume; ``keep``, the voxels a user painted as object, keeps every
    piece that touches them). Returns (segmentation, what the objects setting removed: components.objects_reported)."""
    if cfg.refine != "none":
        seg = refine_seg(cfg, seg, raw, norm, spacing)
    return objects_reported(seg, cfg.objects, keep)


def refine_seg(cfg, seg: np.ndarray, raw: np.ndarray, norm: NormParams, spacing) -> np.ndarray:
    """``seg`` after the model's boundary refinement (``cfg.refine``) on the raw volume ``raw`` (the same grid, a
    slab or a slice of the scan included), normalised as the model reads it; unchanged for "none"."""
    if cfg.refine == "none":
        return seg
    image = norm.apply(raw)
    return snap_to_edges(seg, image, spacing, body_mask(image, cfg.axis) if cfg.body_mask else None)


def square_slab(cfg, raw: np.ndarray, norm: NormParams, plan: SliceGeometry, idx: tuple
                ) -> tuple[torch.Tensor, SliceGeometry, np.ndarray | None]:
    """A slab ``idx`` of a raw volume as the model reads it: normalised and put in ``plan``'s square frame, with its
    geometry and its body mask (None where the model's ``body_mask`` lever is off)."""
    part = norm.apply(raw[idx])
    slices, geom = to_square(part, cfg.axis, cfg.image_size, fill=-1.0, mode="bilinear",
                             geom=plan.with_slices(part.shape[cfg.axis]))
    return slices, geom, body_mask(part, cfg.axis) if cfg.body_mask else None


def assemble_range(syn: torch.Tensor, probs: torch.Tensor, geom: SliceGeometry, body: np.ndarray | None,
                   keep_probs: bool, lo: int, hi: int, smooth: bool, keep_own: bool = False) -> VolumePrediction:
    """:func:`assemble` of a run of slices, then its slices [lo, hi) (the run's halo cut off): with ``smooth`` the
    probabilities smoothed along the slicing axis first (round 25, engine/zsmooth.py), the body mask applied again,
    and the segmentation and entropy taken from the smoothed probabilities; with ``keep_own`` the entropy of the
    unsmoothed ones on the slices [lo, hi) is kept as ``own_entropy`` (what the review reads; None otherwise)."""
    if not smooth:
        assert lo == 0 and hi == geom.shape[geom.axis], "a run without smoothing has no halo to cut off"
        return assemble(syn, probs, geom, body, keep_probs)
    p, s = _on_grid(syn, probs, geom, body)
    crop = slab(geom.axis, lo, hi)
    q = torch.from_numpy(smooth_probs(p.numpy(), geom.axis, lo, hi))
    out = _outputs(_background_outside(q, None if body is None else np.asarray(body, dtype=bool)[crop]), s[crop],
                   keep_probs)
    if keep_own:
        out.own_entropy = entropy_map(p[(slice(None), *crop)].unsqueeze(0))[0].numpy()
    return out


def assemble(syn: torch.Tensor, probs: torch.Tensor, geom: SliceGeometry, body: np.ndarray | None = None,
             keep_probs: bool = True) -> VolumePrediction:
    """Model-resolution slices -> volume outputs: probabilities resampled, then argmax and entropy.

    ``body`` (bool, the volume's grid): outside it every voxel is background with certainty."""
    return _outputs(*_on_grid(syn, probs, geom, body), keep_probs)


def _on_grid(syn: torch.Tensor, probs: torch.Tensor, geom: SliceGeometry, body: np.ndarray | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Model-resolution slices -> (class probabilities (C, X, Y, Z), synthetic source (X, Y, Z)) on the volume's
    grid, background with certainty outside ``body``."""
    p = from_square(probs, geom, "bilinear", fill=[1.0] + [0.0] * (probs.shape[1] - 1)).clamp_(0, 1)
    p = _background_outside(p, body)
    p = p / p.sum(0, keepdim=True).clamp_min(1e-8)
    return p, from_square(syn, geom, "bilinear", fill=-1.0)[0]


def _background_outside(p: torch.Tensor, body: np.ndarray | None) -> torch.Tensor:
    """``p`` (C, ...) with every voxel outside ``body`` (bool, same grid; None: no mask) background with certainty."""
    if body is not None:
        outside = torch.from_numpy(~np.asarray(body, dtype=bool))
        p[:, outside] = 0.0
        p[0, outside] = 1.0
    return p


def _outputs(p: torch.Tensor, s: torch.Tensor, keep_probs: bool) -> VolumePrediction:
    """Probabilities and synthetic source on the grid -> the prediction: argmax and entropy (Eq. 5)."""
    ent = entropy_map(p.unsqueeze(0))[0]
    seg = p.argmax(0).to(torch.uint8).numpy()
    return VolumePrediction(s.numpy(), p.numpy() if keep_probs else None, seg, ent.numpy())
