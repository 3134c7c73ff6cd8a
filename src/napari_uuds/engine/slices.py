"""2D slices of 3D volumes: to the model's square input and back, and foreground-aware sampling.

A slice of any shape is padded to a square (background value) and resized to ``size`` x ``size``;
:func:`from_square` inverts both steps exactly for predictions, so outputs land on the scan's grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SliceGeometry:
    axis: int
    shape: tuple[int, int, int]  # canonical volume shape
    size: int

    @property
    def plane(self) -> tuple[int, int]:
        return tuple(s for i, s in enumerate(self.shape) if i != self.axis)  # type: ignore[return-value]

    @property
    def side(self) -> int:
        return max(self.plane)

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) padding that centres the slice in a square."""
        h, w = self.plane
        s = self.side
        return ((s - h) // 2, s - h - (s - h) // 2, (s - w) // 2, s - w - (s - w) // 2)


def to_square(vol: np.ndarray | torch.Tensor, axis: int, size: int, *, fill: float, mode: str) -> tuple[torch.Tensor, SliceGeometry]:
    """(X, Y, Z) volume -> (n_slices, 1, size, size) float32 tensor of slices along ``axis``."""
    t = torch.as_tensor(np.ascontiguousarray(vol) if isinstance(vol, np.ndarray) else vol).float()
    geom = SliceGeometry(axis, tuple(t.shape), size)  # type: ignore[arg-type]
    t = t.movedim(axis, 0)[:, None]  # (n, 1, h, w)
    top, bottom, left, right = geom.pads
    t = F.pad(t, (left, right, top, bottom), value=fill)
    if t.shape[-1] != size:
        if mode == "nearest":
            t = F.interpolate(t, size=(size, size), mode="nearest-exact")
        else:
            t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=t.shape[-1] > size)
    return t.contiguous(), geom


def from_square(pred: torch.Tensor, geom: SliceGeometry, mode: str = "bilinear") -> torch.Tensor:
    """(n_slices, C, size, size) -> (C, X, Y, Z) on the canonical volume grid."""
    s = geom.side
    t = pred.float()
    if t.shape[-1] != s:
        if mode == "nearest":
            t = F.interpolate(t, size=(s, s), mode="nearest-exact")
        else:
            t = F.interpolate(t, size=(s, s), mode="bilinear", align_corners=False)
    top, bottom, left, right = geom.pads
    h, w = geom.plane
    t = t[:, :, top:top + h, left:left + w]  # (n, C, h, w)
    return t.movedim(0, geom.axis + 1).contiguous()  # (C, ...) with slices back on their axis


class SliceSampler:
    """Draws batches of 2D slices from several volumes.

    Source batches take ``fg_fraction`` of their slices from slices that contain the object, the rest
    from any slice with anatomy, so that the object is not drowned in empty slices. Target batches
    (no labels) draw from slices with anatomy only (a blank slice teaches nothing).
    """

    def __init__(self, images: list[torch.Tensor], labels: list[torch.Tensor] | None = None,
                 fg_fraction: float = 0.5, seed: int = 0, min_anatomy: float = 0.02, invert_p: float = 0.0):
        self.images = images
        self.invert_p = invert_p
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
        inversion of the anatomy (background stays at -1); the same geometry on labels.

        The draws are made per slice on the host, in a fixed order; the arithmetic runs batched on the
        tensors' device (a handful of kernels whatever the batch size)."""
        b = x.shape[0]
        ks, flips, gammas, inverts = [], [], [], []
        for _ in range(b):
            ks.append(int(self.rng.integers(4)))
            flips.append(bool(self.rng.integers(2)))
            gammas.append(float(np.exp(self.rng.uniform(-0.3, 0.3))))
            inverts.append(bool(self.invert_p) and bool(self.rng.random() < self.invert_p))
        x = _rotate_flip(x, ks, flips)
        y = None if y is None else _rotate_flip(y, ks, flips)
        gamma = _host_to(torch.tensor(gammas, dtype=x.dtype), x.device).view(b, *([1] * (x.ndim - 1)))
        x = ((x + 1) / 2).clamp(0, 1).pow(gamma) * 2 - 1
        if any(inverts):
            inv = _host_to(torch.tensor(inverts), x.device).view(b, *([1] * (x.ndim - 1)))
            x = torch.where(inv & (x > -0.98), -x, x)
        return x, y


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
