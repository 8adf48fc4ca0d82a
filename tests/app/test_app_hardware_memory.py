"""The Hardware dock's live VRAM and RAM graphs: the sampler against a fake NVML, the ring buffers, the
timer redraw, and when sampling runs (only while the dock is visible, faster while the engine works, never
on the GUI thread)."""

import threading
import time

import psutil
import pynvml
import pytest
from fake_nvml import FakeNVML, card

from app.hardware_graphs import PROCESS, SYSTEM, MemoryHistory, gpu_color, ram_color
from app.hardware_host import MemorySampler
from app.hardware_panel import SAMPLE_BUSY_MS, SAMPLE_IDLE_MS, HardwareDock

GIB = 1 << 30


def reading(t, gpus=(), process=1 * GIB, ram_used=4 * GIB, ram_total=16 * GIB):
    return {"t": t, "gpus": [{"index": i, "used_bytes": used, "total_bytes": total} for i, used, total in gpus],
            "process_bytes": process, "ram_used_bytes": ram_used, "ram_total_bytes": ram_total}


# The sampler


def test_the_sampler_reads_each_cards_used_vram_and_sees_it_change(monkeypatch):
    fake = FakeNVML([card("NVIDIA GeForce RTX 3090", 24 * GIB, 20 * GIB),
                     card("NVIDIA GeForce RTX 3060", 12 * GIB, 11 * GIB)]).install(monkeypatch)
    clock = iter([10.0, 10.25])
    sampler = MemorySampler(clock=lambda: next(clock))
    first = sampler.sample()
    assert first["t"] == 10.0
    assert first["gpus"] == [{"index": 0, "used_bytes": 4 * GIB, "total_bytes": 24 * GIB},
                             {"index": 1, "used_bytes": 1 * GIB, "total_bytes": 12 * GIB}]
    fake.cards[1]["free"] = 3 * GIB  # another program takes 8 GiB on the second card
    second = sampler.sample()
    assert second["t"] == 10.25 and [g["used_bytes"] for g in second["gpus"]] == [4 * GIB, 9 * GIB]
    assert fake.inits == 1 and fake.memory_reads == 4  # NVML opened once, then one query per card and sample
    ram = psutil.virtual_memory()
    assert second["ram_total_bytes"] == ram.total
    assert 0 < second["ram_used_bytes"] <= second["ram_total_bytes"]
    assert 0 < second["process_bytes"] < second["ram_total_bytes"]
    sampler.close()
    assert fake.shutdowns == 1


def test_without_nvml_the_sampler_reads_ram_only_and_does_not_retry_every_time(monkeypatch):
    fake = FakeNVML([], init_error=pynvml.NVMLError_LibraryNotFound()).install(monkeypatch)
    sampler = MemorySampler()
    for _ in range(3):
        r = sampler.sample()
        assert r["gpus"] == [] and r["process_bytes"] > 0 and r["ram_total_bytes"] > 0
    assert fake.inits == 1
    sampler.close()
    assert fake.shutdowns == 0  # never opened, so never closed


def test_a_card_whose_memory_cannot_be_read_is_left_out_of_the_sample(monkeypatch):
    FakeNVML([card("broken", 8 * GIB, 8 * GIB, broken={"memory"}),
              card("NVIDIA RTX A4000", 16 * GIB, 14 * GIB)]).install(monkeypatch)
    sampler = MemorySampler()
    assert sampler.sample()["gpus"] == [{"index": 1, "used_bytes": 2 * GIB, "total_bytes": 16 * GIB}]
    sampler.close()


# The history


