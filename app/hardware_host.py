"""The hardware probe, the speed measurement and the memory sampler behind the live graphs, on their own thread.

Not on the engine's thread: that one is busy for the whole of an answer, and the panel's VRAM readout must
keep moving while the model decodes. Not on the GUI thread either: the first probe imports torch (seconds),
and NVML calls can stall on a busy or wedged driver.

Profiles cross the thread as plain dicts (signals declared `object`, as in app.worker).
"""

from __future__ import annotations

import datetime
import json
import platform
import time
import traceback
from pathlib import Path
from typing import Callable

from PySide6.QtCore import QObject, Qt, QThread, Signal, Slot

from engine.files import replace

CACHE_FILE = "hardware.json"
MEASURED_KEYS = ("h2d_bandwidth_gbps", "matmul_tflops")
Prober = Callable[..., dict]  # probe(measure=False) -> profile, as engine.hardware.probe


def real_probe(measure: bool = False) -> dict:
    # Looked up at call time, so tests that monkeypatch engine.hardware.probe reach this thread too.
    from engine import hardware

    return hardware.probe(measure=measure)


def cache_path() -> Path:
    from engine.store import store_root

    return store_root() / CACHE_FILE


def machine_key(profile: dict) -> str:
    """Measurements belong to this host and its GPU: a card swapped in (or a copied home folder on another
    machine) must not inherit the old numbers."""
    gpus = profile.get("gpus") or []
    gpu = (gpus[0].get("uuid") or gpus[0].get("name")) if gpus else None
    gpu = gpu or (profile.get("cuda") or {}).get("device_name") or "no-gpu"
    return f"{platform.node()}|{gpu}"


def read_cache(path: Path | None = None) -> dict:
    try:
        data = json.loads((path or cache_path()).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # never measured, or a damaged file: measuring again rewrites it
    machines = data.get("machines") if isinstance(data, dict) else None
    return machines if isinstance(machines, dict) else {}


def write_cache(key: str, entry: dict, path: Path | None = None) -> None:
    path = path or cache_path()
    machines = read_cache(path)
    machines[key] = entry
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"machines": machines}, indent=2), encoding="utf-8")
    replace(tmp, path)  # a crash mid-write leaves the old file, not half a JSON


def with_measurements(profile: dict, cached: dict | None) -> dict:
    """The profile with the cached measurements filled in (what the planner reads) and `measured`:
    {date, h2d_bandwidth_gbps, matmul_tflops} or None."""
    cuda = dict(profile.get("cuda") or {})
    measured = None
    if cached and cuda.get("available"):
        for k in MEASURED_KEYS:
            if cuda.get(k) is None:
                cuda[k] = cached.get(k)
        measured = {"date": cached.get("date"), **{k: cached.get(k) for k in MEASURED_KEYS}}
    return {**profile, "cuda": cuda, "measured": measured}


