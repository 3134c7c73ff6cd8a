"""CLIP backbone from open_clip: loading (RN50 / tiny; openai, file, none) and feature taps.

Feature taps of the ModifiedResNet image tower, for a slice of side S:

* ``skips``: stem (S/4), layer1 (S/4), layer2 (S/8), layer3 (S/16) — multi-level features;
* ``content`` X_c: layer4 (S/32), "the last layer of the CLIP image encoder";
* ``domain`` X_d: the attention pool run densely (every spatial token is also a query, as in
  MaskCLIP/DenseCLIP), in CLIP's joint embedding space — our reading of "the ViT layer";
* ``global`` x_g: the attention pool's pooled token, CLIP's own image embedding, comparable with
  the text embedding T^d by cosine.

RN50's attention pool has a positional table for 7x7 tokens (224 px). For another input size the
table is resized once, bicubically, at construction (``resize_pos_embed``); RN50 defaults to 224.
"""
from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import UUDSError

log = logging.getLogger("napari_uuds")

TINY_NAME = "uuds-tiny"
TINY_CONFIG_FILE = Path(__file__).with_name(f"{TINY_NAME}.json")  # shipped in the wheel
OPEN_CLIP_NAMES = {"rn50": "RN50", "tiny": TINY_NAME}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_registered = False


def _register_tiny() -> None:
    """Register the tiny config (a JSON file shipped with the package) with open_clip, once."""
    global _registered
    if _registered:
        return
    import open_clip

    open_clip.add_model_config(TINY_CONFIG_FILE)
    _registered = True


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_weights(arch: str, spec: str) -> tuple[str | None, str]:
    """Turn ``--clip-weights`` into what open_clip loads, fast, without minutes of retries.

    Returns (pretrained argument for open_clip or None, a sentence saying what was chosen).
    ``auto``: OpenAI weights when cached or reachable, else random initialisation (said plainly).
    ``openai``: the same but an error when they cannot be had. ``none``: random initialisation.
    A path: a local checkpoint file, or ``local-dir:DIR``.
    """
    spec = (spec or "auto").strip()
    if spec == "none":
        return None, "CLIP weights: none; the model starts from random initialisation"
    if spec.startswith("local-dir:") or spec not in ("auto", "openai"):
        p = Path(spec.removeprefix("local-dir:"))
        if not p.exists():
            raise UUDSError("CLIP weights not found (use openai, none, a checkpoint file or local-dir:DIR)", p)
        return str(spec), f"CLIP weights: {spec}"
    if arch != "rn50":
        if spec == "openai":
            raise UUDSError(f"no OpenAI CLIP weights exist for the '{arch}' model; use --clip-weights none")
        return None, f"CLIP weights: none exist for '{arch}'; the model starts from random initialisation"
    from open_clip.pretrained import get_pretrained_cfg

    cfg = get_pretrained_cfg("RN50", "openai")
    hub = (cfg.get("hf_hub") or "").rstrip("/")
    cached = None
    try:
        from huggingface_hub import try_to_load_from_cache

        for fname in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(hub, fname)
            if isinstance(hit, str):
                cached = hit
                break
    except Exception:  # pragma: no cover - hub library layout changes
        cached = None
    if cached:
        return cached, f"CLIP weights: openai (cache {cached})"
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if not offline and _hub_reachable():
        return "openai", "CLIP weights: openai (downloading)"
    why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
    if spec == "openai":
        raise UUDSError(f"OpenAI RN50 CLIP weights are not in the cache and {why}; "
                        "pass --clip-weights PATH (a local checkpoint) or none (random initialisation)")
    return None, f"CLIP weights: openai not cached and {why}; the model starts from random initialisation"


