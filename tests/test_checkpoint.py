import json

import numpy as np
import pytest

from napari_uuds.engine.checkpoint import load_checkpoint, read_config, save_checkpoint
from napari_uuds.engine.config import ModelConfig
from napari_uuds.engine.errors import UUDSError
from napari_uuds.engine.infer import predict_volume
from napari_uuds.engine.volumes import load_volume


def test_save_load_gives_identical_predictions(tiny_model, tmp_path, cord):
    tiny_model.domain_prompt.set_text("A photo of a T2 scan")
    save_checkpoint(tiny_model, tmp_path / "w")
    meta = read_config(tmp_path / "w")
    assert meta["model"]["arch"] == "tiny" and "torch" in meta["versions"]
    loaded, _ = load_checkpoint(tmp_path / "w")
    assert loaded.domain_prompt.text == "A photo of a T2 scan"
    vol = load_volume(cord["t1"])
    a = predict_volume(tiny_model, vol)
    b = predict_volume(loaded, vol)
    np.testing.assert_array_equal(a.seg, b.seg)
    np.testing.assert_array_equal(a.entropy, b.entropy)
    np.testing.assert_array_equal(a.synthetic, b.synthetic)


def test_the_weights_say_whether_they_are_an_average_and_keep_saying_it(tiny_model, tmp_path):
    """save_checkpoint records ``model.weight_average`` (every caller: adapt, finetune, the widget's saves), and a
    model loaded from it and saved again keeps the record."""
    save_checkpoint(tiny_model, tmp_path / "last")
    assert read_config(tmp_path / "last")["weight_average"] is None
    record = {"decay": 0.99, "from_step": 26, "updates": 25}
    tiny_model.weight_average = record
    save_checkpoint(tiny_model, tmp_path / "avg")
    assert read_config(tmp_path / "avg")["weight_average"] == record
    loaded, _ = load_checkpoint(tmp_path / "avg")
    assert loaded.weight_average == record
    save_checkpoint(loaded, tmp_path / "again")
    assert read_config(tmp_path / "again")["weight_average"] == record


def test_never_overwrites_silently(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(UUDSError, match="already exists"):
        save_checkpoint(tiny_model, tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    save_checkpoint(tiny_model, tmp_path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_incompatible_weights(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path)
    with pytest.raises(UUDSError, match="incompatible config"):
        load_checkpoint(tmp_path, expect=ModelConfig.for_arch("tiny", image_size=64, class_names=["a", "b"]))
    # config edited to claim another class count: tensor shapes no longer fit
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["model"]["class_names"] = ["a", "b", "c"]
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(UUDSError, match="incompatible config"):
        load_checkpoint(tmp_path)


def test_unreadable_checkpoint(tmp_path):
    with pytest.raises(UUDSError, match="not found"):
        read_config(tmp_path / "none")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UUDSError, match="unreadable config"):
        read_config(tmp_path)


def test_configs_written_before_a_default_changed_keep_their_recipe(tiny_model, tmp_path):
    """A fine-tune reads the run's recipe from config.json: settings that did not exist when it was written read as
    what the engine did then (TCSA's loss before issue 18, plain GIN before round 16), not as today's defaults."""
    save_checkpoint(tiny_model, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["train"] = {"randomise": "gin", "randomise_p": 0.8}
    meta["loss_weights"] = {"proto": 0.1}
    (tmp_path / "config.json").write_text(json.dumps(meta))
    got = read_config(tmp_path)
    assert got["train"]["randomise_invert"] == 0.0 and got["train"]["randomise"] == "gin"
    assert (got["loss_weights"]["proto_form"], got["loss_weights"]["adv"]) == ("infonce", 0.0)
