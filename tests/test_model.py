"""Shapes through every module, Eq. 3 by hand, prompts, ablations."""
import math

import pytest
import torch

from napari_uuds.engine.backbone import resolve_weights
from napari_uuds.engine.config import ModelConfig
from napari_uuds.engine.dam import DomainAdaptationModule, prompt_attention
from napari_uuds.engine.errors import UUDSError
from napari_uuds.engine.model import UUDS


def test_eq3_prompt_attention_by_hand():
    # q = (1, 0); k at p0 = (1, 0), p1 = (0, 0); d = 1 -> softmax(1, 0) = (0.731059, 0.268941)
    q = torch.tensor([[[1.0, 0.0]]])
    k = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).t().reshape(1, 2, 1, 2)
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).t().reshape(1, 2, 1, 2)
    out, logits = prompt_attention(q, k, v, torch.tensor(0.0), heads=1)
    a0 = math.e / (1 + math.e)
    torch.testing.assert_close(logits.flatten(), torch.tensor([1.0, 0.0]))
    # kept spatial: hw * a_p * v_p
    torch.testing.assert_close(out[0, 0, :, 0, 0], torch.tensor([2 * a0, 4 * a0]))
    torch.testing.assert_close(out[0, 0, :, 0, 1], torch.tensor([2 * (1 - a0) * 3, 2 * (1 - a0) * 4]))
    # its spatial mean is Eq. 3 as printed: sum_p a_p v_p
    torch.testing.assert_close(out[0, 0].mean(dim=(1, 2)), torch.tensor([a0 + 3 * (1 - a0), 2 * a0 + 4 * (1 - a0)]))


def test_dam_removes_domain_statistics():
    torch.manual_seed(0)
    dam = DomainAdaptationModule(text_dim=8, domain_dim=6, content_dim=5, inner=8, heads=2)
    t, xd, xc = torch.randn(1, 8), torch.randn(2, 6, 3, 3), torch.randn(2, 5, 3, 3)
    a = dam(t, xd, xc)
    b = dam(t, xd, 3.0 * xc + 5.0)  # another "domain": scaled and shifted content
    assert a.shape == (2, 8, 3, 3)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # ... and the prompt changes the result
    assert not torch.allclose(a, dam(torch.randn(1, 8), xd, xc))


def test_taps_shapes_and_dense_pool(tiny_model):
    taps = tiny_model.taps(torch.rand(2, 1, 64, 64) * 2 - 1)
    ch = tiny_model.taps.channels
    assert [tuple(s.shape[1:]) for s in taps["skips"]] == [(ch[0], 16, 16), (ch[1], 16, 16), (ch[2], 8, 8), (ch[3], 4, 4)]
    assert taps["content"].shape == (2, ch[4], 2, 2)
    assert taps["domain"].shape == (2, tiny_model.taps.embed_dim, 2, 2)
    # the pooled token equals open_clip's own attention pool output
    torch.testing.assert_close(taps["global"], tiny_model.clip.visual.attnpool(taps["content"]), atol=1e-5, rtol=1e-4)


def _grad_norm(params) -> float:
    return float(sum(p.grad.abs().sum() for p in params if p.grad is not None))


def test_judge_global_is_clips_embedding_with_gradient_to_the_input_only(tiny_model):
    x = (torch.rand(2, 1, 64, 64) * 2 - 1).requires_grad_()
    tiny_model.eval()
    with torch.no_grad():
        ref = tiny_model.taps(x)["global"]
    tiny_model.train()
    running = tiny_model.clip.visual.bn1.running_mean.clone()
    g = tiny_model.judge_global(x)
    torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-4)  # batch norm on running statistics
    assert tiny_model.clip.visual.training  # mode restored
    torch.testing.assert_close(tiny_model.clip.visual.bn1.running_mean, running)  # statistics untouched
    g.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert _grad_norm(tiny_model.clip.visual.parameters()) == 0.0


