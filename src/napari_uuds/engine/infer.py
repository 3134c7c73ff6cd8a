"""Volume inference: synthetic source, class probabilities, segmentation and entropy on the scan's grid.

The entropy is cached in :class:`VolumePrediction`; the certain mask for any threshold (Eq. 7) is a
comparison against it and never runs the network again.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .body import body_mask
from .losses import certain_mask, entropy_map
from .model import UUDS
from .slices import SliceGeometry, from_square, plan_geometry, to_square
from .volumes import NormParams, Volume, normalise


@dataclass
class VolumePrediction:
    """All outputs in canonical voxel order (use ``Volume.to_file_order`` or ``save_like`` to go back)."""

    synthetic: np.ndarray  # float32, [-1, 1] (normalised source-like intensities)
    probs: np.ndarray  # float32 (C, X, Y, Z)
    seg: np.ndarray  # uint8 labels
    entropy: np.ndarray  # float32 in [0, 1] (Eq. 5, normalised by ln C)

    def certain(self, chi: float) -> np.ndarray:
        """Eq. 7 for threshold chi, from the cached entropy."""
        return certain_mask(torch.from_numpy(self.entropy), chi).numpy()


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


@torch.no_grad()
def predict_slices(model: UUDS, slices: torch.Tensor, batch_size: int = 16, domain_prompt: str | None = None,
                   progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, S, S) normalised slices -> (synthetic (n,1,S,S), probs (n,C,S,S)) on the CPU."""
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
        syns.append(syn.float().cpu())
        probs.append(logits.float().softmax(1).cpu())
        if progress is not None:
            progress(x.shape[0])
    return torch.cat(syns), torch.cat(probs)


def predict_volume(model: UUDS, volume: Volume, batch_size: int = 16, domain_prompt: str | None = None,
                   progress=None, norm: NormParams | None = None) -> VolumePrediction:
    cfg = model.cfg
    data = norm.apply(volume.data) if norm is not None else normalise(volume.data)[0]
    plan = plan_geometry(data, volume.spacing, cfg.axis, cfg.image_size, cfg.mm_per_pixel)
    slices, geom = to_square(data, cfg.axis, cfg.image_size, fill=-1.0, mode="bilinear", geom=plan)
    syn, probs = predict_slices(model, slices, batch_size, domain_prompt, progress)
    return assemble(syn, probs, geom, body_mask(data, cfg.axis) if cfg.body_mask else None)


def assemble(syn: torch.Tensor, probs: torch.Tensor, geom: SliceGeometry, body: np.ndarray | None = None
             ) -> VolumePrediction:
    """Model-resolution slices -> volume outputs: probabilities resampled, then argmax and entropy.

    ``body`` (bool, the volume's grid): outside it every voxel is background with certainty."""
    p = from_square(probs, geom, "bilinear", fill=[1.0] + [0.0] * (probs.shape[1] - 1)).clamp_(0, 1)
    if body is not None:
        outside = torch.from_numpy(~np.asarray(body, dtype=bool))
        p[:, outside] = 0.0
        p[0, outside] = 1.0
    p = p / p.sum(0, keepdim=True).clamp_min(1e-8)
    s = from_square(syn, geom, "bilinear", fill=-1.0)[0]
    ent = entropy_map(p.unsqueeze(0))[0]
    return VolumePrediction(s.numpy().astype(np.float32), p.numpy().astype(np.float32),
                            p.argmax(0).numpy().astype(np.uint8), ent.numpy().astype(np.float32))
