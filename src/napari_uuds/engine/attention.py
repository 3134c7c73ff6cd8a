"""Segmentation attention module (SAM) and the projection head of L_BSCL (Sec. 3.1.2).

SAM "works quite similarly to the DAM": Q from the segmentation prompt T^s (one query per class),
K and V from the content features X_c. Unlike the DAM it keeps the content statistics (no Nor): the
object's appearance is what segmentation needs. It returns the updated content (a residual update,
averaged over class queries) and the per-class attention logits as score maps for the decoder
(as DenseCLIP does with its pixel-text score maps).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .dam import prompt_attention


class SegmentationAttentionModule(nn.Module):
    def __init__(self, text_dim: int, content_dim: int, inner: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Conv2d(text_dim, inner, 1)
        self.k = nn.Conv2d(content_dim, inner, 1)
        self.v = nn.Conv2d(content_dim, inner, 1)
        self.out = nn.Conv2d(inner, content_dim, 1)
        self.log_d = nn.Parameter(torch.tensor(math.log(math.sqrt(inner // heads))))

    def forward(self, t_s: torch.Tensor, x_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.q(t_s[:, :, None, None].to(x_c.dtype)).flatten(1)[None]  # (1, K, inner)
        out, logits = prompt_attention(q, self.k(x_c), self.v(x_c), self.log_d, self.heads)
        updated = x_c + self.out(out.mean(dim=1))
        b, _, h, w = x_c.shape
        scores = logits.mean(dim=2).reshape(b, -1, h, w)  # (B, K, h, w)
        return updated, scores


class ProjectionHead(nn.Module):
    """MLP from the (pooled) updated content to the unit-norm embedding z of L_BSCL (Eq. 4)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim // 2), nn.ReLU(inplace=True), nn.Linear(in_dim // 2, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(x.float().mean(dim=(2, 3))), dim=-1)
