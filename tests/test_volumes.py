"""NIfTI in/out: orientation round trips, normalisation quirks of real data, clear errors."""
import nibabel as nib
import numpy as np
import pytest

from napari_uuds.engine.errors import UUDSError
from napari_uuds.engine.volumes import (check_same_grid, load_label, load_volume, normalisation_params, normalise,
                                        save_like)


@pytest.mark.parametrize("name,codes", [("t1", ("R", "A", "S")), ("t2", ("P", "S", "R"))])
def test_roundtrip_keeps_affine_orientation_and_voxels(cord, tmp_path, name, codes):
    src = nib.load(str(cord[name]))
    assert nib.aff2axcodes(src.affine) == codes
    vol = load_volume(cord[name])
    # canonical order is RAS+: the t2 (PSR) is transposed, so shapes differ from the file's
    assert nib.aff2axcodes(nib.as_closest_canonical(src).affine) == ("R", "A", "S")
    assert vol.data.shape == nib.as_closest_canonical(src).shape
    np.testing.assert_array_equal(vol.data, np.asarray(nib.as_closest_canonical(src).dataobj, dtype=np.float32))
    out = save_like(vol.data, vol, tmp_path / f"{name}_copy.nii.gz")
    back = nib.load(str(out))
    np.testing.assert_allclose(back.affine, src.affine)
    assert nib.aff2axcodes(back.affine) == codes
    assert back.shape == src.shape
    np.testing.assert_array_equal(np.asarray(back.dataobj, dtype=np.float32), np.asarray(src.dataobj, dtype=np.float32))


def test_spacing_follows_canonical_axes(tmp_path):
    data = np.random.default_rng(0).random((4, 5, 6)).astype(np.float32)
    aff = np.diag([2.0, 3.0, 4.0, 1.0])[[1, 2, 0, 3]]  # file axes map to (A, S, R) with sizes 2, 3, 4 mm
    aff = np.array([[0, 0, 4.0, 0], [2.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(data, aff), tmp_path / "x.nii.gz")
    v = load_volume(tmp_path / "x.nii.gz")
    assert v.data.shape == (6, 4, 5)
    assert v.spacing == (4.0, 2.0, 3.0)


def test_normalise_zscored_background_is_minimum():
    rng = np.random.default_rng(0)
    vol = np.full((20, 20, 20), -3.6, np.float32)  # BraTS-like: background = volume minimum
    vol[5:15, 5:15, 5:15] = rng.normal(0, 1, (10, 10, 10))
    out, p = normalise(vol)
    assert out.min() == -1.0 and out.max() == pytest.approx(1.0)
    assert (out[vol == -3.6] == -1.0).all()
    # percentiles come from the brain, not from the background
    assert p.hi == pytest.approx(np.percentile(vol[5:15, 5:15, 5:15], 99.5), rel=1e-4)


def test_normalise_negative_values_and_int16():
    rng = np.random.default_rng(1)
    vol = rng.normal(50, 30, (10, 10, 10)).astype(np.int16)  # negatives present, no empty background
    out, p = normalise(vol.astype(np.float32))
    assert -1.0 <= out.min() < -0.9 and 0.9 < out.max() <= 1.0
    assert p.lo == pytest.approx(np.percentile(vol, 0.5))
    np.testing.assert_allclose(p.invert(p.apply(np.float32(p.lo + 1))), p.lo + 1, rtol=1e-5)


def test_mask_stored_as_099999997_becomes_one(tmp_path, shared_data):
    lab = load_label(shared_data / "brats/pat0001/brainmask.nii.gz", 1)
    assert set(np.unique(lab.data)) == {0, 1}


def test_label_float_near_integers(tmp_path):
    data = np.zeros((4, 4, 4), np.float64)
    data[1, 1, 1] = 0.99999997
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "m.nii.gz")
    assert load_label(tmp_path / "m.nii.gz", 1).data.sum() == 1


def _save(tmp_path, name, data, aff=None):
    p = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4) if aff is None else aff), p)
    return p