class MemorySampler:
    """Used VRAM per GPU (NVML) and RAM (psutil) for the live graphs, a few times a second.

    NVML stays open between samples: a full probe (init, every query, shutdown) costs far more than one
    memory reading, and NVML counts inits, so the probe's own init and shutdown on this thread do not close
    it. No NVML (no driver, no GPU) is not an error: samples then carry no GPUs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._pynvml = None  # the module, while NVML is open
        self._handles: list[tuple[int, object]] = []  # (NVML index, handle)
        self._tried = False

    def _open(self) -> None:
        self._tried = True  # a machine without the driver is not asked again every sample
        try:
            import pynvml
        except ImportError:
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            return
        self._pynvml = pynvml
        try:
            count = pynvml.nvmlDeviceGetCount()
        except pynvml.NVMLError:
            count = 0
        for index in range(count):
            try:
                self._handles.append((index, pynvml.nvmlDeviceGetHandleByIndex(index)))
            except pynvml.NVMLError:
                pass  # the probe reports it; the graph just has no line for that card

    def sample(self) -> dict:
        """{t (seconds, monotonic), gpus: [{index, used_bytes, total_bytes}], process_bytes (this process's
        resident memory), ram_used_bytes, ram_total_bytes}."""
        import psutil

        if not self._tried:
            self._open()
        gpus = []
        for index, handle in self._handles:
            try:
                memory = self._pynvml.nvmlDeviceGetMemoryInfo(handle)
            except self._pynvml.NVMLError:
                continue  # one missed reading leaves a gap in that card's line, not a failed sample
            gpus.append({"index": index, "used_bytes": int(memory.used), "total_bytes": int(memory.total)})
        ram = psutil.virtual_memory()
        return {"t": self._clock(), "gpus": gpus, "process_bytes": int(psutil.Process().memory_info().rss),
                # total - available, not psutil's "used": page cache that would be given back is not in use
                "ram_used_bytes": int(ram.total - ram.available), "ram_total_bytes": int(ram.total)}

    def close(self) -> None:
        if self._pynvml is not None:
            try:
                self._pynvml.nvmlShutdown()
            except self._pynvml.NVMLError:
                pass
        self._pynvml, self._handles, self._tried = None, [], False


class HardwareWorker(QObject):
    profile = Signal(object)  # dict: a probe() profile plus "measured"
    measured = Signal(object)  # the same, after a measurement
    sampled = Signal(object)  # dict: a MemorySampler.sample()
    failed = Signal(str, str)  # "refresh" | "measure" | "sample", the message

    def __init__(self, prober: Prober | None = None, today: Callable[[], str] | None = None,
                 sampler: MemorySampler | None = None):
        super().__init__()
        self._probe = prober or real_probe
        self._today = today or (lambda: datetime.date.today().isoformat())
        self.sampler = sampler or MemorySampler()

    @Slot()
    def sample(self) -> None:
        try:
            reading = self.sampler.sample()
        except Exception as exc:  # noqa: BLE001 - a graph that stops is not worth a dead thread
            self.failed.emit("sample", f"Memory sampling failed: {type(exc).__name__}: {exc}")
            return
        self.sampled.emit(reading)

    @Slot()
    def close(self) -> None:
        self.sampler.close()

    @Slot()
    def refresh(self) -> None:
        try:
            profile = self._probe(measure=False)
        except Exception as exc:  # noqa: BLE001 - a failed probe is shown in the panel, the app goes on
            self.failed.emit("refresh", f"Hardware probe failed: {type(exc).__name__}: {exc}")
            return
        self.profile.emit(with_measurements(profile, read_cache().get(machine_key(profile))))

    @Slot()
    def measure(self) -> None:
        try:
            profile = self._probe(measure=True)
        except Exception as exc:  # noqa: BLE001 - e.g. a CUDA error; the panel shows it
            traceback.print_exc()
            self.failed.emit("measure", f"Measurement failed: {type(exc).__name__}: {exc}")
            return
        cuda = profile.get("cuda") or {}
        if not cuda.get("available"):
            self.failed.emit("measure", "CUDA is not available: there is no GPU link to measure.")
            return
        if all(cuda.get(k) is None for k in MEASURED_KEYS):
            self.failed.emit("measure", "Measurement failed: not enough free GPU memory for the test buffers.")
            return
        entry = {"date": self._today(), "device_name": cuda.get("device_name"),
                 **{k: cuda.get(k) for k in MEASURED_KEYS}}
        try:
            write_cache(machine_key(profile), entry)
        except OSError as exc:
            self.failed.emit("measure", f"Measured, but could not save {cache_path()}: {exc}")
        self.measured.emit(with_measurements(profile, entry))


class HardwareHost(QObject):
    """GUI-thread handle: one request at a time per kind, so a slow driver cannot pile up refreshes."""

    profile = Signal(object)
    sampled = Signal(object)
    failed = Signal(str, str)  # "refresh" | "measure" | "sample", the message
    _refresh = Signal()
    _measure = Signal()
    _sample = Signal()

    def __init__(self, prober: Prober | None = None, parent: QObject | None = None,
                 sampler: MemorySampler | None = None):
        super().__init__(parent)
        self.refreshing = False
        self.measuring = False
        self.sampling = False
        self.thread = QThread()
        self.thread.setObjectName("hardware")
        self.worker = HardwareWorker(prober, sampler=sampler)
        self.worker.moveToThread(self.thread)
        self._refresh.connect(self.worker.refresh)
        self._measure.connect(self.worker.measure)
        self._sample.connect(self.worker.sample)
        self.worker.profile.connect(self._on_refreshed)
        self.worker.measured.connect(self._on_measured)
        self.worker.sampled.connect(self._on_sampled)
        self.worker.failed.connect(self._on_failed)
        # `finished` is emitted on the hardware thread as it ends: NVML closes on the thread that opened it,
        # after whatever was queued before.
        self.thread.finished.connect(self.worker.close, Qt.ConnectionType.DirectConnection)
        self.thread.finished.connect(self.worker.deleteLater)
        self.thread.start()

    def refresh(self) -> bool:
        """False when a probe is still out (the caller's timer simply tries again next tick)."""
        if self.refreshing or self.measuring:  # a measurement brings a fresh profile anyway
            return False
        self.refreshing = True
        self._refresh.emit()
        return True

    def sample(self) -> bool:
        """Ask for one memory reading; False while the last one is still out (a measurement, or a stalled
        driver, holds the thread), so requests never pile up behind it."""
        if self.sampling:
            return False
        self.sampling = True
        self._sample.emit()
        return True

    def measure(self) -> None:
        if not self.measuring:
            self.measuring = True
            self._measure.emit()

    def _on_refreshed(self, profile: dict) -> None:
        self.refreshing = False
        self.profile.emit(profile)

    def _on_measured(self, profile: dict) -> None:
        self.measuring = False
        self.profile.emit(profile)  # a measurement's answer is a fresh profile too

    def _on_sampled(self, reading: dict) -> None:
        self.sampling = False
        self.sampled.emit(reading)

    def _on_failed(self, kind: str, message: str) -> None:
        if kind == "measure":
            self.measuring = False
        elif kind == "sample":
            self.sampling = False
        else:
            self.refreshing = False
        self.failed.emit(kind, message)

    def shutdown(self) -> None:
        """Waits for a measurement in progress (a few seconds at most): a running QThread must not be
        destroyed."""
        if self.thread.isRunning():
            self.thread.quit()
            self.thread.wait()