def test_history_keeps_series_per_gpu_relative_to_the_newest_reading():
    history = MemoryHistory(capacity=3)
    assert history.summary() == "Waiting for the first reading …"
    history.add(reading(100.0, process=1 * GIB))
    for i, t in enumerate((100.5, 101.0, 101.5)):
        # GPU 1 appears from the second reading on: its line has its own times.
        history.add(reading(t, gpus=[(0, (2 + i) * GIB, 8 * GIB), (1, GIB // 2, 12 * GIB)], process=(2 + i) * GIB))
    x, y = history.points(history.vram[0])
    assert x.tolist() == [-1.0, -0.5, 0.0] and y.tolist() == [2.0, 3.0, 4.0]
    x1, y1 = history.points(history.vram[1])
    assert x1.tolist() == [-1.0, -0.5, 0.0] and y1.tolist() == [0.5, 0.5, 0.5]
    xp, yp = history.points(history.ram[PROCESS])
    assert xp.tolist() == [-1.0, -0.5, 0.0] and yp.tolist() == [2.0, 3.0, 4.0]  # the oldest dropped: capacity 3
    assert history.vram_total == {0: 8 * GIB, 1: 12 * GIB} and history.ram_total == 16 * GIB
    assert history.summary() == ("GPU 0: 4.0 GiB of 8.0 GiB VRAM · GPU 1: 0.5 GiB of 12.0 GiB VRAM · "
                                 "RAM: 4.0 GiB of 16.0 GiB used · 4.0 GiB by this app")
    # The label under the graphs is also their legend: each line's color before its numbers.
    html = history.summary_html()
    assert f"color:{gpu_color(1)}'>&#9632;</span> GPU 1: 0.5 GiB" in html
    assert f"color:{ram_color(PROCESS)}'>&#9632;</span> 4.0 GiB by this app" in html


# The dock


class ScriptedSampler:
    """Readings from a fake NVML through the real MemorySampler, counting the threads it runs on."""

    def __init__(self, delay_s=0.0):
        self.inner = MemorySampler()
        self.threads: list[int] = []
        self.delay_s = delay_s
        self.calls = 0

    def sample(self):
        self.calls += 1
        self.threads.append(threading.get_ident())
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.inner.sample()

    def close(self):
        self.inner.close()


def no_gpu_profile(measure=False):
    return {"gpus": [], "nvml": {"available": False, "message": "no NVIDIA driver found: CPU-only"},
            "cpu": {"name": "cpu", "cores_physical": 2, "cores_logical": 2},
            "ram": {"total_bytes": 16 * GIB, "available_bytes": 12 * GIB},
            "cuda": {"available": False, "device_name": None, "h2d_bandwidth_gbps": None, "matmul_tflops": None}}


@pytest.fixture
def dock(qtbot):
    docks = []

    def make(sampler):
        d = HardwareDock(prober=no_gpu_profile, sampler=sampler)
        qtbot.addWidget(d)
        docks.append(d)
        return d

    yield make
    for d in docks:
        d.shutdown()


def last_point(curve):
    x, y = curve.getData()
    return None if x is None or not len(x) else (float(x[-1]), float(y[-1]))


def test_the_vram_graph_follows_the_card_while_the_dock_is_shown(dock, qtbot, monkeypatch):
    fake = FakeNVML([card("NVIDIA GeForce RTX 4070", 12 * GIB, 11 * GIB)]).install(monkeypatch)
    sampler = ScriptedSampler()
    d = dock(sampler)
    assert sampler.calls == 0 and not d.sample_timer.isActive()  # nothing sampled before it is shown
    d.set_engine_busy(True)  # readings every SAMPLE_BUSY_MS, as while the model answers
    d.show()
    assert d.sample_timer.isActive() and d.sample_timer.interval() == SAMPLE_BUSY_MS
    qtbot.waitUntil(lambda: 0 in d.graphs.vram_curves and last_point(d.graphs.vram_curves[0]) == (0.0, 1.0),
                    timeout=5000)
    assert d.graphs.vram_plot.isVisible()
    fake.cards[0]["free"] = 5 * GIB  # the model (or another program) takes 6 GiB more
    qtbot.waitUntil(lambda: last_point(d.graphs.vram_curves[0]) == (0.0, 7.0), timeout=5000)
    x, y = d.graphs.vram_curves[0].getData()
    assert 1.0 in y.tolist() and x[0] < 0  # the earlier readings are still on the graph, to the left
    assert "GPU 0: 7.0 GiB of 12.0 GiB VRAM" in d.graphs.summary.text()
    process = last_point(d.graphs.ram_curves[PROCESS])
    system = last_point(d.graphs.ram_curves[SYSTEM])
    assert process is not None and system is not None and 0 < process[1] <= system[1]
    assert set(sampler.threads) != {threading.get_ident()}  # read on the hardware thread, not this one
    d.set_engine_busy(False)
    assert d.sample_timer.interval() == SAMPLE_IDLE_MS
    assert fake.inits == 1 and fake.shutdowns == 0  # NVML stays open between readings
    d.shutdown()
    assert fake.shutdowns == 1  # and is closed when the panel's thread ends


def test_hidden_the_dock_samples_nothing(dock, qtbot, monkeypatch):
    fake = FakeNVML([card("NVIDIA GeForce RTX 4060", 8 * GIB, 7 * GIB)]).install(monkeypatch)
    d = dock(ScriptedSampler())
    d.set_engine_busy(True)
    d.show()
    qtbot.waitUntil(lambda: fake.memory_reads >= 2, timeout=5000)
    d.hide()
    assert not d.sample_timer.isActive()
    qtbot.wait(100)  # a reading already asked for may still land
    reads = fake.memory_reads
    qtbot.wait(3 * SAMPLE_BUSY_MS)
    assert fake.memory_reads == reads


def test_readings_only_mark_the_graphs_the_timer_redraws(dock, qtbot, monkeypatch):
    d = dock(ScriptedSampler())
    drawn = []
    monkeypatch.setattr(d.graphs.ram_curves[PROCESS], "setData", lambda *a: drawn.append(a))
    for i in range(20):  # a burst, as a fast sampler could produce
        d.graphs.add_reading(reading(float(i), gpus=[(0, GIB, 8 * GIB)]))
    assert drawn == [] and d.graphs.timer.isActive()
    qtbot.waitUntil(lambda: len(drawn) == 1, timeout=2000)
    qtbot.wait(150)
    assert len(drawn) == 1 and d.graphs.redraws == 1  # one redraw for the burst
    assert not d.graphs.timer.isActive()  # and then idle until the next reading


def test_a_stalled_driver_never_holds_the_gui_thread(dock, qtbot, monkeypatch):
    FakeNVML([card("NVIDIA GeForce RTX 4090", 24 * GIB, 23 * GIB)]).install(monkeypatch)
    sampler = ScriptedSampler(delay_s=0.5)
    d = dock(sampler)
    host = d._ensure_host()
    start = time.perf_counter()
    assert host.sample() is True
    assert host.sample() is False  # one reading outstanding at most: requests do not pile up
    assert time.perf_counter() - start < 0.1
    with qtbot.waitSignal(host.sampled, timeout=5000):
        pass
    assert sampler.calls == 1 and host.sample() is True
