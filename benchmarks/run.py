"""Quality benchmark on real scans: UUDS (and TCSA) against lower and upper bounds.

Runs the protocols of ``shared/data/README.md`` with the engine's own API:

* A1: BraTS whole tumour, T1c -> FLAIR; A2: FLAIR -> T1c (source pat0001-0003, target pat0004-0006);
* A1m: A1 with three tumour sub-regions (necrosis/non-enhancing, oedema, enhancing) for the multi-class path;
* C: spinal cord, T2 -> T1 (one subject; its upper bound is trained on the very T1 it is scored on).

Rows: ``lower`` (source only), ``histmatch`` (target histogram-matched to the source, lower model),
``pseudo`` (lower model fine-tuned on its entropy-filtered target pseudo-labels), ``gin_only`` (source
randomisation alone, no target term), ``uuds_paper`` (the paper's letter), ``uuds`` (the engine's default recipe,
whatever it is), ``uuds_no_gin`` / ``uuds_gin`` (source randomisation off / always on) and the ``uuds_gin_*`` /
``uuds_no_*``
rows that change one lever (``ADAPT_ROWS``), the paper's Table-3 ablations, ``tcsa``, ``uuds+tcsa`` and
``upper`` (supervised on the target contrast). The mapping of every row to its settings is ``ADAPT_ROWS`` and
``SOURCE_ROWS`` below; docs/method.md says why each exists.
Target labels are read for scoring only. Every row's volumes are predicted through the engine's own path, so each
keeps what the engine's default keeps of its predicted object (``objects auto`` since round 24, the bounds and the
simple rows included; ``uuds_paper`` keeps every piece): the bounds quoted before round 24 (e.g. A1's 41.2 and 69.3
at 600 steps) were measured with every piece kept.

Writes ``benchmarks/results/quality_<protocol>.json`` after every run (a crash keeps what was done;
re-running skips the (row, seed) pairs already there with the same settings) and regenerates
``benchmarks/results/quality.md`` from every such JSON.

    .venv/bin/python benchmarks/run.py --protocol C --steps 200
    .venv/bin/python benchmarks/run.py --protocol A1 --steps 200 --seeds 0
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_uuds.engine.atomic import atomic_write
from napari_uuds.engine.baselines import histogram_match, pseudo_labels
from napari_uuds.engine.config import (AUTO_FRAME_ARCHS, IMAGE_SIZE_DEFAULT, PREDICTION_SETTINGS, RECIPES, LossWeights,
                                      ModelConfig, TrainConfig)
from napari_uuds.engine.dataset import PreparedVolume, choose_image_size, choose_mm_per_pixel, prepare_volume, reslice
from napari_uuds.engine.infer import predict_volume
from napari_uuds.engine.job import AdaptJob
from napari_uuds.engine.metrics import score_classes
from napari_uuds.engine.model import UUDS
from napari_uuds.engine.slices import SliceSampler
from napari_uuds.engine.train import resolve_device
from napari_uuds.engine.volumes import NormParams, Volume, load_label, load_volume

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SUBREGIONS = {1: 1, 3: 1, 2: 2, 4: 3}

PROTOCOLS = {
    "A1": {"set": "brats", "source": "t1c", "target": "flair", "label": "seg", "classes": ["tumour"],
           "train": ["pat0001", "pat0002", "pat0003"], "test": ["pat0004", "pat0005", "pat0006"]},
    "A2": {"set": "brats", "source": "flair", "target": "t1c", "label": "seg", "classes": ["tumour"],
           "train": ["pat0001", "pat0002", "pat0003"], "test": ["pat0004", "pat0005", "pat0006"]},
    "A1m": {"set": "brats", "source": "t1c", "target": "flair", "label": "seg",
            "classes": ["necrosis or non-enhancing tumour", "oedema", "enhancing tumour"], "label_map": SUBREGIONS,
            "train": ["pat0001", "pat0002", "pat0003"], "test": ["pat0004", "pat0005", "pat0006"]},
    "C": {"set": "cord", "source": "t2", "target": "t1", "label": "{m}_seg", "classes": ["spinal cord"],
          "train": [""], "test": [""]},
}
#: benchmark rows -> (method, ModelConfig overrides, TrainConfig overrides, LossWeights overrides) for the
#: rows that train with target terms. ``uuds`` is the engine's defaults, whatever they are; ``uuds_paper`` the
#: paper's letter (config.RECIPES["paper"]); the ``uuds_no_*`` rows switch one lever of the default off.
_PM, _PT, _PW = RECIPES["paper"]
#: TCSA's network: no UUDS prompts, the authors' text-conditioned head
_TCSA_M = {"use_domain_prompt": False, "use_seg_prompt": False, "text_head": True}
ADAPT_ROWS: dict[str, tuple[str, dict, dict, dict]] = {
    "uuds": ("uuds", {}, {}, {}),
    "uuds_paper": ("uuds", _PM, {**_PT, "recipe": "paper"}, _PW),
    # the default without source randomisation: the default of round 1 (on A1 and A2 the same run as uuds, where
    # randomise=auto leaves GIN off)
    "uuds_no_gin": ("uuds", {}, {"randomise": "none"}, {}),
    # GIN always on: the default of commits 1b768c5..f5ceee8, whose lever rows follow (on C the same run as uuds)
    "uuds_gin": ("uuds", {}, {"randomise": "gin"}, {}),
    "uuds_gin_dd_printed": ("uuds", {}, {"randomise": "gin"}, {"dd_form": "printed"}),
    "uuds_gin_no_body_mask": ("uuds", {"body_mask": False}, {"randomise": "gin"}, {}),
    "uuds_gin_no_guard": ("uuds", {}, {"randomise": "gin", "guard": False}, {}),
    # physical scale (one mm per pixel for every volume, chosen as --mm-per-pixel auto does)
    "uuds_gin_mm": ("uuds", {"mm_per_pixel": "auto"}, {"randomise": "gin"}, {}),
    # an object-size prior on the target, log-ratio form (exploratory; the linear form, row uuds_size of commit
    # 6cdfed2, emptied every C prediction: kept as superseded)
    "uuds_gin_size_log": ("uuds", {}, {"randomise": "gin"}, {"size": 1.0}),
    # round 5: GIN read by the segmenter (L_id asks for the randomised slice); where auto leaves GIN off (A1, A2)
    # the same run as uuds
    "uuds_gin_into_segmenter": ("uuds", {}, {"randomise_into": "segmenter"}, {}),
    # round 7: the translator reads GIN (as the default) and the segmenter reads a second draw of GIN on the
    # reconstruction; where auto leaves GIN off (A1, A2) the same run as uuds
    "uuds_gin_both": ("uuds", {}, {"randomise_into": "both"}, {}),
    # round 8: Eq. 8 skips a class absent from the batch's certain pseudo label (no push towards empty)
    "uuds_useg_present": ("uuds", {}, {}, {"useg_absent": "skip"}),
    # round 9: Eq. 8 as class-balanced cross-entropy; Eq. 8 training the segmentation path only
    "uuds_useg_ce": ("uuds", {}, {}, {"useg_form": "ce_balanced"}),
    "uuds_useg_detached": ("uuds", {}, {"useg_flow": "segmenter"}, {}),
    # round 10's candidate (the pseudo label projected into the source's object-size band) is the default since round
    # 12; the default without it (rounds 4-11's default) is row uuds_no_pseudo_band below
    # round 11: only the lower bound of the band (the pseudo label is raised, never cut)
    "uuds_pseudo_floor": ("uuds", {}, {"pseudo_prior": "floor"}, {}),
    # round 14's candidate: scale augmentation of the source slices (log-uniform in [1/1.4, 1.4])
    "uuds_zoom": ("uuds", {}, {"zoom": 1.4}, {}),
    # round 15's candidate: the pseudo labels from a mean teacher (EMA of the weights, decay 0.99, from the warm-up)
    "uuds_teacher": ("uuds", {}, {"teacher_decay": 0.99}, {}),
    "uuds_invert": ("uuds", {}, {"randomise_invert": 0.5}, {}),
    # round 17's candidate: the image decoder reads the slice at S/2 and S/1
    "uuds_fine": ("uuds", {"fine_skips": True}, {}, {}),
    # round 19's candidate: the target's pseudo label refined on the slice's edges before Eq. 8 reads it
    "uuds_pseudo_edges": ("uuds", {}, {"pseudo_refine": "edges"}, {}),
    # the default without pass-specific batch-norm statistics: round 3's default, whose one-lever-off rows follow
    "uuds_no_pass_bn": ("uuds", {"pass_bn": False}, {}, {}),
    # one lever of the default off
    "uuds_no_pseudo_band": ("uuds", {}, {"pseudo_prior": "none"}, {}),
    # round 21: the default without the pseudo label's refinement (rounds 16-20's default)
    "uuds_no_pseudo_refine": ("uuds", {}, {"pseudo_refine": "none"}, {}),
    "uuds_dd_printed": ("uuds", {}, {}, {"dd_form": "printed"}),
    "uuds_no_body_mask": ("uuds", {"body_mask": False}, {}, {}),
    "uuds_no_guard": ("uuds", {}, {"guard": False}, {}),
    "uuds_no_domain_prompt": ("uuds", {"use_domain_prompt": False}, {}, {}),
    "uuds_no_seg_prompt": ("uuds", {"use_seg_prompt": False}, {}, {}),
    "uuds_no_uncertainty": ("uuds", {}, {"use_uncertainty": False}, {}),
    "tcsa": ("tcsa", _TCSA_M, {}, {}),
    "uuds+tcsa": ("uuds+tcsa", {"text_head": True}, {}, {}),
    # issue 18: one term of TCSA as its authors build it off at a time, and the prototype term's other forms
    "tcsa_no_adv": ("tcsa", _TCSA_M, {}, {"adv": 0.0}),
    "tcsa_no_proto": ("tcsa", _TCSA_M, {}, {"proto": 0.0}),
    "tcsa_no_text_head": ("tcsa", {**_TCSA_M, "text_head": False}, {}, {}),
    "tcsa_no_cov": ("tcsa", _TCSA_M, {}, {"cov": 0.0}),
    "tcsa_mpcl": ("tcsa", _TCSA_M, {}, {"proto_form": "mpcl"}),
    "tcsa_infonce": ("tcsa", _TCSA_M, {}, {"proto_form": "infonce"}),
    # before issue 18: the project's first reading (no adversary, no text head, InfoNCE prototypes, entropy 0.1)
    "tcsa_v1": ("tcsa", {"use_domain_prompt": False, "use_seg_prompt": False}, {},
                {"adv": 0.0, "proto_form": "infonce", "ent": 0.1}),
}
#: rows trained on labelled volumes only (no target term); ``gin_only`` is source randomisation alone
SOURCE_ROWS = {"lower": {"randomise": "none"}, "gin_only": {"randomise": "gin"},
               "gin_only_both": {"randomise": "gin", "randomise_into": "both"}}
ROWS = ["lower", "histmatch", "pseudo", "gin_only", "uuds_paper", "uuds", "uuds_no_gin", "uuds_gin",
        "uuds_gin_dd_printed", "uuds_gin_no_body_mask", "uuds_gin_no_guard", "uuds_gin_mm", "uuds_gin_size_log",
        "uuds_gin_into_segmenter", "uuds_gin_both", "gin_only_both", "uuds_useg_present",
        "uuds_useg_ce", "uuds_useg_detached", "uuds_pseudo_floor", "uuds_zoom", "uuds_teacher", "uuds_invert", "uuds_fine", "uuds_edges", "uuds_pseudo_edges", "uuds_pseudo_edges_refined", "uuds_largest", "uuds_objects_all", "uuds_smooth_z", "uuds_tta", "uuds_no_ema_tta", "uuds_no_ema",
        "uuds_no_pseudo_band", "uuds_no_pseudo_refine",
        "uuds_no_pass_bn", "uuds_dd_printed", "uuds_no_body_mask", "uuds_no_guard", "uuds_no_domain_prompt",
        "uuds_no_seg_prompt", "uuds_no_uncertainty", "tcsa", "uuds+tcsa", "tcsa_no_adv", "tcsa_no_proto",
        "tcsa_no_text_head", "tcsa_no_cov", "tcsa_mpcl", "tcsa_infonce", "tcsa_v1", "upper"]
#: rows scored from another row's runs (round 13): the default's run scored with its last step's weights instead of
#: their average (``uuds_no_ema``: rounds 4-12's way), and with test-time augmentation: row -> (the row that trains,
#: weights, tta, refine[, objects]; without objects, the model's own). The weight average changes nothing in training,
#: so these are the same runs, paired.
PAIRED_ROWS = {"uuds_no_ema": ("uuds", "last", "none", "none"), "uuds_tta": ("uuds", "ema", "d8", "none"),
               "uuds_no_ema_tta": ("uuds", "last", "d8", "none"),
               # round 18: the same run's prediction with the boundary refined on the target's edges
               "uuds_edges": ("uuds", "ema", "none", "edges"),
               "uuds_pseudo_edges_refined": ("uuds_pseudo_edges", "ema", "none", "edges"),
               # round 23: the same run's prediction, its largest connected object only
               "uuds_largest": ("uuds", "ema", "none", "none", "largest"),
               # round 24's default (objects auto) off: every piece of the same run's prediction kept
               "uuds_objects_all": ("uuds", "ema", "none", "none", "all"),
               # round 25: the same run's prediction, each slice's probabilities smoothed with its neighbours'
               "uuds_smooth_z": ("uuds", "ema", "none", "none", None, "binomial")}
MAIN_ROWS = {"lower", "histmatch", "pseudo", "gin_only", "uuds_paper", "uuds", "upper"}
DESCRIPTIONS = {
    "tumour": "a brain tumour with surrounding oedema",
    "necrosis or non-enhancing tumour": "the necrotic and non-enhancing core of a glioma",
    "oedema": "peritumoral oedema, swollen white matter around a glioma",
    "enhancing tumour": "the contrast-enhancing rim of a glioma",
    "spinal cord": "the spinal cord inside the spinal canal",
}


def git_commit() -> str:
    """Short hash of the checkout the benchmark runs from (recorded with every run)."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()


