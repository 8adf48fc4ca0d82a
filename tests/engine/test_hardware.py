"""The hardware probe: the real one on this machine, and NVML faked at the pynvml module for the GPU cases."""

import ctypes
import json

import pynvml
import pytest
import torch

from engine import hardware
from fake_nvml import FakeNVML, card

GIB = 1024**3
MIB = 1024**2


def _driver_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        return True
    except OSError:
        return False


def fake_probe(monkeypatch, cards, **kwargs):
    fake = FakeNVML(cards, **kwargs).install(monkeypatch)
    return hardware.probe(), fake


def assert_host_filled(profile):
    cpu, ram = profile["cpu"], profile["ram"]
    assert isinstance(cpu["name"], str) and cpu["name"]
    assert cpu["cores_logical"] >= 1
    assert cpu["cores_physical"] is None or 1 <= cpu["cores_physical"] <= cpu["cores_logical"]
    assert ram["total_bytes"] > 256 * MIB
    assert 0 < ram["available_bytes"] <= ram["total_bytes"]


# ---------------------------------------------------------------------------------------------- the real probe


@pytest.mark.skipif(_driver_present(), reason="an NVIDIA driver is installed here")
def test_real_probe_without_driver_is_cpu_only():
    profile = hardware.probe()
    assert profile["gpus"] == []
    assert profile["nvml"]["available"] is False
    assert "no NVIDIA driver" in profile["nvml"]["message"]
    assert "CPU-only" in profile["nvml"]["message"]
    assert_host_filled(profile)
    assert profile["cuda"] == {"available": torch.cuda.is_available(), "device_name": None,
                               "h2d_bandwidth_gbps": None, "matmul_tflops": None}
    assert json.loads(json.dumps(profile)) == profile
    assert hardware.free_vram_bytes(profile) is None and hardware.total_vram_bytes(profile) is None


@pytest.mark.skipif(not _driver_present(), reason="no NVIDIA driver here")
def test_real_probe_with_driver_lists_gpus():
    profile = hardware.probe()
    assert profile["nvml"]["available"] is True, profile["nvml"]["message"]
    assert profile["gpus"], "a driver is installed but no GPU was listed"
    for gpu in profile["gpus"]:
        assert gpu["total_bytes"] > 0 and 0 <= gpu["free_bytes"] <= gpu["total_bytes"]
        assert gpu["driver"] and gpu["driver"] != "unknown"
    assert_host_filled(profile)
    assert json.loads(json.dumps(profile)) == profile


