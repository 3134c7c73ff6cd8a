"""TCSA-UDA's text-conditioned segmentation head, as the authors' public model builds it (issue 18).

The authors' network (``model/multimod_v3.py`` of ``lalitmaurya47/TCSA_UDA``; docs/notes/tcsa-authors-code.md, section
3) puts text *in* the network: modality-specific class text embeddings go through a learnable ``text_to_vision`` layer,
attend to the image, and a controller turns the result into the weights of a per-image dynamic 1x1 convolution on the
decoder's last map, followed by a static head; at test time the model is called with the *target* modality's text.
Described from the repository, not copied; where the code is silent (prompt wording, the key/value tokens, widths of
the tiny model) the choices are ours and say so.

Shapes: the class texts are a buffer ``[2, C, E]`` (0: source modality, 1: target), filled once from a text encoder
(:func:`text_embed.class_modality_embeddings`) and saved with the weights, so inference needs no text encoder.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

#: modality rows of the text buffer
SOURCE, TARGET = 0, 1


class TextConditionedHead(nn.Module):
    """logits = static_head(relu(dynamic_conv_b(h))) with dynamic_conv_b's weights generated per image b from the
    class texts of the segmented image's modality attending to the image.

    - image tokens: the segmenter's S/32 content map -> GroupNorm -> ReLU -> 1x1 conv to ``d`` (the authors pool it
      to one summary; we keep the h*w tokens as keys/values and append their mean, so one image still has one summary);
    - text: ``text_to_vision`` (Linear E -> d + ReLU) per class; each class token is its text plus the image summary
      (concatenated, projected to d), attends (multi-head) to the image tokens, then an MLP block;
    - mean over classes -> controller (Linear d -> d -> weights and bias of a 1x1 conv ``dec_dim`` -> ``mid``);
    - static head: 1x1 ``mid`` -> ``mid`` / 2, ReLU, 1x1 -> classes (the authors' 128 -> 64 -> C after a 256 -> 128
      dynamic conv: ``mid`` is half the decoder's width), no layer narrower than 16 channels.
    """

    def __init__(self, content_dim: int, dec_dim: int, text_dim: int, n_classes: int, d: int = 64, heads: int = 4):
        super().__init__()
        self.n_classes, self.dec_dim = n_classes, dec_dim
        self.mid = max(16, dec_dim // 2)  # never under the decoder's own floor of 16 channels
        self.register_buffer("class_text", torch.zeros(2, n_classes, text_dim))
        self.register_buffer("text_ready", torch.zeros((), dtype=torch.bool))
        groups = 8 if content_dim % 8 == 0 else 1
        self.image_proj = nn.Sequential(nn.GroupNorm(groups, content_dim), nn.ReLU(), nn.Conv2d(content_dim, d, 1))
        self.text_to_vision = nn.Sequential(nn.Linear(text_dim, d), nn.ReLU())
        self.fuse = nn.Linear(2 * d, d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.controller = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, dec_dim * self.mid + self.mid))
        hidden = max(16, self.mid // 2)  # (a 4-channel ReLU layer here stalled the tiny model's training)
        self.static = nn.Sequential(nn.Conv2d(self.mid, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, n_classes, 1))
        # start the dynamic conv near a fixed one: small generated weights around a learnt base
        nn.init.zeros_(self.controller[-1].weight)
        nn.init.zeros_(self.controller[-1].bias)
        self.base_weight = nn.Parameter(torch.randn(self.mid, dec_dim) * (2.0 / dec_dim) ** 0.5)
        self.base_bias = nn.Parameter(torch.zeros(self.mid))

    @torch.no_grad()
    def set_text(self, embeddings: torch.Tensor) -> None:
        """The class texts, ``[2, C, E]`` (source, target modality)."""
        if tuple(embeddings.shape) != tuple(self.class_text.shape):
            raise ValueError(f"class text embeddings of shape {tuple(embeddings.shape)}, the head was built for "
                             f"{tuple(self.class_text.shape)}")
        self.class_text.copy_(embeddings.to(self.class_text))
        self.text_ready.fill_(True)

    def forward(self, h: torch.Tensor, content: torch.Tensor, modality: int) -> torch.Tensor:
        """h: the segmentation decoder's last map (B, dec_dim, H, W); content: the segmented image's S/32 encoder map
        (before the SAM, where there is one) (B, content_dim, h, w); modality: SOURCE or TARGET (whose class texts
        condition the head)."""
        b = h.shape[0]
        img = self.image_proj(content.float()).flatten(2).transpose(1, 2)  # (B, hw, d)
        summary = img.mean(1, keepdim=True)  # (B, 1, d)
        tokens = torch.cat([img, summary], 1)
        text = self.text_to_vision(self.class_text[modality].float())  # (C, d)
        q = self.fuse(torch.cat([text.unsqueeze(0).expand(b, -1, -1), summary.expand(-1, text.shape[0], -1)], -1))
        a, _ = self.attn(q, tokens, tokens, need_weights=False)
        q = q + a
        q = q + self.mlp(q)
        params = self.controller(q.mean(1))  # (B, dec_dim * mid + mid)
        w = params[:, : self.dec_dim * self.mid].view(b, self.mid, self.dec_dim) + self.base_weight
        bias = params[:, self.dec_dim * self.mid:] + self.base_bias
        y = torch.einsum("bchw,bmc->bmhw", h.float(), w) + bias[:, :, None, None]
        return self.static(F.relu(y)).to(h.dtype)
