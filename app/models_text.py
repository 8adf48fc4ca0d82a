"""Words for the Models panel: sizes, speeds, times left, a job's progress line, a fit badge. Plain functions
without Qt, so what the panel shows is easy to test against the engine's numbers."""

from __future__ import annotations

from engine.cli_models import human_bytes  # decimal units, as the hub and `subspec models du` count

__all__ = ["human_bytes", "eta_text", "speed_text", "job_detail", "job_status", "fit_badge", "model_facts",
           "disk_facts", "source_text", "default_import_name", "count_text"]


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s // 60 % 60:02d} min left"
    if s >= 60:
        return f"{s // 60} min {s % 60:02d} s left"
    return f"{s} s left"


def speed_text(bytes_per_s: float) -> str:
    return f"{human_bytes(bytes_per_s)}/s" if bytes_per_s > 0 else ""


def count_text(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


STATE_WORDS = {"queued": "Waiting", "resolving": "Asking the hub", "downloading": "Downloading",
               "retrying": "Connection lost, retrying", "verifying": "Verifying checksums",
               "installing": "Installing", "importing": "Importing", "converting": "Building substitutes",
               "pausing": "Pausing", "cancelling": "Cancelling", "paused": "Paused", "cancelled": "Cancelled",
               "failed": "Failed", "done": "Done"}


def job_status(job: dict) -> str:
    """The first line under a job's title: its state, and the percentage where there is one."""
    words = STATE_WORDS.get(job["state"], job["state"].capitalize())
    if job["kind"] == "download" and job["total"] and job["state"] not in ("done", "failed", "cancelled"):
        return f"{words} · {100 * job['done'] / job['total']:.0f}%"
    if job["kind"] == "import" and job["fraction"] is not None and job["state"] == "importing":
        return f"{words} · {100 * job['fraction']:.0f}%"
    if job["kind"] == "convert" and job["total"] and job["state"] == "converting":
        return f"{words} · layer {job['done']} of {job['total']}"
    return words


def job_detail(job: dict) -> str:
    """Bytes done of total, speed, time left and the file in flight (a download); the engine's message
    (an import, a retry, a finished job)."""
    if job["kind"] == "download" and job["total"] and job["state"] in ("downloading", "verifying", "paused",
                                                                      "pausing", "installing"):
        parts = [f"{human_bytes(job['done'])} of {human_bytes(job['total'])}"]
        if job["state"] == "downloading":
            parts += [p for p in (speed_text(job["bytes_per_s"]), eta_text(job["eta_s"])) if p]
        if job["file"] and job["state"] in ("downloading", "verifying"):
            parts.append(job["file"])
        return " · ".join(parts)
    return job.get("message") or ""


def fit_badge(estimate) -> tuple[str, str]:
    """(text, kind) for an engine.catalogue.FitEstimate: kind is "good" (fits the GPU), "cpu" (runs, on the
    CPU) or "bad" (does not fit this machine)."""
    if not estimate.fits:
        # engine.catalogue.estimate_config's word for an architecture the engine does not run
        return ("Not supported", "bad") if estimate.summary.startswith("not supported") else ("Does not fit", "bad")
    if estimate.predicted_vram_bytes is None:
        return "CPU only", "cpu"
    return "Fits your GPU", "good"


def model_facts(model: dict) -> str:
    """Architecture, parameters and dtype of an installed model (scan_store's dict)."""
    arch = model.get("architecture", "").replace("ForCausalLM", "")
    params = model.get("parameters") or 0
    size = f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"
    return " · ".join(p for p in (arch, f"{size} parameters", model.get("dtype", "")) if p)


def disk_facts(model: dict) -> str:
    subs = model.get("substitute_bytes") or 0
    cache = (f"substitutes {human_bytes(subs)} ({count_text(model.get('substitute_layers', 0), 'layer')})"
             if subs else "no substitutes cached")
    return f"Weights {human_bytes(model.get('size_bytes') or 0)} · {cache}"


def source_text(model: dict) -> str:
    if model.get("repo_id"):
        return f"From {model['repo_id']} @ {model.get('commit', '')[:7]} · {model.get('imported', '')[:10]}"
    return f"Imported from {model.get('source', '?')} · {model.get('imported', '')[:10]}"


def default_import_name(path: str) -> str:
    """The store's own default (engine.store.import_model): a GGUF file's stem before its quantization
    and part suffixes, a folder's name."""
    from pathlib import Path

    from engine.gguf_import import model_name

    p = Path(path)
    return model_name(p) if p.suffix.lower() == ".gguf" else p.name
