"""Loads plan from a fresh probe: TorchBackend on a fake GPU (the real probe over a fake NVML, the real planner,
a stand-in for the weights), alone and behind the window, where the panel shows what each load planned from."""

import json
from types import SimpleNamespace

import pytest
import torch
from fake_nvml import FakeNVML, card

import engine.hardware
import engine.loading
import engine.store
from app.backend import TorchBackend, torch_backend
from engine.config import ModelConfig
from engine.planner import make_plan
from real_configs import QWEN25_7B

GIB = 1 << 30


class FakeLM:
    """What TorchBackend and the worker read of a LoadedModel; records the split it was loaded with."""

    def __init__(self, resident_layers, substitute_bits=None):
        self.resident_layers = resident_layers
        self.substitute_bits = substitute_bits
        self.config = ModelConfig.from_dict(QWEN25_7B)
        self.notes = []
        self.tokenizer = SimpleNamespace(chat_template="x")
        self.drafts = []

    def build_draft(self, nbits, group_size, progress=None, cancel=None):
        self.drafts.append(nbits)
        return SimpleNamespace()


@pytest.fixture
def fake_gpu(monkeypatch, tmp_path):
    """A 24 GiB card with 14 GiB free behind a fake NVML; returns (the card, the resident_layers of each
    load). A Qwen2.5-7B shape: 16 of its 28 layers fit in 14 GiB, 7 in 12 GiB."""
    (tmp_path / "config.json").write_text(json.dumps(QWEN25_7B))
    gpu = card("NVIDIA GeForce RTX 4090", 24 * GIB, 14 * GIB)
    FakeNVML([gpu]).install(monkeypatch)
    loads = []

    def fake_load(folder, name=None, resident_layers=None, substitute_bits=None, **_):
        loads.append(resident_layers)
        return FakeLM(resident_layers, substitute_bits)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # The real _probe_cuda would ask torch for a device name; the link speeds stay unmeasured (None).
    monkeypatch.setattr(engine.hardware, "_probe_cuda", lambda measure: {
        "available": True, "device_name": "NVIDIA GeForce RTX 4090", "h2d_bandwidth_gbps": None,
        "matmul_tflops": None})
    monkeypatch.setattr(engine.loading, "load_model", fake_load)
    monkeypatch.setattr(engine.store, "resolve_model", lambda m: (tmp_path, "qwen-7b-shaped"))
    monkeypatch.setattr(engine.store, "ensure_default_model", lambda progress: None)
    return gpu, loads


def planned(profile, **kwargs):
    plan = make_plan(ModelConfig.from_dict(QWEN25_7B), profile, **kwargs)
    return plan.resident_layers


def test_each_load_probes_again_and_plans_for_the_free_vram_it_finds(fake_gpu):
    gpu, loads = fake_gpu
    first = TorchBackend("qwen", lambda _m: None)
    assert first.plan_profile["gpus"][0]["free_bytes"] == 14 * GIB
    gpu["free"] = 12 * GIB  # another program took 2 GiB between the two loads
    second = TorchBackend("qwen", lambda _m: None)
    assert second.plan_profile["gpus"][0]["free_bytes"] == 12 * GIB
    assert loads == [planned(first.plan_profile), planned(second.plan_profile)]
    assert loads[1] < loads[0]  # less free VRAM, fewer resident layers
    assert second.resident_layers == loads[1]


def test_the_load_carries_the_plans_substitute_bits_and_the_draft_is_built_with_them(fake_gpu):
    """The plan spends spare VRAM on 8-bit substitutes (they align far better): the load gets the plan's
    {layer: bits}, and the draft is built at them (None: the load's plan, not one width for all)."""
    _gpu, loads = fake_gpu
    backend = TorchBackend("qwen", lambda _m: None)
    plan = make_plan(ModelConfig.from_dict(QWEN25_7B), backend.plan_profile)
    assert backend.lm.substitute_bits == plan.draft_bits
    assert backend.context_tokens == plan.kv_length  # the chat's rolling window stays within the plan's KV
    assert sorted(plan.draft_bits) == list(range(28 - plan.resident_layers)) and 8 in plan.draft_bits.values()
    backend.get_draft()
    assert backend.lm.drafts == [None]


def test_an_override_and_a_reserve_reach_the_plan_and_the_load(fake_gpu):
    _gpu, loads = fake_gpu
    backend = TorchBackend("qwen", lambda _m: None, resident_layers=2, reserve_gb=2.0)
    assert loads == [2] and backend.resident_layers == 2 and backend.notes == []
    TorchBackend("qwen", lambda _m: None, reserve_gb=4.0)
    assert loads[1] == planned(backend.plan_profile, reserve_gb=4.0)
    assert loads[1] < planned(backend.plan_profile)  # 4 GB kept free: fewer layers than the default reserve


def test_a_context_reaches_the_plan_and_bounds_the_chat(fake_gpu):
    _gpu, loads = fake_gpu
    backend = TorchBackend("qwen", lambda _m: None, context=16384)
    assert loads == [planned(backend.plan_profile, context=16384)]
    assert backend.context_tokens == 16384 and backend.context_limit == 16384  # the API's too (test_app_api)
    assert loads[0] < planned(backend.plan_profile)  # a longer KV cache, fewer resident layers


def test_an_override_that_no_longer_fits_falls_back_to_the_plan_and_says_so(fake_gpu):
    gpu, loads = fake_gpu
    gpu["free"] = 12 * GIB  # the panel checked 16 layers against the last load's 14 GiB free; now there is less
    messages = []
    backend = TorchBackend("qwen", messages.append, resident_layers=16)
    assert loads == [planned(backend.plan_profile)] and loads[0] < 16
    (note,) = backend.notes
    assert note.startswith("16 resident layers no longer fit") and note in messages


def test_on_a_cpu_the_override_goes_straight_to_the_load(fake_gpu, monkeypatch):
    _gpu, loads = fake_gpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    backend = TorchBackend("qwen", lambda _m: None, resident_layers=5)
    assert loads == [5] and backend.plan_profile is None
    TorchBackend("qwen", lambda _m: None)
    assert loads == [5, None]


def test_behind_the_window_the_next_load_replans_when_free_vram_changed(fake_gpu, make_window, qtbot):
    gpu, loads = fake_gpu
    window = make_window(factory=torch_backend)
    dock = window.hardware_dock
    assert dock.load_profile["gpus"][0]["free_bytes"] == 14 * GIB
    assert dock.loaded_resident == loads[0] == planned(dock.load_profile)
    gpu["free"] = 12 * GIB  # another program started
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.load_model("qwen")
    assert dock.load_profile["gpus"][0]["free_bytes"] == 12 * GIB
    assert dock.loaded_resident == loads[1] == planned(dock.load_profile) < loads[0]
    assert f"Loaded with {loads[1]} of 28 layers resident." in dock.plan_note.text()
