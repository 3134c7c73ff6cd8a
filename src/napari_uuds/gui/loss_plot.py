"""A small live plot of the total loss per step (plain Qt painting: no plotting dependency)."""
from __future__ import annotations

import math

from qtpy.QtCore import QPointF, Qt
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget


class LossPlot(QWidget):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.values: list[float] = []
        self.setMinimumHeight(90)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("total loss per training step")

    def set_values(self, values: list[float]) -> None:
        self.values = [v for v in values if math.isfinite(v)]
        self.update()

    def paintEvent(self, event):  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(38, 41, 48))
        vals = self.values
        if len(vals) >= 2:
            lo, hi = min(vals), max(vals)
            span = (hi - lo) or 1.0
            w, h, m = self.width(), self.height(), 6
            pts = [QPointF(m + (w - 2 * m) * i / (len(vals) - 1), m + (h - 2 * m) * (hi - v) / span)
                   for i, v in enumerate(vals)]
            p.setPen(QPen(QColor(80, 200, 255), 1.5))
            p.drawPolyline(QPolygonF(pts))
            p.setPen(QColor(200, 200, 200))
            p.drawText(self.rect().adjusted(4, 2, -4, -2), Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignRight,
                       f"loss {vals[-1]:.3f}  (min {lo:.3f})")
        p.end()
