import numpy as np
import pytest
import torch

from napari_uuds.engine.slices import SliceSampler, from_square, to_square


def test_to_square_and_back_is_exact_at_native_side():
    vol = np.random.default_rng(0).random((7, 5, 9)).astype(np.float32)
    for axis in range(3):
        plane = [s for i, s in enumerate(vol.shape) if i != axis]
        sl, geom = to_square(vol, axis, max(plane), fill=-1.0, mode="bilinear")
        assert sl.shape == (vol.shape[axis], 1, max(plane), max(plane))
        back = from_square(sl, geom)[0]
        np.testing.assert_allclose(back.numpy(), vol, atol=1e-6)


def test_resized_roundtrip_keeps_labels_on_grid():
    lab = np.zeros((42, 76, 77), np.float32)
    lab[10:30, 30:50, :] = 1
    sl, geom = to_square(lab, 2, 128, fill=0.0, mode="nearest")
    back = from_square(sl, geom, "bilinear")[0].numpy() > 0.5
    assert back.shape == lab.shape
    inter = (back & (lab > 0)).sum()
    assert 2 * inter / (back.sum() + lab.sum()) > 0.97


def test_sampler_draws_foreground_slices():
    img = torch.full((20, 1, 8, 8), -1.0)
    img[:, :, 2:6, 2:6] = 0.5
    lab = torch.zeros(20, 1, 8, 8, dtype=torch.uint8)
    lab[3, 0, 3, 3] = 1
    s = SliceSampler([img], [lab], fg_fraction=1.0, seed=0)
    x, y = s.sample(6)
    assert x.shape == (6, 1, 8, 8) and (y.flatten(1).amax(1) == 1).all()
    s0 = SliceSampler([img], [lab], fg_fraction=0.0, seed=0)
    _, y0 = s0.sample(50)
    assert (y0.flatten(1).amax(1) == 0).sum() > 40
    xa, ya = s.sample(4, augment=True)
    assert xa.min() >= -1 and xa.max() <= 1 and ya.sum() == 4


def test_sampler_skips_blank_slices():
    img = torch.full((10, 1, 8, 8), -1.0)
    img[4] = 0.0
    s = SliceSampler([img], None, seed=0)
    assert s.anatomy == [(0, 4)]


def test_contrast_inversion_keeps_background():
    img = torch.full((4, 1, 8, 8), -1.0)
    img[:, :, 2:6, 2:6] = 0.6
    lab = torch.ones(4, 1, 8, 8, dtype=torch.uint8)
    s = SliceSampler([img], [lab], seed=0, invert_p=1.0)
    x, _ = s.sample(8, augment=True)
    inside = x[:, :, 2:6, 2:6]
    assert (inside < 0).all() and (x[:, :, 0, 0] == -1).all()


def _reference_augment(rng, x, y, invert_p):
    """The per-slice augmentation the batched one replaced (same draws, same order)."""
    x, y = x.clone(), y.clone()
    for b in range(x.shape[0]):
        k = int(rng.integers(4))
        flip = bool(rng.integers(2))
        xb = torch.rot90(x[b], k, dims=(-2, -1))
        if flip:
            xb = xb.flip(-1)
        gamma = float(np.exp(rng.uniform(-0.3, 0.3)))
        xb = ((xb + 1) / 2).clamp(0, 1).pow(gamma) * 2 - 1
        if invert_p and rng.random() < invert_p:
            xb = torch.where(xb > -0.98, -xb, xb)
        x[b] = xb
        yb = torch.rot90(y[b], k, dims=(-2, -1))
        y[b] = yb.flip(-1) if flip else yb
    return x, y


@pytest.mark.parametrize("invert_p", [0.0, 0.5])
def test_batched_augmentation_matches_the_per_slice_one(invert_p):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 12, 12, generator=g) * 2 - 1
    y = (torch.rand(16, 1, 12, 12, generator=g) > 0.7).to(torch.uint8)
    s = SliceSampler([x], [y], seed=3, invert_p=invert_p)
    ref = SliceSampler([x], [y], seed=3, invert_p=invert_p)
    xa, ya = s._augment(x, y)
    xr, yr = _reference_augment(ref.rng, x, y, invert_p)
    assert torch.equal(ya, yr)
    assert torch.allclose(xa, xr, atol=1e-6)
    assert not torch.equal(xa, x)  # something happened
    assert s.rng.random() == ref.rng.random()  # the same number of draws


def test_sampler_to_device_keeps_the_draws():
    img = torch.rand(6, 1, 8, 8) * 2 - 1
    lab = (img > 0.5).to(torch.uint8)
    a = SliceSampler([img], [lab], seed=1)
    b = SliceSampler([img], [lab], seed=1).to("cpu")
    assert b.images[0].device.type == "cpu"
    xa, ya = a.sample(5, augment=True)
    xb, yb = b.sample(5, augment=True)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_physical_geometry_pads_crops_and_comes_back():
    from napari_uuds.engine.slices import physical_geometry

    vol = np.random.default_rng(1).random((30, 12, 5)).astype(np.float32)
    # 1 mm voxels, a 16 x 16 frame at 1 mm per pixel: axis 0 (30 voxels) is cropped, axis 1 (12) padded
    geom = physical_geometry(vol.shape, (1.0, 1.0, 2.0), 2, 16, 1.0)
    sl, g = to_square(vol, 2, 16, fill=-1.0, mode="bilinear", geom=geom)
    assert sl.shape == (5, 1, 16, 16) and g.frame == (16, 16)
    back = from_square(sl, g, fill=-7.0)[0].numpy()
    inside = np.zeros(vol.shape, bool)
    inside[7:23] = True  # the 16 central rows of 30 are in the frame
    np.testing.assert_allclose(back[inside], vol[inside], atol=1e-6)
    assert (back[~inside] == -7.0).all()  # cropped voxels get the fill value
    assert (sl[:, 0, :, :2] == -1.0).all()  # the padded columns hold the background


