"""What each ``napari-uuds`` subcommand does: validate everything first, then work, then write atomically."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .engine import checkpoint as ckpt
from .engine.atomic import atomic_write
from .engine.components import describe_objects
from .engine.config import (AUTO_FRAME_ARCHS, DEFAULT_DOMAIN_PROMPT, LossWeights, ModelConfig, TrainConfig, from_dict, recipe_overrides,
                            to_dict, PREDICTION_SETTINGS)
from .engine.dataset import choose_image_size, choose_mm_per_pixel, load_source_pairs, load_targets, reslice
from .exitcodes import EXIT_INTERRUPTED, EXIT_USER_ERROR
from .engine.errors import UUDSError
from .engine.infer import predict_volume, release_host_memory
from .engine.metrics import score, score_classes
from .engine.outfolder import OutputLock, check_free_space, check_inputs_kept, sweep_stale_temps
from .engine.signals import deferred, terminate_as_interrupt
from .engine.pipeline import (check_outputs_free, check_writable, planned_outputs, unique_names, write_metrics,
                              write_prediction)
from .engine.volumes import check_same_grid, load_label, load_volume, parse_label_map, save_like, volume_name


def _say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _fmt_losses(losses: dict[str, float]) -> str:
    keys = ("total", "seg", "useg", "id", "bscl", "dd_s", "dd_ts", "cov_s", "cov_t", "proto_s", "proto_t", "ent",
            "certain")
    return " ".join(f"{k}={losses[k]:.3f}" for k in keys if k in losses)


def _previous_outputs(out: Path) -> list[str]:
    """The prediction files the run that last saved in ``out`` listed (removed when an --overwrite run ends)."""
    try:
        return list(json.loads((out / ckpt.CONFIG).read_text()).get("outputs", []))
    except (OSError, ValueError, AttributeError):
        return []


def _save_run(model, out: Path, extra: dict) -> None:
    """Write the checkpoint set; where ``out`` cannot take it (disk full, quota), rescue it to a temp folder."""
    import tempfile

    try:
        ckpt.save_checkpoint(model, out, extra, overwrite=True, optimizer_state=model.optimizer_state)
    except OSError as exc:
        why = exc.strerror or str(exc)
        try:
            rescue = Path(tempfile.mkdtemp(prefix="napari-uuds-rescued-"))
            ckpt.save_checkpoint(model, rescue, extra, overwrite=True,
                                 optimizer_state=model.optimizer_state)
            where = f"the weights were saved to {rescue} instead"
        except OSError:
            where = "nor anywhere else: the weights of this run are lost"
        raise UUDSError(f"could not write the weights ({why}); {where}", out) from None


def cmd_adapt(args) -> int:
    from .engine import distributed
    from .engine.train import resolve_device

    t_start = time.perf_counter()
    # under torchrun: one process per rank, DDP (engine/distributed.py); only rank 0 writes and prints
    ctx = distributed.from_env()
    if ctx.enabled:
        ctx = distributed.init(ctx, resolve_device(args.device))
        args.quiet = args.quiet or not ctx.is_main
    try:
        return _adapt(args, ctx, t_start)
    finally:
        distributed.close(ctx)


def _adapt(args, ctx, t_start: float) -> int:
    import contextlib

    from .engine import distributed
    from .engine.backbone import resolve_weights
    from .engine.job import AdaptJob
    from .engine.signals import stop_on_signal
    from .engine.train import TrainControl, resolve_device

    out = Path(args.out)
    names = unique_names(args.target)
    if args.target_label is not None and len(args.target_label) != len(args.target):
        raise UUDSError(f"{len(args.target)} target(s) but {len(args.target_label)} --target-label(s); give one per target")
    planned = planned_outputs(out, names, True, bool(args.target_label))
    check_inputs_kept(planned, {"--source": args.source, "--source-label": args.source_label, "--target": args.target,
                                "--target-label": args.target_label})
    # resuming into the folder it resumes from: its checkpoint is this run's own, replaced when it is saved again
    into_resume = bool(args.resume) and Path(args.resume).resolve() == out.resolve()
    own = {ckpt.WEIGHTS, ckpt.CONFIG, ckpt.OPTIMIZER} if into_resume else set()
    check_outputs_free([p for p in planned if p.name not in own], args.overwrite)
    check_writable(out)
    if not (args.lr > 0 and args.weight_decay >= 0):
        raise UUDSError(f"--lr must be > 0 and --weight-decay >= 0 (got {args.lr}, {args.weight_decay})")

    resume_meta = ckpt.read_config(args.resume) if args.resume else None
    m_over, t_over, w_over = recipe_overrides(args.recipe)
    for store, key, value in ((m_over, "body_mask", args.body_mask), (m_over, "pass_bn", args.pass_bn),
                              (m_over, "fine_skips", args.fine_skips),
                              (m_over, "tta", args.tta), (m_over, "refine", args.refine),
                              (m_over, "objects", args.objects), (m_over, "smooth_z", args.smooth_z),
                              (t_over, "ema_decay", args.ema_decay),
                              (t_over, "zoom", args.zoom), (t_over, "teacher_decay", args.teacher_decay),
                              (t_over, "randomise", args.randomise),
                              (t_over, "randomise_invert", args.randomise_invert),
                              (t_over, "guard", args.guard), (w_over, "dd_form", args.dd_form),
                              (w_over, "useg_absent", args.useg_absent), (w_over, "useg_form", args.useg_form),
                              (t_over, "useg_flow", args.useg_flow), (t_over, "pseudo_prior", args.pseudo_prior),
                              (t_over, "pseudo_refine", args.pseudo_refine)):
        if value is not None:  # an explicit option wins over the recipe
            store[key] = value
    if resume_meta:
        mcfg = from_dict(ModelConfig, resume_meta["model"])  # keys a newer version wrote are ignored
    else:
        mcfg = ModelConfig.for_arch(
            args.model, image_size=None if args.image_size == "auto" else args.image_size, axis=args.axis,
            class_names=args.class_name or ["object"], class_descriptions=args.class_description or [],
            source_modality=args.source_modality or volume_name(args.source[0]),
            target_modality=args.target_modality or volume_name(args.target[0]),
            text_head=args.method != "uuds" and not args.no_text_head,
            domain_prompt=args.domain_prompt or DEFAULT_DOMAIN_PROMPT,
            # TCSA alone has no prompts: its text enters through the class-description relations only
            use_domain_prompt=not args.no_domain_prompt and args.method != "tcsa",
            use_seg_prompt=not args.no_seg_prompt and args.method != "tcsa",
            mm_per_pixel=0.0 if args.mm_per_pixel == "auto" else args.mm_per_pixel, **m_over)
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                       seed=args.seed, device=args.device, threshold=args.threshold,
                       use_uncertainty=not args.no_uncertainty, warmup_steps=args.warmup_steps,
                       contrast_invert=args.contrast_invert, method=args.method, text_encoder=args.text_encoder,
                       dd_flow=args.dd_flow, dd_warmup=args.dd_warmup, randomise_p=args.randomise_p,
                       randomise_into=args.randomise_into, **t_over)
    loss_weights = LossWeights(alpha=args.alpha, dd_scale=args.dd_scale, proto_form=args.proto_form, **w_over)
    device = resolve_device(args.device)

    # every input is read and checked before anything is written
    label_map = parse_label_map(args.label_map)
    sources = load_source_pairs(args.source, args.source_label, len(mcfg.class_names), mcfg.axis, mcfg.image_size,
                                binarize=args.binarize_labels, label_map=label_map)
    targets = load_targets(args.target, mcfg.axis, mcfg.image_size)
    frame_note = ""
    if (args.image_size == "auto" and not resume_meta and args.mm_per_pixel == 0
            and mcfg.arch in AUTO_FRAME_ARCHS):  # the frame at the scans' own size (round 26)
        size = choose_image_size(sources + targets, mcfg.axis, mcfg.image_size)
        if size != mcfg.image_size:
            frame_note = f" (auto: the scans' slices are at most {max(p.geom.side for p in sources + targets)} voxels across)"
            mcfg.image_size = size
            sources, targets = (reslice(v, mcfg.axis, size, 0.0) for v in (sources, targets))
    if args.mm_per_pixel == "auto" and not resume_meta:  # one scale at which every body of the run fits
        mcfg.mm_per_pixel = choose_mm_per_pixel(sources + targets, mcfg.axis, mcfg.image_size)
    if mcfg.mm_per_pixel > 0:
        sources, targets = (reslice(v, mcfg.axis, mcfg.image_size, mcfg.mm_per_pixel) for v in (sources, targets))
    tlabels = []
    for tp, lp in zip(targets, args.target_label or []):
        lab = load_label(lp, None, like=tp.volume, allow_empty=True, label_map=label_map,
                         binarize=args.binarize_labels)
        tlabels.append(lab)
    opt_state = None
    job = AdaptJob(mcfg, tcfg, sources, targets, loss_weights, dist=ctx)
    if resume_meta:
        job.model, _ = ckpt.load_checkpoint(args.resume, "cpu")
        opt_state = ckpt.load_optimizer_state(args.resume, resume_meta)
        clip_note = (f"resuming from {args.resume} at step {job.model.trained_steps}; the model options "
                     "(--model, --class-name, --axis, --image-size, ablations) come from its config.json")
    else:
        job.clip_weights, clip_note = resolve_weights(mcfg.arch, args.clip_weights)
    model = job.build()  # a fresh model is drawn from --seed
    n_params = sum(p.numel() for p in model.parameters())
    # weights + Adam's two moments, and the four outputs of each target (about 5 bytes a voxel once compressed)
    need = n_params * 4 * 3 + sum(5 * t.volume.data.size for t in targets) + 2 ** 20

    main = ctx.is_main
    with OutputLock(out) if main else contextlib.nullcontext(), terminate_as_interrupt():
        stale = sweep_stale_temps(out) if main else []
        if stale:
            _say(f"napari-uuds adapt: removed {len(stale)} temporary file(s) an interrupted run left in {out}",
                 args.quiet)
        if main:
            check_free_space(out, need, largest_file=max(n_params * 4, max(4 * t.volume.data.size for t in targets)))
        previous = _previous_outputs(out) if args.overwrite else []
        _say(f"napari-uuds adapt: {clip_note}", args.quiet)
        _say(f"model {mcfg.arch} ({n_params / 1e6:.1f} M parameters), "
             f"{mcfg.image_size} px slices{frame_note} along axis {mcfg.axis}, device {device}, "
             f"{len(sources)} source / {len(targets)} target volume(s)", args.quiet)
        _say(f"domain prompt: \"{model.domain_prompt.text}\"; classes: {', '.join(mcfg.class_names)}; slices "
             + (f"at {model.cfg.mm_per_pixel:g} mm per pixel" if model.cfg.mm_per_pixel > 0 else "fitted to the frame"),
             args.quiet)
        if ctx.enabled:
            _say(f"distributed: {ctx.world_size} process{'es' if ctx.world_size > 1 else ''} ({ctx.backend}), batch "
                 f"{tcfg.batch_size} per process "
                 f"({tcfg.batch_size * ctx.world_size} in all); rank 0 writes", args.quiet)

        control = TrainControl(tcfg.threshold)
        start = model.trained_steps if resume_meta else 0
        bar = tqdm(total=tcfg.steps, initial=start, desc="training", unit="step", disable=args.quiet,
                   file=sys.stderr, dynamic_ncols=True)
        last: dict = {}
        interrupted, diverged = False, ""
        gen = job.train(control, start_step=start, optimizer_state=opt_state)
        # distributed: a signal sets the shared stop flag (every rank stops after the same step) instead of raising
        try:
            with stop_on_signal(control.stop) if ctx.enabled else contextlib.nullcontext():
                for ev in gen:
                    # the guards' warnings and recoveries (always); what the run decided before its first step
                    # (source randomisation, pseudo-label refinement: not with --quiet)
                    if ev.message and main and (ev.kind == "step" or (ev.kind == "start" and not args.quiet)):
                        bar.write(f"napari-uuds adapt: {ev.message}", file=sys.stderr)
                    if ev.kind == "step":
                        bar.update(ev.step - bar.n)
                        bar.set_postfix_str(f"{_fmt_losses(ev.losses)} {ev.slices_per_s:.1f} slices/s")
                        last = ev.losses
                    if ev.kind == "diverged":
                        diverged = ev.message
                    if ev.kind == "stopped":  # the shared stop flag of a distributed run
                        interrupted = True
        except KeyboardInterrupt:
            interrupted = True
        in_sync = distributed.weights_agree(model, ctx)
        try:
            with deferred():  # a second Ctrl-C or a SIGTERM waits until the weights are written
                gen.close()
                bar.close()
                train_s = time.perf_counter() - t_start
                outputs = [p.name for p in planned_outputs(out, names, False, bool(args.target_label))]
                extra = {"train": to_dict(tcfg), "loss_weights": to_dict(loss_weights), "final_losses": last,
                         "guard": model.guard_report,
                         **({"teacher": model.teacher_report} if model.teacher_report else {}),
                         "sources": [str(p) for p in args.source], "targets": [str(p) for p in args.target],
                         # what a later fine-tune on corrections reloads the source with
                         "source_labels": [str(p) for p in args.source_label],
                         "label_options": {"binarize": bool(args.binarize_labels), "label_map": args.label_map},
                         "interrupted": interrupted, "diverged": diverged or None,
                         **({"distributed": {**ctx.record(), "weights_agree": in_sync}} if ctx.enabled else {}),
                         "outputs": [] if (interrupted or diverged) else outputs,
                         "normalisation": {"scheme": "per-volume percentile clip to [-1, 1] (background excluded)",
                                           "low_percentile": 0.5, "high_percentile": 99.5,
                                           "sources": {p.volume.name: [p.norm.lo, p.norm.hi] for p in sources}}}
                if main:
                    _save_run(model, out, extra)
        except KeyboardInterrupt:
            interrupted = True  # it came while the weights were written; they are
        resume = f"--resume {out} --out {out}"
        if diverged:
            raise UUDSError(f"{diverged}; saved to {out}, no prediction written (resume with a lower --lr: {resume})")
        if interrupted:
            _say(f"interrupted at step {model.trained_steps}: weights saved to {out} (resume with the same options "
                 f"and {resume})", not main)
            return EXIT_INTERRUPTED
        if not in_sync:
            raise UUDSError(f"the {ctx.world_size} processes ended with different weights (rank 0's are saved in "
                            f"{out}); no prediction written")
        if not main:  # rank 0 segments and writes
            return 0

        del gen  # what only training needed; its buffers go back to the system before segmenting
        model.optimizer_state = None
        release_host_memory()
        rows, pieces = {}, {}
        pbar = tqdm(total=sum(t.image.shape[0] for t in targets), desc="segmenting", unit="slice",
                    disable=args.quiet, file=sys.stderr, dynamic_ncols=True)
        try:
            for i, (tp, name) in enumerate(zip(targets, names)):
                pred = job.predict(i, progress=pbar.update)
                write_prediction(pred, tp.volume, out, name, tcfg.threshold)
                if pred.objects is not None:
                    pieces[name] = pred.objects
                if tlabels:
                    rows[name] = score_classes(pred.seg, tlabels[i].data, tp.volume.spacing, mcfg.class_names)
        except KeyboardInterrupt:
            pbar.close()
            _say(f"interrupted while segmenting: the weights are saved in {out}; segment with napari-uuds predict "
                 f"--weights {out}")
            return EXIT_INTERRUPTED
        except OSError as exc:
            raise UUDSError(f"could not write the predictions ({exc.strerror or exc}); the weights are saved in {out}: "
                            f"segment elsewhere with napari-uuds predict --weights {out}", exc.filename or out) from None
        pbar.close()
        wall = time.perf_counter() - t_start
        for name, report in pieces.items():  # what --objects removed, before the scores that include it
            _say(f"{name}: {describe_objects(report)}", args.quiet)
        if rows:
            doc = write_metrics(out / "metrics.json", rows, {"wall_s": wall, "train_s": train_s, "device": str(device),
                                                             **({"objects": pieces} if pieces else {})})
            for name, r in rows.items():
                assd = "n/a (empty prediction)" if r["assd_mm"] is None else f"{r['assd_mm']:.2f} mm"
                print(f"{name}: Dice {r['dice']:.1f} %  ASSD {assd}")
            m = doc["mean"]
            massd = "n/a" if m["assd_mm_mean"] is None else f"{m['assd_mm_mean']:.2f} mm"
            print(f"mean: Dice {m['dice_mean']:.1f} %  ASSD {massd}")
        for name in set(previous) - set(outputs):  # the replaced run's predictions that this run did not write
            (out / name).unlink(missing_ok=True)
    print(f"wrote {out} in {wall:.0f} s (training {train_s:.0f} s)")
    return 0


def cmd_predict(args) -> int:
    """Segment files, folders and glob patterns with saved weights: a cohort streamed through the model (one volume
    read at a time, slices batched across volumes), one progress bar, unreadable files reported and skipped, and a
    summary (``summary.csv`` and ``summary.json``) of every file."""
    from .engine.cohort import expand_images, header_size, iter_cohort
    from .engine.train import resolve_device

    out = Path(args.out)
    ckpt.read_config(args.weights)
    paths = expand_images(args.image)
    names = unique_names(paths)
    planned = planned_outputs(out, names, False, False) + [out / SUMMARY_CSV, out / SUMMARY_JSON]
    w = Path(args.weights)
    check_inputs_kept(planned, {"--image": paths, "--weights": [w / ckpt.WEIGHTS, w / ckpt.CONFIG]})
    check_outputs_free(planned, args.overwrite)
    check_writable(out)
    device = resolve_device(args.device)
    model, meta = ckpt.load_checkpoint(args.weights, device)
    for key in PREDICTION_SETTINGS:  # --tta, --refine, --objects, --smooth-z override the saved settings
        if getattr(args, key) is not None:
            setattr(model.cfg, key, getattr(args, key))
    chi = args.threshold if args.threshold is not None else meta.get("train", {}).get("threshold", 0.5)
    axis = model.cfg.axis
    sizes: dict[Path, tuple[int, int]] = {}  # (slices along the axis, voxels) from the headers, for bar and disk
    for p in paths:
        try:
            sizes[p] = header_size(p, axis)
        except Exception:  # unreadable: iter_cohort reports it in its place
            sizes[p] = (0, 0)
    rows: list[dict] = []
    with OutputLock(out), terminate_as_interrupt():
        sweep_stale_temps(out)
        voxels = [v for _, v in sizes.values()]
        check_free_space(out, sum(5 * v for v in voxels) + 2 ** 20, largest_file=4 * max(voxels, default=0))
        with tqdm(total=sum(n for n, _ in sizes.values()), desc=f"{len(paths)} volumes", unit="slice",
                  disable=args.quiet, file=sys.stderr) as bar:
            for r in iter_cohort(model, paths, args.batch_size, args.domain_prompt, progress=bar.update):
                name = names[r.index]
                row = {"index": r.index, "name": name, "path": str(r.path), "status": "skipped" if r.error else "segmented",
                       "error": r.error}
                if r.error:
                    bar.total -= sizes[r.path][0]  # its slices will never come
                    bar.refresh()
                    _say(f"{name}: skipped: {r.path}: {r.error}")  # even with --quiet: it is missing
                else:
                    pred = r.prediction
                    try:
                        write_prediction(pred, r.volume, out, name, chi)
                    except OSError as exc:
                        raise UUDSError(f"could not write the predictions ({exc.strerror or exc})",
                                        exc.filename or out) from None
                    fg = int((pred.seg > 0).sum())
                    kept = pred.objects or {}
                    row.update(shape="x".join(map(str, r.volume.data.shape)), foreground_voxels=fg,
                               object_mm3=round(fg * float(np.prod(r.volume.spacing)), 1),
                               mean_entropy=round(float(pred.entropy.mean()), 4),
                               uncertain_fraction=round(float((~pred.certain(chi)).mean()), 4),
                               largest_share=kept.get("largest_share"), voxels_removed=kept.get("voxels_removed"),
                               seconds=round(r.seconds, 2))
                    if not args.quiet:
                        bar.write(f"{name}: {fg} foreground voxels, mean entropy {pred.entropy.mean():.3f}"
                                  + (f"; {describe_objects(pred.objects)}" if pred.objects else ""))
                rows.append(row)
                del r
                release_host_memory()
        write_summary(out, rows, {"weights": str(w), "threshold": chi, "batch_size": args.batch_size,
                                  "device": str(device), **{k: getattr(model.cfg, k) for k in PREDICTION_SETTINGS}})
    skipped = sum(r["status"] == "skipped" for r in rows)
    print(f"wrote {out}: {len(rows) - skipped} segmented, {skipped} skipped (summary in {out / SUMMARY_CSV})")
    return EXIT_USER_ERROR if skipped else 0


SUMMARY_CSV, SUMMARY_JSON = "summary.csv", "summary.json"
SUMMARY_FIELDS = ["name", "path", "status", "error", "shape", "foreground_voxels", "object_mm3", "mean_entropy",
                  "uncertain_fraction", "largest_share", "voxels_removed", "seconds"]


def write_summary(out: Path, rows: list[dict], extra: dict) -> None:
    """The cohort's summary, one row per file in the order given, as CSV and JSON (each written atomically)."""
    import csv
    import io

    rows = [{k: v for k, v in r.items() if k != "index"} for r in sorted(rows, key=lambda r: r["index"])]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / SUMMARY_CSV, lambda tmp: Path(tmp).write_text(buf.getvalue()))
    doc = {"volumes": rows, "segmented": sum(r["status"] == "segmented" for r in rows),
           "skipped": sum(r["status"] == "skipped" for r in rows), **extra}
    atomic_write(out / SUMMARY_JSON, lambda tmp: Path(tmp).write_text(json.dumps(doc, indent=2)))