@pytest.mark.parametrize("case,needle", [
    ("missing", "file not found"),
    ("not_nifti", "not a readable NIfTI"),
    ("4d", "expected a 3D volume"),
    ("nan", "NaN or Inf"),
    ("constant", "constant image"),
])
def test_bad_images(tmp_path, case, needle):
    if case == "missing":
        p = tmp_path / "nope.nii.gz"
    elif case == "not_nifti":
        p = tmp_path / "text.nii.gz"
        p.write_text("hello")
    elif case == "4d":
        p = _save(tmp_path, "4d.nii.gz", np.zeros((4, 4, 4, 3), np.float32) + np.arange(3, dtype=np.float32))
    elif case == "nan":
        d = np.random.default_rng(0).random((4, 4, 4)).astype(np.float32)
        d[0, 0, 0] = np.nan
        p = _save(tmp_path, "nan.nii.gz", d)
    else:
        p = _save(tmp_path, "c.nii.gz", np.ones((4, 4, 4), np.float32))
    with pytest.raises(UUDSError) as e:
        load_volume(p)
    msg = str(e.value)
    assert needle in msg and p.name in msg and "\n" not in msg


def test_label_problems(tmp_path):
    img = _save(tmp_path, "img.nii.gz", np.random.default_rng(0).random((4, 4, 4)).astype(np.float32))
    vol = load_volume(img)
    empty = _save(tmp_path, "empty.nii.gz", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(UUDSError, match="empty"):
        load_label(empty, 1)
    multi = np.zeros((4, 4, 4), np.uint8)
    multi[0, 0, 0], multi[1, 1, 1] = 1, 4
    mp = _save(tmp_path, "multi.nii.gz", multi)
    with pytest.raises(UUDSError, match=r"label values \[4\] do not match the 1 class name"):
        load_label(mp, 1)
    assert load_label(mp, 1, binarize=True).data.max() == 1
    assert load_label(mp, 4).data.max() == 4
    shape = _save(tmp_path, "shape.nii.gz", np.ones((4, 4, 5), np.uint8))
    with pytest.raises(UUDSError, match="does not match its image"):
        load_label(shape, 1, like=vol)
    moved = np.eye(4)
    moved[0, 3] = 10
    aff = _save(tmp_path, "aff.nii.gz", np.ones((4, 4, 4), np.uint8), moved)
    with pytest.raises(UUDSError, match="affine does not match"):
        check_same_grid(vol, load_label(aff, 1), aff)


def test_save_is_atomic_and_leaves_no_temp(tmp_path, cord):
    vol = load_volume(cord["t1"])
    save_like(vol.data, vol, tmp_path / "a.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz"]
    with pytest.raises(UUDSError):
        save_like(vol.data, vol, tmp_path / "a.txt")


def test_normalisation_params_all_background_free():
    p = normalisation_params(np.linspace(-5, 5, 1000, dtype=np.float32).reshape(10, 10, 10))
    assert p.lo < p.hi


def test_degenerate_affine_is_a_clear_error(tmp_path):
    aff = np.eye(4)
    aff[1, 1] = 0.0
    img = nib.Nifti1Image(np.random.default_rng(0).random((4, 4, 4)).astype(np.float32), None)
    img.set_sform(aff, code=1)  # a header whose sform has a zero axis (qform unset)
    p = tmp_path / "flat_axis.nii.gz"
    nib.save(img, p)
    with pytest.raises(UUDSError, match="flat_axis.nii.gz: degenerate affine"):
        load_volume(p)


def test_spacing_comes_from_the_affine(tmp_path):
    img = nib.Nifti1Image(np.random.default_rng(0).random((4, 4, 4)).astype(np.float32), np.diag([2.0, 3.0, 4.0, 1.0]))
    img.header.set_zooms((1.0, 1.0, 1.0))  # pixdim disagrees with the sform
    img.set_sform(np.diag([2.0, 3.0, 4.0, 1.0]), code=1)
    nib.save(img, tmp_path / "z.nii.gz")
    assert load_volume(tmp_path / "z.nii.gz").spacing == pytest.approx((2.0, 3.0, 4.0))