def test_real_probe_measure_without_cuda_leaves_measurements_empty(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cuda = hardware.probe(measure=True)["cuda"]
    assert cuda == {"available": False, "device_name": None, "h2d_bandwidth_gbps": None, "matmul_tflops": None}


def test_cpu_name_comes_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD Ryzen 9 7950X 16-Core\n")
    assert hardware._cpuinfo_model_name(str(cpuinfo)) == "AMD Ryzen 9 7950X 16-Core"
    cpuinfo.write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")  # Arm: no model name line
    assert hardware._cpuinfo_model_name(str(cpuinfo)) is None
    assert hardware._cpuinfo_model_name(str(tmp_path / "missing")) is None


# ---------------------------------------------------------------------------------------------- faked GPUs


@pytest.mark.parametrize("name,total,free,pcie", [
    ("NVIDIA GeForce RTX 4060", 8 * GIB, 7_301_234_688, (4, 4, 8, 8)),
    ("NVIDIA GeForce RTX 3060", 12 * GIB, 11_523_112_960, (3, 4, 16, 16)),
    ("NVIDIA GeForce RTX 4090", 24 * GIB, 24_108_466_176, (1, 4, 16, 16)),
])
def test_one_gpu(monkeypatch, name, total, free, pcie):
    profile, fake = fake_probe(monkeypatch, [card(name, total, free, uuid="GPU-abc", util=12, temp=38, pcie=pcie)])
    assert fake.shutdowns == 1
    assert profile["nvml"] == {"available": True, "message": "NVIDIA driver 550.54.15, 1 GPU"}
    assert profile["gpus"] == [{
        "index": 0, "name": name, "uuid": "GPU-abc", "driver": "550.54.15",
        "total_bytes": total, "free_bytes": free, "used_bytes": total - free,
        "utilization_pct": 12, "temperature_c": 38,
        "pcie": {"gen_current": pcie[0], "gen_max": pcie[1], "width_current": pcie[2], "width_max": pcie[3]},
    }]
    assert hardware.total_vram_bytes(profile) == total
    assert hardware.free_vram_bytes(profile) == free
    assert hardware.free_vram_bytes(profile, 1) is None
    assert_host_filled(profile)
    assert json.loads(json.dumps(profile)) == profile


def test_two_gpus(monkeypatch):
    profile, fake = fake_probe(monkeypatch, [
        card("NVIDIA GeForce RTX 3090", 24 * GIB, 20 * GIB, uuid="GPU-aaa", util=0, temp=30),
        card("NVIDIA GeForce RTX 3060", 12 * GIB, 3 * GIB, uuid="GPU-bbb", util=99, temp=77, pcie=(3, 4, 4, 16)),
    ])
    assert fake.shutdowns == 1
    assert profile["nvml"] == {"available": True, "message": "NVIDIA driver 550.54.15, 2 GPUs"}
    first, second = profile["gpus"]
    assert (first["index"], first["name"], first["uuid"]) == (0, "NVIDIA GeForce RTX 3090", "GPU-aaa")
    assert (second["index"], second["name"], second["uuid"]) == (1, "NVIDIA GeForce RTX 3060", "GPU-bbb")
    assert (first["utilization_pct"], first["temperature_c"]) == (0, 30)
    assert (second["utilization_pct"], second["temperature_c"]) == (99, 77)
    assert second["used_bytes"] == 9 * GIB
    assert second["pcie"] == {"gen_current": 3, "gen_max": 4, "width_current": 4, "width_max": 16}
    assert [hardware.total_vram_bytes(profile, i) for i in (0, 1)] == [24 * GIB, 12 * GIB]
    assert [hardware.free_vram_bytes(profile, i) for i in (0, 1)] == [20 * GIB, 3 * GIB]


def test_unsupported_queries_become_none(monkeypatch):
    profile, fake = fake_probe(monkeypatch, [
        card("Tesla T4", 16 * GIB, 15 * GIB, broken={"temperature", "pcie", "utilization", "uuid"})])
    assert fake.shutdowns == 1
    assert profile["nvml"]["available"] is True
    (gpu,) = profile["gpus"]
    assert gpu["temperature_c"] is None and gpu["utilization_pct"] is None and gpu["uuid"] is None
    assert gpu["pcie"] == {"gen_current": None, "gen_max": None, "width_current": None, "width_max": None}
    assert (gpu["name"], gpu["total_bytes"], gpu["free_bytes"]) == ("Tesla T4", 16 * GIB, 15 * GIB)


def test_gpu_without_memory_info_is_skipped_not_fatal(monkeypatch):
    profile, fake = fake_probe(monkeypatch, [
        card("broken", 8 * GIB, 8 * GIB, broken={"memory"}),
        card("NVIDIA RTX A4000", 16 * GIB, 14 * GIB)])
    assert fake.shutdowns == 1
    assert [g["index"] for g in profile["gpus"]] == [1]
    assert "GPU 0 skipped" in profile["nvml"]["message"]
    assert hardware.free_vram_bytes(profile, 0) is None
    assert hardware.free_vram_bytes(profile, 1) == 14 * GIB


def test_bytes_from_old_bindings_are_decoded(monkeypatch):
    profile, _ = fake_probe(monkeypatch, [card(b"NVIDIA GeForce GTX 1080", 8 * GIB, 6 * GIB, uuid=b"GPU-old")],
                            driver=b"470.256.02")
    (gpu,) = profile["gpus"]
    assert (gpu["name"], gpu["uuid"], gpu["driver"]) == ("NVIDIA GeForce GTX 1080", "GPU-old", "470.256.02")
    assert json.dumps(profile)


@pytest.mark.parametrize("error,expected", [
    (pynvml.NVMLError_LibraryNotFound(), "no NVIDIA driver found (NVML library not found): CPU-only"),
    (pynvml.NVMLError_DriverNotLoaded(), "no NVIDIA driver loaded (NVML: driver not loaded): CPU-only"),
])
def test_nvml_missing_gives_cpu_only(monkeypatch, error, expected):
    profile, fake = fake_probe(monkeypatch, [card("never seen", 8 * GIB, 8 * GIB)], init_error=error)
    assert fake.shutdowns == 0
    assert profile["gpus"] == []
    assert profile["nvml"] == {"available": False, "message": expected}
    assert_host_filled(profile)


def test_failure_after_init_still_shuts_down(monkeypatch):
    fake = FakeNVML([]).install(monkeypatch)

    def count_fails():
        raise pynvml.NVMLError_GpuIsLost()

    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", count_fails)
    profile = hardware.probe()
    assert fake.shutdowns == 1
    assert profile["gpus"] == [] and profile["nvml"]["available"] is False
    assert profile["nvml"]["message"].startswith("NVML could not list the GPUs")


def test_pynvml_not_installed_gives_cpu_only(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    profile = hardware.probe()
    assert profile["gpus"] == [] and profile["nvml"]["available"] is False
    assert "nvidia-ml-py is not installed" in profile["nvml"]["message"]


def test_measure_fills_cuda_when_available(monkeypatch):
    # Only the wiring: the CUDA measurements themselves are checked on a GPU in test_measure_on_cuda.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _device=None: "NVIDIA GeForce RTX 4090")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(hardware, "measure_h2d_bandwidth", lambda device: 24.6789)
    monkeypatch.setattr(hardware, "measure_matmul_tflops", lambda device: 165.4321)
    assert hardware.probe(measure=False)["cuda"] == {
        "available": True, "device_name": "NVIDIA GeForce RTX 4090", "h2d_bandwidth_gbps": None,
        "matmul_tflops": None}
    assert hardware.probe(measure=True)["cuda"] == {
        "available": True, "device_name": "NVIDIA GeForce RTX 4090", "h2d_bandwidth_gbps": 24.68,
        "matmul_tflops": 165.43}


def test_measurement_out_of_memory_gives_none(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda _device=None: "tiny card")
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)

    def oom(device):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(hardware, "measure_h2d_bandwidth", oom)
    monkeypatch.setattr(hardware, "measure_matmul_tflops", lambda device: 1.0)
    cuda = hardware.probe(measure=True)["cuda"]
    assert cuda["h2d_bandwidth_gbps"] is None and cuda["matmul_tflops"] == 1.0


# ---------------------------------------------------------------------------------------------- formatting


def test_format_cpu_only(monkeypatch):
    profile, _ = fake_probe(monkeypatch, [], init_error=pynvml.NVMLError_LibraryNotFound())
    profile["cpu"] = {"name": "AMD Ryzen 7 5800X 8-Core Processor", "cores_physical": 8, "cores_logical": 16}
    profile["ram"] = {"total_bytes": 32 * GIB, "available_bytes": 20 * GIB}
    profile["cuda"] = {"available": False, "device_name": None, "h2d_bandwidth_gbps": None, "matmul_tflops": None}
    text = hardware.format_profile(profile)
    assert text.splitlines() == [
        "GPU:  none (no NVIDIA driver found (NVML library not found): CPU-only)",
        "CPU:  AMD Ryzen 7 5800X 8-Core Processor (8 cores, 16 threads)",
        "RAM:  32.0 GiB (20.0 GiB available)",
        "CUDA: not available",
        "Draft: substitutes run as dequantized weights on the CPU (the fused kernels need CUDA)",
    ]


def test_format_two_gpus_with_measurements(monkeypatch):
    profile, _ = fake_probe(monkeypatch, [
        card("NVIDIA GeForce RTX 4090", 24 * GIB, int(22.5 * GIB), util=3, temp=35, pcie=(4, 4, 16, 16)),
        card("NVIDIA GeForce RTX 3060", 12 * GIB, 6 * GIB, util=50, temp=60, pcie=(1, 4, 8, 16),
             broken={"temperature"}),
    ])
    profile["cpu"] = {"name": "Intel(R) Core(TM) i9-13900K", "cores_physical": None, "cores_logical": 32}
    profile["ram"] = {"total_bytes": 64 * GIB, "available_bytes": 48 * GIB}
    profile["cuda"] = {"available": True, "device_name": "NVIDIA GeForce RTX 4090", "h2d_bandwidth_gbps": 24.68,
                       "matmul_tflops": 165.43}
    lines = hardware.format_profile(profile).splitlines()
    assert lines[0] == ("GPU 0: NVIDIA GeForce RTX 4090, 24.0 GiB VRAM (22.5 GiB free, 1.5 GiB used), "
                        "PCIe Gen4 x16 (max Gen4 x16), 35 °C, 3% busy")
    assert lines[1] == ("GPU 1: NVIDIA GeForce RTX 3060, 12.0 GiB VRAM (6.0 GiB free, 6.0 GiB used), "
                        "PCIe Gen1 x8 (max Gen4 x16), 50% busy")
    assert "NVIDIA driver 550.54.15, 2 GPUs" in lines[2]
    assert lines[3] == "CPU:  Intel(R) Core(TM) i9-13900K (32 threads)"
    assert lines[4] == "RAM:  64.0 GiB (48.0 GiB available)"
    assert lines[5] == ("CUDA: available (NVIDIA GeForce RTX 4090), host-to-device 24.7 GB/s (pinned), "
                        "bf16 matmul 165.4 TFLOP/s")
    if profile["draft"]["triton"]:
        assert lines[6] == f"Draft: fused low-bit kernels (Triton {profile['draft']['triton']})"
    else:
        assert "Triton is not installed" in lines[6]
    assert len(lines) == 7


def test_format_gpu_without_pcie_info(monkeypatch):
    profile, _ = fake_probe(monkeypatch, [card("Tesla T4", 16 * GIB, 15 * GIB, broken={"pcie", "temperature",
                                                                                      "utilization"})])
    first = hardware.format_profile(profile).splitlines()[0]
    assert first == "GPU 0: Tesla T4, 16.0 GiB VRAM (15.0 GiB free, 1.0 GiB used)"


# ---------------------------------------------------------------------------------------------- measuring


def test_measure_h2d_bandwidth_on_cpu():
    gbps = hardware.measure_h2d_bandwidth("cpu", nbytes=4 * MIB, repeats=3, warmup=1)
    assert isinstance(gbps, float) and 0 < gbps < 10_000


def test_measure_matmul_tflops_on_cpu():
    for dtype in (torch.float32, torch.bfloat16):
        tflops = hardware.measure_matmul_tflops("cpu", n=64, dtype=dtype, repeats=3, warmup=1)
        assert isinstance(tflops, float) and 0 < tflops < 10_000


def test_measurement_timing_is_the_median(monkeypatch):
    # 1 MB copied in [4, 1, 2] ms: the median (2 ms) gives 0.5 GB/s, the mean (2.33 ms) or the best would not.
    times = iter([0.5, 0.004, 0.001, 0.002])  # one warm-up, then three timed runs
    monkeypatch.setattr(hardware, "_cpu_seconds", lambda op, device: next(times))
    assert hardware.measure_h2d_bandwidth("cpu", nbytes=1_000_000, repeats=3, warmup=1) == pytest.approx(0.5)


def test_matmul_counts_two_flops_per_multiply_add(monkeypatch):
    monkeypatch.setattr(hardware, "_cpu_seconds", lambda op, device: 0.001)
    # 2 * 100^3 flops in 1 ms = 2e9 flop/s = 0.002 TFLOP/s.
    assert hardware.measure_matmul_tflops("cpu", n=100, repeats=2, warmup=0) == pytest.approx(0.002)


def test_measurement_rejects_bad_arguments():
    with pytest.raises(ValueError):
        hardware.measure_h2d_bandwidth("cpu", nbytes=0)
    with pytest.raises(ValueError):
        hardware.measure_matmul_tflops("cpu", n=8, repeats=0)
    with pytest.raises(ValueError):
        hardware.measure_matmul_tflops("meta", n=8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measure_on_cuda():
    gbps = hardware.measure_h2d_bandwidth("cuda", nbytes=64 * MIB, repeats=3)
    tflops = hardware.measure_matmul_tflops("cuda", n=2048, repeats=3)
    assert 0.5 < gbps < 1_000 and 0.5 < tflops < 10_000
    cuda = hardware.probe(measure=True)["cuda"]
    assert cuda["available"] and cuda["device_name"]
    assert cuda["h2d_bandwidth_gbps"] > 0.5 and cuda["matmul_tflops"] > 0.5


def test_the_profile_says_which_kernels_a_draft_runs_on(monkeypatch):
    """Fused low-bit kernels need CUDA and Triton; without Triton on a GPU the user is told what it costs and
    how to mend it; on a CPU, why there are none."""
    from engine import lowbit

    profile = hardware.probe()
    assert profile["draft"] == {"triton": lowbit.triton.__version__ if lowbit.available() else None,
                                "fused_kernels": False}  # no CUDA here
    assert hardware.draft_text(profile).startswith("Draft: substitutes run as dequantized weights on the CPU")
    assert hardware.draft_text(profile) in hardware.format_profile(profile)
    on_gpu = dict(profile, cuda=dict(profile["cuda"], available=True))
    assert hardware.draft_text(dict(on_gpu, draft={"triton": "3.7.1", "fused_kernels": True})) == \
        "Draft: fused low-bit kernels (Triton 3.7.1)"
    missing = hardware.draft_text(dict(on_gpu, draft={"triton": None, "fused_kernels": False}))
    assert "Triton is not installed" in missing and "pip install triton" in missing
    assert hardware.draft_text({k: v for k, v in profile.items() if k != "draft"}) == ""  # an older profile
    monkeypatch.setattr(lowbit, "triton", None)
    from engine import draft_path

    assert draft_path.probe(True) == {"triton": None, "fused_kernels": False}
