"""The output folder of a run: one run at a time, no input overwritten, room for the outputs, no stale temp files.

``OutputLock`` holds an advisory lock (``flock``) on ``OUT/.napari-uuds.lock`` for the length of a run; a second
run into the same folder is refused at once, naming the first one's process. While it holds the lock a run may
sweep the temporary files a killed run left (``sweep_stale_temps``): nobody else is writing there.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .errors import UUDSError

LOCK = ".napari-uuds.lock"
#: the temporary names atomic_write gives the files a run writes (``.<name>.<random><suffix>``)
_TEMP = re.compile(r"^\.((model\.safetensors|config\.json|optimizer\.pt|metrics\.json)\.[a-z0-9_]{8}\.tmp"
                   r"|.+_(seg|entropy|synthetic|certain)\.nii(\.gz)?\.[a-z0-9_]{8}\.nii(\.gz)?"
                   r"|write-test\.[a-z0-9_]{8})$")


class OutputLock:
    """``with OutputLock(out):`` creates ``out`` if needed and holds its lock; refuses when another run holds it.

    On leaving, the lock file is removed, and so is ``out`` when this run created it and left it empty."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = self.out / LOCK
        self.fd: int | None = None
        self.created = False

    def __enter__(self) -> "OutputLock":
        import fcntl

        self.created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                other = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise UUDSError(f"another napari-uuds run (process {other}) is writing here; wait for it or choose "
                                "another --out", self.out) from None
            try:  # the file may have been removed by the run that held it: lock the one on disk
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self.fd)  # closing releases the lock
        self.fd = None
        if self.created:
            try:
                self.out.rmdir()  # only when empty
            except OSError:
                pass


def sweep_stale_temps(out: str | Path) -> list[str]:
    """Remove the temporary files a killed run left in ``out`` (call it holding the folder's lock)."""
    out = Path(out)
    gone = []
    if out.is_dir():
        for p in out.iterdir():
            if p.is_file() and _TEMP.match(p.name):
                p.unlink()
                gone.append(p.name)
    return gone


def check_inputs_kept(outputs: list[Path], inputs: dict[str, list]) -> None:
    """Refuse outputs that would replace an input, whatever ``--overwrite`` says (``inputs``: option -> paths)."""
    mine = {}
    for option, paths in inputs.items():
        for p in paths or []:
            mine[Path(p).resolve()] = option
    for o in outputs:
        r = o.resolve()
        if r in mine:
            raise UUDSError(f"writing here would replace an input ({mine[r]}); choose another --out", o)


def check_free_space(out: str | Path, need_bytes: int, largest_file: int = 0) -> None:
    """Refuse to start when the folder's file system has less room than the outputs need (about), or when the
    process may not write a file as large as ``largest_file`` bytes (``ulimit -f``)."""
    try:
        import resource

        limit, unlimited = resource.getrlimit(resource.RLIMIT_FSIZE)[0], resource.RLIM_INFINITY
    except (ImportError, OSError, ValueError):  # no such limit here (Windows)
        limit = unlimited = -1
    if limit != unlimited and largest_file > limit:
        raise UUDSError(f"the file size limit (ulimit -f) is {limit / 1e6:.1f} MB; the largest output needs up to "
                        f"{largest_file / 1e6:.1f} MB", out)
    probe = Path(out)
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need_bytes:
        raise UUDSError(f"only {free / 1e6:.0f} MB free where the outputs go; they need about {need_bytes / 1e6:.0f} MB",
                        out)
