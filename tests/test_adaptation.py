"""Adaptation must cross a contrast inversion that defeats source-only training (tiny model, CPU, ~30 s).

A synthetic pair: on the source, a bright disc in grey tissue; on the target, a dark disc in bright tissue (the
contrast inverted, as CSF and cord between T2 and T1). A segmenter trained on the source alone learns "bright
blob" and finds nothing on the target; adaptation with source randomisation (``--randomise auto``, which
switches GIN on here because the two contrasts' grey values lie far apart) must find the disc.
"""
import nibabel as nib
import numpy as np
import torch

from napari_uuds.engine.config import ModelConfig, TrainConfig
from napari_uuds.engine.dataset import prepare_volume, samplers
from napari_uuds.engine.infer import predict_volume
from napari_uuds.engine.metrics import score
from napari_uuds.engine.model import UUDS
from napari_uuds.engine.train import train
from napari_uuds.engine.volumes import Volume

SIDE, SIZE, STEPS = 48, 64, 60


def phantom(seed: int, inverted: bool) -> tuple[Volume, Volume]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    img = np.zeros((SIDE, SIDE, 16), np.float32)
    lab = np.zeros(img.shape, np.uint8)
    body = ((yy - 24) / 21) ** 2 + ((xx - 24) / 18) ** 2 < 1
    tissue, disc = (0.8, 0.15) if inverted else (0.35, 0.9)
    for k in range(img.shape[2]):
        cy, cx = 24 + rng.integers(-4, 5), 24 + rng.integers(-4, 5)
        obj = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(6, 9) ** 2
        sl = np.where(body, tissue, 0.0) + np.where(obj, disc - tissue, 0.0) + body * rng.normal(0, 0.04, body.shape)
        img[..., k], lab[..., k] = np.clip(sl, 0, None), obj
    ornt = np.array([[0, 1], [1, 1], [2, 1]], float)
    return (Volume(img, np.eye(4), nib.Nifti1Header(), ornt, "", "img"),
            Volume(lab, np.eye(4), nib.Nifti1Header(), ornt, "", "lab"))


def _target_dice(mode: str, randomise: str, seed: int = 0) -> float:
    cfg = ModelConfig.for_arch("tiny", image_size=SIZE, class_names=["disc"])
    (si, sl), (ti, tl) = phantom(1, False), phantom(2, True)
    src, tgt = [prepare_volume(si, 2, SIZE, sl)], [prepare_volume(ti, 2, SIZE)]
    torch.manual_seed(seed)
    model = UUDS(cfg, seed=seed)
    s, t = samplers(src, tgt, 0.5, seed)
    for _ in train(model, s, t, TrainConfig(steps=STEPS, batch_size=8, seed=seed, mode=mode, randomise=randomise)):
        pass
    return score(predict_volume(model, ti, norm=tgt[0].norm).seg, tl.data)["dice"]


def test_adaptation_beats_source_only_on_an_inverted_contrast():
    source_only = _target_dice("source_only", "none")
    adapted = _target_dice("adapt", "auto")  # the default recipe with --randomise auto
    # measured: source only 0.2-1.7, adapted (GIN on) 49-53 over seeds 0-2 (60 steps)
    assert source_only < 10.0, source_only
    assert adapted > source_only + 25.0, (adapted, source_only)
