"""The first-run welcome: detected hardware, the recommended model with the planner's numbers, the offline
default; shown once per user (a marker file), never in a --screenshot run."""

import sys

import pytest
from app_fakes import FakeBackend, factory_for
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from app import first_run
from app.first_run import WelcomeDialog, is_first_run, marker_path, show_welcome
from app.main import main
from app.recommend import CANDIDATES, MIN_TOKENS_PER_S, recommend
from engine.config import ModelConfig
from engine.planner import make_plan
from engine.store import DEFAULT_MODEL

GIB = 1 << 30


def cpu_only(ram_gib=16, available_gib=10):
    return {"gpus": [], "nvml": {"available": False, "message": "no NVIDIA driver found (NVML library not found): "
                                                                 "CPU-only"},
            "cpu": {"name": "AMD Ryzen 7 5800X", "cores_physical": 8, "cores_logical": 16},
            "ram": {"total_bytes": ram_gib * GIB, "available_bytes": available_gib * GIB},
            "cuda": {"available": False, "device_name": None, "h2d_bandwidth_gbps": None, "matmul_tflops": None}}


def gpu_12gb():
    total, used = 12 * GIB, GIB // 2
    return {"gpus": [{"index": 0, "name": "NVIDIA GeForce RTX 3060", "uuid": "GPU-1", "driver": "550.54",
                      "total_bytes": total, "free_bytes": total - used, "used_bytes": used,
                      "utilization_pct": 3, "temperature_c": 40,
                      "pcie": {"gen_current": 4, "gen_max": 4, "width_current": 16, "width_max": 16}}],
            "nvml": {"available": True, "message": "NVIDIA driver 550.54, 1 GPU"},
            "cpu": {"name": "Intel Core i7-12700", "cores_physical": 12, "cores_logical": 20},
            "ram": {"total_bytes": 32 * GIB, "available_bytes": 24 * GIB},
            "cuda": {"available": True, "device_name": "NVIDIA GeForce RTX 3060", "h2d_bandwidth_gbps": None,
                     "matmul_tflops": None}}


def plan_for(name, profile):
    raw = next(raw for n, _repo, raw in CANDIDATES if n == name)
    return make_plan(ModelConfig.from_dict(raw), profile)


def test_a_cpu_only_machine_gets_the_largest_model_at_reading_speed(qtbot):
    profile = cpu_only()
    dialog = WelcomeDialog(profile=profile)
    qtbot.addWidget(dialog)
    rec = dialog.recommendation
    assert rec.name == "Qwen2.5-1.5B-Instruct"
    plan = plan_for(rec.name, profile)
    assert plan.device == "cpu" and plan.predicted_tokens_per_s >= MIN_TOKENS_PER_S
    # The next size up is below reading speed on this CPU: that is why it is not the one.
    assert plan_for("Qwen2.5-3B-Instruct", profile).predicted_tokens_per_s < MIN_TOKENS_PER_S
    hardware = dialog.hardware.text()
    assert "CPU-only: no NVIDIA driver found" in hardware and "AMD Ryzen 7 5800X (8 cores, 16 threads)" in hardware
    assert "RAM: 16.0 GiB (10.0 GiB available)" in hardware
    text = dialog.recommended.text()
    assert "<b>Qwen2.5-1.5B-Instruct</b> (1.5B parameters, 2.9 GiB download)" in text
    assert f"<b>{plan.predicted_tokens_per_s:.1f} tokens/s</b> with plain decoding on the CPU" in text
    assert "subspec models download Qwen/Qwen2.5-1.5B-Instruct" in text
    assert DEFAULT_MODEL in dialog.ready.text() and "offline" in dialog.ready.text()


def test_a_12_gb_gpu_gets_a_7b_model_with_subspec_and_the_planners_numbers(qtbot):
    profile = gpu_12gb()
    dialog = WelcomeDialog(profile=profile)
    qtbot.addWidget(dialog)
    rec = dialog.recommendation
    plan = plan_for("Qwen2.5-7B-Instruct", profile)
    assert rec.name == "Qwen2.5-7B-Instruct" and rec.plan == plan
    assert plan.method == "subspec" and 0 < plan.resident_layers < 28  # too big for 12 GB: it streams
    with pytest.raises(Exception, match="does not fit"):
        plan_for("Qwen2.5-14B-Instruct", profile)  # the next size up does not fit
    assert "GPU 0: NVIDIA GeForce RTX 3060, 12.0 GiB VRAM (11.5 GiB free)" in dialog.hardware.text()
    text = dialog.recommended.text()
    assert "(7.6B parameters, 14.2 GiB download)" in text
    assert (f"<b>{plan.predicted_tokens_per_s:.1f} tokens/s</b> with SubSpec, {plan.speedup:.1f}x plain offloaded "
            f"decoding: {plan.resident_layers} of 28 layers stay on the GPU") in text


