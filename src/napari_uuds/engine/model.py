"""UUDS: wires CLIP, the dual prompts, DAM, SAM and the two decoders (Fig. 1).

Training step (one call of :meth:`UUDS.forward`):

* source x^s: encode -> DAM(T^d) -> image decoder -> reconstruction ~x^s (L_id) and generator features;
  SAM(T^s) on X_c^s -> z^s (L_BSCL); segmentation decoder -> Y^s logits (L_seg);
* target x^t: encode -> DAM(T^d) -> image decoder -> synthetic source x^{t->s} and generator features;
* synthetic x^{t->s}: encode (x_g^{t->s} for Eq. 2), SAM(T^s) -> segmentation decoder with the
  generator features of x^t -> Y^{t->s} logits (Eq. 5-8).

So a step runs the image encoder three times. Inference on a target slice runs the last two.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .attention import ProjectionHead, SegmentationAttentionModule
from .backbone import ImageTaps, create_clip
from .config import ModelConfig
from .dam import DomainAdaptationModule
from .decoders import ImageDecoder, SegDecoder, stage_widths
from .prompts import DomainPrompt, SegPrompt


@dataclass
class Translation:
    image: torch.Tensor  # (B, 1, S, S) in [-1, 1]
    gen: list[torch.Tensor]  # generator features S/16..S/1
    global_emb: torch.Tensor  # x_g of the *input* image (B, D)


class UUDS(nn.Module):
    def __init__(self, cfg: ModelConfig, clip_weights: str | None = None, seed: int = 0):
        super().__init__()
        import open_clip

        self.cfg = cfg
        self.clip = create_clip(cfg.arch, clip_weights, cfg.image_size)
        self.tokenizer = open_clip.get_tokenizer("RN50" if cfg.arch == "rn50" else "uuds-tiny")
        self.taps = ImageTaps(self.clip.visual)
        ch = self.taps.channels
        emb = self.taps.embed_dim
        text_dim = self.clip.text_projection.shape[1] if not isinstance(self.clip.text_projection, nn.Linear) \
            else self.clip.text_projection.out_features
        inner = cfg.decoder_width
        self.domain_prompt = DomainPrompt(self.clip, self.tokenizer, cfg.domain_text())
        self.dam = DomainAdaptationModule(text_dim, emb, ch[4], inner, cfg.attn_heads, cfg.use_domain_prompt)
        # early fusion: Eq. 3 at the finer encoder levels too (layer3 S/16, layer2 S/8, stem+layer1 S/4)
        ws = stage_widths(cfg.decoder_width)
        self.skip_dams = nn.ModuleList(
            DomainAdaptationModule(text_dim, emb, cin, w, cfg.attn_heads, cfg.use_domain_prompt)
            for cin, w in zip((ch[3], ch[2], ch[0] + ch[1]), ws[:3]))
        self.image_decoder = ImageDecoder(inner, cfg.decoder_width, tuple(ws[:3]))
        gen_dims = self.image_decoder.widths
        if cfg.use_seg_prompt:
            self.seg_prompt = SegPrompt(self.clip, self.tokenizer, cfg.class_names, cfg.n_ctx, seed=seed)
            self.sam = SegmentationAttentionModule(text_dim, ch[4], inner, cfg.attn_heads)
        self.proj = ProjectionHead(ch[4], cfg.proj_dim)
        seg_in = ch[4] + (len(cfg.class_names) if cfg.use_seg_prompt else 0)
        self.seg_decoder = SegDecoder(seg_in, ch[:4], gen_dims, cfg.decoder_width, cfg.n_classes)

    # -- parts -------------------------------------------------------------------------------
    def encode_domain_prompt(self) -> torch.Tensor | None:
        return self.domain_prompt() if self.cfg.use_domain_prompt else None

    def encode_seg_prompt(self) -> torch.Tensor | None:
        return self.seg_prompt() if self.cfg.use_seg_prompt else None

    def translate(self, taps: dict, t_d: torch.Tensor | None) -> Translation:
        x_d = self.dam(t_d, taps["domain"], taps["content"])
        sk = taps["skips"]
        levels = (sk[3], sk[2], torch.cat([sk[0], sk[1]], 1))
        skips = [dam(t_d, taps["domain"], lv) for dam, lv in zip(self.skip_dams, levels)]
        image, gen = self.image_decoder(x_d, skips)
        return Translation(image, gen, taps["global"])

    def segment(self, taps: dict, gen: list[torch.Tensor], image: torch.Tensor,
                t_s: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (logits (B, C, S, S), z (B, proj_dim))."""
        content = taps["content"]
        if t_s is not None:
            content, scores = self.sam(t_s, content)
            x = torch.cat([content, scores.to(content.dtype)], 1)
        else:
            x = content
        z = self.proj(content)
        return self.seg_decoder(x, taps["skips"], gen, image), z

    # -- training forward -------------------------------------------------------------------
    def forward(self, xs: torch.Tensor, xt: torch.Tensor) -> dict[str, torch.Tensor]:
        t_d = self.encode_domain_prompt()
        t_s = self.encode_seg_prompt()
        # source and target share one encoder pass, so batch norm sees both domains as at inference
        taps_s, taps_t = _split(self.taps(torch.cat([xs, xt.to(xs.dtype)])), xs.shape[0])
        rec = self.translate(taps_s, t_d)
        logits_s, z_s = self.segment(taps_s, rec.gen, xs, t_s)
        syn = self.translate(taps_t, t_d)
        taps_ts = self.taps(syn.image)
        logits_ts, _ = self.segment(taps_ts, syn.gen, syn.image, t_s)
        out = {"rec_s": rec.image, "logits_s": logits_s, "z_s": z_s, "syn_t": syn.image,
               "logits_ts": logits_ts, "xg_s": taps_s["global"], "xg_t": taps_t["global"],
               "xg_ts": taps_ts["global"]}
        if t_d is not None:
            out["t_d"] = t_d
        return out

    # -- inference ----------------------------------------------------------------------------
    def infer(self, xt: torch.Tensor, t_d: torch.Tensor | None = None, t_s: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target slices -> (synthetic source (B,1,S,S), logits (B,C,S,S)). Prompts may be pre-encoded."""
        if t_d is None:
            t_d = self.encode_domain_prompt()
        if t_s is None:
            t_s = self.encode_seg_prompt()
        syn = self.translate(self.taps(xt), t_d)
        logits, _ = self.segment(self.taps(syn.image), syn.gen, syn.image, t_s)
        return syn.image, logits

    def infer_source_only(self, x: torch.Tensor) -> torch.Tensor:
        """Segment an image as if it were a source image (no translation): the segmenter alone."""
        t_s = self.encode_seg_prompt()
        taps = self.taps(x)
        rec = self.translate(taps, self.encode_domain_prompt())
        logits, _ = self.segment(taps, rec.gen, x, t_s)
        return logits


def _split(taps: dict, n: int) -> tuple[dict, dict]:
    a, b = {}, {}
    for k, v in taps.items():
        if isinstance(v, list):
            a[k], b[k] = [t[:n] for t in v], [t[n:] for t in v]
        else:
            a[k], b[k] = v[:n], v[n:]
    return a, b
