"""UUDS losses, one function per equation of the paper (Sec. 3).

=================  =================================  =========================================
equation           function                           reads
=================  =================================  =========================================
Eq. 1, Eq. 2       :func:`loss_dd`                    domain distillation against T^d
Eq. 4              :func:`loss_bscl`                  in-batch supervised contrastive
Eq. 5              :func:`entropy_map`                per-pixel predictive entropy
Eq. 6, Eq. 7       :func:`pseudo_label`               pseudo label and certain mask for chi
                   :func:`project_pseudo_label`       ... projected into the source's size band (round 10)
Eq. 8              :func:`loss_useg`                  Dice on certain pixels of x^{t->s}
                   :func:`loss_useg_ce_balanced`      its class-balanced cross-entropy form (round 9)
L_seg (Sec. 3.2)   :func:`loss_seg`                   Dice + cross-entropy on the source
(not in the paper) :func:`loss_size`                  object-size prior on the target
Eq. 9              :func:`loss_id`                    L1 identity of the source reconstruction
Sec. 3.3           :func:`total_loss`                 alpha, beta, gamma, lambda (+ TCSA terms)
=================  =================================  =========================================
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import LossWeights

EPS_ENTROPY = 1e-9  # epsilon of Eq. 5
#: label value of pixels that supervise nothing (uncertain pseudo-labels)
IGNORE_LABEL = 255


def loss_dd(xg_a: torch.Tensor, xg_t: torch.Tensor, t_d: torch.Tensor, tau: float = 0.07,
            form: str = "printed") -> torch.Tensor:
    """Domain distillation L_DD, Eq. 1 (``xg_a`` = x_g^s) and Eq. 2 (``xg_a`` = x_g^{t->s}).

    ``form="printed"`` (the paper's letter):
    L = log( exp((1 - sim(a, T^d)) / tau) / (exp((1 - sim(a, T^d)) / tau) + exp((1 - sim(t, T^d)) / tau)) ),
    averaged over the batch (a_i paired with t_i). Minimising it raises sim(a, T^d) and lowers
    sim(t, T^d). It is a log-probability, so it is negative, bounded below by log sigmoid(-2 / tau), and
    its gradient never fades: it tends to 1/tau as the two domains separate.

    ``form="infonce"`` (the contrastive form, the engine's default recipe):
    L = -log( exp(sim(a, T^d) / tau) / (exp(sim(a, T^d) / tau) + exp(sim(t, T^d) / tau)) ),
    the same ordering of the two domains, but positive, bounded below by 0, and its gradient fades once
    ``a`` is clearly closer to T^d than ``t`` (docs/method.md, reading 5).
    """
    t_d = t_d.float().expand_as(xg_a)
    sa = F.cosine_similarity(xg_a.float(), t_d, dim=-1)
    st = F.cosine_similarity(xg_t.float(), t_d, dim=-1)
    if form == "infonce":
        return -torch.log_softmax(torch.stack([sa, st], dim=-1) / tau, dim=-1)[..., 0].mean()
    if form != "printed":
        raise ValueError(f"L_DD form must be printed or infonce, not {form!r}")
    logits = torch.stack([1.0 - sa, 1.0 - st], dim=-1) / tau
    return torch.log_softmax(logits, dim=-1)[..., 0].mean()


def loss_bscl(z: torch.Tensor, has_object: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """In-batch supervised contrastive loss L_BSCL, Eq. 4.

    z: (B, D) embeddings (normalised by the projection head); has_object: (B,) bool, whether slice i
    contains the segmentation object. For anchor i, P(i) are the other slices of the same category and
    A(i) all other slices. Per anchor: -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p/tau) / sum_{a in A(i)} exp(z_i.z_a/tau) ).
    Averaged over the anchors that have a positive (the paper sums over i; the mean keeps beta independent
    of batch size). Returns 0 when no anchor has a positive, and when the batch holds one category only:
    with no negative to separate from, the term would only push all positives to be equidistant.
    """
    z = z.float()
    b = z.shape[0]
    sim = z @ z.t() / tau
    self_mask = torch.eye(b, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    lab = has_object.view(-1)
    pos = (lab[:, None] == lab[None, :]) & ~self_mask
    n_pos = pos.sum(1)
    valid = (n_pos > 0).float()
    # one category only, or no anchor with a positive: 0 (no host sync: the GPU queue keeps running)
    mixed = (lab != lab[0]).any().float()
    per_anchor = -(log_prob.masked_fill(~pos, 0.0)).sum(1) / n_pos.clamp(min=1)
    return mixed * (per_anchor * valid).sum() / valid.sum().clamp(min=1.0)


def entropy_map(probs: torch.Tensor, normalise: bool = True, eps: float = EPS_ENTROPY) -> torch.Tensor:
    """Per-pixel uncertainty u_ij, Eq. 5: -sum_c Y_c log(Y_c + eps) over the class channel (dim 1).

    ``normalise`` divides by ln(C) so that u lies in [0, 1] whatever the number of classes, and the
    threshold chi means the same for binary and multi-class models. probs: (B, C, ...) -> (B, ...).
    """
    u = -(probs * torch.log(probs + eps)).sum(dim=1)
    if normalise:
        u = u / math.log(probs.shape[1])
    return u


def pseudo_label(probs: torch.Tensor, chi: float, entropy: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo label Y^{t->s} (Eq. 6) and certain mask Y^mask (Eq. 7) for threshold chi.

    Returns (argmax labels (B, ...), mask (B, ...) float, 1 where u < chi).
    """
    u = entropy_map(probs) if entropy is None else entropy
    return probs.argmax(dim=1), (u < chi).to(probs.dtype)


