"""Decoders (Sec. 3.1.1, 3.1.2, 4.1): residual blocks and upsampling.

* :class:`ImageDecoder` (the generator): DAM output (S/32) -> synthetic source x^{t->s} or the
  reconstruction ~x^s, in [-1, 1]; it also returns its stage features at S/16 .. S/1, the
  "multi-level features learned from the generator".
* :class:`SegDecoder`: SAM output (+ class score maps) at S/32, upsampled U-Net style with, at each
  scale, the encoder's skip features of the segmented image and the generator's features.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _groups(c: int) -> int:
    for g in (16, 8, 4, 2):
        if c % g == 0 and c // g >= 2:
            return g
    return 1


def is_channels_last(t: torch.Tensor) -> bool:
    """Whether a 4-d map is laid out channels-last (and not also plainly contiguous, as a one-channel map is)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def cat_like(parts: list[torch.Tensor], ref: torch.Tensor) -> torch.Tensor:
    """``torch.cat(parts, 1)`` in ``ref``'s dtype and memory format.

    A channels-last map concatenated with a plainly strided one comes out plain (NCHW), and the next convolution,
    whose weights are channels-last on a GPU, copies it back to channels-last, forward and backward. The
    one-channel image the decoders read is such a part: its strides are plain although it is contiguous in either
    format, so it is restrided here (a copy of one channel instead of the whole concatenation). Values are those of
    ``torch.cat``: under autocast the convolution would cast the parts to ``ref``'s dtype anyway."""
    fmt = torch.channels_last if is_channels_last(ref) else torch.contiguous_format
    return torch.cat([t.to(dtype=ref.dtype, memory_format=fmt) for t in parts], 1)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that keeps a bfloat16/float16 input in its dtype under autocast.

    CUDA autocast runs group_norm in float32, which turns the decoder activations after it into float32, with
    a cast before the next convolution; keeping them in the autocast dtype saves those casts (measured in
    benchmarks/results/gpu_speed.md). The kernel still accumulates the statistics in float32. Same parameters
    and state dict as ``nn.GroupNorm``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dev = x.device.type
        if x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(dev):
            with torch.autocast(dev, enabled=False):
                return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        return super().forward(x)


def interpolate(x: torch.Tensor, **kw) -> torch.Tensor:
    """``F.interpolate(x, **kw)`` that keeps a bfloat16/float16 map in its dtype under autocast.

    CUDA autocast runs the resize kernels in float32: the map is cast up, resized, and whatever reads it next (a
    convolution, a concatenation) casts it, or its partners, again, forward and backward. The forward kernel
    computes in float32 either way and rounds once to the map's dtype, as the next convolution's cast did; CUDA's
    backward accumulates the gradient with bfloat16 atomics (relative error about 0.005 against 0.0017 for the
    float32 kernel rounded once, measured on an H200, and not deterministic), which is why the decoders' x2
    resizes, 20 a step, use :func:`upsample_conv_transpose` on CUDA; the DAMs' resizes of K (3 a pass) use this.
    ``benchmarks/autocast_casts.py`` counts the casts. Outside autocast, and in float32, this is ``F.interpolate``."""
    dev = x.device.type
    if x.dtype in (torch.bfloat16, torch.float16) and torch.is_autocast_enabled(dev):
        with torch.autocast(dev, enabled=False):
            return F.interpolate(x, **kw)
    return F.interpolate(x, **kw)


def upsample_conv_transpose(x: torch.Tensor) -> torch.Tensor:
    """x2 bilinear upsampling (``align_corners=False``) as a depthwise transposed convolution (stride 2, kernel
    1/4 3/4 3/4 1/4 in each direction) of the edge-replicated map: the same stencil as ``F.interpolate``, through
    cuDNN, in the map's dtype and memory format, accumulating in float32 forward and backward (deterministic)."""
    c = x.shape[1]
    k = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=x.dtype, device=x.device)
    w = (k[:, None] * k[None, :]).expand(c, 1, 4, 4).contiguous()
    if is_channels_last(x):
        w = w.contiguous(memory_format=torch.channels_last)
    return F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), w, stride=2, padding=3, groups=c)


def upsample2x(h: torch.Tensor) -> torch.Tensor:
    """The decoders' x2 bilinear upsampling (``align_corners=False``), in the map's dtype.

    Under CUDA autocast, float32 resizes made each stage cast its input up, :func:`cat_like` cast every skip up to
    match, and the stage's first convolution cast the whole concatenation back down. On CUDA it is
    :func:`upsample_conv_transpose`: whole training steps (RN50, batch 64, H200) took 304 ms with the float32
    resize, 285 ms with ``F.interpolate`` in bfloat16 (whose backward accumulates with bfloat16 atomics) and 268 ms
    with the transposed convolution (benchmarks/results/gpu_speed_after-casts.json, ``upsample_step``; the rule
    that chose it is written in ``gpu_speed.section_upsample_step``). Elsewhere (the CPU, and float32 maps on
    CUDA, which cuDNN might convolve in TF32 and which were not measured) it is :func:`interpolate`, i.e.
    ``F.interpolate`` itself in float32."""
    if h.device.type == "cuda" and h.dtype in (torch.bfloat16, torch.float16):
        return upsample_conv_transpose(h)
    return interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)