# -- data -----------------------------------------------------------------------------------------
def _paths(data: Path, proto: dict, subject: str, modality: str) -> tuple[Path, Path]:
    folder = data / proto["set"] / subject
    label = proto["label"].format(m=modality)
    return folder / f"{modality}.nii.gz", folder / f"{label}.nii.gz"


def _load(data: Path, proto: dict, subjects: list[str], modality: str, cfg: ModelConfig, with_label: bool
          ) -> list[PreparedVolume]:
    out = []
    n = len(cfg.class_names)
    for s in subjects:
        ip, lp = _paths(data, proto, s, modality)
        vol = load_volume(ip)
        lab = load_label(lp, n, like=vol, binarize=n == 1, label_map=proto.get("label_map")) if with_label else None
        out.append(prepare_volume(vol, cfg.axis, cfg.image_size, lab))
    return out


def _reference_labels(data: Path, proto: dict, cfg: ModelConfig) -> list[Volume]:
    n = len(cfg.class_names)
    return [load_label(_paths(data, proto, s, proto["target"])[1], n, binarize=n == 1,
                       label_map=proto.get("label_map"), allow_empty=True) for s in proto["test"]]


def protocol_config(proto: dict, arch: str = "tiny", image_size: int | str | None = None) -> ModelConfig:
    """The model of a protocol: its classes (described for TCSA's relations) and its source contrast's name
    (``image_size`` "auto": the architecture's frame until :func:`fit_frame` has seen the volumes)."""
    names = proto["classes"]
    return ModelConfig.for_arch(arch, image_size=None if image_size == "auto" else image_size, class_names=names,
                                class_descriptions=[DESCRIPTIONS.get(n, n) for n in names],
                                source_modality=proto["source"].upper(), target_modality=proto["target"].upper())


