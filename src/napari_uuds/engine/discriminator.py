"""TCSA-UDA's adversarial output-space alignment (AdvEnt style), as the authors' public code builds it.

The authors' "Ours" training (``lalitmaurya47/TCSA_UDA``, ``scripts/configs/ours_*.yml``; docs/notes/tcsa-authors-code.md)
keeps output-space adversarial terms beside its own: a PatchGAN discriminator reads the *weighted self-information
map* of a segmentation, -p log2(p) / log2(C) per class channel (AdvEnt, Vu et al. 2019), and learns to tell source
(label 0) from target (label 1); the segmenter is trained to make its target maps look like source ones
(BCE with logits against label 0, weight LAMBDA_ADV_MAIN = 0.003). Described from the repository, not copied.

============================  =====================================  ============================================
part                          code                                   the authors'
============================  =====================================  ============================================
self-information map          :func:`self_information`               ``prob_2_entropy`` (utils/func.py)
discriminator                 :class:`PatchDiscriminator`            ``NLayerDiscriminator`` (model/discriminator.py)
generator term                :meth:`OutputAdversary.generator_loss`  bce(D(I_t), source label)
discriminator step            :meth:`OutputAdversary.step`           (bce(D(I_s), 0) + bce(D(I_t), 1)) / 2
============================  =====================================  ============================================

The discriminator lives beside the model, not in it: inference never needs it, the weights file stays the
segmenter's, and a resumed run starts a fresh discriminator (as the authors' "Ours" builds fresh ones).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

#: the authors' label convention: source 0, target 1
SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0


def self_information(probs: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) class probabilities -> the weighted self-information map -p log2(p + 1e-7) / log2(C), per channel
    (its sum over channels is the normalised entropy of Eq. 5)."""
    c = probs.shape[1]
    return -probs * torch.log2(probs + 1e-7) / math.log2(max(c, 2))


class PatchDiscriminator(nn.Module):
    """A PatchGAN: 4x4 convolutions, C -> w (stride 2, LeakyReLU 0.2) -> 2w -> 4w (stride 2, batch norm, LeakyReLU)
    -> 8w (stride 1, batch norm, LeakyReLU) -> 1 (stride 1): one real/fake logit per overlapping patch. No bias
    before batch norm; weights N(0, 0.02), batch-norm scales N(1, 0.02) (the authors' ``D_TYPE: PatchGAN``,
    ``D_NORM: Batch_Norm``, width 64; the tiny model uses a narrower one)."""

    def __init__(self, in_channels: int, width: int = 64):
        super().__init__()
        w = width
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, w, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(2 * w, 4 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(4 * w), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(4 * w, 8 * w, 4, 1, 1, bias=False), nn.BatchNorm2d(8 * w), nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(8 * w, 1, 4, 1, 1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


class OutputAdversary:
    """The discriminator, its optimiser (Adam, lr 1e-4, betas 0.9 / 0.99, the authors') and the two halves of a step.

    ``generator_loss(probs_t)`` is added to the segmenter's loss (it reaches the segmenter only: the discriminator's
    parameters are frozen while it is computed); ``step(probs_s, probs_t)`` then trains the discriminator on detached
    maps. ``wrap`` (distributed.wrap) averages its gradients over the ranks of a distributed run."""

    def __init__(self, n_classes: int, width: int, device: torch.device, lr: float = 1e-4, wrap=None):
        self.disc = PatchDiscriminator(n_classes, width).to(device)
        self.net = wrap(self.disc) if wrap is not None else self.disc
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=lr, betas=(0.9, 0.99))
        self.steps = 0

    def generator_loss(self, probs_t: torch.Tensor) -> torch.Tensor:
        self.disc.requires_grad_(False)
        try:
            return _bce(self.disc(self_information(probs_t.float())), SOURCE_LABEL)
        finally:
            self.disc.requires_grad_(True)

    def step(self, probs_s: torch.Tensor, probs_t: torch.Tensor) -> torch.Tensor:
        """One discriminator update on detached maps; returns its loss (detached, on the device: no host sync)."""
        self.disc.train()
        self.opt.zero_grad(set_to_none=True)
        loss = 0.5 * (_bce(self.net(self_information(probs_s.detach().float())), SOURCE_LABEL)
                      + _bce(self.net(self_information(probs_t.detach().float())), TARGET_LABEL))
        loss.backward()
        self.opt.step()
        self.steps += 1
        return loss.detach()