def project_pseudo_label(probs: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor, body: torch.Tensor,
                         source_fraction: float, low: float = 0.5, high: float = 2.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6-7's pseudo label projected into the source's object-size band (``TrainConfig.pseudo_prior="band"``; not
    in the paper; a class-ratio prior on hard pseudo labels, as size-constrained segmentation and CBST use one).

    Let n be the batch's object pixels (pseudo label > 0) inside the body and r the source's object fraction of the
    body. Where n < low * r * body, the low * r * body body pixels of highest object probability (1 - p_background)
    become object (their most probable foreground class), certain; where n > high * r * body, only the high * r *
    body most probable object pixels stay object and the rest become background, certain. In between nothing
    changes. The object's location comes from the network's ranking, only its amount from the prior, so Eq. 8 keeps
    no zero-loss state with nothing in it, and an over-segmentation is not reinforced.

    ``high=inf`` (``pseudo_prior="floor"``): only the lower bound applies.

    probs (B, C, H, W) softmax (no gradient); pseudo (B, H, W) long; mask (B, H, W) float; body (B, H, W) bool.
    One host sync (the counts)."""
    obj = (pseudo > 0) & body
    n_body, n = (int(v) for v in torch.stack([body.sum(), obj.sum()]).tolist())  # the one host sync
    k_lo = int(low * source_fraction * n_body)
    k_hi = int(high * source_fraction * n_body) if math.isfinite(high) else n_body  # high = inf: never cut ("floor")
    if k_hi < 1 or k_lo <= n <= k_hi:
        return pseudo, mask
    score = (1.0 - probs[:, 0]).float()
    keep = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    if n < k_lo:  # too little object: the k_lo most probable body pixels are object
        keep[score.masked_fill(~body, -1.0).flatten().topk(k_lo).indices] = True
        keep = keep.view_as(pseudo)
        fg = probs[:, 1:].argmax(1) + 1
        pseudo = torch.where(keep, fg, pseudo)
    else:  # too much: the k_hi most probable object pixels stay, the others are background
        keep[score.masked_fill(~obj, -1.0).flatten().topk(k_hi).indices] = True
        keep = keep.view_as(pseudo)
        pseudo = pseudo.masked_fill(obj & ~keep, 0)
        keep = obj
    return pseudo, torch.where(keep, torch.ones_like(mask), mask)


def certain_mask(entropy: torch.Tensor, chi: float) -> torch.Tensor:
    """Eq. 7 on a cached entropy: any threshold, no network call."""
    return entropy < chi


def _dice_terms(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                smooth: float) -> torch.Tensor:
    """Soft Dice loss per foreground channel. pred, target: (B, C, ...) -> (C-1,)."""
    dims = (0,) + tuple(range(2, pred.ndim))
    if weight is not None:
        pred = pred * weight
        target = target * weight
    inter = (pred * target)[:, 1:].sum(dims)
    denom = target[:, 1:].sum(dims) + pred[:, 1:].sum(dims)
    return 1.0 - (2.0 * inter + smooth) / (denom + smooth)


def loss_useg(probs: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor, smooth: float = 1.0,
              absent: str = "smooth") -> torch.Tensor:
    """Uncertain segmentation loss L_useg, Eq. 8: Dice between Y^ and the pseudo label on certain pixels.

    probs (B, C, H, W) softmax; pseudo (B, H, W) labels (no gradient); mask (B, H, W) from Eq. 7.
    Sums run over the whole batch; multi-class: the mean over foreground classes. ``smooth`` keeps the
    ratio defined when a class is absent; ``absent="skip"``: a foreground class with no certain pseudo-labelled
    pixel in the batch adds nothing (the mean runs over the classes present; 0 when none is), where the smoothed
    Dice would push all its probabilities towards 0 (config.USEG_ABSENT).
    """
    onehot = F.one_hot(pseudo.long(), probs.shape[1]).movedim(-1, 1).to(probs.dtype).float().detach()
    weight = mask.float().unsqueeze(1).detach()
    terms = _dice_terms(probs.float(), onehot, weight, smooth)
    if absent == "smooth":
        return terms.mean()
    dims = (0,) + tuple(range(2, onehot.ndim))
    present = ((onehot[:, 1:] * weight).sum(dims) > 0).to(terms.dtype)  # no host sync
    return (terms * present).sum() / present.sum().clamp(min=1.0)


def loss_useg_ce_balanced(logits: torch.Tensor, pseudo: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_useg in its class-balanced cross-entropy form (``LossWeights.useg_form="ce_balanced"``; not the paper's
    Dice): cross-entropy against the pseudo label on the certain pixels (Eq. 7), averaged over each pseudo-labelled
    class's pixels and then over the classes present, so that the object's few pixels weigh as much as all the
    background's. Where the certain pseudo label holds an object, its pixels are pulled up as hard as the background's
    are pulled down; a class with no certain pixel adds nothing.

    logits (B, C, H, W); pseudo (B, H, W) labels (no gradient); mask (B, H, W) from Eq. 7.
    """
    n_classes = logits.shape[1]
    nll = F.cross_entropy(logits.float(), pseudo.long(), reduction="none")  # (B, H, W)
    onehot = F.one_hot(pseudo.long(), n_classes).movedim(-1, 1).float() * mask.float().unsqueeze(1).detach()
    dims = (0,) + tuple(range(2, onehot.ndim))
    count = onehot.sum(dims)  # certain pixels per class
    per_class = (onehot * nll.unsqueeze(1)).sum(dims) / count.clamp(min=1.0)
    present = (count > 0).to(per_class.dtype)  # no host sync
    return (per_class * present).sum() / present.sum().clamp(min=1.0)


def loss_seg(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Supervised L_seg on the source: soft Dice (foreground classes) + cross-entropy.

    Pixels labelled :data:`IGNORE_LABEL` (uncertain pseudo-labels in self-training) count in neither term.
    """
    target = target.long()
    if target.ndim == logits.ndim:
        target = target[:, 0]
    valid = target != IGNORE_LABEL
    probs = logits.float().softmax(1)
    onehot = F.one_hot(target.masked_fill(~valid, 0), logits.shape[1]).movedim(-1, 1).float()
    weight = valid.unsqueeze(1).float()  # all ones when nothing is ignored: the same sums, no host sync
    n_valid = valid.sum()
    ce = F.cross_entropy(logits.float(), target.masked_fill(~valid, 0), reduction="none")
    ce = (ce * weight[:, 0]).sum() / n_valid.clamp(min=1)
    # every pixel ignored: 0, not 0/0
    return (n_valid > 0).float() * (_dice_terms(probs, onehot, weight, smooth).mean() + ce)


def has_object(labels: torch.Tensor) -> torch.Tensor:
    """(B, ...) labels -> (B,) bool: the slice holds a foreground pixel (ignored pixels do not count)."""
    lab = labels.flatten(1)
    return ((lab > 0) & (lab != IGNORE_LABEL)).any(1)


def loss_id(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Identity loss L_id, Eq. 9: ||~X^s - X^s||_1, taken as the mean absolute error per pixel."""
    return (rec.float() - x.float()).abs().mean()


def loss_size(probs: torch.Tensor, body: torch.Tensor, source_fraction: float, low: float = 0.5,
              high: float = 2.0) -> torch.Tensor:
    """Object-size prior on the target (not in the paper; a class-ratio prior as in size-constrained
    segmentation): the soft fraction of the target batch's body predicted as object, over the source's labelled
    fraction r, is pushed into [low, high] in log space: relu(log r - log high)^2 + relu(log low - log r)^2.
    Zero inside the band. (In the linear form, relu(r - high)^2, the gradient with respect to the fraction
    carries 1 / source_fraction, 40 for the cord: it emptied every prediction on protocol C.)

    probs (B, C, H, W) softmax; body (B, H, W) bool."""
    body = body.float()
    frac = ((1.0 - probs[:, 0]) * body).sum() / body.sum().clamp(min=1.0)
    log_r = torch.log(frac.clamp(min=1e-6)) - math.log(max(source_fraction, 1e-8))
    return F.relu(log_r - math.log(high)) ** 2 + F.relu(math.log(low) - log_r) ** 2


def total_loss(terms: dict[str, torch.Tensor], w: LossWeights) -> torch.Tensor:
    """L_total = alpha (L_DD1 + L_DD2) + beta L_BSCL + gamma (L_useg + L_seg) + lambda L_id (Sec. 3.3).

    L_DD is also multiplied by tau_dd where ``w.dd_scale`` is tau (:attr:`LossWeights.dd_weight`).
    ``tseg``, the supervised term of a user's corrected target slices (engine/finetune.py), is weighted as L_seg.
    Missing terms (ablations, warm-up) count as zero.
    """
    z = next(iter(terms.values())) * 0.0
    g = terms.get
    return (w.dd_weight * (g("dd_s", z) + g("dd_ts", z)) + w.beta * g("bscl", z)
            + w.gamma * (g("useg", z) + g("seg", z) + g("tseg", z)) + w.lam * g("id", z)
            # TCSA-UDA terms (engine/tcsa.py), zero unless the method includes tcsa
            + w.cov * (g("cov_s", z) + g("cov_t", z)) + w.proto * (g("proto_s", z) + g("proto_t", z))
            + w.ent * g("ent", z) + w.adv * g("adv", z) + w.size * g("size", z))
