"""Simple domain-adaptation baselines that the benchmark compares UUDS against.

* :func:`histogram_match`: the target's anatomy intensities mapped onto the source's distribution
  (scikit-image), then the source-only model is applied;
* :func:`pseudo_labels`: entropy-filtered pseudo-labels of the source-only model on the target, to
  fine-tune it (self-training); uncertain pixels are :data:`~.losses.IGNORE_LABEL`.
"""
from __future__ import annotations

import numpy as np
import torch

from .infer import predict_slices
from .losses import IGNORE_LABEL, entropy_map

#: normalised intensities above this are anatomy (background is -1 after normalisation)
ANATOMY = -0.999


def histogram_match(target: np.ndarray, references: list[np.ndarray]) -> np.ndarray:
    """Normalised target volume -> the same with its anatomy voxels histogram-matched to the pooled
    anatomy voxels of the normalised ``references`` (background stays at -1)."""
    from skimage.exposure import match_histograms

    ref = np.concatenate([r[r > ANATOMY].ravel() for r in references])
    out = np.array(target, dtype=np.float32, copy=True)
    m = out > ANATOMY
    if m.any() and ref.size:
        out[m] = match_histograms(out[m], ref).astype(np.float32)
    return out


@torch.no_grad()
def pseudo_labels(model, slices: torch.Tensor, chi: float, batch_size: int = 16) -> tuple[torch.Tensor, float]:
    """(n, 1, S, S) target slices -> (n, 1, S, S) uint8 labels: argmax where the normalised entropy is
    below ``chi`` (Eq. 6/7), :data:`IGNORE_LABEL` elsewhere; and the fraction of certain pixels."""
    _, probs = predict_slices(model, slices, batch_size)
    ent = entropy_map(probs)
    lab = probs.argmax(1).to(torch.uint8)
    certain = ent < chi
    lab[~certain] = IGNORE_LABEL
    return lab.unsqueeze(1), float(certain.float().mean())
