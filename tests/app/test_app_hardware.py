"""The Hardware dock: GPUs from a faked probe, the plan against make_plan's, the reserve slider, overrides
and the reload that applies them, the cached measurement and predicted against measured speeds."""

import datetime
import json

import pytest
from app_fakes import FakeBackend, factory_for
from PySide6.QtGui import QImage

import app.hardware_host as hardware_host
from app.hardware_panel import CONTEXT
from app.main import build_parser, main
from engine.config import ModelConfig
from engine.errors import SubspecError
from engine.planner import make_plan
from real_configs import QWEN25_7B

GIB = 1 << 30
NO_DRIVER = "no NVIDIA driver found (NVML library not found): CPU-only"


def gpu(index, name, total_gb, free_gb, pcie=(4, 4, 16, 16), util=9, temp=41):
    total, free = int(total_gb * GIB), int(free_gb * GIB)
    return {"index": index, "name": name, "uuid": f"GPU-{index}", "driver": "550.54.15", "total_bytes": total,
            "free_bytes": free, "used_bytes": total - free, "utilization_pct": util, "temperature_c": temp,
            "pcie": dict(zip(("gen_current", "gen_max", "width_current", "width_max"), pcie))}


def profile(*gpus, h2d=None, tflops=None):
    """What engine.hardware.probe returns, with the given GPUs (none: a machine without the driver)."""
    return {
        "gpus": list(gpus),
        "nvml": {"available": bool(gpus), "message": f"NVIDIA driver 550.54.15, {len(gpus)} GPUs" if gpus
                 else NO_DRIVER},
        "cpu": {"name": "AMD Ryzen 9 7950X", "cores_physical": 16, "cores_logical": 32},
        "ram": {"total_bytes": 64 * GIB, "available_bytes": 50 * GIB},
        "cuda": {"available": bool(gpus), "device_name": gpus[0]["name"] if gpus else None,
                 "h2d_bandwidth_gbps": h2d, "matmul_tflops": tflops},
    }


class FakeProber:
    """Stands in for engine.hardware.probe on the hardware thread; a measurement adds fixed speeds."""

    def __init__(self, prof):
        self.profile = prof
        self.calls = []

    def __call__(self, measure=False):
        self.calls.append(measure)
        p = json.loads(json.dumps(self.profile))
        if measure and p["cuda"]["available"]:
            p["cuda"].update(h2d_bandwidth_gbps=24.6, matmul_tflops=151.3)
        return p


@pytest.fixture
def hardware_window(make_window, monkeypatch, qtbot):
    """hardware_window(profile, config=QWEN25_7B) -> (window, dock, prober), the dock shown and probed."""
    docks = []

    def make(prof, config=QWEN25_7B, load_options=None, **backend_kwargs):
        """`load_options`: a list that collects each load's options (see app_fakes.factory_for)."""
        prober = FakeProber(prof)
        monkeypatch.setattr(hardware_host, "real_probe", prober)
        backend = FakeBackend(**backend_kwargs)
        backend.config = config
        window = make_window(backend, factory=factory_for(backend, load_options=load_options))
        dock = window.hardware_dock
        docks.append(dock)
        window.show_hardware()
        qtbot.waitUntil(lambda: dock.profile is not None and dock.config is not None, timeout=5000)
        return window, dock, prober

    yield make
    for dock in docks:
        dock.shutdown()


def expected_plan(dock, reserve_gb=0.5, resident_layers=None):
    # A GPU plans the default context; a CPU load has the model's own.
    context = CONTEXT if dock.profile["cuda"]["available"] else QWEN25_7B["max_position_embeddings"]
    return make_plan(ModelConfig.from_dict(QWEN25_7B), dock.profile, reserve_gb=reserve_gb, context=context,
                     resident_layers=resident_layers)


def shown(dock, row):
    return dock.plan_values[row].text()


@pytest.mark.parametrize("name, total_gb, free_gb", [("NVIDIA GeForce RTX 4060", 8, 7.4),
                                                     ("NVIDIA GeForce RTX 4070", 12, 11.2),
                                                     ("NVIDIA GeForce RTX 4090", 24, 23.1)])
