"""Dual prompts (Sec. 3.1): the hard domain prompt T^d and the CoOp segmentation prompt T^s.

Both go through the same CLIP text encoder, which is fine-tuned with everything else (Sec. 4.1).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .backbone import encode_text_embeddings


class DomainPrompt(nn.Module):
    """T^d: a hard text prompt, e.g. "A photo of a FLAIR", through the CLIP text encoder.

    The text can change at any time (GUI edits, ``set_text``); tokens are re-made on change only.
    """

    def __init__(self, clip: nn.Module, tokenizer, text: str):
        super().__init__()
        self.__dict__["clip"] = clip  # shared, not owned: registered once, by the parent model
        self._tokenizer = tokenizer
        self.text = ""
        self.register_buffer("tokens", torch.zeros(1, 1, dtype=torch.long), persistent=False)
        self.set_text(text)

    def set_text(self, text: str) -> None:
        if text != self.text:
            self.text = text
            self.tokens = self._tokenizer([text]).to(self.tokens.device)

    def forward(self) -> torch.Tensor:
        """(1, D) text embedding."""
        return self.clip.encode_text(self.tokens)


class SegPrompt(nn.Module):
    """T^s, CoOp style: M learnable context vectors [v_1 .. v_M] before each class name's tokens.

    The prompt "X X X X {class}." is tokenised; the embeddings of the M placeholder words are replaced by
    the context vectors (shared by all classes, as in CoOp's unified context) and the sequence goes
    through the text transformer. Returns one embedding per foreground class.
    """

    def __init__(self, clip: nn.Module, tokenizer, class_names: list[str], n_ctx: int = 4, seed: int = 0):
        super().__init__()
        self.__dict__["clip"] = clip  # shared, not owned
        width = clip.token_embedding.weight.shape[1]
        g = torch.Generator().manual_seed(seed)
        self.ctx = nn.Parameter(torch.randn(n_ctx, width, generator=g) * 0.02)  # CoOp init: N(0, 0.02)
        self.n_ctx = n_ctx
        self.class_names = list(class_names)
        placeholder = " ".join(["X"] * n_ctx)
        tokens = tokenizer([f"{placeholder} {name}." for name in class_names])
        self.register_buffer("tokens", tokens, persistent=False)

    def forward(self) -> torch.Tensor:
        """(K, D) embeddings, K = number of foreground classes."""
        emb = self.clip.token_embedding(self.tokens)  # (K, L, W)
        k = emb.shape[0]
        ctx = self.ctx.to(emb.dtype).unsqueeze(0).expand(k, -1, -1)
        emb = torch.cat([emb[:, :1], ctx, emb[:, 1 + self.n_ctx:]], dim=1)  # keep SOT, replace X X X X
        return encode_text_embeddings(self.clip, emb, self.tokens)