def load_protocol(data: Path, proto: dict, cfg: ModelConfig, upper: bool = False) -> dict:
    """A protocol's labelled sources, unlabelled targets and the targets' reference labels (scoring only); with
    ``upper``, the target contrast of the training subjects with labels too (the upper bound's sources)."""
    out = {"sources": _load(data, proto, proto["train"], proto["source"], cfg, True),
           "targets": _load(data, proto, proto["test"], proto["target"], cfg, False)}
    if upper:
        out["upper_sources"] = _load(data, proto, proto["train"], proto["target"], cfg, True)
    return {**out, "refs": _reference_labels(data, proto, cfg)}


def fit_frame(loaded: dict, cfg: ModelConfig, image_size: int | str | None = IMAGE_SIZE_DEFAULT) -> dict:
    """``--image-size auto`` (round 26 of docs/method.md), as the CLI does it: where every source and target slice
    is smaller than the architecture's frame, ``cfg.image_size`` becomes the frame at their own size and the
    protocol's volumes are sliced again at it (the upper bound's sources too); otherwise nothing changes."""
    if image_size != "auto" or cfg.arch not in AUTO_FRAME_ARCHS or cfg.mm_per_pixel > 0:
        return loaded
    size = choose_image_size(loaded["sources"] + loaded["targets"], cfg.axis, cfg.image_size)
    if size == cfg.image_size:
        return loaded
    cfg.image_size = size
    sliced = ("sources", "targets", "upper_sources")
    return {k: reslice(v, cfg.axis, size, 0.0) if k in sliced else v for k, v in loaded.items()}


