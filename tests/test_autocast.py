"""The decoders under bfloat16 autocast: CUDA's casts counted on fake CUDA tensors (no GPU needed), values on the CPU."""
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
autocast_casts = pytest.importorskip("autocast_casts")


def test_under_cuda_autocast_the_decoders_keep_their_maps_in_bfloat16(tiny_cfg):
    """CUDA autocast runs bilinear resizes, group norm and softmax in float32; the decoders and the attention
    modules keep their maps in bfloat16 across them, so no map of more than one channel is cast up to float32 and
    back down for the next convolution or concatenation. Counted with the training forward on fake CUDA tensors
    (the benchmark's counter): the old decoders cast every stage's input up to float32 and back down, and the DAMs'
    outputs came out in float32. The translated images stay float32, as they were."""
    from napari_uuds.engine.model import UUDS

    torch.manual_seed(0)
    model = UUDS(tiny_cfg, clip_weights=None, seed=0)
    counter = autocast_casts.count_training_forward(model, 2, tiny_cfg.image_size, dd_flow="shared")
    rows = counter.rows
    assert rows, "no cast counted: the emulated CUDA autocast is not on"
    # maps of more than one channel (the image decoder's one-channel output is taken to float32 for its tanh)
    ours = {k: r for k, r in rows.items()
            if k[4].startswith("napari_uuds/engine/decoders.py") and k[5] == "map" and len(k[3]) == 4 and k[3][1] > 1}
    up = [k for k in ours if k[:2] == ("bfloat16", "float32")]
    assert not up, up  # the old decoders: the resize's input, and every skip concatenated with the resized map
    # the concatenations and the stage convolutions read bfloat16 maps (the old stages cast their whole input down)
    down = [k for k in ours if k[:2] == ("float32", "bfloat16")]
    assert not down, down
    # the DAMs resize K in its dtype (no float32 K cast down for the attention's product); what they still cast is
    # their float32 instance norm's input and output, and the float32 softmax's (heads x positions, not maps)
    own = ("instance_norm", "softmax", "attn.to(")
    dam = [k for k in rows
           if k[4].startswith("napari_uuds/engine/dam.py") and k[5] == "map" and not any(o in k[4] for o in own)]
    assert not dam, dam
    out = counter.outputs
    assert out["rec_s"] == out["syn_t"] == torch.float32 and out["logits_s"] == torch.bfloat16
    assert any(k[4].startswith("napari_uuds/engine/") for k in rows)  # origins are named by the engine's own files


def test_the_x2_upsampling_is_bilinear_and_stays_in_bfloat16_under_cuda_autocast():
    """On the CPU (and for float32 maps on CUDA) ``upsample2x`` is ``F.interpolate`` itself; for bfloat16 maps on
    CUDA it is the depthwise transposed convolution of the same stencil, which keeps a bfloat16 map in bfloat16 under CUDA's autocast (checked on fake CUDA tensors:
    ``F.interpolate`` there returns float32, and no bilinear kernel is dispatched), and whose float32 values are
    ``F.interpolate``'s to rounding."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from napari_uuds.engine.decoders import interpolate, upsample2x, upsample_conv_transpose

    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7).contiguous(memory_format=torch.channels_last)
    want = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.equal(upsample2x(x), want)
    got = upsample_conv_transpose(x)
    assert got.is_contiguous(memory_format=torch.channels_last) and torch.allclose(got, want, atol=1e-6)

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.__name__.split(".")[0])
            return func(*args, **(kwargs or {}))

    with autocast_casts.fake_cuda():
        xb = torch.empty(2, 6, 5, 7, device="cuda", dtype=torch.bfloat16)
        with autocast_casts.cuda_autocast():
            plain = F.interpolate(xb, scale_factor=2, mode="bilinear", align_corners=False)
            kept = interpolate(xb, scale_factor=2, mode="bilinear", align_corners=False)
            ops = Ops()
            with ops:
                up = upsample2x(xb)
        full = Ops()
        with full:  # a float32 map on CUDA (no autocast): F.interpolate, exact (cuDNN might convolve in TF32)
            upsample2x(torch.empty(2, 6, 5, 7, device="cuda"))
    assert plain.dtype == torch.float32  # why: CUDA autocast runs the bilinear kernel in float32
    assert kept.dtype == up.dtype == torch.bfloat16 and up.shape == (2, 6, 10, 14)
    assert "upsample_bilinear2d" not in ops.names and any("convolution" in n for n in ops.names), ops.names
    assert "upsample_bilinear2d" in full.names, full.names
