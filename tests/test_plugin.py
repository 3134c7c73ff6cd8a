"""The napari plugin, headless (Xvfb through pytest-xvfb, or offscreen): reader, writer, sample, widget."""
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

napari = pytest.importorskip("napari")

from napari_uuds.engine.config import FINETUNE_EMA, FINETUNE_PARTS  # noqa: E402
from napari_uuds.engine.errors import UUDSError  # noqa: E402
from napari_uuds.gui import widget as widget_mod  # noqa: E402
from napari_uuds.gui.controller import OUTPUT_LAYERS  # noqa: E402
from napari_uuds.gui.widget import UUDSWidget  # noqa: E402


@pytest.mark.parametrize("name,codes", [("t1", ("R", "A", "S")), ("t2", ("P", "S", "R"))])
def test_reader_writer_roundtrip_keeps_geometry(make_napari_viewer, cord, tmp_path, name, codes):
    viewer = make_napari_viewer()
    [img] = viewer.open(str(cord[name]), plugin="napari-uuds")
    [lab] = viewer.open(str(cord[f"{name}_seg"]), plugin="napari-uuds")
    assert type(img).__name__ == "Image" and type(lab).__name__ == "Labels"
    assert tuple(img.scale) == (1.0, 1.0, 1.0) and "nifti" in lab.metadata
    out = tmp_path / f"{name}_labels.nii.gz"
    # no plugin named: the compound extension must reach our writer
    written = napari.save_layers(str(out), [lab])
    assert written == [str(out)]
    back, src = nib.load(str(out)), nib.load(str(cord[f"{name}_seg"]))
    np.testing.assert_allclose(back.affine, src.affine)
    assert nib.aff2axcodes(back.affine) == codes and back.shape == src.shape
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(src.dataobj))


def test_sample_opens_and_widget_builds(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-uuds", "cord")
    assert [ly.name for ly in viewer.layers] == ["T2 (source)", "T2 cord labels", "T1 (target)"]
    w = UUDSWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.source.value.name == "T2 (source)" and w.target.value.name == "T1 (target)"
    assert w.source_labels.value.name == "T2 cord labels" and w.modality.value == "T2"
    assert w.class_name.value == "spinal cord"  # the sample's labels say what they are


def test_the_readmes_gui_command_opens_a_ready_widget(qtbot, monkeypatch):
    """`napari-uuds gui` (the README's first command): the sample's layers are picked and one click trains."""
    from napari_uuds import cli

    shown = {}
    monkeypatch.setattr(napari, "run", lambda *a, **k: shown.setdefault("ran", True))
    real_build = cli.build_gui
    monkeypatch.setattr(cli, "build_gui", lambda args: shown.setdefault("gui", real_build(args)))
    from napari.settings import get_settings

    get_settings().plugins.extension2reader = {}
    assert cli.main(["gui"]) == 0 and shown["ran"]
    viewer, w = shown["gui"]
    # NIfTI dropped on the viewer opens without a "choose reader" dialog
    assert get_settings().plugins.extension2reader == {"*.nii": "napari-uuds", "*.nii.gz": "napari-uuds"}
    try:
        assert (w.source.value.name, w.source_labels.value.name, w.target.value.name) == \
            ("T2 (source)", "T2 cord labels", "T1 (target)")
        # axial slices as radiologists read them: A up, the patient's right on the screen's left (camera only)
        assert tuple(viewer.dims.order) == (2, 1, 0)
        assert tuple(map(str, viewer.scene.camera.orientation2d)) == ("up", "left")
        w.params.image_size, w.params.batch_size = 64, 2
        w.steps.value = 1
        viewer.window._qt_window.resize(1400, 900)
        qtbot.wait(200)
        width = w.native.width()
        worker = w.start_training(predict_after=True)  # the click
        assert worker is not None
        qtbot.waitUntil(lambda: w.worker is None and w.ctl.prediction is not None and w.adapt_btn.enabled, timeout=120_000)
        qtbot.wait(200)
        assert w.status.step == 1
        # long status lines and notes wrap: the dock does not grow over the canvas
        assert w.native.width() <= width * 1.1, (width, w.native.width())
        from qtpy.QtWidgets import QLabel

        cut = [lb.text() for lb in w.native.findChildren(QLabel)  # no control's label is cut ("class descriptio")
               if lb.isVisible() and lb.text() and not lb.wordWrap() and lb.width() < lb.sizeHint().width()]
        assert not cut, cut
    finally:
        viewer.close()
        get_settings().plugins.extension2reader = {}


@pytest.fixture()
def ready(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-uuds", "cord")
    w = UUDSWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.params.image_size, w.params.batch_size, w.params.preview_every = 64, 2, 1
    w.steps.value = 3
    return viewer, w


def _errors(monkeypatch):
    msgs = []
    monkeypatch.setattr(widget_mod, "show_error", lambda m: msgs.append(str(m)))
    return msgs


def test_oblique_scan_is_shown_where_its_affine_puts_it(make_napari_viewer, tmp_path):
    th = np.deg2rad(20.0)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[np.cos(th), -np.sin(th), 0], [np.sin(th), np.cos(th), 0], [0, 0, 1]]) @ np.diag([0.8, 0.9, 2.0])
    aff[:3, 3] = (-30.0, 12.0, 5.0)
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((20, 18, 6)).astype(np.float32), aff), str(path))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-uuds")
    for ijk in [(0, 0, 0), (19, 0, 0), (3, 17, 5)]:
        np.testing.assert_allclose(layer.data_to_world(ijk), (aff @ (*ijk, 1))[:3], atol=1e-4)
    assert tuple(layer.scale) == pytest.approx((0.8, 0.9, 2.0))