def setup_protocol(data: Path, proto: dict, arch: str = "tiny", image_size: int | str | None = IMAGE_SIZE_DEFAULT,
                   upper: bool = False) -> tuple[ModelConfig, dict]:
    """A protocol's model configuration and volumes, sliced at the frame the engine's default (or ``image_size``)
    asks for."""
    cfg = protocol_config(proto, arch, image_size)
    return cfg, fit_frame(load_protocol(data, proto, cfg, upper=upper), cfg, image_size)


def _image_size(s: str) -> int | str:
    return s if s == "auto" else int(s)


# -- one run ----------------------------------------------------------------------------------------
def _train(cfg: ModelConfig, sources: list[PreparedVolume], targets: list[PreparedVolume], tcfg: TrainConfig,
           model: UUDS | None = None, source_sampler: SliceSampler | None = None,
           weights: LossWeights | None = None) -> tuple[UUDS, float, dict]:
    """The engine's adapt job (engine/job.py), as the CLI and the widget run it, from step 0."""
    job = AdaptJob(cfg, tcfg, sources, targets, weights or LossWeights(), model=model)
    model = job.build()
    t = time.perf_counter()
    last: dict = {}
    for ev in job.train(start_step=0, source_sampler=source_sampler):
        if ev.kind == "step":
            last = ev.losses
            if ev.step % 50 == 0:
                print(f"    step {ev.step}/{ev.total} " + " ".join(f"{k}={v:.3f}" for k, v in ev.losses.items()),
                      flush=True)
    model.optimizer_state = None
    return model, time.perf_counter() - t, last