@pytest.mark.parametrize("flow", ["split", "shared"])
def test_dd_flow_routes_the_gradients_of_eq1_and_eq2(tiny_model, flow):
    from napari_uuds.engine.losses import loss_dd

    tiny_model.train()
    xs, xt = torch.rand(3, 1, 64, 64) * 2 - 1, torch.rand(3, 1, 64, 64) * 2 - 1
    out = tiny_model(xs, xt, flow)
    v = tiny_model.clip.visual
    trunk = [p for n, p in v.named_parameters() if not n.startswith("attnpool")]
    pool = list(v.attnpool.parameters())
    text = list(tiny_model.clip.transformer.parameters())
    gen = list(tiny_model.image_decoder.parameters()) + list(tiny_model.dam.parameters())
    # Eq. 1: the domain head and T^d learn; under split the trunk the segmenter shares does not
    loss_dd(out.xg_s, out.xg_t, out.t_d).backward(retain_graph=True)
    assert _grad_norm(pool) > 0 and _grad_norm(text) > 0
    assert (_grad_norm(trunk) > 0) == (flow == "shared")
    assert _grad_norm(gen) == 0.0  # real images only: nothing generated is involved
    tiny_model.zero_grad()
    # Eq. 2: under split the judge (encoder, T^d, x_g^t) is fixed and every parameter gradient flows through
    # the synthetic image x^{t->s}, i.e. into the translator (which includes the pass-1 encoder feeding it)
    if flow == "split":
        loss = loss_dd(out.xg_ts, out.xg_t.detach(), out.t_d.detach())
    else:
        loss = loss_dd(out.xg_ts, out.xg_t, out.t_d)
    params = list(tiny_model.parameters())
    (g_img,) = torch.autograd.grad(loss, out.syn_t, retain_graph=True)
    direct = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    via_image = torch.autograd.grad(out.syn_t, params, grad_outputs=g_img, allow_unused=True)
    diff = sum(float(((a if a is not None else 0) - (b if b is not None else 0)).abs().sum())
               for a, b in zip(direct, via_image) if a is not None or b is not None)
    assert float(g_img.abs().sum()) > 0
    assert (diff < 1e-6) == (flow == "split")


def test_training_forward_shapes_and_gradients(tiny_model):
    tiny_model.train()
    xs, xt = torch.rand(3, 1, 64, 64) * 2 - 1, torch.rand(3, 1, 64, 64) * 2 - 1
    out = tiny_model(xs, xt)
    assert out.rec_s.shape == out.syn_t.shape == (3, 1, 64, 64)
    assert out.syn_t.abs().max() <= 1
    assert out.logits_s.shape == out.logits_ts.shape == (3, 2, 64, 64)
    assert out.z_s.shape == (3, tiny_model.cfg.proj_dim)
    # L_seg on the source reaches the generator: source and target share the inference path
    out.logits_s.sum().backward(retain_graph=True)
    assert tiny_model.image_decoder.out.weight.grad is not None
    tiny_model.zero_grad()
    assert out.xg_s.shape == (3, out.t_d.shape[1])
    out.logits_ts.sum().backward()
    # the target segmentation reaches the generator (segmentation-aware adaptation) and the seg prompt
    assert tiny_model.image_decoder.out.weight.grad is not None
    assert tiny_model.dam.v.weight.grad is not None
    assert tiny_model.seg_prompt.ctx.grad is not None and tiny_model.seg_prompt.ctx.grad.abs().sum() > 0


def test_domain_prompt_text_changes_output(tiny_model):
    x = torch.rand(2, 1, 64, 64) * 2 - 1
    with torch.no_grad():
        a, _ = tiny_model.infer(x)
        tiny_model.domain_prompt.set_text("A photo of a completely different thing")
        b, _ = tiny_model.infer(x)
    assert not torch.allclose(a, b)


def test_seg_prompt_has_one_embedding_per_class():
    cfg = ModelConfig.for_arch("tiny", image_size=64, class_names=["necrosis", "oedema", "enhancing"])
    m = UUDS(cfg)
    assert m.seg_prompt().shape == (3, m.taps.embed_dim)
    _, logits = m.infer(torch.zeros(1, 1, 64, 64))
    assert logits.shape == (1, 4, 64, 64)


@pytest.mark.parametrize("flags", [dict(use_domain_prompt=False), dict(use_seg_prompt=False)])
def test_ablations_build_and_run(flags):
    m = UUDS(ModelConfig.for_arch("tiny", image_size=64, **flags))
    out = m(torch.zeros(2, 1, 64, 64), torch.zeros(2, 1, 64, 64))
    assert (out.t_d is not None) == flags.get("use_domain_prompt", True)
    assert hasattr(m, "sam") == flags.get("use_seg_prompt", True)


