"""Domain Adaptation Module, Eq. 3: x^d = softmax(Q K^T / d) Nor(V).

Q is projected from the domain prompt T^d, K from the domain features X_d, V from the content
features X_c, each by a 1x1 convolution ("three convolution layers"). ``d`` is a learnable scale and
Nor an instance normalisation (per-sample, per-channel mean and variance over space) that removes the
input's domain statistics.

Shapes (our reading): with one query, Eq. 3 as printed returns one c-vector, the sum over positions p
of a_p Nor(V)_p with a = softmax_p(Q K_p / d). The decoder needs a map, so we keep the terms of that
sum at their positions: x^d_p = (h w) a_p Nor(V)_p, whose spatial mean is exactly Eq. 3's vector. The
attention is multi-head (channels split into heads, one softmax map per head); see docs/method.md.

"Early fusion" (Sec. 3.1.1): the model applies one DAM per encoder level (layer4 = X_c, and layer3,
layer2, stem+layer1 as content at finer scales, with K from X_d upsampled), and the image decoder
receives the finer ones as skip connections, so the synthetic image keeps the anatomy.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decoders import interpolate


def prompt_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_d: torch.Tensor,
                     heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3 kept spatial. q: (B|1, Q, c) queries; k, v: (B, c, h, w).

    Returns (out (B, Q, c, h, w): (hw) softmax_p(q.k_p / d) * v_p per head, logits (B, Q, heads, h*w)).
    ``out`` is in v's dtype: under autocast the softmax runs in float32, and its weights are rounded to v's dtype
    before the product (as flash attention does with its probabilities), instead of promoting the whole
    (B, Q, c, h, w) product to float32 for the next convolution to cast back. In float32 nothing changes.
    """
    b, c, h, w = k.shape
    n = h * w
    ch = c // heads
    kq = k.reshape(b, heads, ch, n)
    qq = q.reshape(q.shape[0], q.shape[1], heads, ch)
    logits = torch.einsum("bqhc,bhcn->bqhn", qq.expand(b, -1, -1, -1), kq) / log_d.exp()
    attn = logits.softmax(dim=-1) * n  # mean weight 1 over positions
    out = attn.to(v.dtype).unsqueeze(3) * v.reshape(b, 1, heads, ch, n)  # (B, Q, heads, ch, n)
    return out.reshape(b, q.shape[1], c, h, w), logits


class DomainAdaptationModule(nn.Module):
    """DAM (Sec. 3.1.1, Eq. 3). ``use_prompt=False`` (ablation) replaces T^d by a learnt query."""

    def __init__(self, text_dim: int, domain_dim: int, content_dim: int, inner: int, heads: int,
                 use_prompt: bool = True):
        super().__init__()
        assert inner % heads == 0
        self.heads = heads
        self.use_prompt = use_prompt
        self.q = nn.Conv2d(text_dim, inner, 1)
        self.k = nn.Conv2d(domain_dim, inner, 1)
        self.v = nn.Conv2d(content_dim, inner, 1)
        self.log_d = nn.Parameter(torch.tensor(math.log(math.sqrt(inner // heads))))
        if not use_prompt:
            self.query = nn.Parameter(torch.randn(1, text_dim) * 0.02)

    @staticmethod
    def nor(x: torch.Tensor) -> torch.Tensor:
        """Nor(V): remove per-sample, per-channel mean and variance (the domain statistics)."""
        return F.instance_norm(x.float(), eps=1e-5).to(x.dtype)

    def forward(self, t_d: torch.Tensor | None, x_d: torch.Tensor, x_c: torch.Tensor) -> torch.Tensor:
        t = self.query if (t_d is None or not self.use_prompt) else t_d
        q = self.q(t[:, :, None, None].to(x_c.dtype)).flatten(1)[:, None]  # (1|B, 1, inner)
        v = self.nor(self.v(x_c))
        k = self.k(x_d)
        if k.shape[-2:] != v.shape[-2:]:  # early levels: project, then upsample (1x1 conv and resize commute)
            k = interpolate(k, size=v.shape[-2:], mode="bilinear", align_corners=False)  # in k's dtype
        out, _ = prompt_attention(q, k, v, self.log_d, self.heads)
        return out[:, 0]
