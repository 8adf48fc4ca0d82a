"""A fake NVML: replaces the entry points of the real pynvml module, so code that calls NVML (the probe,
the app's memory sampler) runs its real path against fake cards. Shared by the engine and app tests."""

from types import SimpleNamespace

import pynvml


def card(name, total, free, *, uuid="GPU-0000", util=7, temp=41, pcie=(4, 4, 16, 16), broken=()):
    """One fake GPU; `broken` names the queries that raise NVMLError_NotSupported on it."""
    return {"name": name, "total": total, "free": free, "uuid": uuid, "util": util, "temp": temp,
            "pcie": pcie, "broken": set(broken)}


class FakeNVML:
    """Replaces the NVML entry points of the real pynvml module, so `probe` runs its real code path.
    A test may change a card's "free" between calls (another program taking VRAM); `inits` and
    `memory_reads` count those calls."""

    def __init__(self, cards, driver="550.54.15", init_error=None):
        self.cards, self.driver, self.init_error = cards, driver, init_error
        self.initialised = False
        self.inits = 0
        self.shutdowns = 0
        self.memory_reads = 0

    def install(self, monkeypatch):
        for name in ("nvmlInit", "nvmlShutdown", "nvmlSystemGetDriverVersion", "nvmlDeviceGetCount",
                     "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetName", "nvmlDeviceGetUUID",
                     "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetUtilizationRates", "nvmlDeviceGetTemperature",
                     "nvmlDeviceGetCurrPcieLinkGeneration", "nvmlDeviceGetMaxPcieLinkGeneration",
                     "nvmlDeviceGetCurrPcieLinkWidth", "nvmlDeviceGetMaxPcieLinkWidth"):
            monkeypatch.setattr(pynvml, name, getattr(self, name))
        return self

    def nvmlInit(self):
        self.inits += 1
        if self.init_error is not None:
            raise self.init_error
        self.initialised = True

    def nvmlShutdown(self):
        assert self.initialised, "nvmlShutdown without a successful nvmlInit"
        self.shutdowns += 1

    def _ready(self):
        if not self.initialised:
            raise pynvml.NVMLError_Uninitialized()

    def nvmlSystemGetDriverVersion(self):
        self._ready()
        return self.driver

    def nvmlDeviceGetCount(self):
        self._ready()
        return len(self.cards)

    def nvmlDeviceGetHandleByIndex(self, index):
        self._ready()
        if not 0 <= index < len(self.cards):
            raise pynvml.NVMLError_InvalidArgument()
        return ("handle", index)

    def _card(self, handle, query):
        self._ready()
        c = self.cards[handle[1]]
        if query in c["broken"]:
            raise pynvml.NVMLError_NotSupported()
        return c

    def nvmlDeviceGetName(self, handle):
        return self._card(handle, "name")["name"]

    def nvmlDeviceGetUUID(self, handle):
        return self._card(handle, "uuid")["uuid"]

    def nvmlDeviceGetMemoryInfo(self, handle):
        c = self._card(handle, "memory")
        self.memory_reads += 1
        return SimpleNamespace(total=c["total"], free=c["free"], used=c["total"] - c["free"])

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=self._card(handle, "utilization")["util"], memory=3)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._card(handle, "temperature")["temp"]

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle):
        return self._card(handle, "pcie")["pcie"][0]

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle):
        return self._card(handle, "pcie")["pcie"][1]

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle):
        return self._card(handle, "pcie")["pcie"][2]

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle):
        return self._card(handle, "pcie")["pcie"][3]
