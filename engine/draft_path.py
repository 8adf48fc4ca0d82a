"""Which kernels a SubSpec draft runs on here: the fused low-bit and elementwise kernels need CUDA and
Triton; without them the substitutes run as dequantized weights (correct, but a slower draft).

Without torch at import time, so the app's GUI thread can word a profile (app/hardware_text.py) with the
same text `subspec profile` prints.
"""

from __future__ import annotations


def probe(cuda_available: bool) -> dict:
    """The hardware profile's "draft" entry: Triton's version (None without it) and whether the fused
    kernels run."""
    from . import lowbit

    version = getattr(lowbit.triton, "__version__", None) if lowbit.available() else None
    return {"triton": version, "fused_kernels": bool(cuda_available and version)}


def draft_text(profile: dict) -> str:
    """One line on the draft's kernels ('' for a profile that does not say: one saved by an older version)."""
    draft, cuda = profile.get("draft"), profile.get("cuda") or {}
    if not draft:
        return ""
    if cuda.get("available") and draft.get("triton"):
        return f"Draft: fused low-bit kernels (Triton {draft['triton']})"
    if cuda.get("available"):
        return ("Draft: Triton is not installed, so substitutes run as dequantized weights and drafting is "
                "slower (pip install triton)")
    return "Draft: substitutes run as dequantized weights on the CPU (the fused kernels need CUDA)"