def cmd_evaluate(args) -> int:
    pred = load_label(args.pred, None, allow_empty=True)
    lab = load_label(args.label, None, allow_empty=True)
    check_same_grid(lab, pred, args.pred)
    if args.json:
        check_inputs_kept([Path(args.json)], {"--pred": [args.pred], "--label": [args.label]})
        check_writable(Path(args.json).parent)
    r = score(pred.data, lab.data, lab.spacing)
    assd = "n/a (empty prediction)" if r["empty_prediction"] else (
        "n/a (empty reference)" if r["assd_mm"] is None else f"{r['assd_mm']:.3f} mm")
    hd = "n/a" if r["hd95_mm"] is None else f"{r['hd95_mm']:.3f} mm"
    print(f"Dice {r['dice']:.2f} %  ASSD {assd}  HD95 {hd}")
    if args.json:
        r.update(pred=str(args.pred), label=str(args.label))
        try:
            atomic_write(Path(args.json), lambda tmp: Path(tmp).write_text(json.dumps(r, indent=2)))
        except OSError as exc:
            raise UUDSError(f"could not write the metrics ({exc.strerror or exc})", args.json) from None
    return 0


def _widget_corrections(folder: Path, axis: int) -> list[int]:
    """The slices a widget's run folder names as corrected (``corrections.json``), checked against the model's axis."""
    index = folder / "corrections.json"
    try:
        doc = json.loads(index.read_text())
        slices, drawn = [int(i) for i in doc["slices"]], int(doc["axis"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UUDSError("not a corrections folder (no readable corrections.json): give the corrections file",
                        folder) from None
    if drawn != axis:
        raise UUDSError(f"corrections drawn along axis {drawn}; the weights slice along axis {axis}", index)
    return slices


def cmd_finetune(args) -> int:
    """Fine-tune saved weights on a user's corrected target slices, then segment the target again (the corrected
    slices keep the user's labels)."""
    from .engine.dataset import prepare_volume
    from .engine.finetune import corrected_sampler
    from .engine.job import AdaptJob
    from .engine.review import apply_corrections, keep_corrections, labelled_slices
    from .engine.train import TrainControl, resolve_device

    t_start = time.perf_counter()
    out, w = Path(args.out), Path(args.weights)
    meta = ckpt.read_config(w)
    sources = args.source or meta.get("sources") or []
    source_labels = args.source_label or meta.get("source_labels") or []
    if not sources or not source_labels:
        raise UUDSError("the weights record no source scans and labels (saved from the widget, or by an older "
                        "version): give --source and --source-label", w / ckpt.CONFIG)
    if len(sources) != len(source_labels):
        raise UUDSError(f"{len(sources)} source image(s) but {len(source_labels)} source label(s); give one "
                        "--source-label per --source")
    missing = [p for p in [*sources, *source_labels] if not Path(p).exists()]
    if missing:
        raise UUDSError("source scan recorded in the weights' config.json is gone: give --source and --source-label",
                        missing[0])
    name = volume_name(args.image)
    planned = planned_outputs(out, [name], True, bool(args.target_label)) + [out / f"{name}_corrections.nii.gz"]
    check_inputs_kept(planned, {"--image": [args.image], "--corrections": [args.corrections],
                                "--weights": [w / ckpt.WEIGHTS, w / ckpt.CONFIG, w / ckpt.OPTIMIZER],
                                "--source": sources, "--source-label": source_labels,
                                "--target-label": [args.target_label] if args.target_label else []})
    check_outputs_free(planned, args.overwrite)
    check_writable(out)

    model, meta = ckpt.load_checkpoint(w, "cpu")
    mcfg = model.cfg
    opts = meta.get("label_options") or {}
    label_map = parse_label_map(opts.get("label_map"))
    n = len(mcfg.class_names)
    vol = load_volume(args.image)
    named: list[int] = []
    if Path(args.corrections).is_dir():  # a run folder of the widget: its corrections and the slices it names
        named = _widget_corrections(Path(args.corrections), mcfg.axis)
        args.corrections = str(Path(args.corrections) / "corrections.nii.gz")
    corr = load_label(args.corrections, n, like=vol, allow_empty=True)
    slices = sorted(set(args.slices or named)) or labelled_slices(corr.data, mcfg.axis)
    if not slices:
        raise UUDSError("the corrections hold no labelled voxel: paint the corrected slices, or name them with "
                        "--slices", args.corrections)
    n_slices = vol.data.shape[mcfg.axis]
    bad = [i for i in slices if not 0 <= i < n_slices]
    if bad:
        raise UUDSError(f"--slices {bad[0]}: the image has {n_slices} slices along axis {mcfg.axis}", args.image)
    tlabel = load_label(args.target_label, None, like=vol, allow_empty=True, label_map=label_map,
                        binarize=bool(opts.get("binarize"))) if args.target_label else None
    src = load_source_pairs(sources, source_labels, n, mcfg.axis, mcfg.image_size,
                            binarize=bool(opts.get("binarize")), label_map=label_map)
    if mcfg.mm_per_pixel > 0:
        src = reslice(src, mcfg.axis, mcfg.image_size, mcfg.mm_per_pixel)
    target = prepare_volume(vol, mcfg.axis, mcfg.image_size, mm_per_pixel=mcfg.mm_per_pixel)
    train_meta = {k: v for k, v in (meta.get("train") or {}).items() if k in TrainConfig.__dataclass_fields__}
    tcfg = from_dict(TrainConfig, {**train_meta, "device": args.device, "seed": args.seed, "num_threads": 0})
    loss_weights = from_dict(LossWeights, meta.get("loss_weights") or {})
    device = resolve_device(args.device)
    n_params = sum(p.numel() for p in model.parameters())
    rate = args.lr if args.lr is not None else tcfg.lr  # the fine-tune's learning rate (None: the adaptation's)
    with OutputLock(out), terminate_as_interrupt():
        sweep_stale_temps(out)
        check_free_space(out, n_params * 4 + 6 * vol.data.size + 2 ** 20, largest_file=max(n_params * 4, 4 * vol.data.size))
        _say(f"napari-uuds finetune: {len(slices)} corrected slice(s) of {name} along axis {mcfg.axis} "
             f"({', '.join(map(str, slices[:12]))}{' ...' if len(slices) > 12 else ''}), {args.steps} steps from "
             f"step {model.trained_steps} of {w}, training {'the segmenter' if args.parts == 'segmenter' else 'every module'}"
             f" at learning rate {rate:g}"
             f"{f', ending with its weight average (decay {args.ema_decay:g})' if args.ema_decay else ''}, on {device}",
             args.quiet)
        job = AdaptJob(mcfg, tcfg, src, [target], loss_weights, model=model)
        lab_s = corrected_sampler([(target, corr.data, slices)], tcfg.seed)
        start = model.trained_steps
        bar = tqdm(total=args.steps, desc="fine-tuning", unit="step", disable=args.quiet, file=sys.stderr,
                   dynamic_ncols=True)
        gen = job.finetune(lab_s, TrainControl(tcfg.threshold), steps=args.steps, parts=args.parts, lr=rate,
                           ema_decay=args.ema_decay)
        interrupted, diverged, last = False, "", {}
        try:
            for ev in gen:
                if ev.kind == "step":
                    bar.update(ev.step - start - bar.n)
                    bar.set_postfix_str(_fmt_losses(ev.losses) + (f" tseg={ev.losses['tseg']:.3f}" if "tseg" in ev.losses else ""))
                    last = ev.losses
                elif ev.kind == "diverged":
                    diverged = ev.message
        except KeyboardInterrupt:
            interrupted = True
        extra = {"train": to_dict(tcfg), "loss_weights": to_dict(loss_weights), "final_losses": last,
                 "sources": [str(p) for p in sources], "source_labels": [str(p) for p in source_labels],
                 "label_options": opts, "targets": [str(args.image)], "interrupted": interrupted,
                 "diverged": diverged or None,
                 "finetune": {"from": str(w), "from_step": start, "steps": args.steps, "parts": args.parts,
                              "lr": rate, "ema_decay": args.ema_decay, "corrections": str(args.corrections),
                              "slices": slices, "axis": mcfg.axis},
                 "outputs": [] if (interrupted or diverged) else [p.name for p in planned[3:]]}
        try:
            with deferred():
                gen.close()
                bar.close()
                _save_run(model, out, extra)
        except KeyboardInterrupt:
            interrupted = True
        if diverged:
            raise UUDSError(f"{diverged}; saved to {out}, no prediction written")
        if interrupted:
            _say(f"interrupted at step {model.trained_steps}: weights saved to {out}; no prediction written")
            return EXIT_INTERRUPTED
        ft_s = time.perf_counter() - t_start
        model.optimizer_state = None
        del lab_s, gen
        release_host_memory()
        with tqdm(total=target.image.shape[0], desc="segmenting", unit="slice", disable=args.quiet,
                  file=sys.stderr) as pbar:
            kept = keep_corrections(np.zeros_like(corr.data), corr.data, slices, mcfg.axis)  # the corrected slices only
            # the painted object keeps its pieces whatever the model keeps (--objects largest or auto)
            pred = predict_volume(model, vol, progress=pbar.update, norm=target.norm, keep=kept > 0)
        apply_corrections(pred, corr.data, slices, mcfg.axis)
        if pred.objects is not None:
            _say(f"{name}: {describe_objects(pred.objects, painted=True)}", args.quiet)
        try:
            write_prediction(pred, vol, out, name, tcfg.threshold)
            save_like(kept, vol, out / f"{name}_corrections.nii.gz", dtype=np.uint8)
        except OSError as exc:
            raise UUDSError(f"could not write the predictions ({exc.strerror or exc}); the weights are saved in {out}",
                            exc.filename or out) from None
        if tlabel is not None:
            r = score_classes(pred.seg, tlabel.data, vol.spacing, mcfg.class_names)
            write_metrics(out / "metrics.json", {name: r}, {"finetune_s": ft_s, "slices": slices,
                                                            **({"objects": {name: pred.objects}} if pred.objects else {})})
            assd = "n/a (empty prediction)" if r["assd_mm"] is None else f"{r['assd_mm']:.2f} mm"
            print(f"{name}: Dice {r['dice']:.1f} %  ASSD {assd}")
    print(f"wrote {out} in {time.perf_counter() - t_start:.0f} s (fine-tuning {ft_s:.0f} s)")
    return 0
