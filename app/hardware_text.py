"""Words for the hardware panel: a profile (engine.hardware.probe) and a Plan (engine.planner) as text.

Plain functions without Qt, so the numbers the panel shows are easy to test against make_plan's. Kept here
rather than reusing engine.hardware.format_profile: importing that module imports torch, which the GUI
thread must not wait for.
"""

from __future__ import annotations

from html import escape

from engine.draft_path import draft_text as engine_draft_text  # torch-free

GIB = 1 << 30  # binary units, as the planner and `subspec hardware` count them


def gib(nbytes: int | None) -> str:
    return "?" if nbytes is None else f"{nbytes / GIB:.1f} GiB"


def link_text(pcie: dict | None) -> str:
    pcie = pcie or {}

    def one(gen, width):
        parts = ([f"Gen{gen}"] if gen is not None else []) + ([f"x{width}"] if width is not None else [])
        return " ".join(parts)

    current = one(pcie.get("gen_current"), pcie.get("width_current"))
    maximum = one(pcie.get("gen_max"), pcie.get("width_max"))
    if current and maximum:
        return f"PCIe {current} (max {maximum})"
    if current or maximum:
        return f"PCIe {current or 'max ' + maximum}"
    return "PCIe link unknown"


def gpu_html(gpu: dict) -> str:
    total, used, free = gpu.get("total_bytes"), gpu.get("used_bytes"), gpu.get("free_bytes")
    extras = []
    if gpu.get("utilization_pct") is not None:
        extras.append(f"{gpu['utilization_pct']}% busy")
    if gpu.get("temperature_c") is not None:
        extras.append(f"{gpu['temperature_c']} °C")
    return (f"<b>GPU {gpu.get('index', 0)} · {escape(str(gpu.get('name')))}</b><br>"
            f"VRAM {gib(total)}: {gib(used)} used, {gib(free)} free"
            + (" · " + " · ".join(extras) if extras else "") + "<br>"
            f"{link_text(gpu.get('pcie'))} · driver {escape(str(gpu.get('driver') or 'unknown'))}")


def used_percent(gpu: dict) -> int:
    total = gpu.get("total_bytes") or 0
    return round(100 * (gpu.get("used_bytes") or 0) / total) if total else 0


def no_gpu_text(profile: dict) -> str:
    message = (profile.get("nvml") or {}).get("message") or "no NVIDIA GPU found"
    # The probe's messages end in ": CPU-only", which this line already leads with.
    return f"CPU-only: {message.removesuffix(': CPU-only')}. Models run from RAM on the CPU."


def cpu_text(profile: dict) -> str:
    cpu = profile.get("cpu") or {}
    physical, logical = cpu.get("cores_physical"), cpu.get("cores_logical")
    cores = f"{physical} cores, {logical} threads" if physical else f"{logical} threads"
    return f"CPU: {cpu.get('name', 'unknown')} ({cores})"


def ram_text(profile: dict) -> str:
    ram = profile.get("ram") or {}
    return f"RAM: {gib(ram.get('total_bytes'))} ({gib(ram.get('available_bytes'))} available)"


def measured_text(profile: dict) -> str:
    if not (profile.get("cuda") or {}).get("available"):
        return "Speeds: CUDA is not available, nothing to measure."
    m = profile.get("measured")
    if not m:
        return "Speeds: not measured on this machine yet; the plan assumes PCIe defaults."
    parts = []
    if m.get("h2d_bandwidth_gbps") is not None:
        parts.append(f"host-to-device {m['h2d_bandwidth_gbps']:.1f} GB/s")
    if m.get("matmul_tflops") is not None:
        parts.append(f"bf16 matmul {m['matmul_tflops']:.1f} TFLOP/s")
    return f"Speeds: {', '.join(parts) or 'none'} (measured {m.get('date') or 'on an unknown date'})"


def draft_text(profile: dict) -> str:
    """Which kernels a SubSpec draft runs on here, as `subspec profile` says it ('' when the profile does
    not say: an older saved one)."""
    line = engine_draft_text(profile)
    return f"{line}." if line else ""


def plan_rows(plan) -> list[tuple[str, str]]:
    """(label, value) lines with the numbers `subspec plan` prints for the same plan."""
    bits = sorted({b for b in plan.substitute_bits if b is not None})
    memory = "VRAM" if plan.device == "cuda" else "RAM"
    tree = (f"depth {plan.depth} × width {plan.topk} ({plan.nodes} nodes), τ {plan.predicted_tau:.1f}"
            if plan.depth else "none: plain decoding")
    prefill = (f"up to {plan.prefill_pass_tokens} prompt tokens per pass of the streamed layers"
               if plan.offloaded_layers else "nothing streamed")
    return [
        ("Method", f"{plan.method} on {plan.device}"),
        ("Layers", f"{plan.resident_layers} resident, {plan.offloaded_layers} streamed ({plan.slots} slots)"),
        ("Substitute bits", "/".join(map(str, bits)) or "-"),
        ("Tree", tree),
        ("Context", f"{plan.kv_length} tokens"),
        ("Prefill", prefill),
        (memory, f"{plan.predicted_vram_bytes / GIB:.2f} GB of {plan.budget_bytes / GIB:.2f} GB"
         if plan.device == "cuda" else f"{plan.predicted_host_bytes / GIB:.2f} GB of {plan.budget_bytes / GIB:.2f} GB"),
        ("Speed", f"{plan.predicted_tokens_per_s:.1f} tok/s predicted ({plan.speedup:.1f}x plain)"),
    ]


def reasons_html(plan) -> str:
    return "<ul style='margin-left:-24px'>" + "".join(f"<li>{escape(r)}</li>" for r in plan.reasons) + "</ul>"


def speed_rows(plan, measured: dict[str, list[float]]) -> list[tuple[str, str, str]]:
    """(method, predicted, measured) for plain and SubSpec decoding: the plan predicts both (plain is its
    baseline), the app's own answers measure whichever was used."""
    predicted = {"vanilla": plan.baseline_tokens_per_s if plan else None,
                 "subspec": plan.predicted_tokens_per_s if plan and plan.method == "subspec" else None}
    rows = []
    for method, label in (("vanilla", "Plain"), ("subspec", "SubSpec")):
        runs = measured.get(method) or []
        p = predicted[method]
        m = f"{sum(runs) / len(runs):.1f} tok/s ({len(runs)} answer{'s' if len(runs) != 1 else ''})" if runs else "—"
        rows.append((label, f"{p:.1f} tok/s" if p else "—", m))
    return rows
