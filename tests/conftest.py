import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# the widget saves corrections under the user data folder (platformdirs): never the tester's own
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="napari-uuds-test-data-")
atexit.register(shutil.rmtree, os.environ["XDG_DATA_HOME"], ignore_errors=True)  # no folder left per test session

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "cord"
SHARED = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def cord():
    """The shipped spinal-cord sample (MIT): t2 (PSR) + t2_seg source, t1 (RAS) + t1_seg target."""
    return {k: SAMPLE / f"{k}.nii.gz" for k in ("t1", "t1_seg", "t2", "t2_seg")}


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED.exists():
        pytest.skip("../shared/data is not beside this checkout")
    return SHARED


@pytest.fixture(scope="session")
def tiny_cfg():
    from napari_uuds.engine.config import ModelConfig

    return ModelConfig.for_arch("tiny", image_size=64, class_names=["cord"], source_modality="T2")


@pytest.fixture()
def tiny_model(tiny_cfg):
    import torch

    from napari_uuds.engine.model import UUDS

    torch.manual_seed(0)
    return UUDS(tiny_cfg).eval()


@pytest.fixture()
def predict_with():
    """``predict_with(model, volume, **settings)``: the volume predicted with these ModelConfig settings (prediction
    options such as refine, objects), the model's own settings restored afterwards."""
    from napari_uuds.engine.infer import predict_volume

    def run(model, volume, **settings):
        own = {k: getattr(model.cfg, k) for k in settings}
        for k, v in settings.items():
            setattr(model.cfg, k, v)
        try:
            return predict_volume(model, volume)
        finally:
            for k, v in own.items():
                setattr(model.cfg, k, v)
    return run


@pytest.fixture()
def saved_without():
    """``saved_without(model, folder, key)``: the model's checkpoint written to ``folder`` with ``key`` taken out of
    its config.json's model settings, as a checkpoint written before that setting existed reads; returns ``folder``."""
    import json

    from napari_uuds.engine import checkpoint as ckpt

    def save(model, folder, key):
        ckpt.save_checkpoint(model, folder)
        meta = json.loads((folder / "config.json").read_text())
        del meta["model"][key]
        (folder / "config.json").write_text(json.dumps(meta))
        return folder
    return save
