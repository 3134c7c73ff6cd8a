"""The napari plugin: state (evented dataclasses), controller (synchronous actions), widget (Qt).

Triton bundles its own LLVM; loaded into a process where Mesa's llvmpipe (software OpenGL) already
drives napari's canvas, it crashes the process (seen here: a segmentation fault when open_clip pulls in
torchvision, which imports triton). The GUI needs no Triton kernels, so open_clip (and with it torchvision) is
imported here with Triton hidden, and Triton is visible again right after: other plugins in the same napari
process are not affected. Set NAPARI_UUDS_ALLOW_TRITON=1 to import it as usual.
"""
import os as _os
import sys as _sys


def _import_open_clip_without_triton() -> None:
    if "open_clip" in _sys.modules or "triton" in _sys.modules or _os.environ.get("NAPARI_UUDS_ALLOW_TRITON") == "1":
        return
    _sys.modules["triton"] = None  # type: ignore[assignment]  # "import triton" raises ImportError meanwhile
    try:
        import open_clip  # noqa: F401
    finally:
        if "triton" in _sys.modules and _sys.modules["triton"] is None:
            del _sys.modules["triton"]


_import_open_clip_without_triton()