def test_training_through_the_worker_gives_four_layers(ready, qtbot):
    import gc
    import sys
    import threading

    viewer, w = ready
    threads, messages = set(), []
    w.status.events.message.connect(lambda m: (threads.add(threading.current_thread().name), messages.append(m)))
    worker = w.start_training(predict_after=True)
    assert worker is not None and not w.adapt_btn.enabled and w.stop_btn.enabled
    # done = training ended, the volume's prediction shown and its worker finished (the buttons come back on its
    # `finished`, which Qt delivers after `returned` has set the prediction: waiting on the prediction alone races)
    qtbot.waitUntil(lambda: w.worker is None and OUTPUT_LAYERS["seg"] in viewer.layers
                    and w.ctl.prediction is not None and w.adapt_btn.enabled, timeout=180_000)
    t1 = viewer.layers["T1 (target)"]
    for name in OUTPUT_LAYERS.values():
        layer = viewer.layers[name]
        assert layer.data.shape == t1.data.shape and tuple(layer.scale) == tuple(t1.scale)
    assert type(viewer.layers["segmentation"]).__name__ == "Labels"
    assert viewer.layers["entropy"].colormap.name == "inferno"
    assert w.status.step == 3 and len(w.status.losses) == 3 and not w.stop_btn.enabled
    from napari_uuds.gui.loss_plot import curves

    drawn = curves(w.plot.history)  # the plot has one curve per term, by step
    assert {"seg", "identity"} <= set(drawn) and [s for s, _ in drawn["seg"]] == [1, 2, 3]
    # the plugin leaves napari's process as it found it: the status (Qt labels) is touched from the main thread
    # only, no object stays frozen out of the cyclic collector, Triton is not hidden from other plugins
    assert threads == {threading.main_thread().name}
    # the whole-volume segmentation after training says how far it is, not only that it runs
    assert any(m.startswith("segmenting the target volume: ") and m.endswith(" slices") for m in messages), messages
    # and, once done, what the default's objects auto did to it
    from napari_uuds.engine.components import describe_objects

    assert w.ctl.prediction.objects["objects"] == "auto"
    assert messages[-1].endswith("; " + describe_objects(w.ctl.prediction.objects, painted=True)), messages[-1]
    assert gc.get_freeze_count() == 0
    assert sys.modules.get("triton", "absent") is not None


def test_threshold_updates_certain_mask_without_the_network(ready, qtbot, monkeypatch):
    viewer, w = ready
    w.steps.value = 1
    w.ctl.adapt_and_segment(w.source.value, w.source_labels.value, w.target.value)

    def boom(*a, **k):
        raise AssertionError("the network was called")

    monkeypatch.setattr(w.ctl.model, "infer", boom)
    monkeypatch.setattr(w.ctl.model, "forward", boom)
    for chi in (0.05, 0.95):
        w.threshold.value = chi
        np.testing.assert_array_equal(viewer.layers["uncertain region"].data, w.ctl.prediction.entropy >= chi)
    assert w.ctl.params.threshold == pytest.approx(0.95)


def test_prompt_edit_repredicts_current_slice(ready, qtbot):
    viewer, w = ready
    w.steps.value = 1
    w.ctl.adapt_and_segment(w.source.value, w.source_labels.value, w.target.value)
    calls = []
    real = w.ctl.model.infer
    w.ctl.model.infer = lambda *a, **k: calls.append(1) or real(*a, **k)
    before = viewer.layers["synthetic source"].data.copy()
    w.prompt.value = "A photo of a spinal cord MRI"  # debounced
    qtbot.waitUntil(lambda: len(calls) == 1, timeout=5_000)
    assert w.ctl.model.domain_prompt.text == "A photo of a spinal cord MRI"
    i = w.ctl.current_index()
    after = viewer.layers["synthetic source"].data
    assert not np.array_equal(np.take(before, i, axis=2), np.take(after, i, axis=2))
    np.testing.assert_array_equal(np.delete(before, i, axis=2), np.delete(after, i, axis=2))


def test_test_time_augmentation_box_repredicts_the_slice_and_is_saved(ready, tmp_path):
    from napari_uuds.engine.checkpoint import read_config

    viewer, w = ready
    w.steps.value = 1
    w.pseudo_refine.value = "auto"  # decided from the source before training, and kept with the weights
    w.ctl.adapt_and_segment(w.source.value, w.source_labels.value, w.target.value)
    assert w.ctl.model.cfg.tta == w.params.tta == "none" and not w.tta.value
    calls = []
    real = w.ctl.model.infer
    w.ctl.model.infer = lambda *a, **k: calls.append(1) or real(*a, **k)
    w.tta.value = True  # the click: the slice on screen, through its eight rotations and mirrorings
    assert len(calls) == 8 and w.ctl.model.cfg.tta == "d8" and "test-time augmentation d8" in w.status.message
    w.ctl.model.infer = real
    w.ctl.save_weights(tmp_path / "w")
    assert read_config(tmp_path / "w")["model"]["tta"] == "d8"
    used = read_config(tmp_path / "w")["pseudo_refine_used"]
    assert used["pseudo_refine"] == ("edges" if used["edge_agreement"]["k"] > 0 else "none")
    w.tta.value = False
    w.ctl.load_weights(tmp_path / "w")  # loaded weights bring their setting back to the box
    assert w.tta.value and w.params.tta == "d8"


