"""The README's screenshot: the widget with a trained model, the segmentation's outline over the T1 and the
true contour beside it (what a user checks first).

    xvfb-run -a .venv/bin/python benchmarks/screenshot.py --weights runs/cord --out docs/screenshot.png

``--weights`` is a folder written by ``napari-uuds adapt`` on the shipped sample (the README's job). The
widget loads it (Load weights), re-predicts the T1 (Re-predict volume), and the true cord of ``t1_seg`` is
added as a second outline.
"""
from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def dice_percent(seg, truth) -> float:
    """Dice % of a segmentation layer's foreground against a reference layer's."""
    import numpy as np

    pred, ref = np.asarray(seg.data) > 0, np.asarray(truth.data) > 0
    return 200.0 * (pred & ref).sum() / max(pred.sum() + ref.sum(), 1)


def show_result(viewer, w, weights: str, slice_index: int | None = None):
    """Load ``weights`` in the widget, re-predict the T1, add the true cord of ``t1_seg`` as a second outline and
    show the cord's middle slice (or ``slice_index``) as radiologists read it. Returns (segmentation layer, true
    layer, Dice %)."""
    import napari
    import numpy as np

    from napari_uuds.gui.controller import OUTPUT_LAYERS
    from napari_uuds.gui.widget import radiological_view

    w.ctl.load_weights(weights)
    w.ctl.prepare_target(w.target.value)
    w.ctl.show_prediction(w.ctl.compute_prediction())  # Re-predict volume, synchronously
    [truth] = viewer.open(str(ROOT / "sample_data" / "cord" / "t1_seg.nii.gz"), plugin="napari-uuds",
                          name="true cord (t1_seg)")
    truth.contour, truth.colormap = 1, napari.utils.colormaps.label_colormap(num_colors=49, seed=0.9)
    seg = viewer.layers[OUTPUT_LAYERS["seg"]]
    seg.contour = 1
    for name in ("T2 (source)", "T2 cord labels", OUTPUT_LAYERS["uncertain"], OUTPUT_LAYERS["synthetic"],
                 OUTPUT_LAYERS["entropy"]):
        if name in viewer.layers:
            viewer.layers[name].visible = False
    axis = w.ctl.model.cfg.axis
    radiological_view(viewer, axis)
    zs = np.nonzero(np.moveaxis(np.asarray(truth.data) > 0, axis, 0).any((1, 2)))[0]
    viewer.dims.set_current_step(axis, slice_index if slice_index is not None else int(zs[len(zs) // 2]))
    viewer.layers.selection.active = seg
    viewer.reset_view()
    viewer.scene.camera.zoom *= 1.5  # the cord and its neighbourhood fill the canvas
    return seg, truth, dice_percent(seg, truth)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="folder with model.safetensors + config.json")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    ap.add_argument("--slice", type=int, default=None, help="axial slice to show (default: the cord's middle)")
    args = ap.parse_args(argv)

    import napari
    import numpy as np

    from napari_uuds.gui.widget import UUDSWidget

    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 900)
    viewer.open_sample("napari-uuds", "cord")
    w = UUDSWidget(viewer)
    viewer.window.add_dock_widget(w, name="UUDS adapt & segment")
    seg, truth, dice = show_result(viewer, w, args.weights, args.slice)
    w.status.message = "segmentation, entropy, uncertain region and synthetic source updated"
    for _ in range(20):  # a wrapped status line takes a few rounds of layout to reach its height
        napari.qt.get_qapp().processEvents()
    viewer.screenshot(args.out, canvas_only=False, flash=False)
    pred, ref = np.asarray(seg.data) > 0, np.asarray(truth.data) > 0
    print(f"wrote {args.out}: predicted {int(pred.sum())} voxels, true {int(ref.sum())}, "
          f"Dice {dice:.1f} %; t1 grid {viewer.layers['T1 (target)'].data.shape}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
