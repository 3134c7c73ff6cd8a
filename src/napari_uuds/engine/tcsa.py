"""TCSA-UDA terms (Maurya, Liu, Zwiggelaar 2025), built as losses that compose with UUDS.

The seeds hold only the abstract, so the design below is ours (reasoning in ``docs/method.md``).

=============================  ==============================  ==========================================
term                           function                        reads
=============================  ==============================  ==========================================
class-wise pooled features     :func:`class_prototypes`        P_c = sum_i w_ic f_i / sum_i w_ic
inter-class relations          :func:`relation_matrix`         R_ab = cos(P_a, P_b)  (C x C)
VL covariance cosine loss      :func:`loss_vl_cov`             1 - cos(vec R_img, vec R_txt)
prototype alignment            :func:`loss_proto_align`        InfoNCE of P^d_c against memory G (all c)
semantic prototype memory      :class:`PrototypeMemory`        G_c <- m G_c + (1 - m) P^s_c (EMA)
target entropy (AdvEnt-style)  :func:`loss_entropy`            mean normalised entropy of Y^{t->s}
=============================  ==============================  ==========================================

Weights ``w`` are soft class memberships at the feature map's resolution: one-hot labels (source) or
confident one-hot pseudo-labels (target, entropy < chi), average-pooled to the map, so that a small
object still counts at a coarse level.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import PROTO_FORMS
from .losses import entropy_map

EPS = 1e-6


def soft_class_weights(labels: torch.Tensor, n_classes: int, size: tuple[int, int],
                       mask: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, W) integer labels (+ optional (B, H, W) 0/1 mask) -> (B, C, h, w) class memberships.

    Average pooling of the (masked) one-hot map: each low-resolution cell holds the fraction of its
    pixels in each class, so memberships of a cell sum to at most 1 (less where pixels are masked out).
    """
    onehot = F.one_hot(labels.long(), n_classes).movedim(-1, 1).float()
    if mask is not None:
        onehot = onehot * mask.float().unsqueeze(1)
    if tuple(onehot.shape[-2:]) != tuple(size):
        onehot = F.adaptive_avg_pool2d(onehot, size)
    return onehot