def test_one_card_and_its_plan_equal_make_plans(hardware_window, name, total_gb, free_gb):
    _w, dock, _p = hardware_window(profile(gpu(0, name, total_gb, free_gb, pcie=(1, 4, 16, 16), temp=44)))
    assert dock.no_gpu_label.isHidden() and len(dock.gpu_labels) == 1
    label = dock.gpu_labels[0].text()
    assert name in label and f"VRAM {total_gb:.1f} GiB" in label and f"{free_gb:.1f} GiB free" in label
    assert "PCIe Gen1 x16 (max Gen4 x16)" in label and "44 °C" in label and "9% busy" in label
    assert "550.54.15" in label
    g = dock.profile["gpus"][0]
    assert dock.gpu_bars[0].value() == round(100 * g["used_bytes"] / g["total_bytes"])
    assert "AMD Ryzen 9 7950X (16 cores, 32 threads)" in dock.cpu_label.text()
    assert "64.0 GiB (50.0 GiB available)" in dock.ram_label.text()

    plan = expected_plan(dock)
    assert dock.plan == plan
    assert shown(dock, "Layers").startswith(f"{plan.resident_layers} resident, {plan.offloaded_layers} streamed")
    assert shown(dock, "Context") == f"{plan.kv_length} tokens"
    assert shown(dock, "Prefill") == (f"up to {plan.prefill_pass_tokens} prompt tokens per pass of the streamed layers"
                                      if plan.offloaded_layers else "nothing streamed")
    assert shown(dock, "VRAM") == f"{plan.predicted_vram_bytes / GIB:.2f} GB of {plan.budget_bytes / GIB:.2f} GB"
    assert shown(dock, "Speed").startswith(f"{plan.predicted_tokens_per_s:.1f} tok/s predicted")
    if plan.depth:
        assert f"depth {plan.depth} × width {plan.topk}" in shown(dock, "Tree")
    for reason in plan.reasons:
        assert reason.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in dock.reasons_label.text()
    assert dock.error_label.isHidden()
    assert dock.measure_button.isEnabled()


