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
    ours = {k: r for k, r in rows.items() if "engine/decoders.py" in k[4] and k[5] == "map" and k[3][1] > 1}
    up = [k for k in ours if k[:2] == ("bfloat16", "float32")]
    assert not up, up  # the old decoders: the resize's input, and every skip concatenated with the resized map
    # the concatenations and the stage convolutions read bfloat16 maps (the old stages cast their whole input down)
    down = [k for k in ours if k[:2] == ("float32", "bfloat16")]
    assert not down, down
    # the DAMs resize K in its dtype (no float32 K cast down for the attention's product); what they still cast is
    # their float32 instance norm's input and output, and the float32 softmax's (heads x positions, not maps)
    own = ("instance_norm", "softmax", "attn.to(")
    dam = [k for k in rows if "engine/dam.py" in k[4] and k[5] == "map" and not any(o in k[4] for o in own)]
    assert not dam, dam
    out = counter.outputs
    assert out["rec_s"] == out["syn_t"] == torch.float32 and out["logits_s"] == torch.bfloat16
    summary = counter.summary()
    assert summary["step_m_elements"] == pytest.approx(summary["forward_m_elements"] + summary["backward_m_elements"])


def test_the_x2_upsampling_is_interpolate_in_float32_and_rounds_once_in_bfloat16():
    from napari_uuds.engine.decoders import upsample2x

    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7).contiguous(memory_format=torch.channels_last)
    want = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.equal(upsample2x(x), want)
    xb = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = upsample2x(xb)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    once = F.interpolate(xb.float(), scale_factor=2, mode="bilinear", align_corners=False).bfloat16()
    # the float32 resize of the same bfloat16 values, rounded once: at most one bfloat16 step apart
    assert torch.allclose(got.float(), once.float(), rtol=2 ** -7, atol=0)
