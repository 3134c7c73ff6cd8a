"""The widget as a new user meets it, in five screenshots (run under Xvfb: ``xvfb-run -a``).

1. ``1-first-screen.png``: what ``napari-uuds gui`` opens (the README's first command): the sample loaded, its
   layers picked in the widget, axial slices shown as radiologists read them.
2. ``2-training.png``: during a short training in the widget's worker: progress, the loss curves, previews.
3. ``3-result.png``: the segmentation of weights trained by the README's job (``--weights``), its outline over
   the T1 beside the true contour of ``t1_seg``.
4. ``4-review.png``: the review: "uncertain slice ▶" has moved to the most uncertain slice; the uncertain region
   (entropy >= chi, yellow) over the T1 with the segmentation's outline, the slice's rank and score in the status.
5. ``5-corrected.png``: after a simulated user painted that slice and the next one (with ``t1_seg``'s labels, as a
   brush would) and clicked "Fine-tune on corrections": the segmentation again, beside the true contour.

    xvfb-run -a .venv/bin/python benchmarks/screenshots.py --weights runs/cord
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from screenshot import dice_percent, show_result  # noqa: E402  (the README screenshot's result view, shared)


def _settle(app, seconds: float = 0.5) -> None:
    end = time.time() + seconds
    while time.time() < end:
        app.processEvents()
        time.sleep(0.02)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", required=True, help="folder with model.safetensors + config.json (the README's job)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screens"))
    ap.add_argument("--training-steps", type=int, default=40, help="steps of the training shown in shot 2")
    args = ap.parse_args(argv)

    import napari
    import numpy as np

    from napari_uuds.cli import build_gui, build_parser
    from napari_uuds.engine.config import TrainConfig
    from napari_uuds.gui.controller import OUTPUT_LAYERS

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    app = napari.qt.get_qapp()
    viewer, w = build_gui(build_parser().parse_args(["gui"]))
    import tempfile

    w.params.run_folder = tempfile.mkdtemp(prefix="napari-uuds-screens-")  # shot 5's corrections, not the user's
    viewer.window._qt_window.resize(1500, 950)
    viewer.window._qt_window.show()
    _settle(app, 1.0)
    viewer.screenshot(str(out / "1-first-screen.png"), canvas_only=False, flash=False)

    # 2: training in the worker, previews every 10 steps
    w.params.preview_every = 10
    w.steps.value = args.training_steps
    w.start_training(predict_after=False)
    while w.worker is not None and w.status.step < args.training_steps * 3 // 4:
        _settle(app, 0.2)
    _settle(app, 0.5)
    viewer.screenshot(str(out / "2-training.png"), canvas_only=False, flash=False)
    w.stop()
    while w.worker is not None:
        _settle(app, 0.2)
    w.steps.value = TrainConfig.steps  # shots 3-5 show the README job's weights: the field back at its default

    # 3: the README job's weights, the whole volume, the outline beside the true contour
    seg, truth, dice = show_result(viewer, w, args.weights)
    w._offer_continue()
    w.status.message = "segmentation (outline) and the true cord (t1_seg, outline) on the T1"
    _settle(app, 0.5)
    viewer.screenshot(str(out / "3-result.png"), canvas_only=False, flash=False)
    pred, ref = np.asarray(seg.data) > 0, np.asarray(truth.data) > 0

    # 4: review: the most uncertain slice, its uncertain region over the T1, the segmentation's outline on top
    truth.visible = False
    unc = viewer.layers[OUTPUT_LAYERS["uncertain"]]
    first = w.ctl.goto_uncertain(1)
    viewer.layers.selection.active = seg
    _settle(app, 0.5)
    viewer.screenshot(str(out / "4-review.png"), canvas_only=False, flash=False)

    # 5: the user corrects the two most uncertain slices (here with the true labels, as a brush would) and fine-tunes
    axis = w.ctl.model.cfg.axis
    second = w.ctl.goto_uncertain(1) or first
    true = np.asarray(truth.data)
    for k in sorted({first.index, second.index}):
        region = np.zeros(seg.data.shape, bool)
        np.moveaxis(region, axis, 0)[k] = True
        seg.data_setitem(np.nonzero(region), true[region])
    w.ctl.finetune_on_corrections(w.source.value, w.source_labels.value, w.target.value)
    truth.visible, unc.visible = True, False
    viewer.dims.set_current_step(axis, int(np.nonzero(np.moveaxis(true > 0, axis, 0).any((1, 2)))[0].mean()))
    dice2 = dice_percent(seg, truth)
    w.status.message = (f"fine-tuned on corrected slices {first.index} and {second.index}: Dice {dice:.1f} -> "
                        f"{dice2:.1f} % against t1_seg (outline)")
    _settle(app, 0.5)
    viewer.screenshot(str(out / "5-corrected.png"), canvas_only=False, flash=False)
    print(f"wrote 5 screenshots to {out}: predicted {int(pred.sum())} voxels, true {int(ref.sum())}, Dice {dice:.1f} %; "
          f"after correcting slices {first.index}, {second.index} and fine-tuning: Dice {dice2:.1f} %")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
