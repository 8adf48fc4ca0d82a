"""What the CPU benchmarks on the default model (SmolLM2-135M-Instruct, imported into the store on first
use) share: the model, its substitute draft as the benchmarks measure it, and a timed answer."""

from __future__ import annotations

import time


def load(dtype: str = "float32", resident_layers: int | None = None):
    """The default model on the CPU (`resident_layers`: stream the others from host memory)."""
    from engine import store
    from engine.loading import load_model

    info = store.ensure_default_model(progress=lambda _m: None)
    return load_model(info.path, dtype=dtype, device="cpu", resident_layers=resident_layers)


def draft(lm):
    """4-bit, group 64: a group of 32 would match the GGUF's own grid and fake perfect acceptance."""
    from engine.substitute import build_draft

    return build_draft(lm.decoder, 4, 64)


def timed(gen, ids):
    """(the answer's GenerationResult, its wall time in seconds, prefill included)."""
    from engine.events import summarize

    t0 = time.perf_counter()
    result = summarize(gen, len(ids), "x")
    return result, time.perf_counter() - t0
