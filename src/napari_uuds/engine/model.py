"""UUDS: wires CLIP, the dual prompts, DAM, SAM and the two decoders (Fig. 1).

Training step (one call of :meth:`UUDS.forward`):

* pass 1, x^s and x^t together: encode -> DAMs(T^d) -> image decoder -> reconstruction ~x^s (L_id),
  synthetic source x^{t->s}, and the generator features of each; SAM(T^s) on X_c^s -> z^s (L_BSCL);
* pass 2, ~x^s and x^{t->s} together: encode (x_g^{t->s} for Eq. 2), SAM(T^s) -> segmentation decoder
  with the generator features -> Y^s logits (L_seg) and Y^{t->s} logits (Eq. 5-8).

Source and target are segmented by the same path, the one inference runs on a target slice
(translate, re-encode, segment): L_seg supervises exactly what the user gets. A step runs the
image encoder on 4B slices (two passes of 2B).
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import Callable

import torch
import torch.nn as nn

from .attention import ProjectionHead, SegmentationAttentionModule
from .backbone import ImageTaps, create_clip
from .config import ModelConfig
from .dam import DomainAdaptationModule
from .decoders import ImageDecoder, SegDecoder, cat_like, stage_widths
from . import passnorm
from .prompts import DomainPrompt, SegPrompt
from .text_head import SOURCE, TARGET, TextConditionedHead


#: which segmentation-decoder stage feeds the prototype alignment (0: S/16 ... 4: S/1); 1 = S/8.
TCSA_DECODER_STAGE = 1


@dataclass
class StepOutput:
    """What one training pass (:meth:`UUDS.forward`) hands the losses."""

    rec_s: torch.Tensor  # ~x^s, the source's reconstruction (L_id, Eq. 9)
    logits_s: torch.Tensor  # Y^s, segmentation of ~x^s (L_seg)
    z_s: torch.Tensor | None  # L_BSCL embeddings of the source (Eq. 4); None in a segmenter-only pass
    syn_t: torch.Tensor  # x^{t->s}, the synthetic source
    logits_ts: torch.Tensor  # Y^{t->s} (Eq. 5-8)
    xg_s: torch.Tensor  # x_g of the source, the target and the synthetic source (Eq. 1-2)
    xg_t: torch.Tensor
    xg_ts: torch.Tensor
    enc_s: torch.Tensor  # TCSA: encoder layer2 (S/8) and segmentation-decoder S/8 features, source and target paths
    enc_ts: torch.Tensor
    dec_s: torch.Tensor
    dec_ts: torch.Tensor
    t_d: torch.Tensor | None = None  # the encoded domain prompt (None without one)


@dataclass
class Translation:
    image: torch.Tensor  # (B, 1, S, S) in [-1, 1]
    gen: list[torch.Tensor]  # generator features S/16..S/1


class UUDS(nn.Module):
    def __init__(self, cfg: ModelConfig, clip_weights: str | None = None, seed: int = 0):
        super().__init__()
        import open_clip

        self.cfg = cfg
        self.clip = create_clip(cfg.arch, clip_weights, cfg.image_size)
        if cfg.pass_bn:  # one set of running statistics for raw slices, one for translated ones
            passnorm.convert(self.clip.visual)
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
        self.image_decoder = ImageDecoder(inner, cfg.decoder_width, tuple(ws[:3]), fine=cfg.fine_skips)
        gen_dims = self.image_decoder.widths
        if cfg.use_seg_prompt:
            self.seg_prompt = SegPrompt(self.clip, self.tokenizer, cfg.class_names, cfg.n_ctx, seed=seed)
            self.sam = SegmentationAttentionModule(text_dim, ch[4], inner, cfg.attn_heads)
        self.proj = ProjectionHead(ch[4], cfg.proj_dim)
        seg_in = ch[4] + (len(cfg.class_names) if cfg.use_seg_prompt else 0)
        self.seg_decoder = SegDecoder(seg_in, ch[:4], gen_dims, cfg.decoder_width, cfg.n_classes)
        # TCSA's text-conditioned head (the authors' model) replaces the segmentation decoder's static 1x1 head
        self._content_dim = ch[4]
        self.text_head = self._new_text_head(cfg.text_head_dim) if cfg.text_head else None
        if self.text_head is not None:
            self.seg_decoder.head = nn.Identity()  # never used: no dead parameters in the optimiser or the averages
        # training state that travels with the weights (train() sets them; checkpoints save trained_steps)
        self.trained_steps: int = 0
        self.optimizer_state: dict | None = None  # for resuming; None once training is over
        self.guard_report: dict | None = None  # the guards' last figures (engine/guards.py)
        self.randomise_used: dict | None = None  # the source randomisation a run used (randomise=auto decides)
        self.pseudo_refine_used: dict | None = None  # the pseudo-label refinement a run used (pseudo_refine=auto decides)
        self.weight_average: dict | None = None  # the weight average a run ended with (train.WeightAverage.report)
        self.last_iterate_state: dict | None = None  # the last step's weights beside that average (benchmarks)
        self.teacher_report: dict | None = None  # the mean teacher a run's pseudo labels came from (train.MeanTeacher)

    def _new_text_head(self, text_dim: int) -> TextConditionedHead:
        return TextConditionedHead(self._content_dim, self.seg_decoder.widths[-1], text_dim, self.cfg.n_classes,
                                   d=256 if self.cfg.arch == "rn50" else 64, heads=self.cfg.attn_heads)

    def fit_text_head(self, embeddings: torch.Tensor) -> bool:
        """Give TCSA's text head its class texts ``[2, C, E]``. A head that never had texts is rebuilt for their
        width E if it differs (the config's width was a guess: the text encoder is chosen when training starts);
        returns False, changing nothing, where a head that has texts would need another width."""
        head = self.text_head
        if tuple(embeddings.shape) != tuple(head.class_text.shape):
            if bool(head.text_ready):
                return False
            device = head.class_text.device
            self.cfg.text_head_dim = int(embeddings.shape[-1])
            self.text_head = head = self._new_text_head(self.cfg.text_head_dim).to(device)
        head.set_text(embeddings)
        return True

    @property
    def tcsa_feature_dim(self) -> int:
        """Channels of the segmentation-decoder features the TCSA prototypes live in (stage TCSA_DECODER_STAGE)."""
        return self.seg_decoder.widths[TCSA_DECODER_STAGE]

    # -- parts -------------------------------------------------------------------------------
    def encode_domain_prompt(self) -> torch.Tensor | None:
        return self.domain_prompt() if self.cfg.use_domain_prompt else None

    def encode_seg_prompt(self) -> torch.Tensor | None:
        return self.seg_prompt() if self.cfg.use_seg_prompt else None

    def to_channels_last(self) -> "UUDS":
        """Channels-last weights, as a CUDA run trains (``TrainConfig.channels_last``), except the two decoders'.

        The decoders' group norm returns plain (NCHW) maps whatever its input's layout, so channels-last decoder
        convolutions copied each input to channels-last and the norms copied it back, forward and backward. With
        plain decoders a training step (RN50, H200) took 236 ms against 268 at batch 64, and 408 against 455 at
        batch 128 (benchmarks/results/gpu_speed_after-convt.json, section layout, whose rule chose this)."""
        self.to(memory_format=torch.channels_last)
        for dec in (self.image_decoder, self.seg_decoder):
            dec.to(memory_format=torch.contiguous_format)
        return self

    def translate(self, taps: dict, t_d: torch.Tensor | None, image: torch.Tensor | None = None) -> Translation:
        """The image decoder's output from the encoder taps of ``image`` (the slice being translated: read at S/2 and
        S/1 where ``ModelConfig.fine_skips``)."""
        x_d = self.dam(t_d, taps["domain"], taps["content"])
        sk = taps["skips"]
        levels = (sk[3], sk[2], torch.cat([sk[0], sk[1]], 1))
        skips = [dam(t_d, taps["domain"], lv) for dam, lv in zip(self.skip_dams, levels)]
        image, gen = self.image_decoder(x_d, skips, image)
        return Translation(image, gen)

    def segment(self, taps: dict, gen: list[torch.Tensor], image: torch.Tensor,
                t_s: torch.Tensor | None, feats: list[torch.Tensor] | None = None, modality: int = TARGET
                ) -> torch.Tensor:
        """Segment a *translated* image (~x^s or x^{t->s}) from its taps and its generator features
        (``feats``, a list, collects the segmentation decoder's stage features S/16 .. S/1). ``modality``: whose
        class texts condition TCSA's text head (SOURCE for the source's reconstruction, TARGET otherwise)."""
        content = taps["content"]
        head = None
        if self.text_head is not None:
            raw = content
            head = lambda h: self.text_head(h, raw, modality)  # noqa: E731
        if t_s is not None:
            content, scores = self.sam(t_s, content)
            x = cat_like([content, scores], content)
        else:
            x = content
        return self.seg_decoder(x, taps["skips"], gen, image, feats, head)

    def embed(self, taps: dict, t_s: torch.Tensor | None) -> torch.Tensor:
        """z of L_BSCL: the projection of the SAM-updated content X_c (Eq. 4)."""
        content = taps["content"]
        if t_s is not None:
            content, _ = self.sam(t_s, content)
        return self.proj(content)

    # -- what trains ------------------------------------------------------------------------
    def segmenter_modules(self) -> list[nn.Module]:
        """What a segmenter-only run trains (``TrainConfig.train_parts="segmenter"``): the segmentation prompt's
        context, SAM, the segmentation decoder and TCSA's text head."""
        names = ("seg_prompt", "sam", "seg_decoder", "text_head")
        return [m for m in (getattr(self, n, None) for n in names) if m is not None]

    def frozen_modules(self) -> list[nn.Module]:
        """What a segmenter-only run leaves as it is: every other module (CLIP's towers, the DAMs, the image decoder,
        the L_BSCL projection), so that a module added later is frozen or trained, never left in between. (The
        segmentation prompt's context is read through CLIP's frozen text tower.)"""
        trained = self.segmenter_modules()
        return [m for m in self.children() if not any(m is t for t in trained)]

    # -- training forward -------------------------------------------------------------------
    def judge_global(self, x: torch.Tensor) -> torch.Tensor:
        """x_g of images through the image encoder with its weights frozen: no parameter gradient, batch norm
        on its running statistics. The gradient reaches ``x`` only (Eq. 2 under ``dd_flow="split"``)."""
        v = self.clip.visual
        params = {n: p.detach() for n, p in v.named_parameters()}
        was = v.training
        v.eval()
        try:
            with passnorm.route(v, passnorm.TRANSLATED):  # x is a translated image
                return torch.func.functional_call(v, params, (self.taps.adapt_input(x),))
        finally:
            v.train(was)

    def forward(self, xs: torch.Tensor, xt: torch.Tensor, dd_flow: str | None = "shared",
                rec_aug: Callable[[torch.Tensor], torch.Tensor] | None = None,
                detach_target_seg: bool = False, segmenter_only: bool = False) -> StepOutput:
        """One training pass. ``dd_flow`` routes the gradients of L_DD (see docs/method.md, reading 5):
        ``split``: x_g^s, x_g^t come from the attention pool over *detached* layer4 features (Eq. 1 trains the
        domain head and T^d, never the trunk the segmenter shares) and x_g^{t->s} from :meth:`judge_global`
        (Eq. 2 trains the translator only); ``shared``: every x_g from the training passes, gradients
        everywhere (the paper's letter); None: no L_DD this step (x_g as in ``shared``, nothing extra computed).
        ``rec_aug``: applied to the source's reconstruction before the segmenter reads it (``randomise_into="both"``:
        a second GIN draw); L_id still sees the reconstruction itself. ``detach_target_seg``
        (``TrainConfig.useg_flow="segmenter"``): Y^{t->s} is computed from the *detached* synthetic source and
        generator features, in one more encoder pass over the same pair of batches (so batch norm normalises it as in
        pass 2), so that nothing the target's segmentation is trained by reaches the translator; x_g^{t->s} (Eq. 2)
        still comes from the attached pass. ``segmenter_only``: :meth:`forward_segmenter` (the other options do not
        apply)."""
        if segmenter_only:
            return self.forward_segmenter(xs, xt)
        t_d = self.encode_domain_prompt()
        t_s = self.encode_seg_prompt()
        n = xs.shape[0]
        # pass 1: source and target together, so batch norm sees both domains as at inference
        taps_s, taps_t = _split(self.taps(torch.cat([xs, xt.to(xs.dtype)])), n)
        rec = self.translate(taps_s, t_d, xs)
        syn = self.translate(taps_t, t_d, xt.to(xs.dtype))
        z_s = self.embed(taps_s, t_s)
        # pass 2: both translations. The source is segmented through exactly the path a target takes
        # (translate, re-encode, segment with the generator's features), so L_seg trains the inference path.
        seg_in = rec.image if rec_aug is None else rec_aug(rec.image)
        with passnorm.route(self.clip.visual, passnorm.TRANSLATED):
            taps_rs, taps_ts = _split(self.taps(torch.cat([seg_in, syn.image])), n)
        dec_s: list[torch.Tensor] = []
        dec_ts: list[torch.Tensor] = []
        logits_s = self.segment(taps_rs, rec.gen, seg_in, t_s, dec_s, SOURCE)
        if detach_target_seg:
            with passnorm.route(self.clip.visual, passnorm.TRANSLATED):
                _, taps_seg = _split(self.taps(torch.cat([seg_in.detach(), syn.image.detach()])), n)
            logits_ts = self.segment(taps_seg, [g.detach() for g in syn.gen], syn.image.detach(), t_s, dec_ts)
        else:
            logits_ts = self.segment(taps_ts, syn.gen, syn.image, t_s, dec_ts)
        out = StepOutput(rec_s=rec.image, logits_s=logits_s, z_s=z_s, syn_t=syn.image, logits_ts=logits_ts,
                         xg_s=taps_s["global"], xg_t=taps_t["global"], xg_ts=taps_ts["global"],
                         enc_s=taps_rs["skips"][2], enc_ts=taps_ts["skips"][2],
                         dec_s=dec_s[TCSA_DECODER_STAGE], dec_ts=dec_ts[TCSA_DECODER_STAGE], t_d=t_d)
        if dd_flow not in ("split", "shared", None):
            raise ValueError(f"dd_flow must be split, shared or None, not {dd_flow!r}")
        if t_d is not None and dd_flow == "split":
            glob = self.clip.visual.attnpool(torch.cat([taps_s["content"], taps_t["content"]]).detach())
            out.xg_s, out.xg_t = glob[:n], glob[n:]
            out.xg_ts = self.judge_global(syn.image)
        return out

    def forward_segmenter(self, xs: torch.Tensor, xt: torch.Tensor) -> StepOutput:
        """The training pass of a segmenter-only run: both passes through the encoder and the translator run
        without a graph (their modules are frozen: the caller keeps them in eval mode, on their running statistics,
        as inference reads them), and only the segmentation of ~x^s and x^{t->s} is differentiable. No z^s (L_BSCL
        trains SAM for the translator's sake too) and the x_g are not meant for L_DD."""
        n = xs.shape[0]
        with torch.no_grad():
            t_d = self.encode_domain_prompt()
            taps_s, taps_t = _split(self.taps(torch.cat([xs, xt.to(xs.dtype)])), n)
            rec = self.translate(taps_s, t_d, xs)
            syn = self.translate(taps_t, t_d, xt.to(xs.dtype))
            with passnorm.route(self.clip.visual, passnorm.TRANSLATED):
                taps_rs, taps_ts = _split(self.taps(torch.cat([rec.image, syn.image])), n)
        t_s = self.encode_seg_prompt()
        dec_s: list[torch.Tensor] = []
        dec_ts: list[torch.Tensor] = []
        logits_s = self.segment(taps_rs, rec.gen, rec.image, t_s, dec_s, SOURCE)
        logits_ts = self.segment(taps_ts, syn.gen, syn.image, t_s, dec_ts)
        return StepOutput(rec_s=rec.image, logits_s=logits_s, z_s=None, syn_t=syn.image, logits_ts=logits_ts,
                          xg_s=taps_s["global"], xg_t=taps_t["global"], xg_ts=taps_ts["global"],
                          enc_s=taps_rs["skips"][2], enc_ts=taps_ts["skips"][2],
                          dec_s=dec_s[TCSA_DECODER_STAGE], dec_ts=dec_ts[TCSA_DECODER_STAGE], t_d=t_d)

    # -- inference ----------------------------------------------------------------------------
    def infer(self, xt: torch.Tensor, t_d: torch.Tensor | None = None, t_s: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Target slices -> (synthetic source (B,1,S,S), logits (B,C,S,S)). Prompts may be pre-encoded."""
        if t_d is None:
            t_d = self.encode_domain_prompt()
        if t_s is None:
            t_s = self.encode_seg_prompt()
        syn = self.translate(self.taps(xt), t_d, xt)
        with passnorm.route(self.clip.visual, passnorm.TRANSLATED):
            taps = self.taps(syn.image)
        logits = self.segment(taps, syn.gen, syn.image, t_s)
        return syn.image, logits


def _split(taps: dict, n: int) -> tuple[dict, dict]:
    """The taps of a joint pass split into its first ``n`` images and the rest. ``torch.split``, not slicing: the
    gradient of two slices is two zero-filled full-size maps summed, that of a split one concatenation."""
    def halves(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return torch.split(t, [n, t.shape[0] - n])

    a, b = {}, {}
    for k, v in taps.items():
        if isinstance(v, list):
            pairs = [halves(t) for t in v]
            a[k], b[k] = [p[0] for p in pairs], [p[1] for p in pairs]
        else:
            a[k], b[k] = halves(v)
    return a, b
