"""Every GUI action as a plain synchronous method (tests drive these; the widget wires them to Qt).

The controller owns the model, the cached prediction and the output layers. Training runs through
the engine's generator; :meth:`training_events` is what the widget's ``thread_worker`` iterates, and
:meth:`handle_event` is the one main-thread dispatcher for what it yields.
"""
from __future__ import annotations


import gc
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .._writer import export_layer
from ..engine import checkpoint as ckpt
from ..engine.body import body_mask
from ..engine.config import AUTO_FRAME_ARCHS, IMAGE_SIZE_DEFAULT, ModelConfig, TrainConfig
from ..engine.dataset import PreparedVolume, prepare_volume, slab
from ..engine.errors import UUDSError
from ..engine.review import SliceScore
from ..engine.job import AdaptJob, build_model
from ..engine.infer import (VolumePrediction, assemble_range, iter_predict_volume, predict_slices, refine_seg,
                            run_to_end)
from ..engine.slices import SliceGeometry, frame_for_scans, from_square
from ..engine.train import TrainControl, TrainEvent, resolve_device
from ..engine.components import describe_objects, objects_reported
from ..engine.zsmooth import halo, widen
from .corrections import Corrections, default_run_folder
from .inputs import layer_volume, training_inputs
from .names import OUTPUT_LAYERS
from .output_layers import OutputLayers
from .review_actions import ReviewActions
from .state import Params, Status


