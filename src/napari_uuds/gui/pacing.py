"""Frame pacing: spread layer refreshes over successive canvas frames.

Why: on a software-rendered canvas (Mesa llvmpipe, e.g. under Xvfb or a remote desktop) a frame of
the viewer costs 50-70 ms with the CPU idle, and each layer whose texture changed adds a pipeline
flush of 5-35 ms. Refreshing the four output layers at once made one frame of 100-270 ms while
training competed for the same cores. The pacer refreshes one visible layer per frame, waits for
that frame to be drawn, then the next; when the last is drawn it calls ``done`` (the controller then
lets the training loop go on, see ``TrainControl.display_timeout``). Hidden layers are refreshed at
once: they cost no frame.

With no canvas to listen to (tests driving the controller, a viewer without a window), frames are
replaced by a short timer, so the pacer always finishes.
"""
from __future__ import annotations

from typing import Callable

from qtpy.QtCore import QTimer

#: how long to wait for a frame that never comes (canvas hidden or minimised) before going on.
FRAME_WAIT_MS = 250
#: pause after a frame is drawn before the next refresh: a software rasteriser finishes the frame in
#: its own threads after the draw call returns, and a texture upload before then waits for it.
AFTER_FRAME_MS = 20


def _draw_events(viewer):
    """The vispy canvas' draw emitter, or None. Private napari API, so every step is guarded."""
    try:
        return viewer.window._qt_viewer.canvas._scene_canvas.events.draw
    except AttributeError:
        return None


class _Call:
    def __init__(self, fn: Callable[[], None]):
        self.fn = fn


class FramePacer:
    def __init__(self, viewer, frame_wait_ms: int = FRAME_WAIT_MS):
        self._queue: list = []
        self._done: list[Callable[[], None]] = []
        self._waiting = False
        self._watchdog = QTimer()
        self._watchdog.setSingleShot(True)
        self._watchdog.setInterval(frame_wait_ms)
        self._watchdog.timeout.connect(self._frame_drawn)
        self._draw = _draw_events(viewer)
        if self._draw is not None:
            self._draw.connect(self._on_draw)

    @property
    def busy(self) -> bool:
        return bool(self._queue) or self._waiting

    def submit(self, layers, done: Callable[[], None] | None = None) -> None:
        """Refresh ``layers`` one frame each; call ``done`` once all are on screen."""
        for layer in layers:
            if not any(layer is q for q in self._queue):
                self._queue.append(layer)
        if done is not None:
            self._done.append(done)
        if not self._waiting:
            self._next()

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` (e.g. adding a layer) in its own frame: after what is queued, before what follows."""
        self._queue.append(_Call(fn))
        if not self._waiting:
            self._next()

    def _next(self) -> None:
        while self._queue:
            item = self._queue.pop(0)
            if isinstance(item, _Call):
                item.fn()
                visible = True
            else:
                item.refresh()
                visible = item.visible
            if visible:  # a visible change costs a frame: wait for it before the next one
                self._waiting = True
                self._watchdog.start()
                return
        self._waiting = False
        done, self._done = self._done, []
        for fn in done:
            fn()

    def _on_draw(self, _event=None) -> None:
        if self._waiting:
            # called from inside the paint: continue a little later, on another turn of the event loop
            QTimer.singleShot(AFTER_FRAME_MS, self._frame_drawn)

    def _frame_drawn(self) -> None:
        if not self._waiting:
            return
        self._watchdog.stop()
        self._waiting = False
        self._next()

    def flush(self) -> None:
        """Refresh everything still queued now (e.g. when training ends)."""
        queue, self._queue = self._queue, []
        for item in queue:
            item.fn() if isinstance(item, _Call) else item.refresh()
        self._waiting = False
        self._watchdog.stop()
        done, self._done = self._done, []
        for fn in done:
            fn()

    def close(self) -> None:
        try:
            self.flush()
        except RuntimeError:  # Qt objects already deleted (application shutting down)
            self._queue, self._done = [], []
        if self._draw is not None:
            try:
                self._draw.disconnect(self._on_draw)
            except Exception:  # the canvas may be gone already
                pass
