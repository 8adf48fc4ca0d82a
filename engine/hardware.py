"""What this machine has to run models on: GPUs (through NVML), CPU, RAM, and optionally measured CUDA speeds.

The profile is plain JSON-able data so the CLI can print it as JSON and the app can show it without knowing
about NVML or torch. Probing never raises for a missing or broken driver: a machine without an NVIDIA GPU is
a normal case for this app, so it becomes a CPU-only profile with a message saying why.
"""

from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Callable

import psutil
import torch

from . import draft_path
from .draft_path import draft_text  # the profile's draft line, here beside the others

_MIB = 1024**2
_GIB = 1024**3

# A copy this large is dominated by the link rather than launch overhead; small enough for any CUDA card.
DEFAULT_H2D_BYTES = 256 * _MIB
# 4096^3 in bf16 keeps a modern GPU's tensor cores busy for milliseconds, so timer resolution does not matter.
DEFAULT_MATMUL_N = 4096


# ---------------------------------------------------------------------------------------------- probing


def probe(measure: bool = False) -> dict:
    """The hardware profile; with `measure`, also time host-to-device copies and a bf16 matmul on CUDA."""
    gpus, nvml = _probe_nvml()
    cuda = _probe_cuda(measure)
    return {
        "gpus": gpus,
        "nvml": nvml,
        "cpu": _probe_cpu(),
        "ram": _probe_ram(),
        "cuda": cuda,
        "draft": draft_path.probe(cuda["available"]),
    }


def _probe_nvml() -> tuple[list[dict], dict]:
    try:
        import pynvml
    except ImportError:
        return [], _nvml_status(False, "nvidia-ml-py is not installed, GPUs cannot be listed: CPU-only")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [], _nvml_status(False, _init_failure_message(pynvml, exc))
    try:
        return _list_gpus(pynvml)
    except pynvml.NVMLError as exc:
        return [], _nvml_status(False, f"NVML could not list the GPUs ({_error_text(exc)}): CPU-only")
    finally:
        _shutdown(pynvml)


def _nvml_status(available: bool, message: str) -> dict:
    return {"available": available, "message": message}


def _init_failure_message(pynvml, exc: Exception) -> str:
    # The library missing and the kernel driver not loaded are the two cases a user can act on; name them plainly.
    if isinstance(exc, pynvml.NVMLError_LibraryNotFound):
        return "no NVIDIA driver found (NVML library not found): CPU-only"
    if isinstance(exc, pynvml.NVMLError_DriverNotLoaded):
        return "no NVIDIA driver loaded (NVML: driver not loaded): CPU-only"
    return f"NVIDIA driver unusable (NVML: {_error_text(exc)}): CPU-only"


def _error_text(exc: Exception) -> str:
    # NVMLError.__str__ asks the library for the text, which can itself fail when the library is half there.
    try:
        return str(exc) or type(exc).__name__
    except Exception:
        return type(exc).__name__


def _shutdown(pynvml) -> None:
    try:
        pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        pass  # Nothing useful to do: the profile is already complete.


def _list_gpus(pynvml) -> tuple[list[dict], dict]:
    driver = _text(_optional(pynvml, pynvml.nvmlSystemGetDriverVersion)) or "unknown"
    gpus, skipped = [], []
    for index in range(pynvml.nvmlDeviceGetCount()):
        try:
            gpus.append(_gpu_entry(pynvml, index, driver))
        except pynvml.NVMLError as exc:
            # A GPU whose memory cannot be read is useless for placing models; report it, keep the others.
            skipped.append(f"GPU {index} skipped ({_error_text(exc)})")
    message = f"NVIDIA driver {driver}, {len(gpus)} GPU{'s' if len(gpus) != 1 else ''}"
    if skipped:
        message += "; " + "; ".join(skipped)
    return gpus, _nvml_status(True, message)


def _gpu_entry(pynvml, index: int, driver: str) -> dict:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    utilization = _optional(pynvml, pynvml.nvmlDeviceGetUtilizationRates, handle)
    return {
        "index": index,
        "name": _text(_optional(pynvml, pynvml.nvmlDeviceGetName, handle)) or f"NVIDIA GPU {index}",
        "uuid": _text(_optional(pynvml, pynvml.nvmlDeviceGetUUID, handle)),
        "driver": driver,
        "total_bytes": int(memory.total),
        "free_bytes": int(memory.free),
        "used_bytes": int(memory.used),
        "utilization_pct": None if utilization is None else int(utilization.gpu),
        "temperature_c": _optional_int(pynvml, pynvml.nvmlDeviceGetTemperature, handle,
                                       pynvml.NVML_TEMPERATURE_GPU),
        "pcie": {
            "gen_current": _optional_int(pynvml, pynvml.nvmlDeviceGetCurrPcieLinkGeneration, handle),
            "gen_max": _optional_int(pynvml, pynvml.nvmlDeviceGetMaxPcieLinkGeneration, handle),
            "width_current": _optional_int(pynvml, pynvml.nvmlDeviceGetCurrPcieLinkWidth, handle),
            "width_max": _optional_int(pynvml, pynvml.nvmlDeviceGetMaxPcieLinkWidth, handle),
        },
    }