class UUDSController(ReviewActions):
    def __init__(self, viewer, params: Params | None = None, status: Status | None = None):
        self.viewer = viewer
        self.params = params or Params()
        self.status = status or Status()
        self.model = None
        self.control: TrainControl | None = None
        self.prediction: VolumePrediction | None = None
        self.target: PreparedVolume | None = None
        self.target_layer = None
        self._data: tuple[list[PreparedVolume], list[PreparedVolume]] | None = None
        #: the frame ``--image-size auto`` chose for the layers prepared last (None: the architecture's)
        self._frame: int | None = None
        self._clip_weights: str | None = None
        self.outputs = OutputLayers(viewer)
        #: the user's corrected slices of the target (gui/corrections.py), saved to the run folder as they change
        self.corrections: Corrections | None = None
        self._ranking: list[SliceScore] | None = None
        self._review_pos = -1
        self._finetune_set: tuple[np.ndarray, list[int]] | None = None
        #: spreads preview refreshes over frames (the widget installs a :class:`~.pacing.FramePacer`);
        #: None refreshes at once, as the synchronous path and tests do.
        self.pacer = None
        #: seconds the training loop waits for a preview to be on screen (the widget sets it; 0: never wait).
        self.display_timeout = 0.0

    # -- inputs ------------------------------------------------------------------------------
    def model_config(self) -> ModelConfig:
        name = getattr(self.target_layer, "name", None)
        cfg = self.params.model_config(str(name) if name else None)
        if self._frame is not None and not self.params.image_size:
            cfg.image_size = self._frame
        return cfg

    def _auto_frame(self, cfg: ModelConfig, shapes: list[tuple[int, ...]]) -> int | None:
        """The frame at the scans' own size (round 26) when the parameters leave it to the default and that is auto."""
        if self.params.image_size or IMAGE_SIZE_DEFAULT != "auto" or cfg.arch not in AUTO_FRAME_ARCHS \
                or cfg.mm_per_pixel > 0:
            return None
        return frame_for_scans(shapes, cfg.axis, ModelConfig.for_arch(cfg.arch).image_size)

    def prepare(self, source, source_labels, target) -> None:
        """Validate the chosen layers and slice them for training (raises UUDSError with what to do)."""
        cfg = self.model_config()
        inputs = training_inputs(source, source_labels, target, cfg.class_names)
        if inputs.note:
            self.status.message = inputs.note
        self._frame = self._auto_frame(cfg, [inputs.source.data.shape, inputs.target.data.shape])
        cfg = self.model_config()
        if self.model is not None and (self.model.cfg.image_size != cfg.image_size
                                       or self.model.cfg.class_names != cfg.class_names
                                       or (self.model.cfg.use_seg_prompt, self.model.cfg.use_domain_prompt,
                                           self.model.cfg.text_head)
                                       != (cfg.use_seg_prompt, cfg.use_domain_prompt, cfg.text_head)):
            self.model = None  # another task or method: a fresh model
        if self.model is not None and self.model.cfg.text_head:  # the text head's target texts follow the target
            self.model.cfg.target_modality = cfg.target_modality
        geo = self.model.cfg if self.model is not None else cfg  # a model kept slices as it was trained
        self._data = ([prepare_volume(inputs.source, geo.axis, geo.image_size, inputs.labels, geo.mm_per_pixel)],
                      [prepare_volume(inputs.target, geo.axis, geo.image_size, mm_per_pixel=geo.mm_per_pixel)])
        self._set_target(self._data[1][0], target)

    def prepare_target(self, target) -> None:
        """For prediction only (no training): the target image, sliced as the loaded model wants."""
        if self.model is None:
            raise UUDSError("no model yet: train, or load weights")
        tgt = layer_volume(target, "target image")
        self._set_target(prepare_volume(tgt, self.model.cfg.axis, self.model.cfg.image_size,
                                        mm_per_pixel=self.model.cfg.mm_per_pixel), target)

    def _set_target(self, prepared: PreparedVolume, layer) -> None:
        """The target to segment; its corrections are kept while the same layer (same grid, same axis) stays it."""
        c = self.corrections
        axis = prepared.geom.axis
        if c is None or layer is not self.target_layer or c.shape != tuple(prepared.volume.data.shape) or c.axis != axis:
            folder = Path(self.params.run_folder) if self.params.run_folder else default_run_folder(layer.name if layer
                                                                                                   is not None else "target")
            self.corrections = Corrections(prepared.volume, axis, folder)
            self._ranking = None
        self.target, self.target_layer = prepared, layer

    # -- model ---------------------------------------------------------------------------------
    def build_model(self, announce: bool = True) -> str:
        """A fresh model from the parameters; returns the note on its CLIP weights. ``announce=False`` (in a worker
        thread) leaves the status alone: it drives Qt labels, which only the main thread may touch."""
        from ..engine.backbone import resolve_weights

        cfg = self.model_config()
        weights, note = resolve_weights(cfg.arch, self.params.clip_weights)
        self.model = build_model(cfg, self.params.seed, weights)
        self._clip_weights = weights
        if announce:
            self.status.message = note
            self.status.weights_note = weights_note(weights)
        return note

    def train_config(self) -> TrainConfig:
        return self.params.train_config()

    def training_events(self) -> Iterator[TrainEvent]:
        """The engine's training generator (runs in the worker thread); prepare() first."""
        if self._data is None:
            raise UUDSError("choose the source image, its labels and the target image first")
        tcfg = self.train_config()
        if self.model is None:
            note = self.build_model(announce=False)
            yield TrainEvent("model", 0, tcfg.steps, message=note)
        self._new_control(tcfg)
        start = self.model.trained_steps
        if start >= tcfg.steps:
            tcfg.steps = start + tcfg.steps
        job = AdaptJob(self.model.cfg, tcfg, *self._data, model=self.model)
        yield from job.train(self.control, start_step=start)

    def _new_control(self, tcfg: TrainConfig) -> TrainControl:
        """The knobs of a run about to start (threshold, prompt, stop, preview pacing), previewing the slice on screen."""
        self.control = TrainControl(tcfg.threshold, self.params.domain_prompt, self.display_timeout)
        self.control.preview_input = self._current_slice_tensor()
        return self.control

    def handle_event(self, ev: TrainEvent) -> None:
        """Main-thread dispatcher of training events: status, loss history, preview layers."""
        s = self.status
        if ev.kind == "start":
            s.running, s.total, s.message, s.guard_note = True, ev.total, ev.message, ""
        elif ev.kind == "step":
            s.losses = s.losses + [ev.losses.get("total", float("nan"))]
            s.history = s.history + [{"step": ev.step, **ev.losses}]
            s.step = ev.step
            s.message = f"step {ev.step}/{ev.total}  loss {ev.losses.get('total', 0):.3f}  " \
                        f"{ev.slices_per_s:.1f} slices/s  ETA {ev.eta_s:.0f} s"
            if ev.message:  # a guard tripped or cleared: it stays on screen until the next change
                s.guard_note = ev.message if ev.message.startswith("warning") else ""
        elif ev.kind == "preview" and ev.preview is not None:
            layers = self._show_preview(ev.preview)
            control = self.control

            def shown() -> None:  # the preview is on screen: next preview on the slice shown then, go on
                if control is not None:
                    control.preview_input = self._current_slice_tensor()
                    control.preview_displayed()

            self._refresh(layers, shown)
        elif ev.kind == "model":  # built in the worker thread; said here, on the main thread
            s.message, s.weights_note = ev.message, weights_note(self._clip_weights)
        elif ev.kind == "diverged":  # stays on screen: the run ended on its last finite weights
            s.running, s.message, s.guard_note = False, ev.message, f"warning: {ev.message}"
        elif ev.kind in ("done", "stopped"):
            s.running, s.message = False, ev.message

    def stop(self) -> None:
        if self.control is not None:
            self.control.stop()

    def training_finished(self) -> None:
        """Free what training held: optimizer state, autograd buffers, cached GPU blocks."""
        if self.model is not None:
            self.model.optimizer_state = None
            self.model.last_iterate_state = None  # the last step's weights beside their average: benchmarks only
            self.model.zero_grad(set_to_none=True)
        self.status.running = False
        release_memory()

    def release(self) -> None:
        """Drop the model entirely (widget closed)."""
        self.stop()
        self.model = None
        self.prediction = None
        release_memory()

    # -- prediction and layers -----------------------------------------------------------------
    def predict(self) -> VolumePrediction:
        """Whole-volume prediction and layer update, synchronously (the widget runs the first half in a worker)."""
        return self.show_prediction(self.compute_prediction())

    def compute_prediction(self) -> VolumePrediction:
        """The network part of :meth:`predict`: touches no layer, so it may run in a worker thread."""
        return run_to_end(self.prediction_steps())

    def prediction_steps(self) -> Iterator[tuple[int, int]]:
        """:meth:`compute_prediction` as a generator of (slices done, slices in all), returning the prediction:
        what the widget's worker iterates, so that the progress bar moves while the volume is segmented."""
        if self.model is None or self.target is None:
            raise UUDSError("no model or target yet: train (or load weights) and choose a target image")
        self.model.to(resolve_device(self.params.device))
        return (yield from iter_predict_volume(self.model, self.target.volume, domain_prompt=self.params.domain_prompt,
                                               norm=self.target.norm, keep=self.painted(), keep_own=True))

    def painted(self) -> np.ndarray | None:
        """The voxels the user painted as object on the corrected slices (None without corrections): what the
        largest-object option never drops (engine/components.py)."""
        c = self.corrections
        if c is None or not c.slices or self.target is None or c.shape != tuple(self.target.volume.data.shape):
            return None
        return c.labels > 0

    def show_prediction(self, pred: VolumePrediction) -> VolumePrediction:
        """Main thread: cache the prediction (its entropy serves every later threshold) and update the layers."""
        self.prediction = pred
        self._ranking = None  # the review ranks the new prediction
        self._show_prediction()
        return pred

    def adapt_and_segment(self, source, source_labels, target) -> VolumePrediction:
        """One click, synchronously: prepare, train, predict (the widget runs the training in a worker)."""
        self.prepare(source, source_labels, target)
        return self.run_synchronously(self.training_events())

    def run_synchronously(self, events: Iterator[TrainEvent]) -> VolumePrediction:
        """What the widget's worker and dispatcher do, on this thread: every training event handled, memory freed,
        then the whole volume predicted (adapt & segment, fine-tune on corrections)."""
        for ev in events:
            self.handle_event(ev)
        self.training_finished()
        return self.predict()

    def set_threshold(self, chi: float) -> None:
        """Re-threshold the cached entropy into the uncertain region (entropy >= chi: the voxels Eq. 7 leaves out):
        no network call. Live during training."""
        self.params.threshold = float(chi)
        if self.control is not None:
            self.control.threshold = float(chi)
        if self.prediction is not None:
            self._layer("uncertain").data = self.uncertain(chi)
            self._ranking = None

    def set_tta(self, tta: str) -> None:
        """Test-time augmentation on or off for every later prediction; the slice on screen is re-predicted at once
        (the whole volume with Re-predict volume)."""
        self._set_prediction_option("tta", tta, "test-time augmentation")

    def set_refine(self, refine: str) -> None:
        """Boundary refinement on the target's edges on or off for every later prediction; the slice on screen is
        re-predicted at once (the whole volume with Re-predict volume)."""
        self._set_prediction_option("refine", refine, "boundary refinement")

    def set_smooth_z(self, smooth_z: str) -> None:
        """Each slice read with its neighbours (``binomial``) or alone (``none``) in every later prediction; the slice
        on screen is re-predicted at once (the whole volume with Re-predict volume)."""
        self._set_prediction_option("smooth_z", smooth_z, "through-plane smoothing")

    def set_objects(self, objects: str) -> None:
        """Keep every piece of the predicted object (``all``), only the largest (and the painted ones, ``largest``), or
        the largest where it holds most of the prediction (``auto``), in every later prediction. ``largest`` and
        ``auto`` apply to the whole volume at once (no network call), deciding on the mask as it stands (pieces an
        earlier choice removed stay removed); Re-predict volume decides again on the network's own prediction and,
        with ``all``, brings the other pieces back."""
        self.params.objects = objects
        if self.model is None:
            return
        self.model.cfg.objects = objects
        if self.target is None or self.prediction is None or self.status.running:
            return
        if objects != "all":
            self._ranking = None  # the review grows the object it ranks around: the pieces kept now
            report = self._keep_objects()
            self._show_prediction()
            self.status.message = describe_objects(report, painted=True)
        else:
            self.status.message = "every piece is kept from the next prediction: Re-predict volume brings them back"

    def _keep_objects(self) -> dict | None:
        """Apply the model's ``objects`` setting to the whole prediction as it stands, every piece the user painted
        kept (the corrections collected first: what was painted last counts); returns what it removed
        (components.objects_reported), also kept as the prediction's ``objects``."""
        self.collect_corrections()
        self.prediction.seg, self.prediction.objects = objects_reported(self.prediction.seg, self.model.cfg.objects,
                                                                        self.painted())
        return self.prediction.objects

    def _set_prediction_option(self, key: str, value: str, what: str) -> None:
        """Set a prediction setting of the parameters and the model's config (``key``, the same name in both) and
        re-predict the slice on screen with it, saying how much changed."""
        setattr(self.params, key, value)
        if self.model is None:
            return
        setattr(self.model.cfg, key, value)
        if self.target is not None and self.prediction is not None and not self.status.running:
            i, flipped, _ = self._repredict_slice_and_compare()
            self.status.message = (f"{what} {value} on slice {i}: {flipped:.1%} of its pixels changed class; "
                                   "Re-predict volume applies it everywhere")

    def _repredict_slice_and_compare(self) -> tuple[int, float, float]:
        """Re-predict the slice on screen; return its index, the fraction of its pixels that changed class and the
        mean absolute change of its synthetic source (grey values in [-1, 1])."""
        axis = self.model.cfg.axis
        i = self.current_index()
        where = slab(axis, i, i + 1)
        before_seg = np.array(self.prediction.seg[where], copy=True)
        before_syn = np.array(self.prediction.synthetic[where], copy=True)
        self.predict_current_slice()
        flipped = float((self.prediction.seg[where] != before_seg).mean())
        return i, flipped, float(np.abs(self.prediction.synthetic[where] - before_syn).mean())

    def set_prompt(self, text: str) -> None:
        """New domain prompt: used from the next training step, and the current slice is re-predicted."""
        self.params.domain_prompt = text
        if self.control is not None:
            self.control.domain_prompt = text
        if self.model is not None and self.target is not None and not self.status.running:
            if self.prediction is None:
                self.predict_current_slice()
                return
            i, flipped, change = self._repredict_slice_and_compare()
            self.status.message = (f"prompt \"{self.model.cfg.domain_text(text)}\" on slice {i}: {flipped:.1%} of its "
                                   f"pixels changed class; the synthetic source moved by {change / 2:.1%} of its range")

    def current_index(self) -> int:
        axis = self.model.cfg.axis if self.model is not None else self.params.axis
        n = self.target.image.shape[0] if self.target is not None else 1
        try:  # the viewer's world point -> the target layer's voxel index along the model's axis
            point = self.viewer.dims.point[-3:]
            if self.target_layer is not None:
                pos = round(float(self.target_layer.world_to_data(point)[axis]))
            else:
                pos = int(self.viewer.dims.current_step[-3 + axis])
        except Exception:
            pos = n // 2
        return int(min(max(pos, 0), n - 1))

    def _current_slice_tensor(self) -> torch.Tensor | None:
        if self.target is None:
            return None
        return self.target.image[self.current_index()][None]

    @torch.no_grad()
    def predict_current_slice(self) -> int:
        """Re-predict only the slice on screen (fast: one forward pass) and update every output layer."""
        if self.model is None or self.target is None:
            raise UUDSError("no model or target yet")
        if self.prediction is None:
            self.predict()
            return self.current_index()
        i = self.current_index()
        # as predict_volume does (test-time augmentation and the neighbours' vote included), for the slice on screen
        vol = self.target.volume
        one = self._slice_geometry()
        h = halo(self.model.cfg, vol.spacing)
        a0, b0 = widen(i, i + 1, vol.data.shape[one.axis], h)
        syn, probs = predict_slices(self.model, self.target.image[a0:b0], b0 - a0, self.params.domain_prompt)
        where = slab(one.axis, i, i + 1)
        body = body_mask(self.target.norm.apply(vol.data[slab(one.axis, a0, b0)]), one.axis) \
            if self.model.cfg.body_mask else None  # as predict_volume does: nothing outside the body
        pred = assemble_range(syn.float().cpu(), probs, one.with_slices(b0 - a0), body, False, i - a0, i + 1 - a0, h > 0,
                              keep_own=True)
        pred.seg = refine_seg(self.model.cfg, pred.seg, vol.data[where], self.target.norm,
                              vol.spacing)  # as predict_volume does (on this slice alone)
        self.prediction.put(where, pred)
        self._ranking = None  # the review ranks the prediction as it now is
        if self.model.cfg.objects != "all":  # a volume's pieces: decided on the whole volume, as predict_volume does
            self._keep_objects()
        self._show_prediction()
        return i

    def _slice_geometry(self) -> SliceGeometry:
        return self.target.geom.with_slices(1)

    def _show_preview(self, prev: dict[str, np.ndarray]) -> list:
        """Training preview (model resolution) -> the current slice of the output layers' data.

        Returns the layers to refresh (the caller refreshes them, at once or one frame each)."""
        if self.target is None:
            return []
        i = self.current_index()
        one = self._slice_geometry()
        syn = torch.from_numpy(prev["synthetic"])[None, None]
        seg = torch.from_numpy(prev["seg"].astype(np.float32))[None, None]
        ent = torch.from_numpy(prev["entropy"])[None, None]
        vals = {"synthetic": from_square(syn, one, fill=-1.0)[0].numpy(), "seg": from_square(seg, one, "nearest")[0].numpy(),
                "entropy": from_square(ent, one)[0].numpy()}
        vals["uncertain"] = vals["entropy"] >= self.params.threshold
        shape = self.target.volume.data.shape
        self.collect_corrections()
        corrected = self.corrections is not None and i in self.corrections.slices
        layers = []
        for key in ("seg", "synthetic", "uncertain", "entropy"):  # what the eye looks for first
            layer = self._layer(key, create_shape=shape)
            if key == "seg" and corrected:  # the user's slice: never painted over
                continue
            layer.data[slab(one.axis, i, i + 1)] = vals[key].astype(layer.data.dtype)  # in place: only the slice changes
            layers.append(layer)
        self._shown_seg = np.array(self._layer("seg").data, copy=True)
        return layers

    def _refresh(self, layers, done=None) -> None:
        """Show new layer data: one frame per layer through the pacer when there is one, else at once."""
        if self.pacer is not None:
            self.pacer.submit(layers, done)
            return
        for layer in layers:
            layer.refresh()
        if done is not None:
            done()

    def missing_output_layers(self) -> list[str]:
        """Keys of the output layers that do not exist yet (or do not fit the target)."""
        return [] if self.target is None else self.outputs.missing(self.target.volume.data.shape)

    def ensure_output_layers(self, keys=None) -> None:
        if self.target is not None:
            for key in (OUTPUT_LAYERS if keys is None else keys):
                self._layer(key, create_shape=self.target.volume.data.shape)

    def _layer(self, key: str, create_shape: tuple[int, ...] | None = None):
        shape = create_shape or (self.prediction.seg.shape if self.prediction is not None else None)
        return self.outputs.get(key, shape, self.target.volume if self.target is not None else None,
                                self.target_layer)

    def _show_prediction(self) -> None:
        p = self.prediction
        self.collect_corrections()
        if self.corrections is not None and self.corrections.shape == p.seg.shape:
            self.corrections.apply(p)  # corrected slices: the user's labels, entropy 0
        values = {"synthetic": p.synthetic, "entropy": p.entropy, "uncertain": self.uncertain(self.params.threshold),
                  "seg": p.seg}
        stale = []
        for key, v in values.items():
            layer = self._layer(key, create_shape=v.shape)
            if layer.data.dtype == v.dtype:
                layer.data[...] = v  # in place: the user's layer keeps its identity, napari re-slices only
                stale.append(layer)
            else:
                layer.data = v
        self._refresh(stale)
        self._shown_seg = np.array(self._layer("seg").data, copy=True)
        self.outputs.show_volume_layers()

    def uncertain(self, chi: float) -> np.ndarray:
        """The uncertain region for threshold chi: entropy >= chi (outside the body the entropy is 0)."""
        return (~self.prediction.certain(chi)).astype(np.uint8)

    def forget_target(self) -> None:
        """The target layer was closed: nothing may be drawn from it again (its output layers stay)."""
        self.target = self.target_layer = self.prediction = None
        self._data = None
        self.corrections, self._ranking = None, None  # saved in the run folder as they were made
        self.outputs.volume_shown = False

    # -- weights and export ------------------------------------------------------------------------
    def save_weights(self, folder: str | Path, overwrite: bool = False) -> Path:
        if self.model is None:
            raise UUDSError("nothing to save yet: train or load a model first")
        # the run's decisions (randomise_used, pseudo_refine_used) go with the weights: save_checkpoint writes them
        return ckpt.save_checkpoint(self.model, folder, {"saved_from": "napari widget"}, overwrite=overwrite)

    def load_weights(self, folder: str | Path) -> None:
        self.model, meta = ckpt.load_checkpoint(folder, "cpu")
        self.params.adopt(self.model.cfg, meta.get("train", {}))
        self.status.message = f"loaded {folder} ({self.model.trained_steps} steps)"
        self.status.weights_note = ""  # trained weights: the note on random CLIP weights no longer applies
        # the loss plot, the progress bar and a guard's warning belonged to the model these weights replace
        s = self.status
        s.losses, s.history, s.step, s.total, s.guard_note = [], [], 0, 0, ""

    def export(self, layer, path: str | Path, overwrite: bool = False) -> Path:
        """Write a layer as NIfTI on its scan's grid (atomic); never replaces a file without ``overwrite``."""
        return export_layer(layer, path, overwrite)


def release_memory() -> None:
    """Hand cached GPU blocks back. A full ``gc.collect`` of napari's heap holds the GIL for ~0.4 s (a
    visible stall), so it runs only where it frees something worth it: GPU memory held by cycles."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        gc.collect()
        torch.cuda.empty_cache()


def weights_note(weights: str | None) -> str:
    """What the CLIP weights mean for quality, for a note that stays on screen (empty for pretrained ones)."""
    if weights:
        return ""
    return ("CLIP weights are random (no pretrained weights for this model, or none to be had here): the model "
            "learns from these scans alone. Masks from a short CPU run are rough: check them, correct them, or "
            "train longer; pretrained RN50 weights (model rn50, CLIP weights openai) help where they can be had.")