def _evaluate(model: UUDS, targets: list[PreparedVolume], refs: list[Volume], class_names: list[str],
              matched: list[np.ndarray] | None = None, save: Path | None = None) -> list[dict]:
    """Score each target; ``save``: also write each predicted mask there (``<volume>.npz``, for label-free statistics
    across runs such as the agreement of seeds, benchmarks/agreement.py)."""
    rows = []
    for i, (tp, ref) in enumerate(zip(targets, refs)):
        if matched is not None:  # already normalised (and matched): identity normalisation
            vol = Volume(matched[i], tp.volume.affine, tp.volume.header, tp.volume.ornt, tp.volume.path, tp.volume.name)
            pred = predict_volume(model, vol, norm=NormParams(-1.0, 1.0))
        else:
            pred = predict_volume(model, tp.volume, norm=tp.norm)
        r = score_classes(pred.seg, ref.data, tp.volume.spacing, class_names)
        name = tp.volume.name if len(targets) == 1 else Path(tp.volume.path).parent.name
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(save / f"{name}.npz", seg=pred.seg.astype(np.uint8))
        rows.append({"volume": name,
                     "dice": round(r["dice"], 3), "assd_mm": None if r["assd_mm"] is None else round(r["assd_mm"], 3),
                     "empty_prediction": r["empty_prediction"],
                     # label-free: predicted object volume (mm^3), to set against the source's (collapse guard)
                     "pred_mm3": round(float((pred.seg > 0).sum()) * float(np.prod(tp.volume.spacing)), 1),
                     **({"classes": {k: {"dice": round(v["dice"], 3), "assd_mm": v["assd_mm"]}
                                     for k, v in r["classes"].items()}} if "classes" in r else {})})
    return rows


def score_ways(model: UUDS, ways: dict[str, tuple[str, ...]], score) -> dict:
    """One trained run scored several ways (round 13): ``ways`` = name -> (weights, tta, refine[, objects[,
    smooth_z]]), weights ``last`` (the last step's, ``model.last_iterate_state``) or ``ema`` (the average the run ended
    with), refine a boundary refinement (round 18), objects what of the object is kept (round 23), smooth_z the
    through-plane smoothing (round 25); left out or None: the model's own, so a way changes only what it names.
    Returns name -> score(model, name); the model ends as it came (the average loaded, its own settings)."""
    average = {k: v.clone() for k, v in model.state_dict().items()}
    keys = PREDICTION_SETTINGS
    own, out = tuple(getattr(model.cfg, k) for k in keys), {}
    for name, way in ways.items():
        which, *given = way
        model.load_state_dict(model.last_iterate_state if which == "last" else average)
        for k, v, mine in zip(keys, (*given, *own[len(given):]), own):
            setattr(model.cfg, k, mine if v is None else v)
        out[name] = score(model, name)
    model.load_state_dict(average)
    for k, v in zip(keys, own):
        setattr(model.cfg, k, v)
    return out