def test_refine_box_repredicts_the_slice_through_the_refinement_and_is_saved(ready, tmp_path, monkeypatch):
    from napari_uuds.engine import infer
    from napari_uuds.engine.checkpoint import read_config

    viewer, w = ready
    w.steps.value = 1
    w.ctl.adapt_and_segment(w.source.value, w.source_labels.value, w.target.value)
    assert w.ctl.model.cfg.refine == w.params.refine == "none" and not w.refine.value
    seen = []
    real = infer.snap_to_edges
    monkeypatch.setattr(infer, "snap_to_edges", lambda seg, *a, **k: seen.append(seg.shape) or real(seg, *a, **k))
    w.refine.value = True  # the click: the slice on screen, predicted and refined
    axis = w.ctl.model.cfg.axis
    assert len(seen) == 1 and seen[0][axis] == 1 and w.ctl.model.cfg.refine == "edges"
    assert "boundary refinement edges" in w.status.message
    w.ctl.save_weights(tmp_path / "w")
    assert read_config(tmp_path / "w")["model"]["refine"] == "edges"
    w.refine.value = False
    assert w.ctl.model.cfg.refine == "none" and len(seen) == 1  # off: no refinement on the re-predicted slice
    w.ctl.load_weights(tmp_path / "w")
    assert w.refine.value and w.params.refine == "edges"


def test_neighbours_box_repredicts_the_slice_as_the_whole_volume_gives_it_and_is_saved(ready, tmp_path):
    from napari_uuds.engine.checkpoint import read_config
    from napari_uuds.engine.infer import predict_volume

    viewer, w = ready
    w.steps.value = 1
    w.ctl.adapt_and_segment(w.source.value, w.source_labels.value, w.target.value)
    assert w.ctl.model.cfg.smooth_z == w.params.smooth_z == "binomial" and w.smooth_z.value  # round 25's default
    w.ctl.model.cfg.objects = "all"  # the network's output, every piece: slice and volume compare voxel for voxel
    axis, i = w.ctl.model.cfg.axis, w.ctl.current_index()
    assert 0 < i < w.ctl.target.volume.data.shape[axis] - 1  # a slice with both neighbours
    seen = []
    real = w.ctl.model.infer
    w.ctl.model.infer = lambda x, *a, **k: seen.append(x.shape[0]) or real(x, *a, **k)
    w.smooth_z.value = False  # the click: the slice on screen, predicted alone
    assert seen == [1] and w.ctl.model.cfg.smooth_z == "none" and "through-plane smoothing none" in w.status.message
    w.smooth_z.value = True  # the slice on screen, predicted with the one above and the one below
    w.ctl.model.infer = real
    assert seen == [1, 3] and w.ctl.model.cfg.smooth_z == "binomial"
    assert "through-plane smoothing binomial" in w.status.message
    whole = predict_volume(w.ctl.model, w.ctl.target.volume, norm=w.ctl.target.norm)
    where = tuple(slice(i, i + 1) if d == axis else slice(None) for d in range(3))
    np.testing.assert_allclose(w.ctl.prediction.entropy[where], whole.entropy[where], atol=2e-4)
    w.ctl.save_weights(tmp_path / "w")
    assert read_config(tmp_path / "w")["model"]["smooth_z"] == "binomial"
    w.smooth_z.value = False
    assert w.ctl.model.cfg.smooth_z == "none"
    w.ctl.load_weights(tmp_path / "w")  # loaded weights bring their setting back to the box
    assert w.smooth_z.value and w.params.smooth_z == "binomial"


def test_objects_choice_keeps_the_largest_piece_and_every_painted_one_and_is_saved(ready, tmp_path):
    from napari_uuds.engine.checkpoint import read_config
    from napari_uuds.engine.components import keep_largest_object

    viewer, w = ready
    w.steps.value = 1
    w.ctl.adapt_and_segment(w.source.value, w.source_labels.value, w.target.value)
    assert w.ctl.model.cfg.objects == w.params.objects == w.objects.value == "auto"  # round 24's default
    w.objects.value = "all"
    assert w.ctl.model.cfg.objects == "all" and "Re-predict volume" in w.status.message
    p = w.ctl.prediction
    p.seg[...] = 0
    p.seg[5:15, 5:15, 5:15] = 1  # the largest piece
    p.seg[20:23, 20:23, 20:23] = 1  # a small piece the user paints on
    p.seg[30:32, 30:32, 30:32] = 1  # a small piece nobody touches
    p.seg[5:15, 40:50, 40:43] = 1  # a larger piece nobody touches
    w.ctl.show_prediction(p)
    seg = viewer.layers["segmentation"]
    axis = w.ctl.model.cfg.axis
    edited = np.array(seg.data)
    np.moveaxis(edited, axis, 0)[21][23, 23] = 1  # one more voxel on a slice through the small piece, touching it
    seg.data = edited  # an edit with the label tools
    w.objects.value = "auto"  # the largest holds 1000 of 1336 voxels (< 80 %): every piece stays
    assert "holds 75% of the prediction (under 80%)" in w.status.message and w.ctl.model.cfg.objects == "auto"
    assert int((np.asarray(seg.data) > 0).sum()) == 1336
    w.objects.value = "largest"  # the click: the whole volume at once, no network call
    shown = np.asarray(seg.data)
    assert shown[5:15, 5:15, 5:15].all() and shown[20:23, 20:23, 20:23].all()  # kept: the largest, the painted
    assert not shown[30:32, 30:32, 30:32].any() and not shown[5:15, 40:50, 40:43].any()  # gone: the unpainted
    assert "308 of 1336 voxels" in w.status.message and w.ctl.model.cfg.objects == "largest"
    w.objects.value = "auto"  # on what is left: 1000 of 1028 voxels in the largest, the rest painted: nothing goes
    assert "(97% of the prediction): 0 of 1028 voxels" in w.status.message
    w.objects.value = "largest"
    w.ctl.predict_current_slice()  # a re-predicted slice: the pieces are decided on the whole volume again
    np.testing.assert_array_equal(w.ctl.prediction.seg, keep_largest_object(w.ctl.prediction.seg, w.ctl.painted()))
    w.ctl.save_weights(tmp_path / "w")
    assert read_config(tmp_path / "w")["model"]["objects"] == "largest"
    w.objects.value = "all"
    assert w.ctl.model.cfg.objects == "all" and "Re-predict volume" in w.status.message
    w.ctl.load_weights(tmp_path / "w")  # loaded weights bring their setting back to the choice
    assert w.objects.value == w.params.objects == "largest"