def _optional(pynvml, query: Callable, *args) -> Any:
    # Many queries are unsupported on some cards (laptops, SXM boards, vGPUs); one missing field is not an error.
    try:
        return query(*args)
    except pynvml.NVMLError:
        return None


def _optional_int(pynvml, query: Callable, *args) -> int | None:
    value = _optional(pynvml, query, *args)
    return None if value is None else int(value)


def _text(value: Any) -> str | None:
    # Older nvidia-ml-py bindings return bytes for names, UUIDs and versions.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _probe_cpu() -> dict:
    return {
        "name": _cpu_name(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_logical": psutil.cpu_count(logical=True) or 1,
    }


def _cpu_name() -> str:
    # platform.processor() on Linux is just the architecture ("x86_64"); /proc/cpuinfo has the marketing name.
    if platform.system() == "Linux":
        name = _cpuinfo_model_name()
        if name:
            return name
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpuinfo_model_name(path: str = "/proc/cpuinfo") -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None


def _probe_ram() -> dict:
    memory = psutil.virtual_memory()
    return {"total_bytes": int(memory.total), "available_bytes": int(memory.available)}


def _probe_cuda(measure: bool) -> dict:
    available = torch.cuda.is_available()
    cuda = {"available": available, "device_name": None, "h2d_bandwidth_gbps": None, "matmul_tflops": None}
    if not available:
        return cuda
    device = torch.device("cuda", torch.cuda.current_device())
    cuda["device_name"] = torch.cuda.get_device_name(device)
    if measure:
        cuda["h2d_bandwidth_gbps"] = _measured(measure_h2d_bandwidth, device)
        cuda["matmul_tflops"] = _measured(measure_matmul_tflops, device)
    return cuda


def _measured(measurement: Callable[[torch.device], float], device: torch.device) -> float | None:
    # A card with too little free memory for the test buffers still gets a profile, just without that number.
    try:
        return round(measurement(device), 2)
    except RuntimeError:  # torch.cuda.OutOfMemoryError included
        return None
    finally:
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- measuring


def measure_h2d_bandwidth(device: str | torch.device = "cuda", nbytes: int = DEFAULT_H2D_BYTES,
                          repeats: int = 5, warmup: int = 2) -> float:
    """Host-to-device copy speed in GB/s (1e9 bytes), the median of `repeats` timed copies.

    On CUDA the source is pinned, as the engine's weight streaming uses it. On the CPU it is a plain memory
    copy, which keeps the function testable without a GPU.
    """
    device = _resolve(device)
    _check_counts(nbytes=nbytes, repeats=repeats)
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=device.type == "cuda")
    src.fill_(1)  # Untouched pages read as the shared zero page, which would overstate a CPU copy.
    dst = torch.empty(nbytes, dtype=torch.uint8, device=device)
    seconds = _median_seconds(lambda: dst.copy_(src, non_blocking=True), device, repeats, warmup)
    return nbytes / seconds / 1e9


def measure_matmul_tflops(device: str | torch.device = "cuda", n: int = DEFAULT_MATMUL_N,
                          dtype: torch.dtype = torch.bfloat16, repeats: int = 5, warmup: int = 2) -> float:
    """Square n x n matmul throughput in TFLOP/s (2 n^3 flops per product), the median of `repeats`."""
    device = _resolve(device)
    _check_counts(n=n, repeats=repeats)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    seconds = _median_seconds(lambda: torch.mm(a, b, out=out), device, repeats, warmup)
    return 2 * n**3 / seconds / 1e12