def run_row(row: str, seed: int, ctx: dict) -> dict:
    cfg_kw = dict(ctx["model_kw"])
    tkw = dict(steps=ctx["steps"], batch_size=ctx["batch_size"], seed=seed, device=ctx["device"], lr=ctx["lr"])
    sources, targets, refs, names = ctx["sources"], ctx["targets"], ctx["refs"], ctx["class_names"]
    info: dict = {}
    if row in ("lower", "histmatch", "pseudo"):
        model = ctx["lower_models"].get(seed)
        if model is None:
            model, secs, _ = _train(ModelConfig(**cfg_kw), sources, targets,
                                    TrainConfig(mode="source_only", **SOURCE_ROWS["lower"], **tkw))
            ctx["lower_models"][seed] = model
            info["train_s"] = round(secs, 1)
        if row == "histmatch":
            refs_norm = [s.norm.apply(s.volume.data) for s in sources]
            matched = [histogram_match(t.norm.apply(t.volume.data), refs_norm) for t in targets]
            return {**info, "volumes": _evaluate(model, targets, refs, names, matched)}
        if row == "pseudo":
            labelled = []
            fractions = []
            for t in targets:
                lab, frac = pseudo_labels(model, t.image, ctx["threshold"])
                fractions.append(frac)
                labelled.append(PreparedVolume(t.volume, t.norm, t.image, t.geom, lab))
            sampler = SliceSampler([p.image for p in sources + labelled], [p.label for p in sources + labelled],
                                   0.5, seed)
            import copy

            ft = copy.deepcopy(model)
            tcfg = TrainConfig(mode="source_only", randomise="none", **{**tkw, "steps": ctx["pseudo_steps"]},
                               warmup_steps=0)
            ft, secs, _ = _train(ModelConfig(**cfg_kw), sources, targets, tcfg, model=ft, source_sampler=sampler)
            info.update(finetune_s=round(secs, 1), certain_fraction=round(float(np.mean(fractions)), 3))
            return {**info, "volumes": _evaluate(ft, targets, refs, names)}
        return {**info, "volumes": _evaluate(model, targets, refs, names)}
    if row in ("gin_only", "gin_only_both"):
        model, secs, _ = _train(ModelConfig(**cfg_kw), sources, targets,
                                TrainConfig(mode="source_only", **SOURCE_ROWS[row], **tkw))
        return {"train_s": round(secs, 1), "volumes": _evaluate(model, targets, refs, names)}
    if row == "upper":
        model, secs, _ = _train(ModelConfig(**cfg_kw), ctx["upper_sources"], targets,
                                TrainConfig(mode="source_only", randomise="none", **tkw))
        return {"train_s": round(secs, 1), "volumes": _evaluate(model, targets, refs, names)}
    method, mx, tx, wx = ADAPT_ROWS[row]
    if mx.get("mm_per_pixel") == "auto":  # physical scale: every volume sliced again at one mm per pixel
        mm = choose_mm_per_pixel(sources + targets, cfg_kw["axis"], cfg_kw["image_size"])
        sources, targets = (reslice(v, cfg_kw["axis"], cfg_kw["image_size"], mm) for v in (sources, targets))
        mx = {**mx, "mm_per_pixel": mm}
    tcfg = TrainConfig(method=method, threshold=ctx["threshold"], text_encoder=ctx["text_encoder"], **tkw, **tx)
    weights = LossWeights(**wx)
    model, secs, last = _train(ModelConfig(**{**cfg_kw, **mx}), sources, targets, tcfg, weights=weights)
    dd = {"dd_flow": tcfg.dd_flow, "dd_warmup": tcfg.dd_warmup, "dd_scale": weights.dd_scale,
          "dd_form": weights.dd_form} if tcfg.uses_dd(model.cfg) else {}
    masks = ctx.get("save_masks")
    volumes = _evaluate(model, targets, refs, names, save=Path(masks) / ctx["protocol"] / f"{row}_s{seed}" if masks else None)
    paired = {}
    if model.last_iterate_state is not None:  # the same run, scored the other ways
        paired = score_ways(model, {k: v[1:] for k, v in PAIRED_ROWS.items() if v[0] == row},
                            lambda m, way: _evaluate(m, targets, refs, names, save=Path(masks) / ctx["protocol"] /
                                                     f"{way}_s{seed}" if masks else None))
    return {"train_s": round(secs, 1), "final_losses": {k: round(v, 4) for k, v in last.items()},
            "guard": model.guard_report, "randomise_used": model.randomise_used,
            "pseudo_refine_used": model.pseudo_refine_used,
            "weight_average": model.weight_average,
            **({"teacher": model.teacher_report} if model.teacher_report else {}), **dd, "volumes": volumes,
            **({"paired": paired} if paired else {})}


# -- summary ----------------------------------------------------------------------------------------
def summarise(rows: dict, source_mm3: float | None = None) -> dict:
    for r in rows.values():
        runs = r["runs"]
        dice = [v["dice"] for s in sorted(runs) for v in runs[s]["volumes"]]
        assd = [v["assd_mm"] for s in sorted(runs) for v in runs[s]["volumes"]]
        got = [a for a in assd if a is not None]
        seed_means = [float(np.mean([v["dice"] for v in runs[s]["volumes"]])) for s in sorted(runs)]
        r.update(seeds=[int(s) for s in sorted(runs)], dice=dice, assd_mm=assd,
                 dice_mean=round(float(np.mean(dice)), 2), dice_sd=round(float(np.std(dice)), 2),
                 dice_seed_means=[round(m, 2) for m in seed_means],
                 assd_mean=round(float(np.mean(got)), 2) if got else None,
                 assd_sd=round(float(np.std(got)), 2) if got else None,
                 empty_predictions=sum(a is None for a in assd))
        pred = [v.get("pred_mm3") for s in sorted(runs) for v in runs[s]["volumes"]]
        if source_mm3 and all(p is not None for p in pred):
            # label-free: mean predicted target object volume over the mean source object volume, per seed
            r["target_source_volume_ratio"] = [
                round(float(np.mean([v["pred_mm3"] for v in runs[s]["volumes"]])) / source_mm3, 2) for s in sorted(runs)]
    lo, up = rows.get("lower", {}).get("dice_mean"), rows.get("upper", {}).get("dice_mean")
    for name, r in rows.items():
        if lo is not None and up is not None and name not in ("lower", "upper"):
            # undefined when the bounds do not span at least one Dice point (nothing to close)
            r["gap_closed"] = round((r["dice_mean"] - lo) / (up - lo), 3) if up - lo >= 1.0 else None
    return rows


