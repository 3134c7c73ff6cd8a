"""The dock widget: thin. Parameters live in evented dataclasses, every action in the controller,
training in a ``thread_worker`` (the viewer never waits on the network)."""
from __future__ import annotations

import gc
from pathlib import Path

import napari
import numpy as np
from magicgui.widgets import (CheckBox, ComboBox, Container, FloatSlider, FloatSpinBox, Label, LineEdit, ProgressBar,
                              PushButton, SpinBox, create_widget)
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog, QMessageBox, QSizePolicy

from ..engine.components import describe_objects
from ..engine.config import ARCHS, CLIP_WEIGHTS, DEVICES, METHODS, PSEUDO_REFINES, RANDOMISERS, TrainConfig
from ..engine.errors import UUDSError
from .controller import OUTPUT_LAYERS, UUDSController
from .loss_plot import LossPlot
from .pacing import FramePacer
from .state import Params, Status

PROMPT_DEBOUNCE_MS = 400
#: pause after the last brush stroke before the corrected slices are collected and saved
EDIT_DEBOUNCE_MS = 1000
#: longest the training loop waits for a preview to be drawn (see pacing.py).
DISPLAY_TIMEOUT_S = 2.0


class UUDSWidget(Container):
    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__(labels=True)
        # napari hands plugins a PublicOnlyProxy of the viewer, whose layers are fresh proxies at every access: a
        # proxy set as a field's value matches none of the layer choices and the field stays empty (the README's
        # `napari-uuds gui` opened with "-----" everywhere). The widget works on the viewer itself.
        napari_viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.viewer = napari_viewer
        self.params, self.status = Params(), Status()
        self.ctl = UUDSController(napari_viewer, self.params, self.status)
        self.ctl.pacer = FramePacer(napari_viewer)
        self.ctl.display_timeout = DISPLAY_TIMEOUT_S
        self.worker = None

        # the layer lists come from this viewer, not from the dock the widget may not sit in yet (napari's own
        # lookup finds no viewer before docking, so the sample's layers could not be picked at construction)
        self.source = create_widget(annotation=napari.layers.Image, label="source image",
                                    options={"nullable": True, "choices": self._layers(napari.layers.Image)})
        self.source_labels = create_widget(annotation=napari.layers.Labels, label="source labels",
                                           options={"nullable": True, "choices": self._layers(napari.layers.Labels)})
        self.target = create_widget(annotation=napari.layers.Image, label="target image",
                                    options={"nullable": True, "choices": self._layers(napari.layers.Image)})
        self.class_name = LineEdit(value=self.params.class_name, label="class name(s)")
        self.class_name.tooltip = "comma-separated for a multi-class labels layer: label value k is the k-th name"
        self.descriptions = Container(labels=True, label="class descriptions")  # one text field per class
        self.method = ComboBox(choices=list(METHODS), value=self.params.method, label="method")
        self.method.tooltip = ("uuds: dual prompts + uncertainty (the paper); tcsa: TCSA-UDA's vision-language "
                               "covariance and prototype alignment; uuds+tcsa: both")
        self.modality = LineEdit(value=self.params.source_modality, label="source modality")
        self.randomise = ComboBox(choices=list(RANDOMISERS), value=self.params.randomise,
                                  label="source randomisation")
        self.randomise.tooltip = ("gin: the source's contrast is scrambled by random shallow conv nets while the model "
                                  "learns, half of them inverted first, so that it does not rely on one contrast "
                                  "(helps when the target inverts tissue contrasts, as T1 against T2); auto: gin only where the target's grey values lie far "
                                  "from the source's; none: the source as it is")
        self.pseudo_refine = ComboBox(choices=list(PSEUDO_REFINES), value=self.params.pseudo_refine,
                                      label="pseudo labels")
        self.pseudo_refine.tooltip = ("how the target's own predictions teach it while it trains. none: as the network "
                                      "labels them; edges: their boundary moved to the target's own edges within 3 pixels "
                                      "(on the cord sample: 89.6 % Dice against 62.9 over five seeds); auto (the "
                                      "default): edges only where the source's labels follow the source's edges, "
                                      "decided before training (the cord's do, BraTS's whole tumour on T1c does not). "
                                      "Edges and auto run a random walker on the CPU at every step (0.04-0.06 s a batch "
                                      "of 8: a few % of a CPU training step)")
        self.arch = ComboBox(choices=list(ARCHS), value=self.params.arch, label="model")
        self.weights = ComboBox(choices=list(CLIP_WEIGHTS), value=self.params.clip_weights, label="CLIP weights")
        self.device = ComboBox(choices=list(DEVICES), value=self.params.device, label="device")
        self.steps = SpinBox(value=self.params.steps, min=1, max=1_000_000, label="steps")
        self.batch = SpinBox(value=self.params.batch_size, min=2, max=512, label="batch size")
        self.lr = FloatSpinBox(value=self.params.lr, min=1e-7, max=1.0, step=1e-5, label="learning rate")
        self.lr.native.setDecimals(6)
        self.prompt = LineEdit(value=self.params.domain_prompt, label="domain prompt")
        self.threshold = FloatSlider(value=self.params.threshold, min=0.0, max=1.0, step=0.01, label="uncertainty χ")
        self.tta = CheckBox(value=self.params.tta == "d8", text="test-time augmentation")
        self.refine = CheckBox(value=self.params.refine == "edges", text="refine the boundary on the image's edges")
        self.smooth_z = CheckBox(value=self.params.smooth_z == "binomial", text="read each slice with its neighbours")
        self.objects = ComboBox(choices=[("every piece", "all"), ("the largest piece", "largest"),
                                         ("the largest if >= 80 %", "auto")], value=self.params.objects,
                                label="objects kept")
        # a trained (or loaded) model is continued only when asked: a second click must not silently go on from it
        self.continue_model = CheckBox(value=False, text="continue the current model", enabled=False)
        self.continue_model.tooltip = ("on: training goes on from the model trained or loaded before (its steps add "
                                       "up); off: every Adapt & segment or Train starts a new model")
        self.adapt_btn = PushButton(text="Adapt && segment")
        self.train_btn = PushButton(text="Train")
        self.stop_btn = PushButton(text="Stop", enabled=False)
        self.predict_btn = PushButton(text="Re-predict volume")
        self.save_btn = PushButton(text="Save weights…")
        self.load_btn = PushButton(text="Load weights…")
        self.export_btn = PushButton(text="Export selected layer…")
        # review and corrections (gui/corrections.py, engine/review.py, engine/finetune.py)
        self.prev_btn = PushButton(text="◀ uncertain slice")
        self.next_btn = PushButton(text="uncertain slice ▶")
        self.review_row = Container(widgets=[self.prev_btn, self.next_btn], layout="horizontal", labels=False,
                                    label="review")
        self.review_row.margins = (0, 0, 0, 0)
        self.finetune_steps = SpinBox(value=self.params.finetune_steps, min=1, max=100_000, label="fine-tune steps")
        self.finetune_parts = ComboBox(choices=[("every module", "all"), ("the segmenter", "segmenter")],
                                       value=self.params.finetune_parts, label="fine-tune trains")
        self.finetune_lr = FloatSpinBox(value=self.params.finetune_lr, min=1e-7, max=1.0, step=1e-5,
                                        label="fine-tune rate")
        self.finetune_lr.native.setDecimals(6)  # as the learning rate's: 5e-6 is not rounded away
        self.finetune_btn = PushButton(text="Fine-tune on corrections")
        self.load_corr_btn = PushButton(text="Load corrections…")
        self.progress = ProgressBar(value=0, min=0, max=1, label="progress")
        self.info = Label(value="")
        self.notice = Label(value="")  # persistent: random CLIP weights, guard warnings
        for label in (self.info, self.notice):  # long lines wrap in the width the dock has: they never widen it
            label.native.setWordWrap(True)
            label.native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
            label.native.setMinimumWidth(0)
        self.notice.native.setStyleSheet("color: #e0a030")
        tips = {
            self.source: "the labelled scan (Image layer) the model learns from",
            self.source_labels: "the labels of the source image (Labels layer, same shape)",
            self.target: "the scan to segment, in another contrast; its labels are never used",
            self.modality: "the source contrast's name, e.g. T2: it fills {source} in the domain prompt",
            self.arch: "tiny: 5.8 M parameters at 128 px, for a CPU; rn50: the paper's CLIP ResNet-50 at 224 px, wants a GPU",
            self.weights: ("auto: OpenAI CLIP weights when cached or reachable, else random; openai: error if "
                           "unavailable; none: random initialisation"),
            self.device: "where to train: auto picks a CUDA or Apple GPU when there is one, else the CPU",
            self.steps: f"training steps ({TrainConfig.steps} suit the tiny model on a CPU, about 5 minutes on the sample)",
            self.batch: "slice pairs (source + target) per step",
            self.lr: "Adam learning rate (1e-4: higher rates collapsed the tumour protocols in our runs)",
            self.prompt: ("the hard domain prompt steering the target-to-source translation; {source} stands for the "
                          "source modality field. Edited after training, the current slice is re-predicted and the "
                          "status line says how much changed"),
            self.threshold: ("χ of Eq. 6/7: voxels whose normalised entropy is at least χ form the uncertain region "
                             "(yellow), left out of the target loss; moving it re-thresholds at once, no network run"),
            self.tta: ("average every prediction over the slice's eight rotations and mirrorings (eight times the "
                       "inference work); saved with the weights. Switched here, the slice on screen is re-predicted"),
            self.refine: ("after each prediction, let the target's own edges move the mask's boundary by up to 2 voxels "
                          "(a random walker on the image); saved with the weights. Switched here, the slice on screen "
                          "is re-predicted"),
            self.smooth_z: ("average each slice's class probabilities with the slices above and below (1/4, 1/2, "
                            "1/4) before the mask is taken, where the slices lie no more than twice the in-plane "
                            "voxel apart (round 25 of docs/method.md); saved with the weights. Switched here, the "
                            "slice on screen is re-predicted"),
            self.objects: ("what of the predicted object the whole volume keeps: every piece; only the largest "
                           "connected piece (and every piece you painted), which tidied the cord a little and cost "
                           "BraTS FLAIR -> T1c much (round 23 of docs/method.md); or the largest only where it holds "
                           "at least 80 % of the prediction (round 24; the default). Saved with the weights. Chosen here it applies "
                           "at once; back to every piece, Re-predict volume brings the other pieces back"),
            self.adapt_btn: "train (source labels + unlabelled target), then segment the whole target",
            self.train_btn: "train only; Re-predict volume segments afterwards",
            self.stop_btn: "stop within one step; the weights learnt so far are kept",
            self.predict_btn: "segment the whole target volume again with the current model and prompt",
            self.save_btn: "write model.safetensors + config.json to a folder (the command line reads it too)",
            self.load_btn: "load weights saved here or by napari-uuds adapt",
            self.export_btn: "write the selected layer (e.g. your corrected segmentation) as NIfTI on the scan's grid",
            self.prev_btn: ("the previous slice of the review (the slices where a correction covers the most uncertainty "
                            "around the object not yet covered: first where it is densest, then spread over the rest, "
                            "each at the most uncertain slice near it)"),
            self.next_btn: ("the next slice of the review: look at the yellow region, correct the segmentation there "
                            "with napari's label tools; a slice you edit is yours from then on (never predicted over)"),
            self.finetune_steps: "steps of one fine-tune (see the README's corrections benchmark for what they take)",
            self.finetune_parts: ("what a fine-tune trains: every module as adaptation does (the default: the "
                                  "translation learns from your corrections too), or the segmenter only (the image "
                                  "encoder and the translator stay as the adaptation left them: a faster step)"),
            self.finetune_lr: "Adam learning rate of one fine-tune (it starts a fresh optimiser from the current weights)",
            self.finetune_btn: ("learn from the slices you corrected (only those: the others stay unlabelled), then "
                                "segment the volume again; your slices keep your labels"),
            self.load_corr_btn: "bring back corrections saved earlier (they are saved as you paint)",
        }
        for widget, tip in tips.items():
            widget.tooltip = tip
        self.plot = LossPlot()
        self.extend([self.source, self.source_labels, self.target, self.class_name, self.descriptions, self.modality,
                     self.method, self.randomise, self.pseudo_refine, self.arch,
                     self.weights, self.device, self.steps, self.batch, self.lr, self.continue_model, self.adapt_btn,
                     self.train_btn,
                     self.stop_btn, self.progress, self.info, self.notice, self.prompt, self.threshold, self.tta,
                     self.refine, self.smooth_z, self.objects,
                     self.predict_btn,
                     self.review_row, self.finetune_steps, self.finetune_parts, self.finetune_lr, self.finetune_btn,
                     self.load_corr_btn, self.save_btn, self.load_btn, self.export_btn])
        self.native.layout().addWidget(self.plot)

        # parameters <- widgets
        self.class_name.changed.connect(self._class_names_changed)
        self.method.changed.connect(lambda v: setattr(self.params, "method", v))
        self.randomise.changed.connect(lambda v: setattr(self.params, "randomise", v))
        self.pseudo_refine.changed.connect(lambda v: setattr(self.params, "pseudo_refine", v))
        self.modality.changed.connect(lambda v: setattr(self.params, "source_modality", v))
        self.arch.changed.connect(lambda v: setattr(self.params, "arch", v))
        self.weights.changed.connect(lambda v: setattr(self.params, "clip_weights", v))
        self.device.changed.connect(lambda v: setattr(self.params, "device", v))
        self.steps.changed.connect(lambda v: setattr(self.params, "steps", int(v)))
        self.batch.changed.connect(lambda v: setattr(self.params, "batch_size", int(v)))
        self.lr.changed.connect(lambda v: setattr(self.params, "lr", float(v)))
        self.finetune_steps.changed.connect(lambda v: setattr(self.params, "finetune_steps", int(v)))
        self.finetune_parts.changed.connect(lambda v: setattr(self.params, "finetune_parts", v))
        self.finetune_lr.changed.connect(lambda v: setattr(self.params, "finetune_lr", float(v)))
        self.threshold.changed.connect(lambda v: self._guard(self.ctl.set_threshold, v))
        self.tta.changed.connect(lambda v: self._guard(self.ctl.set_tta, "d8" if v else "none"))
        self.refine.changed.connect(lambda v: self._guard(self.ctl.set_refine, "edges" if v else "none"))
        self.smooth_z.changed.connect(lambda v: self._guard(self.ctl.set_smooth_z, "binomial" if v else "none"))
        self.objects.changed.connect(lambda v: self._guard(self.ctl.set_objects, v))
        self._prompt_timer = _debounce(PROMPT_DEBOUNCE_MS, lambda: self._guard(self.ctl.set_prompt, self.prompt.value))
        self.prompt.changed.connect(lambda _v: self._prompt_timer.start())
        # widgets <- parameters (Load weights sets the checkpoint's class names, descriptions, modality...)
        ev = self.params.events
        ev.class_name.connect(lambda v: _show(self.class_name, v))
        ev.source_modality.connect(lambda v: _show(self.modality, v))
        ev.arch.connect(lambda v: _show(self.arch, v))
        ev.threshold.connect(lambda v: _show(self.threshold, v))
        ev.tta.connect(lambda v: _show(self.tta, v == "d8"))
        ev.refine.connect(lambda v: _show(self.refine, v == "edges"))
        ev.smooth_z.connect(lambda v: _show(self.smooth_z, v == "binomial"))
        ev.objects.connect(lambda v: _show(self.objects, v))
        ev.finetune_parts.connect(lambda v: _show(self.finetune_parts, v))
        ev.class_descriptions.connect(self._show_descriptions)
        # status -> widgets
        self.status.events.message.connect(lambda m: setattr(self.info, "value", m))
        self.status.events.weights_note.connect(self._show_notice)
        self.status.events.guard_note.connect(self._show_notice)
        self.status.events.history.connect(self.plot.set_values)
        self.status.events.step.connect(lambda s: setattr(self.progress, "value", s))
        self.status.events.total.connect(lambda t: setattr(self.progress, "max", max(int(t), 1)))
        # actions
        self.adapt_btn.clicked.connect(lambda: self.start_training(predict_after=True))
        self.train_btn.clicked.connect(lambda: self.start_training(predict_after=False))
        self.stop_btn.clicked.connect(self.stop)
        self.predict_btn.clicked.connect(self.predict_volume)
        self.save_btn.clicked.connect(self._save_dialog)
        self.load_btn.clicked.connect(self._load_dialog)
        self.export_btn.clicked.connect(self._export_dialog)
        self.prev_btn.clicked.connect(lambda: self._guard(self.ctl.goto_uncertain, -1))
        self.next_btn.clicked.connect(lambda: self._guard(self.ctl.goto_uncertain, 1))
        self.finetune_btn.clicked.connect(self.start_finetune)
        self.load_corr_btn.clicked.connect(self._load_corrections_dialog)
        self._edit_timer = _debounce(EDIT_DEBOUNCE_MS, lambda: self._guard(self.ctl.collect_corrections))
        self.native.destroyed.connect(lambda *_: self.close_down())
        for e in (napari_viewer.layers.events.inserted, napari_viewer.layers.events.removed):
            e.connect(self._layers_changed)
        self.reset_choices()
        self._autofill()
        self._rebuild_descriptions()
        # Heavy imports (open_clip -> torchvision) load C extensions while holding the GIL; done here, once,
        # when the widget opens, rather than inside the worker where they would stall the viewer.
        import open_clip  # noqa: F401

    # -- helpers ------------------------------------------------------------------------------
    def _class_names_changed(self, text: str) -> None:
        self.params.class_name = text
        self._rebuild_descriptions()

    def _rebuild_descriptions(self) -> None:
        """One description field per class name (kept when the names are edited)."""
        names = self.params.class_names()
        old = [w.value for w in self.descriptions]
        if len(old) == len(names) and all(w.label == n for w, n in zip(self.descriptions, names)):
            return
        self.descriptions.clear()
        for i, name in enumerate(names):
            field = LineEdit(value=old[i] if i < len(old) else "", label=name)
            field.tooltip = f"how the class '{name}' looks, in words (TCSA's text relations); empty: the name"
            field.changed.connect(self._descriptions_changed)
            self.descriptions.append(field)
        self._descriptions_changed()

    def _show_descriptions(self, values: list) -> None:
        for w, v in zip(self.descriptions, list(values) + [""] * len(self.descriptions)):
            _show(w, v)

    def _show_notice(self, *_):
        self.notice.value = "\n".join(n for n in (self.status.guard_note, self.status.weights_note) if n)

    def _descriptions_changed(self, *_):
        self.params.class_descriptions = [w.value for w in self.descriptions]

    def _guard(self, fn, *args):
        """Run an action; a UUDSError becomes a notification that says what to do."""
        try:
            return fn(*args)
        except UUDSError as exc:
            show_error(str(exc))
        return None

    def _layers(self, kind):
        """Choices of a layer field: this viewer's layers of ``kind``, in order."""
        return lambda _widget=None: [ly for ly in self.viewer.layers if isinstance(ly, kind)]

    def _layers_changed(self, event=None):
        """Layers opened or closed: refresh the lists and fill what is still empty (a scan opened after the widget).
        A closed target is forgotten, so that no control re-creates output layers from it. The segmentation layer's
        brush strokes are watched: a pause after them collects (and saves) the corrected slices."""
        layer = getattr(event, "value", None)
        if getattr(event, "type", "") == "inserted" and getattr(layer, "name", None) == OUTPUT_LAYERS["seg"]:
            layer.events.paint.connect(lambda *_: self._edit_timer.start())
        if self.ctl.target_layer is not None and self.ctl.target_layer not in self.viewer.layers:
            self.ctl.forget_target()
            self.status.message = "the target layer was closed: choose a target image to segment again"
        self.reset_choices()
        if self.source.value is None or self.target.value is None or self.source_labels.value is None:
            self._autofill(only_empty=True)

    def _autofill(self, only_empty: bool = False) -> None:
        """Pick the sample's layers by name when present (one click on the sample data)."""
        names = [ly.name for ly in self.viewer.layers]
        for widget, key in ((self.source, "source"), (self.target, "target")):
            if only_empty and widget.value is not None:
                continue
            for n in names:
                if key in n.lower() and n in self.viewer.layers and \
                        type(self.viewer.layers[n]).__name__ == "Image":
                    widget.value = self.viewer.layers[n]
        for n in names:
            if only_empty and self.source_labels.value is not None:
                break
            if "label" in n.lower() and type(self.viewer.layers[n]).__name__ == "Labels" \
                    and n not in OUTPUT_LAYERS.values():
                self.source_labels.value = self.viewer.layers[n]
        if any("t2" in n.lower() for n in names) and self.modality.value == "source":
            self.modality.value = "T2"
        lab = self.source_labels.value  # labels that say what they are (the sample's do): their class names
        named = (lab.metadata or {}).get("class_names") if lab is not None else None
        if named and self.class_name.value == "object":
            self.class_name.value = ", ".join(named)

    def _set_running(self, running: bool) -> None:
        for w in (self.adapt_btn, self.train_btn, self.predict_btn, self.load_btn, self.save_btn, self.finetune_btn,
                  self.load_corr_btn):
            w.enabled = not running
        self.stop_btn.enabled = running

    # -- training ------------------------------------------------------------------------------
    def start_training(self, predict_after: bool = True):
        """Validate, then train in a worker thread; yields reach ``ctl.handle_event`` on the main thread."""
        if self.worker is not None:
            show_info("training is already running")
            return None
        if not self.continue_model.value:
            self.ctl.model = None  # a new model, as the box says
        try:
            self.ctl.prepare(self.source.value, self.source_labels.value, self.target.value)
        except UUDSError as exc:
            show_error(str(exc))
            return None
        self.status.losses, self.status.history = [], []
        axis = self.ctl.model.cfg.axis if self.ctl.model is not None else self.params.axis
        if self.viewer.dims.ndim == 3:  # show the plane the model works in; the slider walks its slices
            radiological_view(self.viewer, axis)
        # The output layers are created now, on the main thread, one per frame (napari needs 0.1-0.3 s to add
        # a layer on a software canvas, and the frame after it compiles its shaders); the worker starts after.
        for key in self.ctl.missing_output_layers():
            self.ctl.pacer.call(lambda k=key: self.ctl.ensure_output_layers([k]))
        return self._train_in_worker(self.ctl.training_events, "training", lambda: self._training_done(predict_after))

    def _train_in_worker(self, events, what: str, done):
        """A training generator in a worker thread: its events reach ``ctl.handle_event`` on the main thread, the
        worker starts once the frames queued before it are drawn, and ``done`` runs when it ends."""
        worker = create_worker(events, _start_thread=False)
        worker.yielded.connect(self.ctl.handle_event)
        worker.errored.connect(lambda exc: show_error(f"{what} failed: {exc}"))
        worker.finished.connect(done)
        self.worker = worker
        self._set_running(True)
        self.ctl.pacer.call(lambda: self._start_worker(worker))
        return worker

    def start_finetune(self):
        """Fine-tune on the corrected slices in a worker, then segment the volume again and save the run."""
        if self.worker is not None:
            show_info("training is already running")
            return None
        try:
            slices = self.ctl.begin_finetune(self.source.value, self.source_labels.value, self.target.value)
        except UUDSError as exc:
            show_error(str(exc))
            return None
        self.status.message = f"fine-tuning on {len(slices)} corrected slice(s): {', '.join(map(str, slices[:10]))}"
        return self._train_in_worker(self.ctl.finetune_events, "fine-tuning", self._finetune_done)

    def _finetune_done(self) -> None:
        self._training_done(predict_after=False)
        if self.ctl.model is None:
            return None
        worker = self.predict_volume()
        if worker is not None:  # the fine-tuned weights and the corrections, into the run folder
            worker.returned.connect(lambda _p: self._saved_run_note(self._guard(self.ctl.save_run)))
        return worker

    def _saved_run_note(self, folder) -> None:
        if folder is not None:
            self.status.message = (f"fine-tuned and segmented again; your {len(self.ctl.corrections)} corrected "
                                   f"slice(s) kept; weights and corrections saved to {folder}")

    def _load_corrections_dialog(self) -> None:
        start = str(self.ctl.corrections.folder) if self.ctl.corrections is not None else ""
        folder = QFileDialog.getExistingDirectory(self.native, "Folder with corrections.nii.gz", start)
        if folder:
            self._guard(self.ctl.load_corrections, folder)

    def _start_worker(self, worker) -> None:
        if self.worker is worker and not worker.is_running:  # not cancelled or closed meanwhile
            # A full cyclic collection of napari's heap holds the GIL for ~0.4 s, and training allocates
            # enough to trigger some. Objects alive now (viewer, layers, model) are exempted from cyclic
            # collection (reference counting still frees them), so collections during training scan only
            # what training makes.
            gc.freeze()
            self._frozen = True
            worker.start()

    def stop(self) -> None:
        """Stop training within one step (the weights learnt so far are kept); before it began: cancel."""
        self.ctl.stop()
        if self.worker is not None and not self.worker.is_running:
            self.worker = None
            self._set_running(False)
            self.status.message = "cancelled before training began"

    def _unfreeze(self) -> None:
        """Give the objects frozen for training back to the cyclic collector: the process is napari's, not ours."""
        if getattr(self, "_frozen", False):
            gc.unfreeze()
            self._frozen = False

    def _training_done(self, predict_after: bool) -> None:
        self._unfreeze()
        self.worker = None
        self._offer_continue()
        self.ctl.pacer.flush()
        self.ctl.training_finished()
        self._set_running(False)
        if predict_after and self.ctl.model is not None:
            self.predict_volume()

    def predict_volume(self):
        """Whole-volume prediction in a worker; the layers update on the main thread when it returns."""
        if self.ctl.model is not None and self.target.value is not None and \
                (self.ctl.target is None or self.ctl.target_layer is not self.target.value):
            self._guard(self.ctl.prepare_target, self.target.value)
        if self.ctl.model is None or self.ctl.target is None:
            show_error("no model or target yet: train (or load weights) and choose a target image")
            return None
        self.status.message = "segmenting the target volume…"
        worker = create_worker(self.ctl.prediction_steps, _start_thread=False)
        worker.yielded.connect(self._show_prediction_progress)
        worker.returned.connect(self.ctl.show_prediction)
        worker.returned.connect(self._say_predicted)
        worker.errored.connect(lambda exc: show_error(f"prediction failed: {exc}"))
        worker.finished.connect(lambda: self._set_running(False))
        self._set_running(True)
        self.stop_btn.enabled = False
        worker.start()
        return worker

    def _say_predicted(self, pred) -> None:
        """The status line once a whole volume is segmented, with what the objects setting removed."""
        self.status.message = "segmentation, entropy, uncertain region and synthetic source updated" + (
            f"; {describe_objects(pred.objects, painted=True)}" if pred.objects else "")

    def _show_prediction_progress(self, done_total) -> None:
        done, total = done_total
        self.progress.max, self.progress.value = max(int(total), 1), int(done)
        self.status.message = f"segmenting the target volume: {done}/{total} slices"

    def close_down(self) -> None:
        """Closing the widget or napari: stop the worker cleanly and free the model's memory (the last brush strokes
        are collected and saved first)."""
        try:  # at interpreter exit Qt may have deleted the timer and the layers already
            self._edit_timer.stop()
            self.ctl.collect_corrections()
        except (UUDSError, RuntimeError):
            pass
        self.ctl.stop()
        if self.worker is not None:
            self.worker.quit()
            self.worker = None
        if self.ctl.pacer is not None:
            self.ctl.pacer.close()
        self._unfreeze()
        self.ctl.release()

    # -- dialogs (the synchronous paths are ctl.save_weights / load_weights / export) -----------------
    def _save_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.native, "Folder for the weights")
        if not folder:
            return
        overwrite = False
        if (Path(folder) / "model.safetensors").exists():
            overwrite = QMessageBox.question(self.native, "Replace?", f"{folder} already holds weights. Replace them?") \
                == QMessageBox.StandardButton.Yes
            if not overwrite:
                return
        if self._guard(self.ctl.save_weights, folder, overwrite) is not None:
            show_info(f"weights saved to {folder}")

    def _load_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self.native, "Weights folder (model.safetensors + config.json)")
        if folder:
            self._guard(self.ctl.load_weights, folder)
            self._offer_continue()
            self.continue_model.value = self.ctl.model is not None  # loaded to be used: Train continues it

    def _offer_continue(self) -> None:
        """A model exists (trained or loaded): the box may continue it; loaded weights are continued by default."""
        model = self.ctl.model
        self.continue_model.enabled = model is not None
        if model is None:
            self.continue_model.value = False
            return
        self.continue_model.text = f"continue the current model ({model.trained_steps} steps)"

    def export_layer(self):
        """The layer Export writes: the selected Image or Labels layer (the segmentation with the user's corrected
        slices included), else the segmentation."""
        layer = self.viewer.layers.selection.active
        if layer is not None and type(layer).__name__ in ("Labels", "Image") and np.asarray(layer.data).ndim == 3:
            return layer
        return self.viewer.layers[OUTPUT_LAYERS["seg"]] if OUTPUT_LAYERS["seg"] in self.viewer.layers else None

    def _export_dialog(self) -> None:
        layer = self.export_layer()
        if layer is None:
            show_error("nothing to export yet: run Adapt & segment first")
            return
        path, _ = QFileDialog.getSaveFileName(self.native, f"Export '{layer.name}' as NIfTI",
                                              f"{layer.name.replace(' ', '_')}.nii.gz", "NIfTI (*.nii.gz *.nii)",
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        if not path:
            return
        overwrite = False
        if Path(path).exists():
            overwrite = QMessageBox.question(self.native, "Replace?", f"{path} exists. Replace it?") \
                == QMessageBox.StandardButton.Yes
            if not overwrite:
                return
        out = self._guard(self.ctl.export, layer, path, overwrite)
        if out is not None:
            show_info(f"wrote {out}")


#: displayed (vertical, horizontal) canonical RAS axes of each slicing axis, as radiologists look at them: axial and
#: coronal with the patient's right on the screen's left and anterior / superior up; sagittal with superior up and
#: anterior on the left
_VIEW = {2: (1, 0), 1: (2, 0), 0: (2, 1)}


def radiological_view(viewer, axis: int) -> None:
    """Show the plane of ``axis`` the way radiologists read it, by the camera alone: the data and their
    geometry are untouched (canonical RAS arrays would otherwise show axial slices on their side)."""
    vertical, horizontal = _VIEW[axis]
    viewer.dims.order = (axis, vertical, horizontal)
    viewer.scene.camera.orientation2d = ("up", "left")
    viewer.reset_view()


def _debounce(ms: int, fn) -> QTimer:
    """A single-shot timer that calls ``fn`` ``ms`` after its last ``start()`` (each start restarts it)."""
    timer = QTimer()
    timer.setSingleShot(True)
    timer.setInterval(ms)
    timer.timeout.connect(fn)
    return timer


def _show(widget, value) -> None:
    """Show a parameter's new value in its widget (no change signal when it already shows it)."""
    if widget.value != value:
        widget.value = value