def test_stop_ends_the_worker(ready, qtbot):
    viewer, w = ready
    w.steps.value = 10_000
    w.start_training(predict_after=False)
    qtbot.waitUntil(lambda: w.status.step >= 1, timeout=60_000)
    w.stop_btn.clicked.emit()
    qtbot.waitUntil(lambda: w.worker is None, timeout=30_000)
    assert w.status.running is False and "stopped at step" in w.status.message
    assert w.ctl.model.trained_steps < 10_000 and w.adapt_btn.enabled


def test_export_writes_nifti_on_the_target_grid(ready, cord, tmp_path):
    viewer, w = ready
    w.steps.value = 1
    w.ctl.adapt_and_segment(w.source.value, w.source_labels.value, w.target.value)
    seg = viewer.layers["segmentation"]
    seg.data[10:12, 20:25, 30:40] = 1  # a correction with the label tools
    out = w.ctl.export(seg, tmp_path / "corrected.nii.gz")
    back, t1 = nib.load(str(out)), nib.load(str(cord["t1"]))
    np.testing.assert_allclose(back.affine, t1.affine)
    assert back.shape == t1.shape and np.asarray(back.dataobj)[10:12, 20:25, 30:40].min() == 1
    with pytest.raises(UUDSError, match="already exists"):
        w.ctl.export(seg, out)
    w.ctl.export(viewer.layers["entropy"], tmp_path / "entropy")
    assert (tmp_path / "entropy.nii.gz").exists()


def test_an_edited_segmentation_exports_as_integers_both_ways(ready, cord, tmp_path):
    """The user's corrected layer is what Export writes (not the network's), as integers with the T1's affine;
    and napari's own File > Save Selected Layers, with the UUDS writer chosen under "Files of type", too."""
    from napari._qt.qt_viewer import _npe2_decode_selected_filter
    from napari.plugins import _npe2

    viewer, w = ready
    w.steps.value = 1
    w.ctl.adapt_and_segment(w.source.value, w.source_labels.value, w.target.value)
    seg = viewer.layers["segmentation"]
    edited = np.asarray(seg.data).copy()
    edited[10:12, 20:25, 30:40] = 1
    seg.data = edited
    w.ctl.predict()  # a re-prediction keeps the edited slices as the user's corrections, in the same layer
    mine = viewer.layers["segmentation"]
    assert w.ctl.corrections.slices and w.ctl.corrections.slices <= set(range(30, 40))
    np.testing.assert_array_equal(np.asarray(mine.data)[..., 30:40], edited[..., 30:40])
    viewer.layers.selection.active = mine
    assert w.export_layer() is mine
    t1 = nib.load(str(cord["t1"]))
    out = w.ctl.export(w.export_layer(), tmp_path / "mine.nii.gz")
    ext_str, writers = _npe2.file_extensions_string_for_layers([mine])
    ours = next(f for f in ext_str.split(";;") if f.startswith("UUDS") and "labels" in f)
    writer = _npe2_decode_selected_filter(ext_str, ours, writers)
    viewer.layers.selection = {mine}
    [saved] = viewer.layers.save(str(tmp_path / "menu.nii.gz"), selected=True, _writer=writer)
    for path in (out, saved):
        back = nib.load(str(path))
        assert np.issubdtype(back.get_data_dtype(), np.integer)
        np.testing.assert_allclose(back.affine, t1.affine)
        np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(nib.load(str(out)).dataobj))
        assert np.asarray(back.dataobj)[10:12, 20:25, 30:40].min() == 1