def _resolve(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.type not in ("cuda", "cpu"):
        raise ValueError(f"cannot time on a {device.type} device (only cuda and cpu)")
    return device


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def _median_seconds(op: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    timer = _cuda_seconds if device.type == "cuda" else _cpu_seconds
    for _ in range(warmup):
        timer(op, device)
    return statistics.median(timer(op, device) for _ in range(repeats))


def _cuda_seconds(op: Callable[[], Any], device: torch.device) -> float:
    # Events time the work on the GPU itself; a host clock would also count launch latency and queueing.
    with torch.cuda.device(device):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        op()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def _cpu_seconds(op: Callable[[], Any], device: torch.device) -> float:
    start = time.perf_counter()
    op()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------- reading a profile


def free_vram_bytes(profile: dict, index: int = 0) -> int | None:
    """Free memory on GPU `index` (its NVML index), or None when the profile has no such GPU."""
    gpu = _gpu(profile, index)
    return None if gpu is None else gpu["free_bytes"]


def total_vram_bytes(profile: dict, index: int = 0) -> int | None:
    """Total memory on GPU `index` (its NVML index), or None when the profile has no such GPU."""
    gpu = _gpu(profile, index)
    return None if gpu is None else gpu["total_bytes"]


def _gpu(profile: dict, index: int) -> dict | None:
    # Matched by NVML index, not list position: a GPU skipped by the probe must not shift the others.
    return next((g for g in profile.get("gpus", []) if g.get("index") == index), None)


# ---------------------------------------------------------------------------------------------- formatting


def format_profile(profile: dict) -> str:
    """A multi-line report for the terminal."""
    lines = _gpu_lines(profile)
    lines.append(_cpu_line(profile["cpu"]))
    lines.append(_ram_line(profile["ram"]))
    lines.append(_cuda_line(profile["cuda"]))
    draft = draft_text(profile)
    if draft:
        lines.append(draft)
    return "\n".join(lines)


def _gpu_lines(profile: dict) -> list[str]:
    gpus, nvml = profile["gpus"], profile["nvml"]
    if not gpus:
        return [f"GPU:  none ({nvml['message']})"]
    lines = [f"GPU {g['index']}: {_gpu_summary(g)}" for g in gpus]
    lines.append(f"      {nvml['message']}")
    return lines


def _gpu_summary(gpu: dict) -> str:
    parts = [gpu["name"],
             f"{_gib(gpu['total_bytes'])} VRAM ({_gib(gpu['free_bytes'])} free, {_gib(gpu['used_bytes'])} used)"]
    pcie = _pcie_text(gpu["pcie"])
    if pcie:
        parts.append(f"PCIe {pcie}")
    if gpu["temperature_c"] is not None:
        parts.append(f"{gpu['temperature_c']} °C")
    if gpu["utilization_pct"] is not None:
        parts.append(f"{gpu['utilization_pct']}% busy")
    return ", ".join(parts)


def _pcie_text(pcie: dict) -> str | None:
    current = _link_text(pcie["gen_current"], pcie["width_current"])
    maximum = _link_text(pcie["gen_max"], pcie["width_max"])
    if current and maximum:
        return f"{current} (max {maximum})"
    return current or (f"max {maximum}" if maximum else None)


def _link_text(gen: int | None, width: int | None) -> str | None:
    parts = ([f"Gen{gen}"] if gen is not None else []) + ([f"x{width}"] if width is not None else [])
    return " ".join(parts) or None


def _cpu_line(cpu: dict) -> str:
    physical = cpu["cores_physical"]
    cores = f"{physical} cores, {cpu['cores_logical']} threads" if physical else f"{cpu['cores_logical']} threads"
    return f"CPU:  {cpu['name']} ({cores})"


def _ram_line(ram: dict) -> str:
    return f"RAM:  {_gib(ram['total_bytes'])} ({_gib(ram['available_bytes'])} available)"


def _cuda_line(cuda: dict) -> str:
    if not cuda["available"]:
        return "CUDA: not available"
    parts = [f"CUDA: available ({cuda['device_name']})"]
    if cuda["h2d_bandwidth_gbps"] is not None:
        parts.append(f"host-to-device {cuda['h2d_bandwidth_gbps']:.1f} GB/s (pinned)")
    if cuda["matmul_tflops"] is not None:
        parts.append(f"bf16 matmul {cuda['matmul_tflops']:.1f} TFLOP/s")
    return ", ".join(parts)


def _gib(nbytes: int) -> str:
    # Binary units: an "8 GB" card has 8 GiB, and 8.6 would look like a wrong reading to its owner.
    return f"{nbytes / _GIB:.1f} GiB"


def hypothetical_gpu(hardware: dict, vram_gb: float) -> dict:
    """This machine's RAM and CPU with a GPU of `vram_gb` added: lets a user plan for a card before buying or
    plugging it in (and lets tests plan GPU cases on a CPU-only machine)."""
    nbytes = int(vram_gb * 2**30)
    gpu = {"index": 0, "name": f"hypothetical {vram_gb:g} GB GPU", "total_bytes": nbytes, "free_bytes": nbytes,
           "used_bytes": 0, "pcie": {"gen_current": 4, "gen_max": 4, "width_current": 16, "width_max": 16}}
    return {**hardware, "gpus": [gpu],
            "cuda": {"available": True, "device_name": gpu["name"], "h2d_bandwidth_gbps": None,
                     "matmul_tflops": None}}
