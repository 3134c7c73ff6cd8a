"""2D slices of 3D volumes: to the model's square input and back, and foreground-aware sampling.

A slice of any shape is padded to a square (background value) and resized to ``size`` x ``size``;
:func:`from_square` inverts both steps exactly for predictions, so outputs land on the scan's grid.
"""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SliceGeometry:
    """How the slices of a volume map to the model's square input.

    Each slice (plane ``h`` x ``w`` voxels) is placed in a frame of ``frame`` = (fh, fw) voxels, its first voxel
    at ``offset`` = (top, left) in the frame (negative: the slice is cropped there), and the frame is resized to
    ``size`` x ``size``. Without ``frame`` the frame is the square of side max(h, w) with the slice centred:
    slices fitted to the frame. With a frame of size * mm_per_pixel / spacing voxels per axis
    (:func:`physical_geometry`) every volume is sliced at the same millimetres per pixel.
    """

    axis: int
    shape: tuple[int, int, int]  # canonical volume shape
    size: int
    frame: tuple[int, int] | None = None
    offset: tuple[int, int] | None = None

    @property
    def plane(self) -> tuple[int, int]:
        return tuple(s for i, s in enumerate(self.shape) if i != self.axis)  # type: ignore[return-value]

    @property
    def side(self) -> int:
        return max(self.plane)

    def with_slices(self, n: int) -> "SliceGeometry":
        """The same frame for a slab of ``n`` slices along the axis (a batch of slices, or one)."""
        shape = list(self.shape)
        shape[self.axis] = n
        return dataclasses.replace(self, shape=tuple(shape))

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.frame if self.frame is not None else (self.side, self.side)

    @property
    def frame_offset(self) -> tuple[int, int]:
        if self.offset is not None:
            return self.offset
        top, _, left, _ = self.pads
        return top, left

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) padding that centres the slice in a square (the fitted frame)."""
        h, w = self.plane
        s = self.side
        return ((s - h) // 2, s - h - (s - h) // 2, (s - w) // 2, s - w - (s - w) // 2)

    def _overlap(self) -> tuple[slice, slice, slice, slice]:
        """(plane rows, plane cols, frame rows, frame cols) that the slice and the frame share."""
        (h, w), (fh, fw), (top, left) = self.plane, self.frame_shape, self.frame_offset
        r0, r1 = max(0, -top), min(h, fh - top)
        c0, c1 = max(0, -left), min(w, fw - left)
        return slice(r0, r1), slice(c0, c1), slice(r0 + top, r1 + top), slice(c0 + left, c1 + left)


def physical_geometry(shape: tuple[int, int, int], spacing: tuple[float, float, float], axis: int, size: int,
                      mm_per_pixel: float, centre: tuple[float, float] | None = None) -> SliceGeometry:
    """Slices at ``mm_per_pixel`` (the frame covers size * mm_per_pixel mm along both in-plane axes), centred
    on ``centre`` (plane voxel coordinates, e.g. the body's bounding-box centre; default the plane's centre)."""
    geom = SliceGeometry(axis, tuple(shape), size)  # type: ignore[arg-type]
    sp = [s for i, s in enumerate(spacing) if i != axis]
    fh, fw = (max(1, int(round(size * mm_per_pixel / v))) for v in sp)
    h, w = geom.plane
    cy, cx = centre if centre is not None else ((h - 1) / 2, (w - 1) / 2)
    top, left = int(round((fh - 1) / 2 - cy)), int(round((fw - 1) / 2 - cx))
    return SliceGeometry(axis, tuple(shape), size, (fh, fw), (top, left))  # type: ignore[arg-type]


def frame_for_scans(shapes: list[tuple[int, int, int]], axis: int, frame: int, step: int = 32,
                    smallest: int = 64) -> int:
    """``--image-size auto`` (round 26 of docs/method.md): the slices' side in pixels for volumes of canonical
    ``shapes`` sliced along ``axis``. Where every slice's larger side (in voxels) is below the architecture's
    ``frame``, the multiple of ``step`` (at least ``smallest``, at most ``frame``) nearest the largest of those
    sides, a tie going up, so that a small scan is not magnified (interpolation adds nothing and costs time);
    ``frame`` otherwise."""
    if not shapes:
        return frame
    largest = max(SliceGeometry(axis, tuple(int(v) for v in s), frame).side for s in shapes)  # type: ignore[arg-type]
    if largest >= frame:
        return frame
    sizes = range(smallest, frame + 1, step)
    return min(sizes, key=lambda c: (abs(c - largest), -c)) if sizes else frame


def body_centre_and_extent(norm: np.ndarray, spacing: tuple[float, float, float], axis: int,
                           background: float = -0.98) -> tuple[tuple[float, float], float]:
    """Centre (plane voxel coordinates) of the body's bounding box over all slices, and its larger in-plane
    extent in mm. ``norm`` is a normalised volume (background -1)."""
    m = np.moveaxis(np.asarray(norm) > background, axis, 0).any(0)
    if not m.any():
        m = np.ones_like(m)
    rows, cols = np.nonzero(m.any(1))[0], np.nonzero(m.any(0))[0]
    sp = [v for i, v in enumerate(spacing) if i != axis]
    centre = ((rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2)
    return centre, max((rows[-1] - rows[0] + 1) * sp[0], (cols[-1] - cols[0] + 1) * sp[1])


def auto_mm_per_pixel(volumes: list[tuple[np.ndarray, tuple[float, float, float]]], axis: int, size: int,
                      margin: float = 1.1) -> float:
    """One scale for every volume of a run: the largest in-plane body extent (mm) among ``volumes`` (normalised
    data, spacing) times ``margin``, over ``size`` pixels, so that every body fits its frame."""
    extent = max(body_centre_and_extent(v, sp, axis)[1] for v, sp in volumes)
    return round(float(extent * margin / size), 4)


def plan_geometry(norm: np.ndarray, spacing: tuple[float, float, float], axis: int, size: int,
                  mm_per_pixel: float) -> SliceGeometry | None:
    """The geometry a volume is sliced with: None (fitted to the frame) for ``mm_per_pixel`` <= 0, else the
    physical frame centred on the body."""
    if mm_per_pixel <= 0:
        return None
    centre, _ = body_centre_and_extent(norm, spacing, axis)
    return physical_geometry(tuple(np.shape(norm)), spacing, axis, size, mm_per_pixel, centre)


def _resize(t: torch.Tensor, shape: tuple[int, int], mode: str, antialias: bool = True) -> torch.Tensor:
    """Bilinear (antialiased when shrinking, if ``antialias``) or nearest resize of the last two axes."""
    if tuple(t.shape[-2:]) == tuple(shape):
        return t
    if mode == "nearest":
        return F.interpolate(t, size=shape, mode="nearest-exact")
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False,
                         antialias=antialias and (t.shape[-1] > shape[-1] or t.shape[-2] > shape[-2]))


def to_square(vol: np.ndarray | torch.Tensor, axis: int, size: int, *, fill: float, mode: str,
              geom: SliceGeometry | None = None) -> tuple[torch.Tensor, SliceGeometry]:
    """(X, Y, Z) volume -> (n_slices, 1, size, size) float32 tensor of slices along ``axis``.

    ``geom`` (e.g. from :func:`physical_geometry`) places the slices in its frame; default: fitted to the frame."""
    t = torch.as_tensor(np.ascontiguousarray(vol) if isinstance(vol, np.ndarray) else vol).float()
    geom = geom or SliceGeometry(axis, tuple(t.shape), size)  # type: ignore[arg-type]
    t = t.movedim(geom.axis, 0)[:, None]  # (n, 1, h, w)
    pr, pc, fr, fc = geom._overlap()
    frame = t.new_full((t.shape[0], 1, *geom.frame_shape), fill)
    frame[:, :, fr, fc] = t[:, :, pr, pc]
    return _resize(frame, (geom.size, geom.size), mode).contiguous(), geom


def from_square(pred: torch.Tensor, geom: SliceGeometry, mode: str = "bilinear",
                fill: float | list[float] = 0.0) -> torch.Tensor:
    """(n_slices, C, size, size) -> (C, X, Y, Z) on the canonical volume grid.

    Voxels of the volume that lie outside the frame (cropped) get ``fill`` (one value, or one per channel)."""
    t = _resize(pred.float(), geom.frame_shape, mode, antialias=False)  # probabilities: plain bilinear
    pr, pc, fr, fc = geom._overlap()
    h, w = geom.plane
    out = t.new_empty((t.shape[0], t.shape[1], h, w))
    out[:] = torch.as_tensor(fill, dtype=t.dtype).view(1, -1, 1, 1) if not isinstance(fill, float) else fill
    out[:, :, pr, pc] = t[:, :, fr, fc]
    return out.movedim(0, geom.axis + 1).contiguous()  # (C, ...) with slices back on their axis


class SliceSampler:
    """Draws batches of 2D slices from several volumes.

    Source batches take ``fg_fraction`` of their slices from slices that contain the object, the rest
    from any slice with anatomy, so that the object is not drowned in empty slices. Target batches
    (no labels) draw from slices with anatomy only (a blank slice teaches nothing).
    """

    def __init__(self, images: list[torch.Tensor], labels: list[torch.Tensor] | None = None,
                 fg_fraction: float = 0.5, seed: int = 0, min_anatomy: float = 0.02, invert_p: float = 0.0,
                 zoom: float = 1.0):
        if not zoom >= 1.0:
            raise ValueError(f"zoom must be at least 1 (1: off), not {zoom}")
        self.images = images
        self.invert_p = invert_p
        self.zoom = zoom
        self.labels = labels
        self.fg_fraction = fg_fraction
        self.rng = np.random.default_rng(seed)
        anat, fg = [], []
        for v, img in enumerate(images):
            frac = (img > -0.95).float().mean(dim=(1, 2, 3))
            idx = torch.nonzero(frac >= min_anatomy).flatten().tolist() or list(range(img.shape[0]))
            anat += [(v, i) for i in idx]
            if labels is not None:
                has = ((labels[v] > 0) & (labels[v] != 255)).flatten(1).any(1)  # 255: ignored pixels
                fg += [(v, i) for i in torch.nonzero(has).flatten().tolist()]
        self.anatomy = anat
        self.foreground = fg

    def __len__(self) -> int:
        return len(self.anatomy)

    def _pick(self, n: int) -> list[tuple[int, int]]:
        out = []
        for _ in range(n):
            pool = self.foreground if self.foreground and self.rng.random() < self.fg_fraction else self.anatomy
            out.append(pool[int(self.rng.integers(len(pool)))])
        return out

    def to(self, device: torch.device | str) -> "SliceSampler":
        """Keep the volumes on ``device`` (in place): batches are then drawn and augmented there, with no
        host-to-device copy per step. The random draws stay on the host, so a seed gives the same batches
        on every device."""
        self.images = [t.to(device) for t in self.images]
        if self.labels is not None:
            self.labels = [t.to(device) for t in self.labels]
        return self

    def sample(self, n: int, augment: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        picks = self._pick(n)
        x = torch.stack([self.images[v][i] for v, i in picks])
        y = torch.stack([self.labels[v][i] for v, i in picks]) if self.labels is not None else None
        if augment:
            x, y = self._augment(x, y)
        return x, y

    def _augment(self, x: torch.Tensor, y: torch.Tensor | None):
        """Flips, 90-degree rotations, a mild random gamma and, with probability ``invert_p``, contrast
        inversion of the anatomy (background stays at -1); with ``zoom`` > 1 each slice is first magnified by a
        factor drawn log-uniformly in [1 / zoom, zoom] about its centre (background padded in, labels nearest);
        the same geometry on labels.

        The draws are made per slice on the host, in a fixed order; the arithmetic runs batched on the
        tensors' device (a handful of kernels whatever the batch size)."""
        b = x.shape[0]
        ks, flips, gammas, inverts = [], [], [], []
        for _ in range(b):
            ks.append(int(self.rng.integers(4)))
            flips.append(bool(self.rng.integers(2)))
            gammas.append(float(np.exp(self.rng.uniform(-0.3, 0.3))))
            inverts.append(bool(self.invert_p) and bool(self.rng.random() < self.invert_p))
        if self.zoom > 1.0:  # drawn after the others, so that zoom 1 leaves every earlier draw as it was
            scales = np.exp(self.rng.uniform(-np.log(self.zoom), np.log(self.zoom), size=b))
            x, y = zoom_slices(x, y, scales)
        x = _rotate_flip(x, ks, flips)
        y = None if y is None else _rotate_flip(y, ks, flips)
        gamma = _host_to(torch.tensor(gammas, dtype=x.dtype), x.device).view(b, *([1] * (x.ndim - 1)))
        x = ((x + 1) / 2).clamp(0, 1).pow(gamma) * 2 - 1
        if any(inverts):
            inv = _host_to(torch.tensor(inverts), x.device).view(b, *([1] * (x.ndim - 1)))
            x = torch.where(inv & (x > -0.98), -x, x)
        return x, y