def test_bad_inputs_become_notifications(ready, tmp_path, monkeypatch, make_napari_viewer):
    viewer, w = ready
    msgs = _errors(monkeypatch)
    w.source_labels.value = None
    assert w.start_training() is None
    assert "training needs source labels" in msgs[-1]
    viewer.add_labels(np.zeros((5, 5, 5), np.uint8), name="wrong labels")
    w.reset_choices()
    w.source_labels.value = viewer.layers["wrong labels"]
    w.start_training()
    assert "have shape (5, 5, 5)" in msgs[-1]
    viewer.add_image(np.random.default_rng(0).random((20, 20)).astype(np.float32), name="flat 2D")
    w.reset_choices()
    w.source.value = viewer.layers["flat 2D"]
    w.start_training()
    assert "is 2D; UUDS needs a 3D volume" in msgs[-1]
    w.source.value = None
    w.start_training()
    assert "choose a source image layer first" in msgs[-1]
    assert w.worker is None
    # incompatible weights
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text('{"model": {"arch": "tiny", "class_names": ["a", "b"]}}')
    w._guard(w.ctl.load_weights, tmp_path / "w")
    assert "model.safetensors missing" in msgs[-1]
    # unwritable export folder
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    w._guard(w.ctl.export, viewer.layers["T2 cord labels"], ro / "x.nii.gz")
    os.chmod(ro, 0o700)
    if os.geteuid() != 0:  # root ignores permissions
        assert "not writable" in msgs[-1]
    w._guard(w.ctl.export, viewer.layers["T2 cord labels"], tmp_path / "missing" / "x.nii.gz")
    assert "folder does not exist" in msgs[-1]


def test_closing_the_widget_during_training_stops_the_worker(ready, qtbot):
    viewer, w = ready
    w.steps.value = 10_000
    worker = w.start_training(predict_after=False)
    qtbot.waitUntil(lambda: w.status.step >= 1, timeout=60_000)
    control = w.ctl.control
    w.close_down()  # what the widget's destroyed signal (napari closing) calls
    assert control.stopped and w.ctl.model is None and w.worker is None
    qtbot.waitUntil(lambda: not worker.is_running, timeout=30_000)


def test_repredicting_keeps_the_users_corrections(ready):
    viewer, w = ready
    w.steps.value = 1
    w.ctl.adapt_and_segment(w.source.value, w.source_labels.value, w.target.value)
    seg = viewer.layers["segmentation"]
    seg.data[0:3, 0:3, 0:3] = 1
    seg.data[...] = seg.data  # an edit with the label tools
    edited = np.array(seg.data)
    w.ctl.predict()
    assert [ly.name for ly in viewer.layers if ly.name.startswith("segmentation")] == ["segmentation"]
    np.testing.assert_array_equal(seg.data[..., 0:3], edited[..., 0:3])  # the corrected slices: the user's
    np.testing.assert_array_equal(seg.data[..., 3:], w.ctl.prediction.seg[..., 3:])
    assert (w.ctl.prediction.entropy[..., 0:3] == 0).all()  # the user is certain there
    assert (w.ctl.prediction.own_entropy[..., 0:3] == 0).all()  # in the map the review reads too


def test_review_correct_fine_tune_and_nothing_painted_is_lost(ready, cord, tmp_path, qtbot):
    """The review walks the uncertain slices; the slices the user paints are kept, saved as painted, learnt from by
    a fine-tune (unedited slices change, edited voxels survive) and reloaded after the target was closed."""
    from napari_uuds.engine.review import rank_slices

    viewer, w = ready
    w.params.run_folder = str(tmp_path / "run")
    w.steps.value = 2
    w.ctl.adapt_and_segment(w.source.value, w.source_labels.value, w.target.value)
    pred = w.ctl.prediction
    assert pred.own_entropy is not None  # round 25's smoothing is on: the review reads the network's own entropy
    ranking = rank_slices(pred.own_entropy, pred.seg, 2, w.params.threshold)
    assert ranking and ranking == w.ctl.review()
    first = w.ctl.goto_uncertain(1)
    assert first == ranking[0] and w.ctl.current_index() == ranking[0].index
    assert viewer.layers["uncertain region"].visible
    assert f"uncertain slice 1 of {len(ranking)}: slice {ranking[0].index}" in w.status.message
    if len(ranking) > 1:
        assert w.ctl.goto_uncertain(1) == ranking[1] and w.ctl.current_index() == ranking[1].index
        assert w.ctl.goto_uncertain(-1) == ranking[0]
    # the user paints two slices with the brush (a paint event, as napari's tools emit), then pauses
    seg = viewer.layers["segmentation"]
    truth = np.zeros(seg.data.shape, np.uint8)  # the user's picture of the cord: a block
    truth[18:26, 34:42, :] = 1
    mine = [ranking[0].index, (ranking[0].index + 20) % seg.data.shape[2]]
    for k in mine:
        region = np.zeros(seg.data.shape, bool)
        region[..., k] = True
        seg.data_setitem(np.nonzero(region), truth[region])
    qtbot.waitUntil(lambda: w.ctl.corrections.slices == set(mine), timeout=10_000)
    saved = tmp_path / "run"
    assert (saved / "corrections.nii.gz").exists() and (saved / "corrections.json").exists()
    assert all(r.index not in mine for r in w.ctl.review())  # corrected slices leave the review
    before = np.array(seg.data)
    w.finetune_steps.value = 3
    assert w.finetune_parts.value == w.params.finetune_parts == FINETUNE_PARTS
    w.finetune_parts.value = "all"  # every module trains: the image encoder changes too
    assert w.params.finetune_parts == "all"
    assert w.finetune_lr.value == w.params.finetune_lr
    w.finetune_lr.value = 5e-6  # six decimals, as the learning rate's: a small rate is not rounded to 0 or 1e-5
    assert w.params.finetune_lr == pytest.approx(5e-6)
    w.finetune_lr.value = 2e-4
    assert w.params.finetune_lr == pytest.approx(2e-4)
    stem = next(w.ctl.model.clip.visual.parameters()).detach().clone()
    w.ctl.finetune_on_corrections(w.source.value, w.source_labels.value, w.target.value)
    assert not torch.equal(next(w.ctl.model.clip.visual.parameters()), stem)
    after = np.asarray(seg.data)
    for k in mine:
        np.testing.assert_array_equal(after[..., k], truth[..., k])  # edited voxels survive
    others = [k for k in range(after.shape[2]) if k not in mine]
    assert not np.array_equal(after[..., others], before[..., others]) or \
        not np.array_equal(w.ctl.prediction.entropy[..., others], pred.entropy[..., others])  # the rest re-predicted
    assert (saved / "weights" / "model.safetensors").exists()
    # the fine-tune ended with its weight average (corrections round 7), and the weights say so
    average = json.loads((saved / "weights" / "config.json").read_text())["weight_average"]
    assert (average or {}).get("decay") == (FINETUNE_EMA or None)
    # napari closes the target: the corrections are on disk and come back on a new segmentation
    viewer.layers.remove("T1 (target)")
    assert w.ctl.corrections is None
    [t1] = viewer.open(str(cord["t1"]), plugin="napari-uuds")
    w.target.value = t1
    w.ctl.prepare_target(t1)
    w.ctl.predict()
    assert not w.ctl.corrections
    assert w.ctl.load_corrections(saved) == sorted(mine)
    for k in mine:
        np.testing.assert_array_equal(np.asarray(viewer.layers["segmentation"].data)[..., k], truth[..., k])


