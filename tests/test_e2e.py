"""End to end on the real spinal-cord scans (tiny config, CPU). About two minutes together."""
import json

import nibabel as nib
import numpy as np
import pytest
import torch

from napari_uuds.cli import main
from napari_uuds.engine.config import ModelConfig, TrainConfig
from napari_uuds.engine.dataset import load_source_pairs, samplers
from napari_uuds.engine.infer import predict_volume
from napari_uuds.engine.metrics import score
from napari_uuds.engine.model import UUDS
from napari_uuds.engine.train import train
from napari_uuds.engine.volumes import load_label, load_volume

pytestmark = pytest.mark.slow


def test_tiny_model_overfits_cord_t2(cord):
    """The segmenter can learn: trained on the T2 volume, it segments that volume's cord (Dice > 0.8)."""
    cfg = ModelConfig.for_arch("tiny", class_names=["spinal cord"], source_modality="T2")
    torch.manual_seed(0)
    model = UUDS(cfg)
    src = load_source_pairs([cord["t2"]], [cord["t2_seg"]], 1, cfg.axis, cfg.image_size)
    s, t = samplers(src, src, 0.5, 0)  # the T2 is its own target: no domain gap to cross
    for _ in train(model, s, t, TrainConfig(steps=120, batch_size=8, seed=0)):
        pass
    vol = load_volume(cord["t2"])
    pred = predict_volume(model, vol, norm=src[0].norm)  # the inference path: translate, then segment
    dice = score(pred.seg, load_label(cord["t2_seg"], 1).data, vol.spacing)["dice"]
    assert dice > 80.0, dice


def test_adapt_cord_end_to_end(cord, tmp_path, capsys):
    """`napari-uuds adapt` on the cord protocol writes every output on the T1's own grid."""
    out = tmp_path / "cord"
    rc = main(["adapt", "--quiet", "--source", str(cord["t2"]), "--source-label", str(cord["t2_seg"]),
               "--target", str(cord["t1"]), "--target-label", str(cord["t1_seg"]), "--class-name", "spinal cord",
               "--steps", "40", "--out", str(out)])
    assert rc == 0
    t1 = nib.load(str(cord["t1"]))
    for kind in ("seg", "entropy", "synthetic", "certain"):
        img = nib.load(str(out / f"t1_{kind}.nii.gz"))
        assert img.shape == t1.shape
        np.testing.assert_allclose(img.affine, t1.affine)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    seg = np.asarray(nib.load(str(out / "t1_seg.nii.gz")).dataobj)
    assert set(np.unique(seg)) <= {0, 1}
    ent = np.asarray(nib.load(str(out / "t1_entropy.nii.gz")).dataobj)
    assert 0.0 <= ent.min() and ent.max() <= 1.0
    syn = np.asarray(nib.load(str(out / "t1_synthetic.nii.gz")).dataobj)
    assert -1.0 <= syn.min() and syn.max() <= 1.0 and syn.std() > 0
    m = json.loads((out / "metrics.json").read_text())
    d = m["volumes"]["t1"]["dice"]
    # metrics.json scores the mask written beside it against the target label (the same number, recomputed)
    ref = load_label(cord["t1_seg"], 1).data
    assert d == pytest.approx(score(load_label(out / "t1_seg.nii.gz", 1, allow_empty=True).data, ref)["dice"])
    assert m["mean"]["dice_mean"] == d
    assert m["volumes"]["t1"]["pred_voxels"] == int(seg.sum())
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["class_names"] == ["spinal cord"] and cfg["trained_steps"] == 40
    assert "Dice" in capsys.readouterr().out
