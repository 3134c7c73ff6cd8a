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

import torch
import torch.nn.functional as F

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


class PrototypeMemory:
    """High-level semantic prototypes G (C, D): an exponential moving average of source prototypes.

    Source labels are the trustworthy ones, so G follows the source; both domains are aligned to it.
    """

    def __init__(self, n_classes: int, dim: int, momentum: float = 0.9, device=None):
        self.g = torch.zeros(n_classes, dim, device=device)
        self.valid = torch.zeros(n_classes, dtype=torch.bool, device=device)
        self.momentum = momentum

    @torch.no_grad()
    def update(self, protos: torch.Tensor, present: torch.Tensor) -> None:
        protos = protos.detach().float().to(self.g.device)
        present = present.to(self.g.device)
        fresh = present & ~self.valid
        keep = present & self.valid
        self.g[fresh] = protos[fresh]
        self.g[keep] = self.momentum * self.g[keep] + (1 - self.momentum) * protos[keep]
        self.valid |= present


def tcsa_terms(out, ys: torch.Tensor, probs_t: torch.Tensor, pseudo: torch.Tensor,
               certain: torch.Tensor, memory: PrototypeMemory, text_relations: torch.Tensor, tau: float,
               target_terms: bool = True, ignore_label: int = 255) -> dict[str, torch.Tensor]:
    """The TCSA terms of one training step, from the outputs of :meth:`UUDS.forward`.

    Source: ground-truth memberships (ignored pixels excluded). Target (``target_terms``): confident
    pseudo-labels only (Eq. 6/7's certain mask for the current chi). The memory is updated from the
    source decoder prototypes before the alignment is computed.
    """
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
    memory.update(p, present)
    terms["proto_s"] = loss_proto_align(p, present, memory.g, memory.valid, tau)
    if target_terms:
        w = soft_class_weights(pseudo, n_classes, tuple(out.enc_ts.shape[-2:]), certain)
        p, present = class_prototypes(out.enc_ts, w)
        terms["cov_t"] = loss_vl_cov(p, present, text_relations)
        w = soft_class_weights(pseudo, n_classes, tuple(out.dec_ts.shape[-2:]), certain)
        p, present = class_prototypes(out.dec_ts, w)
        terms["proto_t"] = loss_proto_align(p, present, memory.g, memory.valid, tau)
        terms["ent"] = loss_entropy(probs_t)
    return terms