def test_method_choice_and_one_description_field_per_class(ready, monkeypatch):
    viewer, w = ready
    msgs = _errors(monkeypatch)
    assert [f.label for f in w.descriptions] == [w.params.class_names()[0]]
    w.class_name.value = "core, oedema, enhancing"
    assert [f.label for f in w.descriptions] == ["core", "oedema", "enhancing"]
    w.descriptions[1].value = "swollen white matter"
    assert w.params.descriptions() == ["core", "swollen white matter", "enhancing"]
    # the sample's cord labels hold one value: three classes are fine (values 1..3 allowed)...
    w.method.value = "uuds+tcsa"
    cfg, tcfg = w.ctl.model_config(), w.ctl.train_config()
    assert cfg.class_names == ["core", "oedema", "enhancing"] and tcfg.method == "uuds+tcsa"
    assert cfg.class_descriptions[1] == "swollen white matter" and cfg.use_domain_prompt
    w.method.value = "tcsa"
    assert not w.ctl.model_config().use_seg_prompt
    # ...but labels with more values than names are refused with what to do
    lab = np.array(viewer.layers["T2 cord labels"].data)
    lab[lab > 0] = 5
    viewer.add_labels(lab, name="five", scale=viewer.layers["T2 cord labels"].scale,
                      metadata=viewer.layers["T2 cord labels"].metadata)
    w.reset_choices()
    w.source_labels.value = viewer.layers["five"]
    assert w.start_training() is None
    assert "hold values up to 5 but 3 class names" in msgs[-1]


def test_tcsa_through_the_widget_controller(ready):
    viewer, w = ready
    w.steps.value = 2
    w.method.value = "tcsa"
    w.class_name.value = "spinal cord"
    w.descriptions[0].value = "the spinal cord inside the canal"
    seen = []
    w.status.events.message.connect(seen.append)
    pred = w.ctl.adapt_and_segment(w.source.value, w.source_labels.value, w.target.value)
    assert pred.seg.shape == w.target.value.data.shape and "segmentation" in viewer.layers
    assert any("training tcsa (adapt)" in m and "TCSA text relations from" in m for m in seen)
    assert w.ctl.model.cfg.class_descriptions == ["the spinal cord inside the canal"]


def test_load_weights_shows_the_checkpoints_settings(ready, tmp_path):
    from napari_uuds.engine.checkpoint import save_checkpoint
    from napari_uuds.engine.config import ModelConfig, TrainConfig, to_dict
    from napari_uuds.engine.model import UUDS

    viewer, w = ready
    cfg = ModelConfig.for_arch("tiny", image_size=64, class_names=["core", "oedema"],
                               class_descriptions=["the necrotic core", "swollen white matter"],
                               source_modality="FLAIR")
    save_checkpoint(UUDS(cfg), tmp_path / "w", {"train": to_dict(TrainConfig(threshold=0.3))})
    w.descriptions[0].value = "typed before loading"
    # a run already in the plot and the progress bar, with a guard's warning: none of it is the loaded model's
    w.status.history, w.status.losses = [{"step": 1, "total": 2.0}, {"step": 2, "total": 1.5}], [2.0, 1.5]
    w.status.total, w.status.step, w.status.guard_note = 40, 30, "warning: the target's volume collapsed"
    assert w.progress.value == 30 and len(w.plot.history) == 2
    w.ctl.load_weights(tmp_path / "w")
    assert w.status.history == [] == w.plot.history and w.status.losses == [] and w.progress.value == 0
    assert "collapsed" not in w.notice.value
    assert w.class_name.value == "core, oedema" and w.modality.value == "FLAIR"
    assert [f.label for f in w.descriptions] == ["core", "oedema"]
    assert [f.value for f in w.descriptions] == ["the necrotic core", "swollen white matter"]
    assert abs(w.threshold.value - 0.3) < 1e-6
    # and the widgets still drive the parameters afterwards
    w.descriptions[1].value = "oedema around the tumour"
    assert w.params.descriptions() == ["the necrotic core", "oedema around the tumour"]


