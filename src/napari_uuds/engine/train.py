"""The training loop as a generator of progress events.

The CLI prints the events; the GUI's ``thread_worker`` yields them to the main thread. A
:class:`TrainControl` carries what may change while training runs: a stop flag (checked before every
step), the uncertainty threshold and the domain prompt text (both read at every step).
"""
from __future__ import annotations

import copy
import functools
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from . import distributed
from .config import LossWeights, TrainConfig
from .distributed import SINGLE, DistContext
from .losses import (has_object, loss_bscl, loss_dd, loss_id, loss_seg, loss_size, loss_useg,
                     loss_useg_ce_balanced, project_pseudo_label, pseudo_label,
                     total_loss)
from .model import UUDS
from .guards import AdaptationGuard, batch_statistics, object_fraction
from .randomise import AUTO_W1, BACKGROUND, gin, resolve_randomise
from .refine import refine_pseudo_label, resolve_pseudo_refine
from .discriminator import OutputAdversary
from .tcsa import TcsaState, tcsa_terms
from .text_embed import class_modality_embeddings, class_text_relations
from .slices import SliceSampler


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    from .errors import UUDSError

    if name == "cuda" and not torch.cuda.is_available():
        raise UUDSError("--device cuda asked for, but torch sees no CUDA GPU")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UUDSError("--device mps asked for, but torch sees no Apple GPU")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TrainControl:
    """Thread-safe knobs read by the running loop.

    ``display_timeout`` > 0 makes the loop wait, after yielding a preview, until the consumer calls
    :meth:`preview_displayed` (or the timeout passes). A GUI on a software-rendered canvas sets it, so the
    preview's frames are drawn while the CPU is free instead of competing with the next training step.
    """

    def __init__(self, threshold: float = 0.5, domain_prompt: str | None = None, display_timeout: float = 0.0):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threshold = threshold
        self._prompt = domain_prompt
        self._displayed = threading.Event()
        self._displayed.set()
        self.display_timeout = display_timeout
        self.preview_input: torch.Tensor | None = None  # (1, 1, S, S) slice to preview, set by the GUI

    def stop(self) -> None:
        self._stop.set()
        self._displayed.set()

    def preview_displayed(self) -> None:
        """The consumer has shown the last preview: the loop may go on."""
        self._displayed.set()

    def _preview_sent(self) -> None:
        self._displayed.clear()

    def wait_until_displayed(self) -> bool:
        """Block (at most ``display_timeout`` s) until the last preview is shown; True if it was."""
        if self.display_timeout <= 0:
            return True
        return self._displayed.wait(self.display_timeout)

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def threshold(self) -> float:
        with self._lock:
            return self._threshold

    @threshold.setter
    def threshold(self, v: float) -> None:
        with self._lock:
            self._threshold = float(v)

    @property
    def domain_prompt(self) -> str | None:
        with self._lock:
            return self._prompt

    @domain_prompt.setter
    def domain_prompt(self, text: str | None) -> None:
        with self._lock:
            self._prompt = text