def test_rn50_builds_at_224_and_other_sizes():
    m = UUDS(ModelConfig.for_arch("rn50", image_size=256))
    assert m.clip.visual.attnpool.positional_embedding.shape[0] == 8 * 8 + 1
    taps = m.taps(torch.zeros(1, 1, 256, 256))
    assert taps["content"].shape[-2:] == (8, 8) and taps["global"].shape == (1, 1024)


def test_weights_resolution_is_fast_and_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    w, note = resolve_weights("rn50", "auto")
    assert w is None and "random initialisation" in note
    with pytest.raises(UUDSError, match="not in the cache"):
        resolve_weights("rn50", "openai")
    with pytest.raises(UUDSError, match="not found"):
        resolve_weights("rn50", str(tmp_path / "missing.pt"))
    assert resolve_weights("tiny", "none")[0] is None


def test_config_validation():
    with pytest.raises(UUDSError):
        ModelConfig(arch="vit")
    with pytest.raises(UUDSError):
        ModelConfig(image_size=100)


def test_clip_weights_from_a_local_file(tmp_path):
    """--clip-weights PATH: an open_clip checkpoint on disk is loaded into the backbone."""
    from napari_uuds.engine.backbone import create_clip

    torch.manual_seed(1)
    ref = create_clip("tiny", None, 128)
    path = tmp_path / "tiny_clip.pt"
    torch.save(ref.state_dict(), path)
    w, note = resolve_weights("tiny", str(path))
    assert w == str(path) and str(path) in note
    torch.manual_seed(2)
    m = UUDS(ModelConfig.for_arch("tiny"), clip_weights=w)
    torch.testing.assert_close(m.clip.visual.conv1.weight, ref.visual.conv1.weight)
    torch.testing.assert_close(m.clip.token_embedding.weight, ref.token_embedding.weight)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UUDSError, match="could not load CLIP weights"):
        UUDS(ModelConfig.for_arch("tiny"), clip_weights=str(bad))


def test_decoder_group_norm_keeps_bf16_under_autocast(monkeypatch):
    import torch.nn.functional as F

    from napari_uuds.engine.decoders import GroupNorm

    torch.manual_seed(0)
    gn = GroupNorm(4, 16)
    ref = torch.nn.GroupNorm(4, 16)
    ref.load_state_dict(gn.state_dict())  # the same parameters and state dict as nn.GroupNorm
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(gn(x), ref(x))  # float32: exactly nn.GroupNorm
    calls = []
    real = F.group_norm

    def spy(inp, *a, **kw):
        calls.append((inp.dtype, torch.is_autocast_enabled("cpu")))
        return real(inp, *a, **kw)

    monkeypatch.setattr(F, "group_norm", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gn(x.bfloat16())
        ref(x.bfloat16())
    # ours runs the kernel on the bf16 input with autocast off (CUDA autocast would cast group_norm to
    # float32); nn.GroupNorm leaves it to autocast's policy
    assert calls == [(torch.bfloat16, False), (torch.bfloat16, True)]
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), ref(x), atol=0.05)


def test_detached_target_segmentation_does_not_train_the_translator(tiny_model):
    """useg_flow="segmenter": Y^{t->s} (what L_useg reads) gives the translator (DAMs, image decoder) no gradient, while
    the segmentation decoder learns; the logits equal the attached pass's and Eq. 2's x_g^{t->s} still reaches the
    translator."""
    tiny_model.train()
    torch.manual_seed(0)
    xs, xt = torch.rand(3, 1, 64, 64) * 2 - 1, torch.rand(3, 1, 64, 64) * 2 - 1
    gen = list(tiny_model.image_decoder.parameters()) + list(tiny_model.dam.parameters())
    seg = list(tiny_model.seg_decoder.parameters())
    out = tiny_model(xs, xt, None, None, True)
    out.logits_ts.softmax(1)[:, 1].mean().backward(retain_graph=True)
    assert _grad_norm(gen) == 0.0 and _grad_norm(seg) > 0
    tiny_model.zero_grad()
    out.xg_ts.sum().backward()
    assert _grad_norm(gen) > 0
    tiny_model.zero_grad()
    attached = tiny_model(xs, xt, None, None, False)
    attached.logits_ts.softmax(1)[:, 1].mean().backward()
    assert _grad_norm(gen) > 0  # the paper's letter: L_useg reaches the translator
    torch.testing.assert_close(out.logits_ts, attached.logits_ts, atol=1e-5, rtol=1e-4)


