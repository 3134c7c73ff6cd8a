"""Source randomisation: GIN, global intensity non-linearity (Ouyang et al., IEEE TMI 2022).

Each source slice goes through a freshly drawn random shallow convolutional network (random 1x1/3x3
kernels, Leaky ReLU), whose output is rescaled to the slice's own norm and mixed with the slice by a random
weight. The result keeps the anatomy (shapes, edges) and scrambles the contrast: tissue that is bright may
come out dark, locally and non-monotonically, as between T2 and T1 around the spinal cord. A segmenter that
learns from such slices cannot rely on one contrast.

In UUDS the randomised slice is the *input* of the translator and its clean original the target of
L_id (Eq. 9): the translator learns "any contrast -> the source's contrast" with a known answer, which
is the job it has on a target slice (docs/method.md, reading 16). The segmenter still segments the
translator's output, supervised by L_seg, so it sees what it will see at inference.

Draws come from the caller's numpy generator (host), so a seed gives the same batch on every device; the
arithmetic is one grouped convolution per layer for the whole batch.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

#: normalised intensities at or below this are background (background is -1 after normalisation)
BACKGROUND = -0.98
#: ``randomise="auto"`` switches GIN on where the raw target's grey values lie further than this (W1, in
#: normalised units, range 2) from the source's: the guards' drift floor (guards.GuardLimits.drift_high)
AUTO_W1 = 0.3


def subsampled_quantiles(values: torch.Tensor, q: torch.Tensor, cap: int) -> torch.Tensor:
    """Quantiles ``q`` of a flat tensor, taken on every k-th value so that about ``cap`` values are sorted."""
    return torch.quantile(values[:: max(1, values.numel() // cap)], q)


def grey_value_distance(a: list[torch.Tensor], b: list[torch.Tensor], levels: int = 64) -> float:
    """W1 (mean |quantile difference| at ``levels`` levels) between the body voxels of two sets of normalised
    slice stacks: how far apart two contrasts' grey-value distributions lie, without any label."""
    q = torch.linspace(0.0, 1.0, levels)

    def quantiles(stacks: list[torch.Tensor]) -> torch.Tensor:
        v = torch.cat([t.detach().float().cpu().flatten() for t in stacks])
        v = v[v > BACKGROUND]
        return subsampled_quantiles(v, q, 1_000_000) if v.numel() else torch.zeros_like(q)

    return float((quantiles(a) - quantiles(b)).abs().mean())


def resolve_randomise(mode: str, source: list[torch.Tensor], target: list[torch.Tensor]) -> tuple[str, float | None]:
    """``auto`` -> ``gin`` where the target's grey values lie further than :data:`AUTO_W1` from the source's,
    else ``none``; other modes unchanged. Returns (mode, the distance or None)."""
    if mode != "auto":
        return mode, None
    d = grey_value_distance(source, target)
    return ("gin" if d > AUTO_W1 else "none"), d


def gin(x: torch.Tensor, rng: np.random.Generator, p: float = 0.8, layers: int = 4, width: int = 2,
        body: torch.Tensor | None = None, invert: float = 0.0) -> torch.Tensor:
    """Randomise the contrast of a fraction ``p`` of the slices of ``x`` (B, 1, H, W) in [-1, 1].

    Per randomised slice: ``layers`` random conv layers (1 -> width -> ... -> 1 channels, kernel 1 or 3,
    weights N(0, 1), Leaky ReLU 0.2 between them), the output scaled to the slice's Frobenius norm, mixed
    with the slice by alpha ~ U(0, 1), then mapped to [-1, 1] over the anatomy; background stays -1.
    Slices not drawn are returned unchanged. ``body`` (B, 1, H, W, bool): where the anatomy lies, for an ``x``
    whose background is not exactly -1 (a reconstruction); default ``x > BACKGROUND``.

    ``invert`` (``TrainConfig.randomise_invert``; round 16 of docs/method.md): each randomised slice is first inverted
    over its anatomy with this probability, so that the mixture's dominant polarity is no longer always the source's
    (``alpha * h + (1 - alpha) * x`` keeps x's polarity with weight 1 - alpha). 0 draws nothing extra: the same random
    numbers, the same output as without it.
    """
    b = x.shape[0]
    pick = [bool(rng.random() < p) for _ in range(b)]
    idx = [i for i, k in enumerate(pick) if k]
    if not idx:
        return x
    n = len(idx)
    flips = [bool(rng.random() < invert) for _ in range(n)] if invert > 0 else []
    sel = torch.tensor(idx, device=x.device)
    xi = x.index_select(0, sel).float()
    body = xi > BACKGROUND if body is None else body.index_select(0, sel)
    # zero-centred input inside the anatomy: the random network sees structure, not the -1 offset
    clean = torch.where(body, (xi + 1) / 2, torch.zeros_like(xi))
    if any(flips):  # the drawn slices inverted over the anatomy: bright <-> dark, background kept
        flip = torch.tensor(flips, device=x.device).view(n, 1, 1, 1)
        clean = torch.where(flip & body, 1.0 - clean, clean)
    h = clean
    cin = 1
    for li in range(layers):
        cout = 1 if li == layers - 1 else width
        k = int(rng.choice([1, 3])) if li < layers - 1 else 1
        w = torch.from_numpy(rng.standard_normal((n * cout, cin, k, k)).astype(np.float32)).to(x.device)
        bias = torch.from_numpy(rng.standard_normal(n * cout).astype(np.float32) * 0.1).to(x.device)
        h = F.conv2d(h.reshape(1, n * cin, *h.shape[-2:]), w, bias, padding=k // 2, groups=n)
        h = h.reshape(n, cout, *h.shape[-2:])
        if li < layers - 1:
            h = F.leaky_relu(h, 0.2)
        cin = cout
    h = h * body
    norm_c = clean.flatten(1).norm(dim=1).clamp_min(1e-6)
    norm_h = h.flatten(1).norm(dim=1).clamp_min(1e-6)
    h = h * (norm_c / norm_h).view(n, 1, 1, 1)
    alpha = torch.from_numpy(rng.uniform(0.0, 1.0, n).astype(np.float32)).to(x.device).view(n, 1, 1, 1)
    mixed = alpha * h + (1 - alpha) * clean
    # back to [-1, 1] over the anatomy (min-max per slice), background at -1
    big = torch.finfo(mixed.dtype).max
    lo = torch.where(body, mixed, torch.full_like(mixed, big)).flatten(1).amin(1).view(n, 1, 1, 1)
    hi = torch.where(body, mixed, torch.full_like(mixed, -big)).flatten(1).amax(1).view(n, 1, 1, 1)
    scaled = (mixed - lo) / (hi - lo).clamp_min(1e-6)
    # anatomy maps to [-0.95, 1] so that it stays distinguishable from the background at -1
    out_i = torch.where(body, scaled * 1.95 - 0.95, torch.full_like(scaled, -1.0)).to(x.dtype)
    out = x.clone()
    out.index_copy_(0, sel, out_i)
    return out
