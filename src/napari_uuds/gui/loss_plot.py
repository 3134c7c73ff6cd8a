"""A small live plot of the training losses, one curve per term, with axes and a legend (plain Qt painting: no
plotting dependency)."""
from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

#: the terms drawn (label, keys summed), in legend order: what a user can read a run by
TERMS = (("seg", ("seg",)), ("target (useg)", ("useg",)), ("identity", ("id",)), ("L_DD", ("dd_s", "dd_ts")),
         ("BSCL", ("bscl",)))
COLOURS = ("#50c8ff", "#ffb000", "#9be07a", "#ff6f91", "#c3a6ff")


def curves(history: list[dict[str, float]]) -> dict[str, list[tuple[int, float]]]:
    """Per-term (step, value) points from the per-step loss dicts (a term absent at a step is skipped there)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for h in history:
        step = int(h.get("step", len(out.get("seg", [])) + 1))
        for label, keys in TERMS:
            if any(k in h for k in keys):
                v = sum(h.get(k, 0.0) for k in keys)
                if math.isfinite(v):
                    out.setdefault(label, []).append((step, v))
    return out


class LossPlot(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.history: list[dict[str, float]] = []
        self.setMinimumHeight(130)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("training losses per step: seg (source segmentation), target (the uncertainty-filtered target "
                        "loss, from the warm-up on), identity (reconstruction), L_DD (domain distillation), BSCL")

    def set_values(self, history: list[dict[str, float]]) -> None:
        self.history = list(history)
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(38, 41, 48))
        data = curves(self.history)
        pts_all = [v for c in data.values() for _, v in c]
        steps = [s for c in data.values() for s, _ in c]
        if len(set(steps)) < 2:
            p.setPen(QColor(160, 160, 160))
            p.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "losses appear here while training runs")
            p.end()
            return
        lo, hi = min(min(pts_all), 0.0), max(pts_all)
        span = (hi - lo) or 1.0
        s0, s1 = min(steps), max(steps)
        left, right, top, bottom = 44, 30, 18, 16
        w, h = self.width() - left - right, self.height() - top - bottom
        fx = lambda s: left + w * (s - s0) / max(s1 - s0, 1)  # noqa: E731
        fy = lambda v: top + h * (hi - v) / span  # noqa: E731
        grey = QColor(170, 170, 170)
        p.setPen(QPen(grey, 1))
        p.drawLine(QPointF(left, top), QPointF(left, top + h))
        p.drawLine(QPointF(left, top + h), QPointF(left + w, top + h))
        small = p.font()
        small.setPointSizeF(max(small.pointSizeF() * 0.8, 6.0))
        p.setFont(small)
        for v in (hi, lo) + ((0.0,) if lo < 0 < hi else ()):  # y ticks: top, bottom, and zero when inside
            y = fy(v)
            p.drawLine(QPointF(left - 3, y), QPointF(left, y))
            p.drawText(QRectF(0, y - 7, left - 5, 14), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter,
                       f"{v:.2g}")
        for s in (s0, s1):  # x ticks: first and last step
            p.drawText(QRectF(fx(s) - 30, top + h + 1, 60, 14), Qt.AlignmentFlag.AlignHCenter, f"step {s}")
        x = left
        for (label, _), colour in zip(TERMS, COLOURS):
            if label not in data:
                continue
            c = QColor(colour)
            pts = [QPointF(fx(s), fy(v)) for s, v in data[label]]
            p.setPen(QPen(c, 1.5))
            if len(pts) > 1:
                p.drawPolyline(QPolygonF(pts))
            p.drawLine(QPointF(x, 8), QPointF(x + 10, 8))  # legend
            p.setPen(grey)
            p.drawText(QPointF(x + 13, 12), label)
            x += 18 + p.fontMetrics().horizontalAdvance(label)
        p.end()
