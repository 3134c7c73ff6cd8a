"""The reader contract (as the napari plugin template tests it): a callable for NIfTI paths (one or a list), None
for anything else, and a list of (data, kwargs, layer type) tuples whose data are the file's voxels and whose kwargs
napari's add_image / add_labels accept."""
import inspect

import nibabel as nib
import numpy as np
import pytest

from napari_uuds._reader import napari_get_reader


def _save(path, data, aff=None):
    nib.save(nib.Nifti1Image(data, np.diag([0.5, 0.5, 2.0, 1.0]) if aff is None else aff), str(path))
    return str(path)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".NII.GZ"])
def test_reader_returns_the_voxels_as_layer_data(tmp_path, suffix):
    data = np.random.default_rng(0).random((6, 7, 8)).astype(np.float32)
    path = _save(tmp_path / f"scan{suffix}", data)
    reader = napari_get_reader(path)
    assert callable(reader)
    layers = reader(path)
    assert isinstance(layers, list) and len(layers) == 1
    arr, kwargs, kind = layers[0]
    assert kind == "image" and arr.shape == data.shape  # RAS with a diagonal affine: the file's own order
    np.testing.assert_allclose(arr, data)
    assert tuple(kwargs["scale"]) == (0.5, 0.5, 2.0)


def test_reader_takes_a_list_and_tells_labels_from_images(tmp_path):
    img = _save(tmp_path / "t1.nii.gz", np.random.default_rng(1).random((5, 5, 5)).astype(np.float32))
    lab = np.zeros((5, 5, 5), np.float64)
    lab[1:3, 1:3, 1:3] = 0.99999997  # a mask stored as float
    seg = _save(tmp_path / "seg.nii.gz", lab)
    layers = napari_get_reader([img, seg])([img, seg])
    assert [k for _, _, k in layers] == ["image", "labels"]
    assert layers[1][0].dtype == np.uint8 and layers[1][0].sum() == 8


def test_reader_declines_what_is_not_nifti(tmp_path):
    assert napari_get_reader("fake.file") is None
    assert napari_get_reader(str(tmp_path / "scan.tif")) is None
    assert napari_get_reader([str(tmp_path / "a.nii.gz"), str(tmp_path / "b.png")]) is None
    assert napari_get_reader([]) is None


def test_layer_kwargs_are_what_napari_accepts(tmp_path):
    napari = pytest.importorskip("napari")
    path = _save(tmp_path / "scan.nii.gz", np.random.default_rng(2).random((4, 4, 4)).astype(np.float32))
    seg = _save(tmp_path / "mask.nii.gz", (np.arange(64).reshape(4, 4, 4) % 2).astype(np.uint8))
    for p, add in ((path, napari.Viewer.add_image), (seg, napari.Viewer.add_labels)):
        _, kwargs, _ = napari_get_reader(p)(p)[0]
        accepted = set(inspect.signature(add).parameters)
        assert set(kwargs) <= accepted, set(kwargs) - accepted