class LastFiniteWeights:
    """A copy of the weights (and buffers) last seen finite, so that a run that diverges keeps what it learnt.

    ``offer(step)`` is called at logged steps whose losses were finite; every ``every`` steps it copies the state
    (on the training device) if every tensor is finite. ``restore()`` loads the copy back and returns its step.
    """

    def __init__(self, model: torch.nn.Module, step: int, every: int):
        self.model, self.every = model, max(1, every)
        self.step, self.state = step, self._copy()

    def _copy(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def offer(self, step: int) -> None:
        if step - self.step < self.every:
            return
        state = self._copy()
        floats = [v for v in state.values() if v.is_floating_point()]
        if floats and bool(torch.stack([torch.isfinite(v).all() for v in floats]).all()):  # one host sync
            self.step, self.state = step, state

    def restore(self) -> int:
        self.model.load_state_dict(self.state)
        return self.step


@torch.no_grad()
def _move_towards(average: dict[str, torch.Tensor], current: dict[str, torch.Tensor], w: float) -> None:
    """One step of an average of weights, in place: floating tensors move by ``w`` towards ``current``, integer
    buffers (batch counts) take its values (:class:`WeightAverage`, :class:`MeanTeacher`). One multi-tensor lerp for
    the floating ones (the same arithmetic as a ``lerp_`` each): the RN50 model's ~700 tensors would otherwise be ~700
    kernel launches a step on a GPU."""
    avg, cur = [], []
    for k, v in current.items():
        if average[k].is_floating_point():
            avg.append(average[k])
            cur.append(v.detach())
        else:
            average[k].copy_(v)
    if avg:
        torch._foreach_lerp_(avg, cur, w)


class WeightAverage:
    """An exponential moving average of the weights and floating buffers (batch-norm statistics) over the steps after
    ``start`` (docs/method.md, round 13; not in the paper).

    The n-th update after ``start`` moves the average towards the current weights by max(1 - decay, 1 / n): a plain
    running mean of the first 1 / (1 - decay) steps (no pull towards the weights of ``start``), then an EMA.
    Integer buffers (batch counts) follow the current weights. ``apply()`` loads the average into the model and
    returns the last step's weights (a benchmark scores both)."""

    def __init__(self, model: torch.nn.Module, decay: float, start: int):
        self.model, self.decay, self.start = model, decay, start
        self.state: dict[str, torch.Tensor] | None = None
        self.updates = 0

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step <= self.start:
            return
        current = self.model.state_dict()
        self.updates += 1
        if self.state is None:
            self.state = {k: v.detach().clone() for k, v in current.items()}
            return
        _move_towards(self.state, current, max(1.0 - self.decay, 1.0 / self.updates))

    def apply(self) -> dict[str, torch.Tensor] | None:
        """Load the average into the model; return the last step's weights, on the host so that no accelerator memory
        stays held by them (None, nothing changed, before any update)."""
        if self.state is None:
            return None
        last = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self.state)
        return last

    def report(self) -> dict:
        return {"decay": self.decay, "from_step": self.start + 1, "updates": self.updates}


class MeanTeacher:
    """A copy of the model whose weights follow an exponential moving average of the student's from step ``start``
    on (mean teacher, Tarvainen and Valpola 2017; docs/method.md, round 15; not in the paper): it reads the target
    batch, in inference mode, for the pseudo labels of Eq. 6-7, so that the student does not label its own output.

    The n-th update after ``start`` moves the teacher by max(1 - decay, 1 / n) (the first copies the student), as
    :class:`WeightAverage` does. Not saved with the weights: a resumed run (or a fine-tune) starts its teacher again,
    a copy made after its first step, so that first step's pseudo labels are the network's own."""

    def __init__(self, model: UUDS, decay: float, start: int):
        self.student, self.decay, self.start = model, decay, start
        self.net: UUDS | None = None
        self.updates = 0

    @property
    def ready(self) -> bool:
        return self.net is not None

    @torch.no_grad()
    def update(self, step: int) -> None:
        if step < self.start:
            return
        self.updates += 1
        if self.net is None:
            keep = self.student.optimizer_state, self.student.last_iterate_state
            self.student.optimizer_state = self.student.last_iterate_state = None  # not copied with the weights
            try:
                self.net = copy.deepcopy(self.student)
            finally:
                self.student.optimizer_state, self.student.last_iterate_state = keep
            self.net.requires_grad_(False)
            self.net.eval()
            return
        _move_towards(self.net.state_dict(), self.student.state_dict(), max(1.0 - self.decay, 1.0 / self.updates))

    @torch.no_grad()
    def probs(self, xt: torch.Tensor, prompt_text: str | None = None) -> torch.Tensor:
        """Class probabilities of the target batch as the teacher segments it (the path inference takes)."""
        if prompt_text is not None:
            self.net.domain_prompt.set_text(prompt_text)
        _, logits = self.net.infer(xt)
        return logits.float().softmax(1)  # (under the caller's autocast, as inference runs)

    def report(self) -> dict:
        return {"decay": self.decay, "from_step": self.start, "updates": self.updates}


@dataclass
class TrainEvent:
    kind: str  # "start" | "step" | "preview" | "done" | "stopped" | "diverged"
    step: int
    total: int
    losses: dict[str, float] = field(default_factory=dict)
    slices_per_s: float = 0.0
    elapsed_s: float = 0.0
    eta_s: float = 0.0
    message: str = ""
    preview: dict[str, np.ndarray] | None = None