def test_random_weights_note_stays_and_guard_warning_shows(ready, qtbot):
    """Random CLIP weights are said plainly and stay said (not a status line the next step rewrites); a guard's
    warning joins the note, and the randomisation control reaches the training config."""
    from napari_uuds.engine.train import TrainEvent

    viewer, w = ready
    assert w.randomise.value == "auto"  # the default recipe's
    w.randomise.value = "gin"
    assert w.ctl.train_config().randomise == "gin"
    assert w.pseudo_refine.value == "auto" == w.ctl.train_config().pseudo_refine  # the default recipe's
    w.pseudo_refine.value = "none"
    assert w.ctl.train_config().pseudo_refine == "none"
    w.ctl.prepare(w.source.value, w.source_labels.value, w.target.value)
    w.ctl.build_model()
    assert "CLIP weights are random" in w.notice.value
    w.ctl.handle_event(TrainEvent("start", 0, 4, message="training"))
    for step in (1, 2):  # steps rewrite the status line, never the note
        w.ctl.handle_event(TrainEvent("step", step, 4, {"total": 1.0}))
    assert "CLIP weights are random" in w.notice.value and "step 2/4" in w.info.value
    w.ctl.handle_event(TrainEvent("step", 3, 4, {"total": 1.0}, message="warning at step 3: collapse"))
    assert w.notice.value.startswith("warning at step 3") and "CLIP weights are random" in w.notice.value
    w.ctl.handle_event(TrainEvent("step", 4, 4, {"total": 1.0}, message="step 4: back within the guard's limits"))
    assert "warning" not in w.notice.value


def test_live_controls_keep_no_stale_state(ready, qtbot):
    """A closed target is forgotten; a second click starts a new model unless asked to continue; a prompt edit says
    what it changed; the uncertain region has its own colour; the synthetic source hides until it holds a volume."""
    viewer, w = ready
    w.ctl.prepare(w.source.value, w.source_labels.value, w.target.value)
    w.ctl.ensure_output_layers()
    assert viewer.layers["synthetic source"].visible is False  # no opaque grey block before a prediction
    w.steps.value = 1
    w.ctl.adapt_and_segment(w.source.value, w.source_labels.value, w.target.value)
    assert viewer.layers["synthetic source"].visible is True
    colour = viewer.layers["uncertain region"].colormap.map(np.array([1]))[0]
    np.testing.assert_allclose(colour[:3], (1.0, 212 / 255, 0.0), atol=0.01)
    w.ctl.set_prompt("A scan of a {source}")
    assert "of its pixels changed class" in w.status.message and "A scan of a T2" in w.status.message
    # a second click: a new model, unless the box says continue
    w._offer_continue()
    first = w.ctl.model
    assert w.continue_model.enabled and not w.continue_model.value
    w.start_training(predict_after=False)
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert w.ctl.model is not first and w.ctl.model.trained_steps == 1
    w.continue_model.value = True
    second = w.ctl.model
    w.start_training(predict_after=False)
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert w.ctl.model is second and w.ctl.model.trained_steps == 2
    assert "(2 steps)" in w.continue_model.text
    # the target closed: editing the prompt re-creates nothing from it
    for name in ("T1 (target)", "segmentation", "entropy", "uncertain region", "synthetic source"):
        viewer.layers.remove(name)
    assert w.ctl.target is None and "target layer was closed" in w.status.message
    w.ctl.set_prompt("A photo of a {source} scan")
    assert not {"segmentation", "entropy", "uncertain region", "synthetic source"} & {ly.name for ly in viewer.layers}


def test_every_control_explains_itself(ready):
    from magicgui.widgets import Container

    _, w = ready
    controls = [c for c in w if not isinstance(c, Container) and type(c).__name__ not in ("Label", "ProgressBar")]
    missing = [c.label or c.text for c in controls if not (c.tooltip or "").strip()]
    assert not missing, missing
    assert "{source}" in w.prompt.tooltip


def test_merged_label_values_are_said(ready):
    viewer, w = ready
    lab = viewer.layers["T2 cord labels"]
    data = np.asarray(lab.data).copy()
    ys, xs, zs = np.nonzero(data)
    data[ys[::3], xs[::3], zs[::3]] = 2
    data[ys[1::3], xs[1::3], zs[1::3]] = 4
    lab.data = data
    w.ctl.prepare(w.source.value, lab, w.target.value)
    assert "values 1, 2, 4 merged into the one class" in w.status.message