def test_auto_scale_gives_the_cord_the_same_size_in_both_contrasts(cord):
    from napari_uuds.engine.dataset import choose_mm_per_pixel, load_source_pairs, load_targets, reslice

    src = load_source_pairs([cord["t2"]], [cord["t2_seg"]], 1, 2, 128)
    tgt = load_source_pairs([cord["t1"]], [cord["t1_seg"]], 1, 2, 128)
    mm = choose_mm_per_pixel(src + tgt, 2, 128)
    assert 0.3 < mm < 1.0
    per_pixel = {}
    for name, prep in (("fit", src + tgt), ("mm", reslice(src + tgt, 2, 128, mm))):
        # cord area per slice holding cord, in model pixels: T2 / T1
        areas = [float(p.label.float().sum() / (p.label.flatten(1).amax(1) > 0).sum()) for p in prep]
        per_pixel[name] = areas[0] / areas[1]
    # the mm-per-voxel spacing is 1 in both, so at a common scale the cord's pixel area matches its mm^2 area
    assert abs(per_pixel["mm"] - 1) < abs(per_pixel["fit"] - 1)
    assert load_targets([cord["t1"]], 2, 128)[0].geom.frame is None  # the default stays fitted


def test_zoom_magnifies_pads_with_background_and_keeps_labels_nearest():
    from napari_uuds.engine.slices import zoom_slices
    x = torch.full((2, 1, 64, 64), -1.0)
    x[:, :, 24:40, 24:40] = 0.5  # a 16 x 16 square at the centre
    y = torch.zeros(2, 64, 64, dtype=torch.long)
    y[:, 24:40, 24:40] = 1
    y[:, 30, 30] = 255  # an ignored pixel stays ignored (nearest, never blended)
    xz, yz = zoom_slices(x, y, [2.0, 0.5])
    area = (yz > 0).sum(dim=(1, 2)).tolist()
    assert abs(area[0] - 16 * 16 * 4) <= 2 * 32 + 2 and abs(area[1] - 8 * 8) <= 2 * 8 + 2
    assert set(torch.unique(yz).tolist()) <= {0, 1, 255} and (yz[0] == 255).any()
    assert xz[1, 0, 0, 0].item() == -1.0 and xz[1, 0, :8].eq(-1.0).all()  # padded with background
    assert xz.shape == x.shape and yz.shape == y.shape and yz.dtype == y.dtype
    # the label follows the image: where the image is the square's grey, the label is the square's
    assert ((xz[:, 0] > 0.4) == (yz > 0)).float().mean() > 0.98


def test_zoom_near_one_changes_nothing_but_the_image_resampling_and_zoom_changes_sizes():
    img = torch.full((4, 1, 32, 32), -1.0)
    img[:, :, 8:24, 8:24] = torch.linspace(-0.5, 0.9, 16)  # a ramp, so that resampling would show
    lab = torch.zeros(4, 32, 32, dtype=torch.long)
    lab[:, 8:24, 8:24] = 1
    a = SliceSampler([img], [lab], seed=3).sample(6, augment=True)
    b = SliceSampler([img], [lab], seed=3, zoom=1.0 + 1e-6).sample(6, augment=True)  # the same draws, then a zoom
    assert torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0], atol=1e-4)
    assert (b[0][:, 0][b[1] == 0] == -1.0).all()  # no rim: outside the body, exactly the background
    z = SliceSampler([img], [lab], seed=3, zoom=1.4).sample(64, augment=True)[1]
    areas = (z > 0).sum(dim=(1, 2)).float()
    assert areas.min() < 16 * 16 * 0.8 and areas.max() > 16 * 16 * 1.25  # both ways, within [1/1.4, 1.4]^2
    assert areas.min() >= 16 * 16 / 1.4 ** 2 - 40 and areas.max() <= 16 * 16 * 1.4 ** 2 + 40
    with pytest.raises(ValueError):
        SliceSampler([img], [lab], zoom=0.5)


def test_frame_for_scans_takes_the_multiple_of_32_nearest_the_largest_slice():
    from napari_uuds.engine.slices import frame_for_scans

    # the README's cord: T1 axial planes 42 x 76, T2 52 x 60 (canonical shapes) -> 76 -> 64 (12 away, 96 is 20)
    assert frame_for_scans([(42, 76, 77), (52, 60, 55)], 2, 128) == 64
    assert frame_for_scans([(240, 240, 155)] * 2, 2, 128) == 128  # BraTS: larger than the frame, kept
    assert frame_for_scans([(100, 90, 20)], 2, 128) == 96
    assert frame_for_scans([(80, 10, 300)], 2, 128) == 96  # 80: 64 and 96 equally near, a tie goes up
    assert frame_for_scans([(20, 30, 300)], 2, 128) == 64  # never below 64
    assert frame_for_scans([(20, 300, 30)], 2, 128) == 128  # the slicing axis decides what is in-plane
    assert frame_for_scans([(20, 300, 30)], 1, 128) == 64
    assert frame_for_scans([(150, 150, 40)], 2, 224) == 160  # a larger frame (rn50's), the same rule
    assert frame_for_scans([], 2, 128) == 128