def create_clip(arch: str, weights: str | None, image_size: int) -> nn.Module:
    """Build the open_clip model with its weights (or none) and an attention pool fitted to ``image_size``."""
    import open_clip

    _register_tiny()
    name = OPEN_CLIP_NAMES[arch]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger().disabled, was = True, logging.getLogger().disabled
        try:
            if weights and weights.startswith("local-dir:"):
                model = open_clip.create_model(weights)
            else:
                model = open_clip.create_model(name, pretrained=weights)
        except Exception as exc:
            raise UUDSError(f"could not load CLIP weights '{weights}' for {name}: {str(exc).splitlines()[0][:200]}") from None
        finally:
            logging.getLogger().disabled = was
    resize_pos_embed(model.visual.attnpool, image_size // 32)
    model.visual.image_size = (image_size, image_size)
    return model


@torch.no_grad()
def resize_pos_embed(attnpool: nn.Module, grid: int) -> None:
    """Resize the attention pool's positional table (1 + g*g tokens) to ``grid`` x ``grid`` (bicubic)."""
    pe = attnpool.positional_embedding
    old = int(round((pe.shape[0] - 1) ** 0.5))
    if old == grid:
        return
    cls, sp = pe[:1], pe[1:]
    sp = sp.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    sp = F.interpolate(sp, size=(grid, grid), mode="bicubic", align_corners=False)
    sp = sp.permute(0, 2, 3, 1).reshape(grid * grid, -1)
    attnpool.positional_embedding = nn.Parameter(torch.cat([cls, sp]))


class ImageTaps(nn.Module):
    """Runs the CLIP image tower once and returns every tap UUDS needs (see module docstring)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.__dict__["visual"] = visual  # owned by the CLIP model; not registered twice
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def channels(self) -> list[int]:
        v = self.visual
        w = v.conv1.out_channels * 2  # stem width
        return [w, v.layer1[-1].conv3.out_channels, v.layer2[-1].conv3.out_channels,
                v.layer3[-1].conv3.out_channels, v.layer4[-1].conv3.out_channels]

    @property
    def embed_dim(self) -> int:
        return self.visual.attnpool.c_proj.out_features

    def adapt_input(self, x: torch.Tensor) -> torch.Tensor:
        """Grey slice in [-1, 1] -> CLIP-normalised RGB."""
        x = (x + 1.0) * 0.5
        return (x.expand(-1, 3, -1, -1) - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        v = self.visual
        h = self.adapt_input(x)
        skips = []
        h = v.stem(h)
        skips.append(h)
        for layer in (v.layer1, v.layer2, v.layer3):
            h = layer(h)
            skips.append(h)
        content = v.layer4(h)
        glob, dense = dense_attnpool(v.attnpool, content)
        return {"skips": skips, "content": content, "domain": dense, "global": glob}


def dense_attnpool(pool: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP attention pooling with every token as a query: (pooled token, dense map (B, D, h, w))."""
    b, c, h, w = x.shape
    tok = x.flatten(2).permute(2, 0, 1)  # (HW, B, C)
    tok = torch.cat([tok.mean(dim=0, keepdim=True), tok], dim=0)
    tok = tok + pool.positional_embedding[:, None, :].to(tok.dtype)
    out, _ = F.multi_head_attention_forward(
        query=tok, key=tok, value=tok, embed_dim_to_check=c, num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight, k_proj_weight=pool.k_proj.weight, v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None, in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight, out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True, training=pool.training, need_weights=False)
    glob = out[0]
    dense = out[1:].permute(1, 2, 0).reshape(b, -1, h, w)
    return glob, dense


def encode_text_embeddings(clip: nn.Module, emb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's ``encode_text`` from token *embeddings* (so CoOp context vectors can replace words)."""
    from open_clip.transformer import text_global_pool

    cast = clip.transformer.get_cast_dtype()
    x = emb.to(cast) + clip.positional_embedding.to(cast)
    x = clip.transformer(x, attn_mask=clip.attn_mask)
    x = clip.ln_final(x)
    x = text_global_pool(x, tokens, clip.text_pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    proj = clip.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
    return x
