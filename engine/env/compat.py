"""Make torchvision (and so open_clip) importable next to a CPU-only torch.

torchvision 0.28.0 from PyPI is a CUDA build. With the CPU build of torch 2.13.0 its C++ ops do not
load, and importing it fails with ``RuntimeError: operator torchvision::nms does not exist`` because
its meta registrations assume the ``torchvision::nms`` schema exists. Defining the two schemas it
registers against (``nms`` and ``qnms``) before the first import is enough: transforms, timm and
open_clip then work; only ``torchvision.ops.nms`` itself stays unavailable, and CLIP never calls it.
Where torchvision's ops load (GPU machines) this is a no-op. See ../shared/STACK.md.
"""

from __future__ import annotations

import os
from types import ModuleType

_done = False


def prepare_torchvision() -> None:
    """Call before the first ``import torchvision`` / ``import open_clip``; idempotent."""
    global _done
    if _done:
        return
    # Nothing may be downloaded at run time: make Hugging Face hub look-ups fail at once.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw("torchvision::nms", "")
    except RuntimeError:
        library = torch.library.Library("torchvision", "FRAGMENT")
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        globals()["_library"] = library
    _done = True


def import_open_clip() -> ModuleType:
    """``open_clip``, imported safely (see module docstring)."""
    prepare_torchvision()
    import open_clip

    return open_clip
