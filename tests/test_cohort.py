"""Cohort prediction: folders and globs, streamed one volume at a time, batches across volume boundaries, files
that cannot be read reported and skipped, a summary of every file."""
import csv
import json

import nibabel as nib
import numpy as np
import pytest

from napari_uuds.cli import main
from napari_uuds.engine.cohort import expand_images, iter_cohort
from napari_uuds.engine.errors import UUDSError
from napari_uuds.engine.infer import predict_volume
from napari_uuds.engine.volumes import load_volume

from test_cli import _adapt, _nii, vols  # noqa: F401  (the fixture)


@pytest.fixture()
def cohort(tmp_path):
    """Three scans of different shapes and orientations, and a damaged file, in one folder."""
    rng = np.random.default_rng(1)
    d = tmp_path / "cohort"
    d.mkdir()
    flip = np.diag([-1.0, 1.0, 1.0, 1.0])
    files = [_nii(d / "a.nii.gz", rng.random((24, 24, 12)).astype(np.float32)),
             _nii(d / "b.nii.gz", rng.random((20, 28, 9)).astype(np.float32), flip),
             _nii(d / "c.nii", rng.random((16, 16, 7)).astype(np.float32))]
    (d / "broken.nii.gz").write_bytes(b"not a nifti file at all")
    (d / "notes.txt").write_text("not an image")
    return d, files


def test_folders_and_globs_expand_to_nifti_files_once(cohort, tmp_path):
    d, files = cohort
    got = expand_images([str(d)])
    assert [p.name for p in got] == ["a.nii.gz", "b.nii.gz", "broken.nii.gz", "c.nii"]
    assert expand_images([str(d / "*.nii.gz"), str(files[0])]) == [d / "a.nii.gz", d / "b.nii.gz", d / "broken.nii.gz"]
    with pytest.raises(UUDSError, match="pattern matches no NIfTI file"):
        expand_images([str(d / "*.mha")])
    with pytest.raises(UUDSError, match="no such file or folder"):
        expand_images([str(tmp_path / "nothing.nii.gz")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UUDSError, match="folder holds no NIfTI file"):
        expand_images([str(empty)])


def test_stream_matches_volume_by_volume_and_holds_at_most_two_volumes(cohort, tiny_model):
    d, files = cohort
    paths = expand_images([str(d)])
    loaded, open_at_yield = [], []

    def load(p):
        loaded.append(p)
        return load_volume(p)

    results = []
    for r in iter_cohort(tiny_model, paths, batch_size=5, load=load):  # 5: every volume's tail shares a batch
        open_at_yield.append(len(loaded) - len(results))
        results.append(r)
    assert sorted(r.index for r in results) == [0, 1, 2, 3]
    bad = next(r for r in results if r.path.name == "broken.nii.gz")
    assert bad.prediction is None and bad.error
    for r in results:
        if r.error:
            continue
        one = predict_volume(tiny_model, load_volume(r.path), batch_size=5)
        assert r.prediction.seg.shape == r.volume.data.shape
        np.testing.assert_allclose(r.prediction.entropy, one.entropy, atol=1e-4)
        np.testing.assert_allclose(r.prediction.synthetic, one.synthetic, atol=1e-4)
        assert (r.prediction.seg == one.seg).mean() > 0.999
    assert max(open_at_yield) <= 2  # streamed: never the whole cohort in memory


def test_predict_a_folder_writes_every_readable_scan_and_a_summary(cohort, vols, tmp_path, capsys):
    d, files = cohort
    w = tmp_path / "w"
    assert _adapt(vols, w, **{"--target": files[0]}) == 0
    out = tmp_path / "pred"
    capsys.readouterr()
    rc = main(["predict", "--weights", str(w), "--image", str(d), "--out", str(out), "--batch-size", "4"])
    assert rc == 2  # a file was skipped: said, and the exit code says so, once the others are written
    printed = capsys.readouterr()
    assert "3 segmented, 1 skipped" in printed.out
    assert f"broken: skipped: {d / 'broken.nii.gz'}: " in printed.err
    for f in files:
        stem = f.name.split(".")[0]
        seg = nib.load(str(out / f"{stem}_seg.nii.gz"))
        ref = nib.load(str(f))
        assert seg.shape == ref.shape
        np.testing.assert_allclose(seg.affine, ref.affine)
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["name"] for r in rows] == ["a", "b", "broken", "c"]  # the order given
    assert [r["status"] for r in rows] == ["segmented", "segmented", "skipped", "segmented"]
    assert rows[2]["error"] and rows[0]["shape"] == "24x24x12" and float(rows[0]["seconds"]) > 0
    doc = json.loads((out / "summary.json").read_text())
    assert doc["segmented"] == 3 and doc["skipped"] == 1
    # a second run refuses to replace the outputs without --overwrite
    assert main(["predict", "--quiet", "--weights", str(w), "--image", str(d / "*.nii"), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