def class_prototypes(feats: torch.Tensor, weights: torch.Tensor, min_mass: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-wise pooled features over a batch: feats (B, D, h, w), weights (B, C, h, w) -> P (C, D), present (C,).

    P_c = sum_{b,i} w_{bci} f_{bi} / sum_{b,i} w_{bci}. A class is *present* when its total membership
    reaches ``min_mass`` (one pixel's worth at this resolution); absent classes get a zero row.
    """
    f = feats.float()
    w = weights.float()
    mass = w.sum(dim=(0, 2, 3))  # (C,)
    pooled = torch.einsum("bdhw,bchw->cd", f, w)
    protos = pooled / mass.clamp_min(EPS).unsqueeze(1)
    present = mass >= min_mass
    return protos * present.unsqueeze(1).to(protos.dtype), present


def relation_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """(C, D) -> (C, C) cosine similarities: the inter-class relation structure (a correlation matrix)."""
    v = F.normalize(vectors.float(), dim=1, eps=EPS)
    return v @ v.t()


def loss_vl_cov(protos: torch.Tensor, present: torch.Tensor, text_relations: torch.Tensor) -> torch.Tensor:
    """Vision-language covariance cosine loss: 1 - cos(vec R_img, vec R_txt) over the classes present.

    R_img: relation matrix of the image prototypes; R_txt: the same for the text embeddings of the
    class descriptions (constant). The cosine compares the two *structures* whatever their scale. The
    diagonal (always 1) is kept: with two classes it makes the loss fall as cos(P_0, P_1) approaches
    the text's similarity, where a centred covariance would be constant. Returns 0 with fewer than two
    classes present (no relation to align).
    """
    idx = torch.nonzero(present).flatten()
    if idx.numel() < 2:
        return protos.sum() * 0.0
    r_img = relation_matrix(protos[idx])
    r_txt = text_relations.to(r_img)[idx][:, idx]
    return 1.0 - F.cosine_similarity(r_img.flatten(), r_txt.flatten(), dim=0)


def loss_proto_align(protos: torch.Tensor, present: torch.Tensor, memory: torch.Tensor,
                     memory_valid: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Prototype alignment: each present class prototype of one domain is pulled to its semantic
    prototype G_c and pushed from the other classes' G_k (InfoNCE over cosine / tau).

    L = mean_{c present} -log( exp(cos(P_c, G_c)/tau) / sum_{k valid} exp(cos(P_c, G_k)/tau) ).
    The memory is a constant here (no gradient). Returns 0 when no present class has a valid G_c.
    """
    ok = present & memory_valid
    if not bool(ok.any()):
        return protos.sum() * 0.0
    p = F.normalize(protos.float(), dim=1, eps=EPS)
    g = F.normalize(memory.float().detach(), dim=1, eps=EPS)
    logits = (p @ g.t()) / tau  # (C, C)
    logits = logits.masked_fill(~memory_valid.unsqueeze(0), float("-inf"))
    logp = torch.log_softmax(logits, dim=1)
    return -logp.diagonal()[ok].mean()


def loss_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Target entropy minimisation (the direct AdvEnt term): mean of Eq. 5's normalised entropy."""
    return entropy_map(probs.float()).mean()


# -- the authors' prototype terms (issue 18; docs/notes/tcsa-authors-code.md) ---------------------------------------
#: centre momentum (CLASS_CENTER_M of the authors' "Ours" configs): c <- m c + (1 - m) batch centre
CENTRE_MOMENTUM = 0.01
#: MPCL settings of the "Ours" configs: margins, temperatures, the target term's weight relative to the source's
#: (LAMBDA_MPCL_TRG / LAMBDA_MPCL_SRC), and the target pixel selection (top-1 minus top-2 cosine to the centres)
MPCL_SOURCE_MARGIN, MPCL_TARGET_MARGIN, MPCL_TEMPERATURE, MPCL_TARGET_WEIGHT, MPCL_PIXEL_SELECTION = 0.4, 0.2, 1.0, 0.1, 0.25


class ClassCentres:
    """Class centres of one domain, (C, D): each step c_k <- m c_k + (1 - m) P_k for the classes present in the batch
    (P_k the batch's class-pooled feature), the first sighting taking P_k. :meth:`blend` returns the updated centres
    *with* the gradient of the batch's part (the stored copy is detached), so a loss on them trains the features."""

    def __init__(self, n_classes: int, dim: int, momentum: float = CENTRE_MOMENTUM, device=None):
        self.c = torch.zeros(n_classes, dim, device=device)
        self.valid = torch.zeros(n_classes, dtype=torch.bool, device=device)
        self.momentum = momentum

    def blend(self, protos: torch.Tensor, present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        protos = protos.float()
        old = self.c.to(protos)
        keep = (present & self.valid).unsqueeze(1)
        fresh = (present & ~self.valid).unsqueeze(1)
        new = torch.where(keep, self.momentum * old + (1 - self.momentum) * protos, torch.where(fresh, protos, old))
        self.c = new.detach()
        self.valid = self.valid | present
        return new, self.valid.clone()


class PrototypeMemory(ClassCentres):
    """High-level semantic prototypes G (C, D): an exponential moving average of source prototypes (the blend of
    :class:`ClassCentres`, without gradient).

    Source labels are the trustworthy ones, so G follows the source; both domains are aligned to it.
    """

    def __init__(self, n_classes: int, dim: int, momentum: float = 0.9, device=None):
        super().__init__(n_classes, dim, momentum, device)

    @property
    def g(self) -> torch.Tensor:
        return self.c

    @torch.no_grad()
    def update(self, protos: torch.Tensor, present: torch.Tensor) -> None:
        self.blend(protos.detach().to(self.c.device), present.to(self.c.device))


def loss_centre_mse(c_src: torch.Tensor, c_trg: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """sum_k MSE(c_src[k], c_trg[k]) over the classes both domains have seen (the authors' "Ours", ``train_proto``)."""
    if not bool(valid.any()):
        return c_src.sum() * 0.0
    return ((c_src[valid] - c_trg[valid]) ** 2).mean(dim=1).sum()


def loss_mpcl(feats: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor, select: torch.Tensor,
              margin: float, tau: float = MPCL_TEMPERATURE, base_tau: float = MPCL_TEMPERATURE,
              valid: torch.Tensor | None = None) -> torch.Tensor:
    """Margin-based pixel-to-centre contrast (MPCL, the authors' ``utils/loss.py``): every selected pixel's
    L2-normalised feature against the normalised class centres, cos / tau, with an additive angular margin on its own
    class (cos(theta + m), falling back to cos - m sin(m) past theta = pi - m); loss -(tau / base_tau) log softmax at
    its class, averaged over the selected pixels. feats (B, D, h, w); labels and select (B, h, w); ``valid`` (C,):
    the centres seen so far (the others are no negatives, and pixels of an unseen class are not selected). (The
    authors subtract the row maximum of the positive and negative logits separately; here one softmax, the intended
    form.)"""
    f = F.normalize(feats.float(), dim=1, eps=EPS).movedim(1, -1).reshape(-1, feats.shape[1])
    y = labels.reshape(-1).long()
    sel = select.reshape(-1).float()
    if valid is not None:
        sel = sel * valid.to(y.device)[y].float()
    if float(sel.sum()) == 0.0:
        return feats.sum() * 0.0
    c = F.normalize(centres.float(), dim=1, eps=EPS)
    cos = (f @ c.t()).clamp(-1.0, 1.0)  # (N, C)
    sin = torch.sqrt((1.0 - cos ** 2).clamp(1e-4, 1.0))
    phi = cos * math.cos(margin) - sin * math.sin(margin)
    phi = torch.where(cos > math.cos(math.pi - margin), phi, cos - math.sin(math.pi - margin) * margin)
    pos = F.one_hot(y, c.shape[0]).bool()
    logits = torch.where(pos, phi, cos) / tau
    if valid is not None:
        logits = logits.masked_fill(~valid.to(logits.device).unsqueeze(0), float("-inf"))
    nll = -(logits.log_softmax(1)[pos])  # (N,)
    return (tau / base_tau) * (nll * sel).sum() / sel.sum().clamp_min(1e-4)


def centre_pseudo_labels(feats: torch.Tensor, centres: torch.Tensor, threshold: float = MPCL_PIXEL_SELECTION,
                         valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Target labels of MPCL (the authors' ``train_mpscl``): the nearest centre by cosine, selected where the top-1
    cosine exceeds the top-2 by ``threshold``; ``valid``: the centres seen so far (the others are never chosen).
    feats (B, D, h, w) -> labels, select (B, h, w)."""
    f = F.normalize(feats.detach().float(), dim=1, eps=EPS)
    c = F.normalize(centres.float(), dim=1, eps=EPS)
    cos = torch.einsum("bdhw,cd->bchw", f, c)
    if valid is not None:
        cos = cos.masked_fill(~valid.to(cos.device).view(1, -1, 1, 1), -2.0)  # below any cosine
    top = cos.topk(min(2, c.shape[0]), dim=1).values
    gap = top[:, 0] - top[:, 1] if top.shape[1] > 1 else torch.ones_like(top[:, 0])
    return cos.argmax(1), (gap > threshold).float()


class TcsaState:
    """What TCSA's prototype terms keep between steps, for the chosen ``form``."""

    def __init__(self, form: str, n_classes: int, dim: int, momentum: float, device=None):
        if form not in PROTO_FORMS:
            raise ValueError(f"unknown prototype form '{form}', choose one of {', '.join(PROTO_FORMS)}")
        self.form = form
        self.memory = PrototypeMemory(n_classes, dim, momentum, device)  # infonce
        self.src = ClassCentres(n_classes, dim, device=device)  # centre: both domains; mpcl: the shared set
        self.trg = ClassCentres(n_classes, dim, device=device)


def _down_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour labels at a feature map's size (as the authors' MPCL reads them)."""
    return F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def tcsa_terms(out, ys: torch.Tensor, probs_t: torch.Tensor, pseudo: torch.Tensor,
               certain: torch.Tensor, memory: PrototypeMemory | TcsaState, text_relations: torch.Tensor, tau: float,
               target_terms: bool = True, ignore_label: int = 255, entropy: bool = True) -> dict[str, torch.Tensor]:
    """The TCSA terms of one training step, from the outputs of :meth:`UUDS.forward`.

    Source: ground-truth memberships (ignored pixels excluded). Target (``target_terms``): confident
    pseudo-labels only (Eq. 6/7's certain mask for the current chi). ``memory``: a :class:`TcsaState` (its
    ``form`` picks the prototype term: ``centre``, ``mpcl`` or ``infonce``) or a bare :class:`PrototypeMemory`
    (``infonce``). ``entropy``: the direct target-entropy term (off where the adversarial term reads the entropy).
    """
    state = memory if isinstance(memory, TcsaState) else None
    form = state.form if state is not None else "infonce"
    memory = state.memory if state is not None else memory
    n_classes = probs_t.shape[1]
    y = ys[:, 0] if ys.ndim == 4 else ys
    valid = y != ignore_label
    y = y.masked_fill(~valid, 0)
    terms: dict[str, torch.Tensor] = {}
    w = soft_class_weights(y, n_classes, tuple(out.enc_s.shape[-2:]), valid)
    p, present = class_prototypes(out.enc_s, w)
    terms["cov_s"] = loss_vl_cov(p, present, text_relations)
    w = soft_class_weights(y, n_classes, tuple(out.dec_s.shape[-2:]), valid)
    p, present = class_prototypes(out.dec_s, w)
    if form == "infonce":
        memory.update(p, present)
        terms["proto_s"] = loss_proto_align(p, present, memory.g, memory.valid, tau)
    elif form == "mpcl":  # one shared centre set, from the source batch only
        centres, _ = state.src.blend(p.detach(), present)
        size = tuple(out.dec_s.shape[-2:])
        terms["proto_s"] = loss_mpcl(out.dec_s, _down_labels(y, size), centres,
                                     _down_labels(valid.long(), size).float(), MPCL_SOURCE_MARGIN,
                                     valid=state.src.valid)
    else:  # centre: the source's centres now, with the gradient of this batch
        c_src, src_valid = state.src.blend(p, present)
    if target_terms:
        w = soft_class_weights(pseudo, n_classes, tuple(out.enc_ts.shape[-2:]), certain)
        p, present = class_prototypes(out.enc_ts, w)
        terms["cov_t"] = loss_vl_cov(p, present, text_relations)
        if form == "centre":  # the authors' target centres: the arg max of the prediction, every pixel
            w = soft_class_weights(probs_t.detach().argmax(1), n_classes, tuple(out.dec_ts.shape[-2:]))
        else:
            w = soft_class_weights(pseudo, n_classes, tuple(out.dec_ts.shape[-2:]), certain)
        p, present = class_prototypes(out.dec_ts, w)
        if form == "infonce":
            terms["proto_t"] = loss_proto_align(p, present, memory.g, memory.valid, tau)
        elif form == "mpcl":
            labels_t, select = centre_pseudo_labels(out.dec_ts, state.src.c, valid=state.src.valid)
            terms["proto_t"] = MPCL_TARGET_WEIGHT * loss_mpcl(out.dec_ts, labels_t, state.src.c, select,
                                                              MPCL_TARGET_MARGIN, valid=state.src.valid)
        else:
            c_trg, trg_valid = state.trg.blend(p, present)
            terms["proto_t"] = loss_centre_mse(c_src, c_trg, src_valid & trg_valid)
        if entropy:
            terms["ent"] = loss_entropy(probs_t)
    return terms
