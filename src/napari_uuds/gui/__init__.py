"""The napari plugin: state (evented dataclasses), controller (synchronous actions), widget (Qt).

Triton bundles its own LLVM; loaded into a process where Mesa's llvmpipe (software OpenGL) already
drives napari's canvas, it crashes the process (seen here: a segmentation fault when open_clip pulls in
torchvision, which imports triton). The GUI needs no Triton kernels, so it is blocked before torchvision
loads, unless it is already imported or NAPARI_UUDS_ALLOW_TRITON=1. The engine and CLI are unaffected.
"""
import os as _os
import sys as _sys

if "triton" not in _sys.modules and _os.environ.get("NAPARI_UUDS_ALLOW_TRITON", "0") != "1":
    _sys.modules["triton"] = None  # type: ignore[assignment]