def test_too_little_memory_for_any_candidate_recommends_the_default(qtbot):
    profile = cpu_only(ram_gib=2, available_gib=1)
    assert recommend(profile) is None
    dialog = WelcomeDialog(profile=profile)
    qtbot.addWidget(dialog)
    assert f"{DEFAULT_MODEL} is the one to use here" in dialog.recommended.text()


def test_the_probe_runs_off_the_gui_thread_and_fills_the_dialog(qtbot):
    import threading

    threads = []

    def prober():
        threads.append(threading.get_ident())
        return gpu_12gb()

    dialog = WelcomeDialog(prober=prober)
    qtbot.addWidget(dialog)
    dialog.show()  # shown while still "Detecting": it must grow to the text that arrives
    qtbot.waitUntil(lambda: dialog.recommendation is not None, timeout=5000)
    assert threads and threads[0] != threading.get_ident()
    assert "RTX 3060" in dialog.hardware.text()
    assert dialog.height() >= dialog.layout().totalHeightForWidth(dialog.width())  # nothing cut off


def test_a_failed_probe_still_says_the_default_works(qtbot):
    def prober():
        raise RuntimeError("NVML exploded")

    dialog = WelcomeDialog(prober=prober)
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: "probe failed" in dialog.hardware.text(), timeout=5000)
    assert "RuntimeError: NVML exploded" in dialog.hardware.text()
    assert DEFAULT_MODEL in dialog.recommended.text() and DEFAULT_MODEL in dialog.ready.text()


def test_the_marker_is_written_when_the_welcome_closes(qtbot, subspec_home):
    assert marker_path() == subspec_home / "first-run-done"  # under the test's SUBSPEC_HOME, never the real home
    assert is_first_run()
    dialog = show_welcome(prober=cpu_only)
    qtbot.waitUntil(lambda: dialog.recommendation is not None, timeout=5000)
    assert dialog.isVisible() and is_first_run()
    dialog.start.click()
    assert not is_first_run()


def _run_main(argv, monkeypatch, seen):
    """main() on the fake engine; a moment after it starts, note the welcome dialogs showing and quit."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(first_run, "real_probe", cpu_only)  # the welcome's probe: no torch import, no NVML

    def check():
        seen.extend(w for w in QApplication.topLevelWidgets() if isinstance(w, WelcomeDialog) and w.isVisible())
        for w in seen:
            w.close()
        QApplication.instance().exit(0)

    QTimer.singleShot(300, check)  # fires inside main's event loop
    return main(argv, factory_for(FakeBackend()))


def test_main_welcomes_on_the_first_interactive_run_only(qapp, monkeypatch, dialogs):
    seen = []
    assert _run_main(["--model", "fake-model"], monkeypatch, seen) == 0
    assert len(seen) == 1 and not is_first_run()
    seen.clear()
    assert _run_main(["--model", "fake-model"], monkeypatch, seen) == 0
    assert seen == []


def test_a_screenshot_run_never_welcomes(qapp, tmp_path, monkeypatch, dialogs):
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(first_run, "show_welcome", lambda *a, **k: pytest.fail("welcome shown in a scripted run"))
    assert main(["--model", "fake-model", "--screenshot", str(tmp_path / "w.png")], factory_for(FakeBackend())) == 0
    assert is_first_run()  # still to come, on the first real run


def test_a_screenshot_of_the_welcome_is_of_the_dialog_and_leaves_the_marker(qapp, tmp_path, monkeypatch, dialogs):
    from PySide6.QtGui import QImage

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(first_run, "real_probe", gpu_12gb)
    shot = tmp_path / "welcome.png"
    argv = ["--model", "fake-model", "--screenshot", str(shot), "--panel", "welcome"]
    assert main(argv, factory_for(FakeBackend())) == 0
    image = QImage(str(shot))
    assert not image.isNull() and image.width() < 1240 and image.height() < 760  # the dialog, not the window
    assert is_first_run() and dialogs.shown == []
    assert not any(isinstance(w, WelcomeDialog) and w.isVisible() for w in QApplication.topLevelWidgets())