class SiLU(nn.SiLU):
    """SiLU in place where no gradient is recorded (inference: no second buffer), not in place where one is (its
    gradient needs its input, so autograd would copy the input before an in-place SiLU overwrote it: the same memory
    traffic as a new output, with one kernel more)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x, inplace=not torch.is_grad_enabled())


class ResBlock(nn.Module):
    """Two 3x3 convolutions with group norm and SiLU, plus a (1x1 where the widths differ) skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), GroupNorm(_groups(cout), cout), SiLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), GroupNorm(_groups(cout), cout))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1, bias=False)
        self.act = SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


def stage_widths(width: int, n: int = 5, floor: int = 16) -> list[int]:
    return [max(width // (2 ** i), floor) for i in range(n)]


class ImageDecoder(nn.Module):
    """skip_dims: channels of the domain-adapted skips at S/16, S/8, S/4 (0: none). ``fine``: the S/2 and S/1 stages
    also read the image being translated (``ModelConfig.fine_skips``), average-pooled to S/2 for the S/2 stage."""

    def __init__(self, in_dim: int, width: int, skip_dims: tuple[int, int, int] = (0, 0, 0), fine: bool = False):
        super().__init__()
        ws = stage_widths(width)
        self.fine = fine
        extra = list(skip_dims) + ([1, 1] if fine else [0, 0])
        self.inp = nn.Sequential(nn.Conv2d(in_dim, ws[0], 1), ResBlock(ws[0], ws[0]))
        self.stages = nn.ModuleList(ResBlock(ws[max(i - 1, 0)] + extra[i], ws[i]) for i in range(5))
        self.out = nn.Conv2d(ws[-1], 1, 3, padding=1)
        self.widths = ws

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor] | None = None, image: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``image`` (B, 1, S, S): the slice being translated, required where ``fine``."""
        if self.fine and image is None:
            raise ValueError("this image decoder reads the translated slice at S/2 and S/1: pass image")
        h = self.inp(x)
        feats = []
        for i, stage in enumerate(self.stages):
            h = upsample2x(h)
            parts = [h]
            if skips is not None and i < len(skips):
                parts.append(skips[i])
            if self.fine and i >= 3:
                fine = image.to(h.dtype)
                if fine.shape[-1] != h.shape[-1]:
                    fine = F.adaptive_avg_pool2d(fine, h.shape[-2:])
                parts.append(fine)
            h = stage(cat_like(parts, h) if len(parts) > 1 else h)
            feats.append(h)  # S/16, S/8, S/4, S/2, S/1
        image = torch.tanh(self.out(h).float())  # float32 (x's dtype where wider): autocast's maps are bfloat16
        return image.to(torch.promote_types(x.dtype, image.dtype)), feats


class SegDecoder(nn.Module):
    """skip_dims: encoder skips [stem S/4, layer1 S/4, layer2 S/8, layer3 S/16]; gen_dims: S/16..S/1."""

    def __init__(self, in_dim: int, skip_dims: list[int], gen_dims: list[int], width: int, n_classes: int):
        super().__init__()
        ws = stage_widths(width)
        enc_at = [skip_dims[3], skip_dims[2], skip_dims[0] + skip_dims[1], 0, 0]  # per stage S/16..S/1
        self.inp = nn.Sequential(nn.Conv2d(in_dim, ws[0], 1), ResBlock(ws[0], ws[0]))
        self.stages = nn.ModuleList(
            ResBlock(ws[max(i - 1, 0)] + enc_at[i] + gen_dims[i] + (1 if i == 4 else 0), ws[i]) for i in range(5))
        self.head = nn.Conv2d(ws[-1], n_classes, 1)
        self.widths = ws

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], gen: list[torch.Tensor],
                image: torch.Tensor, feats: list[torch.Tensor] | None = None, head=None) -> torch.Tensor:
        """Logits (B, C, S, S); pass a list as ``feats`` to collect the stage features S/16 .. S/1; ``head`` (a
        callable on the last map) replaces the static 1x1 head (TCSA's text-conditioned head)."""
        enc = [[skips[3]], [skips[2]], [skips[0], skips[1]], [], []]  # concatenated with the stage's other parts
        h = self.inp(x)
        for i, stage in enumerate(self.stages):
            h = upsample2x(h)
            parts = [h, gen[i], *enc[i]]
            if i == 4:
                parts.append(image)
            h = stage(cat_like(parts, h))
            if feats is not None:
                feats.append(h)
        return self.head(h) if head is None else head(h)