def _row_line(name: str, r: dict) -> str:
    assd = "–" if r["assd_mean"] is None else f"{r['assd_mean']:.2f} ± {r['assd_sd']:.2f}"
    ratio = " / ".join(f"{x:.2f}" for x in r.get("target_source_volume_ratio", []))
    seeds = " / ".join(f"{x:.1f}" for x in r["dice_seed_means"])
    gap = "" if r.get("gap_closed") is None else f"{100 * r['gap_closed'] + 0.0:.0f} %".replace("-0 %", "0 %")
    return (f"| {name} | {len(r['seeds'])} | {r['dice_mean']:.1f} ± {r['dice_sd']:.1f} | {assd} | "
            f"{r['empty_predictions']}/{len(r['dice'])} | {gap} | {ratio} | {seeds} |")


def write_markdown(results: Path) -> Path:
    lines = ["# Quality benchmark (generated by `benchmarks/run.py` from the JSON files beside this one)", "",
             "Dice % and ASSD mm per target volume, mean ± sd over volumes and seeds; gap closed = "
             "(row − lower) / (upper − lower). An empty prediction has no ASSD: it is counted, not averaged. "
             "Target / source volume: the mean predicted target object volume over the mean source object volume, "
             "per seed (label-free).", "",
             "Rows: `lower` source only; `histmatch` the target histogram-matched to the source, lower model; "
             "`pseudo` the lower model fine-tuned on its entropy-filtered target pseudo labels; `gin_only` source "
             "randomisation alone, no target term; `uuds_paper` the paper's letter; `uuds` the engine's default "
             "recipe (since round 2, `--randomise auto`: GIN where the contrasts lie far apart, here C only; since "
             "round 12, the target's pseudo label held to 0.5-2 times the source's object fraction; rounds 13 and 16 "
             "(the weight average, GIN's slices inverted half the time) came after these tables: their runs are in "
             "round13/ and round16/; the candidates of rounds 17, 18 and 19, `uuds_fine`, `uuds_edges` and "
             "`uuds_pseudo_edges`, in round17/, round18/ and round19/); "
             "`uuds_no_pseudo_band` rounds 4-11's default (the same without that band); "
             "`uuds_no_gin` the default without source randomisation (round 1's default); `uuds_gin` the default with "
             "GIN always on (round 1's candidate) and `uuds_gin_*` one lever of it changed; `uuds_no_*` one lever of the default "
             "off; `upper` supervised on the target contrast. docs/method.md has the details.", ""]
    for path in sorted(results.glob("quality_*.json")):
        doc = json.loads(path.read_text())
        lines += [f"## {doc['protocol']}: {doc['source']} → {doc['target']}", "",
                  f"{doc['device']}, torch {doc['torch']}, last invocation at commit {doc['commit']}, model {doc['model']} at "
                  f"{doc['image_size']} px, {doc['steps']} steps × batch {doc['batch_size']}, "
                  f"wall {doc['wall_s'] / 60:.0f} min. `{doc['command']}`", "",
                  "| row | seeds | Dice % | ASSD mm | empty | gap closed | target / source volume, per seed | Dice per seed |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [_row_line(name, doc["rows"][name]) for name in ROWS if name in doc["rows"]]
        if doc.get("renamed"):
            lines += [f"Note: {doc['renamed']}.", ""]
        if doc.get("superseded"):
            lines += ["", f"Superseded: {doc['superseded']['note']}.", "",
                      "| row | seeds | Dice % | ASSD mm | empty | gap closed | target / source volume, per seed | Dice per seed |",
                      "|---|---|---|---|---|---|---|---|"]
            lines += [_row_line(name, row) for name, row in doc["superseded"]["rows"].items()]
        lines.append("")
    out = results / "quality.md"
    atomic_write(out, lambda tmp: Path(tmp).write_text("\n".join(lines)))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=sorted(PROTOCOLS), required=True)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"), help="folder holding brats/ and cord/")
    ap.add_argument("--rows", nargs="*", default=ROWS, choices=ROWS)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="seeds of the main rows")
    ap.add_argument("--other-seeds", nargs="*", type=int, default=None,
                    help="seeds of the ablation and TCSA rows (default: the first main seed)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--pseudo-steps", type=int, default=None, help="fine-tuning steps of 'pseudo' (default: steps/2)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--model", choices=["tiny", "rn50"], default="tiny")
    ap.add_argument("--image-size", type=_image_size, default=IMAGE_SIZE_DEFAULT, metavar="auto|N",
                    help="slice side in pixels (auto: the scans' own size where smaller than the frame, round 26; "
                         f"default: {IMAGE_SIZE_DEFAULT or 'the model frame'})")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--text-encoder", default="auto", choices=["auto", "minilm", "clip"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--fresh", action="store_true", help="ignore results already in the JSON")
    ap.add_argument("--results", default=str(RESULTS), help="folder for the JSON files and quality.md")
    ap.add_argument("--save-masks", default=None, metavar="DIR",
                    help="also save every adaptation run's predicted target masks under DIR/<protocol>/<row>_s<seed>/ "
                         "(label-free statistics across runs: benchmarks/agreement.py)")
    args = ap.parse_args(argv)

    proto = PROTOCOLS[args.protocol]
    data = Path(args.data)
    if not (data / proto["set"]).is_dir():
        print(f"benchmark: error: {data / proto['set']}: no such folder (give --data)", file=sys.stderr)
        return 2
    names = proto["classes"]
    t0 = time.perf_counter()
    cfg, loaded = setup_protocol(data, proto, args.model, args.image_size, upper=True)
    model_kw = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}
    device = resolve_device(args.device)
    ctx = {"model_kw": model_kw, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
           "device": args.device, "threshold": args.threshold, "text_encoder": args.text_encoder,
           "pseudo_steps": args.pseudo_steps or max(args.steps // 2, 1), "class_names": names, "lower_models": {},
           "save_masks": args.save_masks, "protocol": args.protocol, **loaded}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"quality_{args.protocol}.json"
    settings = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "model": cfg.arch,
                "image_size": cfg.image_size, "threshold": args.threshold, "pseudo_steps": ctx["pseudo_steps"],
                # what every row's prediction keeps of its object unless the row says otherwise (round 24's default
                # auto; a file without it was written with every piece kept: its runs are not mixed with these)
                "objects": cfg.objects}
    doc = json.loads(out.read_text()) if out.exists() and not args.fresh else {}
    if doc and any(doc.get(k) != v for k, v in settings.items()):
        print(f"benchmark: settings differ from {out.name}: starting afresh", file=sys.stderr)
        doc = {}
    rows = doc.get("rows", {})
    source_mm3 = round(float(np.mean([(s.label_volume.data > 0).sum() * np.prod(s.volume.spacing)
                                      for s in ctx["sources"]])), 1)
    other = args.other_seeds if args.other_seeds is not None else args.seeds[:1]
    commit = git_commit()
    wall_before = doc.get("wall_s", 0.0)
    asked = [r for r in ROWS if r in args.rows]
    asked += [PAIRED_ROWS[r][0] for r in asked if r in PAIRED_ROWS and PAIRED_ROWS[r][0] not in asked]
    for row in [r for r in ROWS if r in asked and r not in PAIRED_ROWS]:
        for seed in (args.seeds if row in MAIN_ROWS else other):
            if str(seed) in rows.get(row, {}).get("runs", {}):
                continue
            print(f"[{args.protocol}] {row} seed {seed}", flush=True)
            res = {"commit": commit, **run_row(row, seed, ctx)}
            print(f"    Dice {[v['dice'] for v in res['volumes']]}  ASSD {[v['assd_mm'] for v in res['volumes']]}",
                  flush=True)
            for paired_row, volumes in res.pop("paired", {}).items():
                rows.setdefault(paired_row, {"runs": {}})["runs"][str(seed)] = {
                    "commit": commit, "scored_from": row, "volumes": volumes}
                print(f"    {paired_row}: Dice {[v['dice'] for v in volumes]}", flush=True)
            rows.setdefault(row, {"runs": {}})["runs"][str(seed)] = res
            doc = {"protocol": args.protocol, "source": proto["source"], "target": proto["target"],
                   "classes": names, "device": str(device) if device.type != "cpu" else
                   f"cpu ({torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()})",
                   "torch": torch.__version__, "commit": commit,
                   "command": "python benchmarks/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   "wall_s": round(wall_before + time.perf_counter() - t0, 1), **settings,
                   "source_object_mm3": source_mm3, "rows": summarise(rows, source_mm3), **{k: doc[k] for k in ("superseded", "renamed") if k in doc}}
            atomic_write(out, lambda tmp, d=doc: Path(tmp).write_text(json.dumps(d, indent=1)))
            write_markdown(results)
    print(f"wrote {out} and {results / 'quality.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