def train(model: UUDS, source: SliceSampler, target: SliceSampler, cfg: TrainConfig,
          weights: LossWeights | None = None, control: TrainControl | None = None,
          start_step: int = 0, optimizer_state: dict | None = None, log_every: int = 1,
          target_labelled: SliceSampler | None = None, dist_ctx: DistContext = SINGLE) -> Iterator[TrainEvent]:
    """Train ``model`` in place, yielding a :class:`TrainEvent` every ``log_every`` steps.

    ``target_labelled``: target slices a user corrected (engine/finetune.py). Half of every target batch is drawn
    from them, and their segmentation through the target's own path (translate, re-encode, segment) is
    supervised like the source's (term ``tseg``, weighted as L_seg); the other half stays unlabelled.

    ``dist_ctx``: a distributed run's context (engine/distributed.py): the model is trained through DDP, the stop
    flag, the logged losses and the guard's statistics are shared by the ranks; the samplers are the rank's own.

    The last event is "done" or "stopped"; either way the model holds the weights learnt so far and
    ``model.optimizer_state`` the optimiser state (for resuming).
    """
    weights = weights or LossWeights()
    control = control or TrainControl(cfg.threshold)
    device = dist_ctx.device(resolve_device(cfg.device))
    seed_everything(dist_ctx.seed(cfg.seed) + start_step)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    model.to(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    if cfg.data_on_device:  # batches drawn and augmented where the model runs: no copy per step
        source.to(device)
        target.to(device)
        if target_labelled is not None:
            target_labelled.to(device)
    head_note = ""
    if cfg.uses_tcsa and model.text_head is not None:  # the head's class texts, as the descriptions are now
        emb, enc = class_modality_embeddings(model, cfg.text_encoder)  # (before DDP and the optimiser: it may rebuild the head)
        if not model.fit_text_head(emb):
            head_note = f"; the text head keeps its saved class texts (the {enc} encoder gives another width)"
    if cuda and cfg.channels_last:
        model.to_channels_last()
    net = distributed.wrap(model, dist_ctx, device)  # the model itself for one process
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if (cuda and cfg.amp) else torch.autocast("cpu", enabled=False)
    # fused Adam on CUDA: one kernel for every parameter's update instead of a dozen per parameter
    # a segmenter-only run (a fine-tune) optimises the segmenter's parameters; the rest is frozen below
    segmenter_only = cfg.train_parts == "segmenter"
    params = [p for m in model.segmenter_modules() for p in m.parameters()] if segmenter_only else model.parameters()
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True if cuda else None)
    if optimizer_state:
        opt.load_state_dict(optimizer_state)
        for g in opt.param_groups:  # the settings asked for now win over the saved ones
            g["lr"], g["weight_decay"] = cfg.lr, cfg.weight_decay
    mcfg = model.cfg
    total = cfg.steps
    adapt = cfg.mode == "adapt"
    dd_on = cfg.uses_dd(mcfg)
    text_rel, memory, note = None, None, ""
    if cfg.uses_tcsa:
        text_rel, encoder = class_text_relations(model, cfg.text_encoder)
        memory = TcsaState(weights.proto_form, mcfg.n_classes, model.tcsa_feature_dim, weights.proto_momentum, device)
        note = f"; TCSA text relations from {encoder}{head_note}"
    # TCSA's adversarial output-space term (engine/discriminator.py): a discriminator beside the model, from the
    # warm-up on; width 64 (the authors') for RN50, 16 for the tiny model
    adversary = None
    if cfg.uses_tcsa and adapt and weights.adv > 0:
        adversary = OutputAdversary(mcfg.n_classes, 64 if mcfg.arch == "rn50" else 16, device,
                                    wrap=lambda d: distributed.wrap(d, dist_ctx, device))
    # randomise="auto": decided once, from the grey values of the two domains (no label, no random draw)
    mode = cfg.randomise if (adapt or cfg.randomise != "auto") else "none"  # source only: no target to compare
    randomise, w1 = resolve_randomise(mode, source.images, target.images)
    model.randomise_used = {"randomise": randomise, **({"raw_w1": round(w1, 4)} if w1 is not None else {})}
    if w1 is not None:
        note += f"; source randomisation {randomise} (target-source grey-value W1 {w1:.2f}, GIN above {AUTO_W1})"
    # pseudo_refine="auto" (round 20): decided once, from the source's labels and slices (no target, no random draw)
    refine_mode = cfg.pseudo_refine if (adapt or cfg.pseudo_refine != "auto") else "none"
    pseudo_refine, agreement = resolve_pseudo_refine(refine_mode, source)
    model.pseudo_refine_used = {"pseudo_refine": pseudo_refine,
                                **({"edge_agreement": agreement.record()} if agreement is not None else {})}
    if agreement is not None:
        note += (f"; pseudo labels {'refined on the target' if pseudo_refine == 'edges' else 'not refined'} "
                 f"(source labels' edge agreement K {agreement.k:+.3f}, refined above 0)")
    source_fraction = object_fraction(source.labels, source.images) if source.labels is not None else 0.0
    guard = AdaptationGuard(source_fraction) if (adapt and cfg.guard and source.labels is not None) else None
    model.guard_report = None
    keeper = LastFiniteWeights(model, start_step, cfg.snapshot_every)
    # the weight average covers the second half of what this call trains
    average = WeightAverage(model, cfg.ema_decay, start_step + (total - start_step) // 2) if cfg.ema_decay > 0 else None
    model.last_iterate_state, model.weight_average = None, None
    # round 15's option: the pseudo labels come from a mean teacher, from the warm-up on
    teacher = MeanTeacher(model, cfg.teacher_decay, max(cfg.warmup, start_step)) \
        if (cfg.teacher_decay > 0 and adapt) else None
    model.teacher_report = None
    diverged = False
    yield TrainEvent("start", start_step, total, message=f"training {cfg.method} ({cfg.mode}) on {device}{note}")
    t0 = time.perf_counter()
    seen = 0
    step = start_step
    frozen = model.frozen_modules() if segmenter_only else []
    grad_was = [(p, p.requires_grad) for m in frozen for p in m.parameters()]
    try:
        for p, _ in grad_was:  # no gradient is kept for what does not train (given back in `finally`)
            p.requires_grad_(False)
        while step < total:
            if distributed.any_rank(control.stopped, dist_ctx):  # every rank stops after the same step
                yield TrainEvent("stopped", step, total, elapsed_s=time.perf_counter() - t0,
                                 message=f"stopped at step {step}; the weights learnt so far are kept")
                return
            prompt = control.domain_prompt
            if prompt is not None:
                model.domain_prompt.set_text(mcfg.domain_text(prompt))
            chi = control.threshold
            model.train()
            for m in frozen:  # frozen parts read their running statistics, as inference does
                m.eval()
            xs, ys = source.sample(cfg.batch_size, augment=cfg.augment)
            # source_only: the second half of the batch is more source, and no term looks at it as target
            n_lab = cfg.batch_size // 2 if target_labelled is not None else 0
            xt, _ = (target if adapt else source).sample(cfg.batch_size - n_lab, augment=cfg.augment)
            if n_lab:  # corrected target slices at the end of the target batch
                xl, yl = target_labelled.sample(n_lab, augment=cfg.augment)
                xt, yl = torch.cat([xt, xl]), yl.to(device, non_blocking=True)
            mf = torch.channels_last if (cuda and cfg.channels_last) else torch.contiguous_format
            xs = xs.to(device, non_blocking=True).contiguous(memory_format=mf)
            xt = xt.to(device, non_blocking=True).contiguous(memory_format=mf)
            ys = ys.to(device, non_blocking=True)
            # source randomisation: the translator reads the randomised slice, L_id asks for the clean one
            xs_in = gin(xs, source.rng, cfg.randomise_p, invert=cfg.randomise_invert) if randomise == "gin" else xs
            id_target = xs_in if cfg.randomise_into == "segmenter" else xs
            rec_aug = None
            if randomise == "gin" and cfg.randomise_into == "both":  # the segmenter reads a second draw
                rec_aug = functools.partial(gin, rng=source.rng, p=cfg.randomise_p, body=xs > BACKGROUND,
                                            invert=cfg.randomise_invert)
            warm = step >= cfg.warmup
            held = guard is not None and guard.held  # the guard holds every target term back
            target_now = adapt and warm and not held  # the target terms (L_useg, size, TCSA's) train at this step
            dd_now = dd_on and (warm or not cfg.dd_warmup) and not held and not segmenter_only
            taught = teacher is not None and teacher.ready and target_now
            with amp:
                useg_now = cfg.uses_uuds and cfg.use_uncertainty and target_now
                out = net(xs_in, xt, cfg.dd_flow if dd_now else None, rec_aug,
                          useg_now and cfg.useg_flow == "segmenter", segmenter_only)
                # the teacher reads the target batch as inference does (in the same precision)
                teacher_probs = teacher.probs(xt, mcfg.domain_text(prompt) if prompt is not None else None) \
                    if taught else None
            with torch.autocast(device.type, enabled=False):  # losses in float32, outside bf16 autocast
                terms: dict[str, torch.Tensor] = {"seg": loss_seg(out.logits_s, ys)}
                if not segmenter_only:  # L_id, L_BSCL and L_DD train frozen parts only
                    terms["id"] = loss_id(out.rec_s, id_target)
                probs = out.logits_ts.float().softmax(1)
                labeller = probs.detach()  # who labels the target: the network itself (the paper), or its teacher
                if taught:
                    labeller = teacher_probs.float()
                pl, mask = pseudo_label(labeller, chi)
                certain = mask.mean()
                if mcfg.body_mask:  # nothing outside the body: background there, and certain
                    outside = (xt[:, 0] <= BACKGROUND)
                    inside = (~outside).float()
                    certain = (mask * inside).sum() / inside.sum().clamp(min=1.0)  # logged: of the body's pixels
                    pl = pl.masked_fill(outside, 0)
                    mask = mask.masked_fill(outside, 1.0)
                # what the network predicts: the guard reads this, never the projection below nor a teacher's label
                pl_seen = pl
                if taught:
                    pl_seen = probs.detach().argmax(1)
                    if mcfg.body_mask:
                        pl_seen = pl_seen.masked_fill(outside, 0)
                if cfg.pseudo_prior != "none" and target_now and source_fraction > 0:
                    # the source's size (rounds 10-11), only where a target term reads the pseudo label
                    pl, mask = project_pseudo_label(labeller, pl, mask, xt[:, 0] > BACKGROUND, source_fraction,
                                                    high=2.0 if cfg.pseudo_prior == "band" else math.inf)
                if pseudo_refine == "edges" and useg_now:
                    # round 19: the slice's own edges move the pseudo label's boundary; what they moved supervises
                    pl, mask = refine_pseudo_label(pl, mask, xt[:, 0], mcfg.body_mask)
                if cfg.uses_uuds:
                    if mcfg.use_seg_prompt and out.z_s is not None:
                        terms["bscl"] = loss_bscl(out.z_s, has_object(ys), weights.tau_bscl)
                    if dd_now:
                        terms["dd_s"] = loss_dd(out.xg_s, out.xg_t, out.t_d, weights.tau_dd, weights.dd_form)
                        ref_t, t_d = out.xg_t, out.t_d
                        if cfg.dd_flow == "split":  # Eq. 2 moves the translator only: its references are fixed
                            ref_t, t_d = ref_t.detach(), t_d.detach()
                        terms["dd_ts"] = loss_dd(out.xg_ts, ref_t, t_d, weights.tau_dd, weights.dd_form)
                    if useg_now:
                        terms["useg"] = (loss_useg_ce_balanced(out.logits_ts, pl, mask)
                                         if weights.useg_form == "ce_balanced"
                                         else loss_useg(probs, pl, mask, absent=weights.useg_absent))
                    if weights.size > 0 and target_now and source_fraction > 0:
                        terms["size"] = loss_size(probs, xt[:, 0] > BACKGROUND, source_fraction)
                if n_lab:  # the user's corrections supervise the target path
                    terms["tseg"] = loss_seg(out.logits_ts[-n_lab:], yl)
                if cfg.uses_tcsa:
                    terms.update(tcsa_terms(out, ys, probs, pl, mask, memory, text_rel, weights.tau_proto,
                                            target_terms=target_now, entropy=weights.ent > 0))
                    if adversary is not None and target_now:
                        terms["adv"] = adversary.generator_loss(probs)
                loss = total_loss(terms, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            disc_loss = None
            if adversary is not None and target_now:  # the discriminator's half of the step, on detached maps
                disc_loss = adversary.step(out.logits_s.detach().float().softmax(1), probs.detach())
            step += 1
            seen += cfg.batch_size
            if average is not None:
                average.update(step)
            if teacher is not None:
                teacher.update(step)
            if step % log_every == 0 or step == total:
                el = time.perf_counter() - t0
                rate = seen / el if el > 0 else 0.0
                names = [*terms, "total", "certain"]
                parts = [*(v.detach().float() for v in terms.values()), loss.detach().float(), certain.float()]
                if disc_loss is not None:
                    names.append("disc")
                    parts.append(disc_loss.float())
                # the guards look from the warm-up on, at the logged steps (their figures ride the same host sync)
                stats = batch_statistics(pl_seen, xt, out.syn_t, xs) if (guard is not None and warm) else None
                if stats is not None:
                    names += ["target_fraction", "drift_w1", "raw_w1"]
                    parts += list(stats)
                # one host sync per logged step; averaged over the ranks of a distributed run (one guard decision)
                values = distributed.mean(torch.stack(parts), dist_ctx).tolist()
                losses = dict(zip(names, values))
                if not all(map(math.isfinite, values)):  # diverged: back to the last weights known to be finite
                    bad = next(k for k, v in losses.items() if not math.isfinite(v))
                    failed_at, step = step, keeper.restore()
                    kept = step
                    opt = None  # its moments are damaged too: not saved
                    diverged = True  # the weights kept are the last finite ones, not an average that holds NaN
                    yield TrainEvent("diverged", kept, total, losses, elapsed_s=time.perf_counter() - t0,
                                     message=f"training diverged at step {failed_at} ({bad} = "
                                             f"{losses[bad]}); the weights of step {kept}, the last known finite, "
                                             "are kept: lower the learning rate")
                    return
                keeper.offer(step)
                msg = ""
                if stats is not None:
                    msg = guard.update(step, losses["target_fraction"], losses["drift_w1"], losses["raw_w1"])
                    losses["target_source_ratio"] = guard.ratio
                    model.guard_report = guard.report()
                yield TrainEvent("step", step, total, losses, rate, el,
                                 (total - step) * el / max(step - start_step, 1), message=msg)
            if cfg.preview_every and step % cfg.preview_every == 0:
                preview = _preview(model, control, xt[:1], chi)
                control._preview_sent()
                yield TrainEvent("preview", step, total, preview=preview)
                control.wait_until_displayed()
        yield TrainEvent("done", step, total, elapsed_s=time.perf_counter() - t0,
                         message=f"finished {total} steps")
    finally:
        for p, was in grad_was:
            p.requires_grad_(was)
        # a segmenter-only optimiser holds a part of the parameters: nothing a full run could resume from
        model.optimizer_state = opt.state_dict() if (opt is not None and not segmenter_only) else None
        model.trained_steps = step
        if teacher is not None:
            model.teacher_report = teacher.report()
            teacher.net = None  # its copy of the weights goes with it
        if average is not None and not diverged:
            model.last_iterate_state = average.apply()
            if model.last_iterate_state is not None:
                model.weight_average = average.report()
        model.eval()


@torch.no_grad()
def _preview(model: UUDS, control: TrainControl, fallback: torch.Tensor, chi: float) -> dict[str, np.ndarray]:
    from .losses import entropy_map

    was = model.training
    model.eval()
    x = control.preview_input if control.preview_input is not None else fallback
    dev = next(model.parameters()).device
    syn, logits = model.infer(x.to(dev).float())
    probs = logits.float().softmax(1)
    ent = entropy_map(probs)
    model.train(was)
    return {"synthetic": syn[0, 0].float().cpu().numpy(), "seg": probs.argmax(1)[0].cpu().numpy().astype(np.uint8),
            "entropy": ent[0].cpu().numpy(), "certain": (ent[0] < chi).cpu().numpy()}