def zoom_slices(x: torch.Tensor, y: torch.Tensor | None, scales) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Magnify slice b of ``x`` (B, C, H, W; background -1) by ``scales[b]`` about the frame's centre: > 1 crops,
    < 1 pads with background (exactly -1 outside the body's resampled outline). Labels ``y`` (B, H, W) or (B, 1, H, W) follow with nearest-neighbour sampling
    (0 where padded), so ignored pixels (255) stay ignored."""
    b = x.shape[0]
    inv = _host_to(torch.as_tensor(1.0 / np.asarray(scales, dtype=np.float32)), x.device)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = inv
    theta[:, 1, 1] = inv
    grid = F.affine_grid(theta, [b, 1, *x.shape[-2:]], align_corners=False)
    xz = F.grid_sample((x.float() + 1.0), grid.to(x.device), mode="bilinear", padding_mode="zeros",
                       align_corners=False) - 1.0
    # the body's outline follows nearest-neighbour, so that the blend at its edge leaves no faint rim above the
    # background level (which a contrast inversion would turn bright)
    body = F.grid_sample((x.float() > -0.98).float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    xz = torch.where(body > 0.5, xz, torch.full_like(xz, -1.0)).to(x.dtype)
    if y is None:
        return xz, None
    y4 = y if y.ndim == 4 else y.unsqueeze(1)
    yz = F.grid_sample(y4.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False).to(y.dtype)
    return xz, (yz if y.ndim == 4 else yz.squeeze(1))


def _host_to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor to ``device`` without stalling the GPU queue (from pinned memory, asynchronously)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _rotate_flip(t: torch.Tensor, ks: list[int], flips: list[bool]) -> torch.Tensor:
    """Per slice b of (B, ..., H, W): rotate by ks[b] quarter turns, then mirror the last axis where flips[b]
    (square slices; one batched call per distinct (k, flip) pair)."""
    out = torch.empty_like(t)
    groups: dict[tuple[int, bool], list[int]] = {}
    for b, key in enumerate(zip(ks, flips)):
        groups.setdefault(key, []).append(b)
    for (k, flip), idx in groups.items():
        sel = _host_to(torch.tensor(idx), t.device) if len(idx) < t.shape[0] else None
        part = t if sel is None else t.index_select(0, sel)
        part = torch.rot90(part, k, dims=(-2, -1))
        if flip:
            part = part.flip(-1)
        if sel is None:
            out.copy_(part)
        else:
            out.index_copy_(0, sel, part)
    return out
