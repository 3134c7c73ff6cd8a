"""Ctrl-C and SIGTERM: the same way out, and never in the middle of a write.

``terminate_as_interrupt()`` makes SIGTERM (what ``timeout``, SLURM, ``docker stop`` and ``kill`` send) raise
KeyboardInterrupt, so a terminated run takes the path of Ctrl-C: it stops training and saves what it learnt.
``deferred()`` holds both signals back while a set of files is written, and delivers one afterwards. Both act in
the main thread only (Python delivers signals there); elsewhere (napari's worker threads) they change nothing.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None)) if s is not None)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises KeyboardInterrupt like Ctrl-C (main thread only)."""
    if not _main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM until the block ends, then raise KeyboardInterrupt if one came."""
    if not _main_thread():
        yield
        return
    caught: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if caught:
        raise KeyboardInterrupt(signal.Signals(caught[0]).name)


@contextlib.contextmanager
def stop_on_signal(stop) -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM call ``stop()`` instead of raising (main thread only): a distributed
    run's ranks share the flag and stop after the same step (engine/distributed.py), where an exception raised in
    one rank in the middle of a collective would leave the others waiting."""
    if not _main_thread():
        yield
        return
    old = {s: signal.signal(s, lambda signum, frame: stop()) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
