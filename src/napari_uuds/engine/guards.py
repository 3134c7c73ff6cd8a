"""Collapse and drift guards: label-free checks of the adaptation while it trains.

* **Object volume.** The fraction of body pixels that the model calls object on the target batches, against
  the fraction labelled object on the source volumes. A segmenter that collapses to background, or paints a
  blob over the whole slice, moves this ratio far from 1 long before anyone sees a mask.
* **Drift.** The 1-D Wasserstein distance (W1) between the grey values (inside the body) of the synthetic
  source made from the target batch and those of the source batch: a translator that drifts away from the
  source's appearance makes the segmenter read images it never learnt from. The limit is the larger of a
  fixed floor and the W1 of the *untranslated* target: a translation may not leave the target further from
  the source than it was (the cord's T1 starts far from its T2; z-scored BraTS contrasts start close).

Both are tracked as exponential moving averages from the warm-up on (before it, the segmenter has not learnt
anything to check). When one leaves its band, the guard *holds the target terms back* (L_DD, L_useg, TCSA's
target terms): the model trains on the source alone until the averages come back, and the user is told,
once when the guard trips and once when it clears.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .randomise import BACKGROUND, subsampled_quantiles

#: quantile levels at which the two grey-value distributions are compared (W1 ~ mean |q_a - q_b|)
_LEVELS = 64


@dataclass
class GuardLimits:
    #: target/source object fraction outside [low, high] trips the guard
    ratio_low: float = 0.25
    ratio_high: float = 4.0
    #: W1 (normalised grey values, range 2) of the synthetic source to the source above this, and above the
    #: raw target's W1 to the source, trips it
    drift_high: float = 0.3
    #: EMA momentum of both statistics
    momentum: float = 0.9


def object_fraction(labels: list[torch.Tensor], images: list[torch.Tensor]) -> float:
    """Object pixels / body pixels over labelled slice stacks (the source's reference fraction)."""
    obj = sum(float(((lab > 0) & (lab != 255)).sum()) for lab in labels)
    body = sum(float((img > BACKGROUND).sum()) for img in images)
    return obj / max(body, 1.0)


def batch_statistics(seg_t: torch.Tensor, xt: torch.Tensor, syn_t: torch.Tensor, xs: torch.Tensor
                     ) -> torch.Tensor:
    """(object fraction of the target batch's body, W1 synthetic vs source, W1 raw target vs source) as a
    3-tensor, no host sync.

    seg_t: (B, H, W) predicted labels of the target batch; xt, xs: (B, 1, H, W) target and (clean) source
    batches; syn_t: (B, 1, H, W) the synthetic source made from xt."""
    body_t = xt[:, 0] > BACKGROUND
    frac = ((seg_t > 0) & body_t).sum().float() / body_t.sum().clamp(min=1).float()
    q = torch.linspace(0.0, 1.0, _LEVELS, device=xt.device)
    a = syn_t.detach().float()[xt > BACKGROUND]
    r = xt.detach().float()[xt > BACKGROUND]
    b = xs.detach().float()[xs > BACKGROUND]
    if a.numel() == 0 or b.numel() == 0:
        return torch.stack([frac, torch.zeros_like(frac), torch.zeros_like(frac)])
    qa, qr, qb = (subsampled_quantiles(v, q, 16384) for v in (a, r, b))
    return torch.stack([frac, (qa - qb).abs().mean(), (qr - qb).abs().mean()])


@dataclass
class AdaptationGuard:
    source_fraction: float
    limits: GuardLimits = field(default_factory=GuardLimits)
    ratio: float | None = None
    drift: float | None = None
    raw_drift: float | None = None
    held: bool = False
    held_steps: int = 0
    trips: int = 0

    def update(self, step: int, target_fraction: float, drift: float, raw_drift: float) -> str:
        """Fold in one batch's statistics; a message when the guard trips or clears, else ''."""
        m = self.limits.momentum
        ema = lambda old, new: new if old is None else m * old + (1 - m) * new  # noqa: E731
        self.ratio = ema(self.ratio, target_fraction / max(self.source_fraction, 1e-8))
        self.drift = ema(self.drift, drift)
        self.raw_drift = ema(self.raw_drift, raw_drift)
        lim = self.limits
        drift_limit = max(lim.drift_high, self.raw_drift)
        bad = []
        if not lim.ratio_low <= self.ratio <= lim.ratio_high:
            bad.append(f"the predicted target object is {self.ratio:.2f} times the source's "
                       f"(band {lim.ratio_low:g}-{lim.ratio_high:g})")
        if self.drift > drift_limit:
            bad.append(f"the synthetic source drifts from the source's grey values (W1 {self.drift:.2f} > "
                       f"{drift_limit:.2f})")
        was = self.held
        self.held = bool(bad)
        if self.held:
            self.held_steps += 1
        if self.held and not was:
            self.trips += 1
            return f"warning at step {step}: {'; '.join(bad)}: target terms held back until it recovers"
        if was and not self.held:
            return f"step {step}: back within the guard's limits: target terms resume"
        return ""

    def report(self) -> dict:
        return {"target_source_ratio": None if self.ratio is None else round(self.ratio, 3),
                "synthetic_drift_w1": None if self.drift is None else round(self.drift, 4),
                "raw_target_w1": None if self.raw_drift is None else round(self.raw_drift, 4),
                "held_steps": self.held_steps, "trips": self.trips, "source_fraction": round(self.source_fraction, 5),
                "limits": {"ratio": [self.limits.ratio_low, self.limits.ratio_high],
                           "drift_w1": self.limits.drift_high}}