def test_a_channels_last_model_feeds_its_decoders_channels_last_maps(tiny_model):
    """Issue 17 (the GPU step's copies): on a GPU the model trains channels-last, and a convolution given a plainly
    strided map copies it to channels-last first, forward and backward. The decoders concatenate the one-channel
    image (plain strides) with their maps, which made the whole concatenation plain; every convolution of a
    channels-last model's decoder stages must now read channels-last input, and the split of the joint passes' taps must give the
    gradients slicing gave; the decoders' SiLU works in place only where no gradient is recorded."""
    from napari_uuds.engine.decoders import cat_like
    from napari_uuds.engine.model import _split

    cl = torch.channels_last
    h, img = torch.randn(2, 8, 16, 16).contiguous(memory_format=cl), torch.randn(2, 1, 16, 16)
    assert not torch.cat([h, img], 1).is_contiguous(memory_format=cl)  # why cat_like exists
    both = cat_like([h, img], h)
    assert both.is_contiguous(memory_format=cl) and torch.equal(both, torch.cat([h, img], 1))
    assert cat_like([h.contiguous(), img], h.contiguous()).is_contiguous()  # a plain model stays plain

    model = tiny_model.to(memory_format=cl)
    seen = []
    hooks = [m.register_forward_pre_hook(lambda m, a: seen.append((m, a[0])))  # the stages: S/16 .. S/1, what they
             for dec in (model.image_decoder, model.seg_decoder)  # concatenate (the S/32 input is the attention's
             for m in dec.stages.modules() if isinstance(m, torch.nn.Conv2d)]  # small output, plain either way)
    try:
        torch.manual_seed(0)
        model(torch.randn(2, 1, 64, 64), torch.randn(2, 1, 64, 64))
    finally:
        for hk in hooks:
            hk.remove()
    assert len(seen) > 40
    plain = [(type(m).__name__, tuple(x.shape)) for m, x in seen if x.shape[1] > 1 and not x.is_contiguous(memory_format=cl)]
    assert not plain, plain

    from napari_uuds.engine.decoders import SiLU

    v = torch.randn(5)
    with torch.no_grad():  # inference: in place, no second buffer
        assert SiLU()(v).data_ptr() == v.data_ptr()
    w = torch.randn(5, requires_grad=True) * 1
    assert SiLU()(w).data_ptr() != w.data_ptr()  # training: a new output, no copy of the input for the gradient

    x = torch.randn(6, 3, 4, 4, requires_grad=True)
    a, b = _split({"t": x * 2, "l": [x * 3]}, 2)
    (a["t"].sum() + 2 * b["t"].sum() + 3 * a["l"][0].sum() + b["l"][0].sum()).backward()
    want = torch.tensor([2 + 9] * 2 + [4 + 3] * 4, dtype=x.dtype)[:, None, None, None].expand_as(x)
    assert a["t"].shape[0] == 2 and b["t"].shape[0] == 4 and torch.equal(x.grad, want)


def test_the_gpu_layout_keeps_the_encoder_channels_last_and_the_decoders_plain(tiny_model):
    """Issue 17: on CUDA group norm returns plain maps whatever its input's layout, so channels-last decoder
    convolutions copied every input over and the norms copied it back (32 ms a step at batch 64 on an H200).
    ``to_channels_last`` (what train calls on CUDA) lays the encoder out channels-last and leaves the decoders
    plain, and the values are those of the plain model. (Which layout the maps then take is CUDA's to say: CPU
    group norm keeps a channels-last input channels-last.)"""
    torch.manual_seed(0)
    xs, xt = torch.randn(2, 1, 64, 64), torch.randn(2, 1, 64, 64)
    want = tiny_model(xs, xt)
    model = tiny_model.to_channels_last()
    assert model is tiny_model
    cl = torch.channels_last

    def convs(mod):
        return [m for m in mod.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]

    assert convs(model.clip.visual) and all(m.weight.is_contiguous(memory_format=cl) and not m.weight.is_contiguous()
                                            for m in convs(model.clip.visual))
    decs = [m for d in (model.image_decoder, model.seg_decoder) for m in convs(d)]
    assert len(decs) > 20 and all(m.weight.is_contiguous() for m in decs)
    got = model(xs, xt)  # (the channels-last convolutions sum in another order: float32 rounding apart)
    torch.testing.assert_close(got.logits_ts, want.logits_ts, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(got.syn_t, want.syn_t, atol=1e-3, rtol=1e-3)