def test_file_menu_saves_the_selected_layer_as_nifti(ready, cord, tmp_path, monkeypatch):
    """napari's File menu has "Save selected layer as NIfTI…" (napari's Save Selected Layers preselects its TIFF
    writer); it writes labels as integers on the scan's grid, and the menu item runs it through napari's app."""
    from napari._app_model import get_app_model
    from qtpy.QtWidgets import QFileDialog

    viewer, _ = ready
    target = tmp_path / "saved.nii.gz"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(target), "")))
    viewer.layers.selection.active = viewer.layers["T2 cord labels"]
    app = get_app_model()
    items = [getattr(i, "command", None) for i in app.menus.get_menu("napari/file/io_utilities")]
    assert "napari-uuds.save_nifti" in [c.id for c in items if c is not None]
    assert napari.current_viewer() is viewer, napari.current_viewer()
    app.commands.execute_command("napari-uuds.save_nifti").result()
    back, src = nib.load(str(target)), nib.load(str(cord["t2_seg"]))
    assert np.issubdtype(back.get_data_dtype(), np.integer)
    np.testing.assert_allclose(back.affine, src.affine)
    np.testing.assert_array_equal(np.asarray(back.dataobj), np.asarray(src.dataobj).round())


def test_corrections_lift_the_dice_through_the_controller(make_napari_viewer, tmp_path):
    """The synthetic contrast-inverted task of test_adaptation, driven as a user would through the controller:
    train, correct two slices of the target with the brush, fine-tune; the Dice on the slices the user did not
    touch rises by a clear margin."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_adaptation import phantom

    from napari_uuds.engine.metrics import score

    (si, sl), (ti, tl) = phantom(1, False), phantom(2, True)
    viewer = make_napari_viewer()
    src = viewer.add_image(si.data, name="source disc")
    lab = viewer.add_labels(sl.data, name="source labels")
    tgt = viewer.add_image(ti.data, name="target disc")
    w = UUDSWidget(viewer)
    w.params.image_size, w.params.batch_size, w.params.preview_every = 64, 8, 0
    w.params.randomise, w.params.run_folder = "none", str(tmp_path / "run")  # source-only-like: the disc is missed
    w.class_name.value = "disc"
    w.steps.value = 40
    w.ctl.adapt_and_segment(src, lab, tgt)
    truth = tl.data
    edited = [4, 11]
    others = [k for k in range(truth.shape[2]) if k not in edited]
    before = score(w.ctl.prediction.seg[..., others], truth[..., others])["dice"]
    seg = viewer.layers["segmentation"]
    for k in edited:
        region = np.zeros(seg.data.shape, bool)
        region[..., k] = True
        seg.data_setitem(np.nonzero(region), truth[region])
    w.finetune_steps.value = 40
    w.finetune_parts.value = "segmenter"  # the image encoder stays as the adaptation left it
    stem = next(w.ctl.model.clip.visual.parameters()).detach().clone()
    w.ctl.finetune_on_corrections(src, lab, tgt)
    assert torch.equal(next(w.ctl.model.clip.visual.parameters()), stem)
    after = score(np.asarray(seg.data)[..., others], truth[..., others])["dice"]
    np.testing.assert_array_equal(np.asarray(seg.data)[..., edited], truth[..., edited])
    assert after > before + 30.0, (before, after)


def test_corrections_that_cannot_be_saved_stay_and_say_so(ready, tmp_path):
    viewer, w = ready
    blocker = tmp_path / "a file"
    blocker.write_text("in the way")  # the run folder cannot be made under a file, not even by root
    w.params.run_folder = str(blocker / "run")
    w.steps.value = 1
    w.ctl.adapt_and_segment(w.source.value, w.source_labels.value, w.target.value)
    seg = viewer.layers["segmentation"]
    region = np.zeros(seg.data.shape, bool)
    region[..., 5] = True
    seg.data_setitem(np.nonzero(region), 1)
    assert w.ctl.collect_corrections() == [5]
    assert "could not save the corrections" in w.status.guard_note
    assert "could not save the corrections" in w.notice.value  # persistent, on screen
    w.ctl.predict()
    assert (np.asarray(seg.data)[..., 5] == 1).all()  # kept as the user's all the same
    blocker.unlink()
    region[..., 5], region[..., 6] = False, True
    seg.data_setitem(np.nonzero(region), 1)  # the next edit saves everything, and the note goes
    assert w.ctl.collect_corrections() == [6]
    assert w.status.guard_note == "" and (blocker / "run" / "corrections.json").exists()


def test_the_widget_frames_small_scans_at_their_own_size(ready, monkeypatch):
    """With the image size left to the default and the default "auto" (round 26), the cord's slices (at most 76 voxels
    across) train at 64 px, and the model built is that size; an explicit size wins; with the default off, 128."""
    from napari_uuds.gui import controller as ctl_mod

    viewer, w = ready
    monkeypatch.setattr(ctl_mod, "IMAGE_SIZE_DEFAULT", "auto")
    w.params.image_size = 0
    w.ctl.prepare(w.source.value, w.source_labels.value, w.target.value)
    assert w.ctl.model_config().image_size == 64
    assert all(p.image.shape[-1] == 64 for vols in w.ctl._data for p in vols)
    w.ctl.build_model()
    assert w.ctl.model.cfg.image_size == 64
    w.params.image_size = 96  # the user's choice: a fresh model at that size
    w.ctl.prepare(w.source.value, w.source_labels.value, w.target.value)
    assert w.ctl.model is None and all(p.image.shape[-1] == 96 for vols in w.ctl._data for p in vols)
    monkeypatch.setattr(ctl_mod, "IMAGE_SIZE_DEFAULT", None)
    w.params.image_size = 0
    w.ctl.prepare(w.source.value, w.source_labels.value, w.target.value)
    assert w.ctl.model_config().image_size == 128
    assert all(p.image.shape[-1] == 128 for vols in w.ctl._data for p in vols)