def test_the_plan_is_what_subspec_plan_prints_for_the_same_profile(hardware_window, monkeypatch, tmp_path, capsys):
    import engine.hardware
    from engine.cli import main as cli_main

    prof = profile(gpu(0, "NVIDIA GeForce RTX 4070", 12, 11.2))
    _w, dock, _p = hardware_window(prof)
    monkeypatch.setattr(engine.hardware, "probe", lambda measure=False: json.loads(json.dumps(prof)))
    config = tmp_path / "config.json"
    config.write_text(json.dumps(QWEN25_7B))
    capsys.readouterr()
    assert cli_main(["plan", str(config), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in printed.items() if k != "model"} == json.loads(json.dumps(dock.plan.as_json()))


def test_two_gpus_are_both_listed_and_the_plan_uses_the_first(hardware_window):
    prof = profile(gpu(0, "NVIDIA GeForce RTX 3090", 24, 20), gpu(1, "NVIDIA GeForce RTX 3060", 12, 11, temp=35))
    _w, dock, _p = hardware_window(prof)
    texts = [label.text() for label in dock.gpu_labels]
    assert len(texts) == 2 and "GPU 0 · NVIDIA GeForce RTX 3090" in texts[0]
    assert "GPU 1 · NVIDIA GeForce RTX 3060" in texts[1] and "35 °C" in texts[1]
    assert dock.plan == expected_plan(dock)
    assert dock.plan.budget_bytes == 20 * GIB - GIB // 2


def test_a_machine_without_the_nvidia_driver_is_a_cpu_only_state_not_an_error(hardware_window):
    _w, dock, _p = hardware_window(profile())
    assert not dock.no_gpu_label.isHidden() and dock.gpu_labels == []
    assert dock.no_gpu_label.text() == ("CPU-only: no NVIDIA driver found (NVML library not found). "
                                        "Models run from RAM on the CPU.")
    assert "CUDA is not available" in dock.measured_label.text()
    assert dock.draft_label.isHidden()  # this profile (like one saved by an older version) does not say
    assert not dock.measure_button.isEnabled()
    assert dock.error_label.isHidden()
    assert dock.plan == expected_plan(dock) and dock.plan.device == "cpu"
    assert dock.plan_form.labelForField(dock.plan_values["VRAM"]).text() == "RAM"


def test_the_panel_says_which_kernels_a_draft_runs_on(hardware_window):
    prof = dict(profile(gpu(0, "NVIDIA GeForce RTX 4070", 12, 11.2)), draft={"triton": None, "fused_kernels": False})
    _w, dock, _p = hardware_window(prof)
    assert not dock.draft_label.isHidden()
    assert "Triton is not installed" in dock.draft_label.text() and "pip install triton" in dock.draft_label.text()
    dock.set_profile(dict(prof, draft={"triton": "3.7.1", "fused_kernels": True}))
    assert dock.draft_label.text() == "Draft: fused low-bit kernels (Triton 3.7.1)."


def test_the_reserve_slider_recomputes_the_plan(hardware_window):
    _w, dock, _p = hardware_window(profile(gpu(0, "NVIDIA GeForce RTX 4070", 12, 11.2)))
    before = dock.plan
    dock.reserve_slider.setValue(dock.reserve_slider.maximum())
    assert dock.reserve_label.text() == "4.00 GB"
    assert dock.plan == expected_plan(dock, reserve_gb=4.0)
    assert dock.plan.budget_bytes == before.budget_bytes - int(3.5 * GIB)
    assert dock.plan.predicted_vram_bytes < before.predicted_vram_bytes
    dock.reserve_slider.setValue(0)
    assert dock.plan == expected_plan(dock, reserve_gb=0.0) and dock.reserve_label.text() == "0.00 GB"


def test_a_reserve_that_leaves_too_little_shows_the_planners_message(hardware_window):
    _w, dock, _p = hardware_window(profile(gpu(0, "NVIDIA GeForce RTX 4060", 8, 7.4)))
    dock.reserve_slider.setValue(dock.reserve_slider.maximum())
    with pytest.raises(SubspecError) as refused:
        expected_plan(dock, reserve_gb=4.0)
    assert dock.plan is None and dock.error_label.text() == str(refused.value)
    assert "does not fit" in dock.error_label.text()


def test_an_override_beyond_the_budget_shows_the_planners_message(hardware_window):
    _w, dock, _p = hardware_window(profile(gpu(0, "NVIDIA GeForce RTX 4070", 12, 11.2)))
    assert dock.resident_spin.maximum() == QWEN25_7B["num_hidden_layers"]
    dock.resident_spin.setValue(20)
    with pytest.raises(SubspecError) as refused:
        expected_plan(dock, resident_layers=20)
    assert dock.plan is None and not dock.error_label.isHidden()
    assert dock.error_label.text() == str(refused.value) and "at most 12 resident layers" in dock.error_label.text()
    assert shown(dock, "Speed") == "—"
    dock.resident_spin.setValue(2)  # fits: the plan follows the override
    assert dock.error_label.isHidden() and dock.plan == expected_plan(dock, resident_layers=2)
    assert dock.plan.resident_layers == 2
    dock.resident_spin.setValue(dock.resident_spin.minimum())  # "auto"
    assert dock.resident_spin.text() == "auto" and dock.plan == expected_plan(dock)


def test_measure_saves_the_speeds_with_the_date_and_the_plan_uses_them(hardware_window, qtbot, subspec_home):
    _w, dock, prober = hardware_window(profile(gpu(0, "NVIDIA GeForce RTX 4070", 12, 11.2)))
    assert "not measured" in dock.measured_label.text()
    dock.measure_button.click()
    qtbot.waitUntil(lambda: "measured" in dock.measured_label.text() and "24.6" in dock.measured_label.text(),
                    timeout=5000)
    today = datetime.date.today().isoformat()
    assert f"(measured {today})" in dock.measured_label.text() and "151.3 TFLOP/s" in dock.measured_label.text()
    saved = json.loads((subspec_home / "hardware.json").read_text())["machines"]
    (entry,) = saved.values()
    assert entry["date"] == today and entry["h2d_bandwidth_gbps"] == 24.6 and entry["matmul_tflops"] == 151.3
    assert True in prober.calls
    assert any("(measured)" in r for r in dock.plan.reasons)
    # A later probe (without measuring) still carries the cached speeds into the plan.
    calls = len(prober.calls)
    dock.refresh()
    qtbot.waitUntil(lambda: len(prober.calls) > calls, timeout=5000)
    qtbot.wait(50)
    assert dock.profile["cuda"]["h2d_bandwidth_gbps"] == 24.6 and f"(measured {today})" in dock.measured_label.text()
    assert dock.plan == expected_plan(dock)


def test_predicted_and_measured_speeds_side_by_side(hardware_window, qtbot):
    window, dock, _p = hardware_window(profile(gpu(0, "NVIDIA GeForce RTX 4090", 24, 23)), step_ms={"vanilla": 25})
    assert "Measured here" in dock.speeds_label.text() and "answer" not in dock.speeds_label.text()
    speeds = []
    for prompt in ("Hi", "Again"):
        window.prompt.setPlainText(prompt)
        with qtbot.waitSignal(window.host.finished, timeout=5000) as done:
            window.send()
        speeds.append(done.args[0]["tokens_per_s"])
    text = dock.speeds_label.text()
    assert f"{sum(speeds) / 2:.1f} tok/s (2 answers)" in text  # the answers' own stats, as the status bar's
    assert f"{dock.plan.baseline_tokens_per_s:.1f} tok/s" in text


def ask(window, qtbot, prompt):
    window.prompt.setPlainText(prompt)
    with qtbot.waitSignal(window.host.finished, timeout=5000) as done:
        window.send()
    return done.args[0]


def test_reload_applies_the_override_to_the_engine_and_keeps_the_conversation(hardware_window, qtbot):
    loads = []
    window, dock, _p = hardware_window(profile(gpu(0, "NVIDIA GeForce RTX 4070", 12, 11.2)), load_options=loads,
                                       step_ms={"vanilla": 25})
    assert loads == [{}]  # a plain first load: the defaults, nothing forced
    assert not dock.apply_button.isEnabled()  # the controls show what is loaded: nothing to apply
    ask(window, qtbot, "Hi")
    conversation, history = window.conversation.id, list(window.history)
    assert [m["role"] for m in history] == ["user", "assistant"]

    auto = dock.plan.resident_layers
    dock.resident_spin.setValue(2 if auto != 2 else 3)
    forced = dock.resident_spin.value()
    assert dock.plan == expected_plan(dock, resident_layers=forced) and dock.apply_button.isEnabled()
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        dock.apply_button.click()
    assert loads == [{}, {"resident_layers": forced}]  # the engine was asked for exactly that split

    # The chat is intact: same conversation, same transcript, and the next answer sees the whole history.
    assert window.conversation.id == conversation and window.history == history
    assert "Hi" in window.transcript.toPlainText() and history[1]["content"] in window.transcript.toPlainText()
    ask(window, qtbot, "Again")
    messages, _params = window.backend.calls[-1]
    assert messages[:2] == history and messages[2] == {"role": "user", "content": "Again"}

    # The panel shows the layout the model now runs with, and nothing left to apply.
    assert dock.resident_spin.value() == forced and dock.loaded_resident == forced
    assert dock.plan == expected_plan(dock, resident_layers=forced)
    assert f"Loaded with {forced} of 28 layers resident." in dock.plan_note.text()
    assert not dock.apply_button.isEnabled()
    # Speeds measured with the earlier layout are not this plan's: the new layout's column starts afresh.
    assert "(1 answer)" in dock.speeds_label.text()

    dock.resident_spin.setValue(dock.resident_spin.minimum())  # back to "auto": a reload lets the planner choose
    assert dock.apply_button.isEnabled()
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        dock.apply_button.click()
    assert loads[-1] == {} and dock.resident_spin.text() == "auto" and dock.plan == expected_plan(dock)


def test_reload_carries_the_reserve_and_a_model_switch_keeps_it_but_not_the_override(hardware_window, qtbot):
    loads = []
    window, dock, _p = hardware_window(profile(gpu(0, "NVIDIA GeForce RTX 4090", 24, 23)), load_options=loads)
    dock.reserve_slider.setValue(8)  # 2 GB kept free
    assert dock.apply_button.isEnabled()  # on a GPU the reserve changes the plan the engine loads with
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        dock.apply_button.click()
    assert loads[-1] == {"reserve_gb": 2.0} and dock.reserve_gb() == 2.0
    assert not dock.apply_button.isEnabled()
    dock.resident_spin.setValue(4)
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.switch_model("FakeLM-2M")  # another model: its own layers, the same reserve
    assert loads[-1] == {"reserve_gb": 2.0}
    assert dock.resident_spin.text() == "auto" and dock.plan == expected_plan(dock, reserve_gb=2.0)


def test_reload_is_refused_while_answering_or_when_the_override_does_not_fit(hardware_window, qtbot):
    import threading

    from app_fakes import endless_events

    loads = []
    gate = threading.Event()
    window, dock, _p = hardware_window(profile(gpu(0, "NVIDIA GeForce RTX 4070", 12, 11.2)), load_options=loads,
                                       events=endless_events, gate=gate)
    dock.resident_spin.setValue(20)  # over the budget: the planner's message, and no reload
    assert dock.plan is None and not dock.apply_button.isEnabled()
    dock.apply()
    dock.resident_spin.setValue(2)
    window.prompt.setPlainText("Hi")
    window.send()
    qtbot.waitUntil(lambda: window.busy and window.transcript.toPlainText().count("w") > 0, timeout=5000)
    assert not dock.apply_button.isEnabled()  # mid-answer: the model is in use
    dock.apply()
    window.reload_model({"resident_layers": 2})
    gate.set()
    with qtbot.waitSignal(window.host.finished, timeout=5000):
        window.stop()
    qtbot.wait(50)
    assert loads == [{}] and dock.apply_button.isEnabled()


def test_on_a_cpu_only_machine_the_reserve_alone_asks_for_no_reload(hardware_window, qtbot):
    loads = []
    window, dock, _p = hardware_window(profile(), load_options=loads)
    dock.reserve_slider.setValue(8)
    assert not dock.apply_button.isEnabled()  # a CPU load does not depend on the reserve
    dock.resident_spin.setValue(20)
    assert dock.plan == expected_plan(dock, reserve_gb=2.0, resident_layers=20) and dock.apply_button.isEnabled()
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        dock.apply_button.click()
    assert loads[-1] == {"reserve_gb": 2.0, "resident_layers": 20}


def test_a_longer_context_is_planned_reloaded_with_and_kept_across_a_model_switch(hardware_window, qtbot):
    """The context was fixed at 4k on a GPU: a 32k-context model dropped old turns after about 3.5k tokens."""
    loads = []
    window, dock, _p = hardware_window(profile(gpu(0, "NVIDIA GeForce RTX 4070", 12, 11.2)), load_options=loads)
    box = dock.context_box
    choices = [box.itemData(i) for i in range(box.count())]
    assert choices == [2048, 4096, 8192, 16384, 32768] and box.itemText(4) == "32k tokens (the model's)"
    assert dock.context() == CONTEXT and box.isEnabled() and not dock.apply_button.isEnabled()
    four_k = dock.plan
    box.setCurrentIndex(choices.index(32768))
    box.activated.emit(choices.index(32768))  # (what a user's pick sends; setCurrentIndex does not)
    expected = make_plan(ModelConfig.from_dict(QWEN25_7B), dock.profile, context=32768)
    assert dock.plan == expected and shown(dock, "Context") == "32768 tokens"
    assert expected.resident_layers < four_k.resident_layers  # the KV cache takes VRAM from resident layers
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        dock.apply_button.click()
    assert loads[-1] == {"context": 32768} and not dock.apply_button.isEnabled()
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.switch_model("FakeLM-2M")
    assert loads[-1] == {"context": 32768} and dock.context() == 32768
    window.backend.config = {**QWEN25_7B, "max_position_embeddings": 8192}  # a model with a shorter context
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.switch_model("FakeLM-1M")
    assert dock.context() == 8192 and box.currentText() == "8k tokens (the model's)"
    assert not dock.apply_button.isEnabled()  # nothing differs from what was loaded
    window.backend.config = QWEN25_7B
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.switch_model("FakeLM-2M")
    assert loads[-1] == {"context": 32768} and dock.context() == 32768  # the choice came back


def test_a_models_load_settings_are_kept_across_starts_and_switches(hardware_window, qtbot, make_window):
    """As LM Studio keeps a model's load settings: the context and reserve a model was last loaded with are
    what it loads with next time, across a switch to another model and a restart."""
    from app.hardware_panel import load_options_for

    loads = []
    window, dock, _p = hardware_window(profile(gpu(0, "NVIDIA GeForce RTX 4070", 12, 11.2)), load_options=loads)
    dock.context_box.setCurrentIndex(dock.context_box.findData(16384))
    dock.context_box.activated.emit(dock.context_box.currentIndex())
    dock.reserve_slider.setValue(4)  # 1 GB
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        dock.apply_button.click()
    mine = {"reserve_gb": 1.0, "context": 16384}
    assert loads[-1] == mine and load_options_for(window.settings, "fake-model") == mine
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.switch_model("FakeLM-2M")  # not loaded before: the panel's settings
    dock.reserve_slider.setValue(2)
    dock.context_box.setCurrentIndex(dock.context_box.findData(8192))
    dock.context_box.activated.emit(dock.context_box.currentIndex())
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        dock.apply_button.click()
    assert loads[-1] == {"context": 8192}  # (0.5 GB: the default reserve, not asked for)
    with qtbot.waitSignal(window.host.loaded, timeout=5000):
        window.switch_model("fake-model")  # back: its own settings, not the panel's
    assert loads[-1] == mine and dock.context() == 16384 and dock.reserve_gb() == 1.0
    assert not dock.apply_button.isEnabled()
    window.close()
    again_loads = []
    again, again_dock, _p = hardware_window(profile(gpu(0, "NVIDIA GeForce RTX 4070", 12, 11.2)),
                                            load_options=again_loads)
    assert again_loads == [mine] and again_dock.context() == 16384  # the next start: the same settings
    again.close()
    window.settings.setValue("load_options", '{"fake-model": {"context": "lots", "reserve_gb": 1.0}}')
    assert load_options_for(window.settings, "fake-model") == {"reserve_gb": 1.0}  # garbage left out
    window.settings.setValue("load_options", "not json")
    assert load_options_for(window.settings, "fake-model") is None


def test_on_a_cpu_the_context_box_is_off(hardware_window):
    _w, dock, _p = hardware_window(profile())
    assert not dock.context_box.isEnabled()  # a CPU plans no memory: the model's own context
    assert dock.context_box.currentData() == dock.context() == QWEN25_7B["max_position_embeddings"]
    assert dock.plan.kv_length == dock.context()  # (and the RAM it predicts is for that)
    dock.context_box.setCurrentIndex(0)
    assert not dock.apply_button.isEnabled() and "context" not in dock.load_options()


def test_the_refresh_timer_probes_only_while_the_dock_is_visible(hardware_window, qtbot):
    _w, dock, prober = hardware_window(profile(gpu(0, "NVIDIA GeForce RTX 4060", 8, 7.4)))
    assert dock.timer.isActive()
    dock.hide()
    assert not dock.timer.isActive()


def test_panel_argument():
    assert build_parser().parse_args([]).panel == "stats"
    assert build_parser().parse_args(["--panel", "hardware"]).panel == "hardware"


def test_screenshot_with_the_hardware_panel(qapp, tmp_path, monkeypatch, dialogs):
    import sys

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(hardware_host, "real_probe", FakeProber(profile(gpu(0, "NVIDIA GeForce RTX 4070", 12, 11))))
    backend = FakeBackend()
    backend.config = QWEN25_7B
    shot = tmp_path / "hw.png"
    assert main(["--screenshot", str(shot), "--panel", "hardware"], factory_for(backend)) == 0
    assert not QImage(str(shot)).isNull() and dialogs.shown == []
