"""The scripts a lent GPU session runs (benchmarks/gpu_session.sh) run here on their --tiny settings, so a
broken script is found on the CPU, not in the few minutes of a device session."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(name, *args, env=None):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], capture_output=True, text=True,
                       cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def test_gpu_check_runs_on_its_tiny_model(tmp_path):
    # --fused-ops: the draft as on CUDA by default, on engine.draft_kernels (interpreted here), so the
    # checks and the side-by-side step timing run the device's path.
    run_script("gpu_check.py", "--tiny", "--fused-ops", "--out", str(tmp_path))
    out = json.loads((tmp_path / "gpu_check_tiny.json").read_text())
    assert out["draft_path"]["fused_elementwise_ops"] is True
    assert out["draft_step_replay_eager_elementwise"]["ms_per_replay"] > 0
    step = out["draft_step_bytes"]  # the step's memory floor: what it reads, over the GPU's copy bandwidth
    assert step["total"] == step["substitutes"] + step["resident_layers"] + step["head"] + step["kv_span"] > 0
    assert out["draft_step_memory_floor_ms"] > 0 and out["draft_step_replay_over_memory_floor"] > 0
    assert "draft_step_outside_replay_ms" in out  # the iteration's step less the replay alone
    assert out["greedy_identical_to_plain"]["identical"] is True
    pre = out["prefill"]  # 600 tokens: three chunks' forwards, one pass of the streamed layers
    assert pre["identical_logits"] is True and pre["chunked_s"] > 0 and pre["passes_s"] > 0
    assert pre["chunked_bytes_streamed"] == 3 * pre["passes_bytes_streamed"] > 0
    assert out["graph_vs_eager_float32"]["same_tree"] is True
    assert out["float32_identity"]["identical"] is True
    assert out["float32_identity"]["sampled_auto_depth"]["identical"] is True
    assert out["float32_identity"]["penalized"]["identical"] is True
    assert out["penalized_iteration"]["draft_s"] > 0 and out["penalized_iteration"]["verify_s"] > 0
    assert out["sampled_iteration"]["draft_s"] > 0 and out["sampled_iteration"]["verify_s"] > 0
    it = out["subspec_iteration"]
    # Medians taken per part (and rounded): the total's is not their sum, but it is at least each of them.
    assert it["total_s"] >= max(it["draft_s"], it["verify_s"]) and min(it["draft_s"], it["verify_s"]) > 0
    assert out["draft_step_replay"]["ms_per_replay"] > 0  # the captured step timed alone (eager on a CPU)
    assert (tmp_path / "gpu_check_tiny.md").read_text().startswith("| measure | value |")
    # gpu_session.sh then replays the saved auto-depth traces under the times it measured.
    replay = tmp_path / "replay.json"
    run_script("auto_depth_trace.py", "--traces", str(ROOT / "benchmarks/results/auto_depth_trace.json"),
               "--timings-from", str(tmp_path / "gpu_check_tiny.json"), "--out", str(replay))
    (name, result), = json.loads(replay.read_text())["results"].items()
    assert name.startswith("gpu_check_tiny") and result["draft_step_ms"] == out["draft_step_ms"]
    assert {"plain", "D48 K6", "auto D<=48 K6"} <= set(result["policies"])


def test_lowbit_kernel_check_runs_in_tritons_interpreter(tmp_path):
    run_script("lowbit_kernel_check.py", "--tiny", "--reps", "2", "--out", str(tmp_path),
               env={"TRITON_INTERPRET": "1"})
    out = json.loads((tmp_path / "lowbit_kernel_check_tiny.json").read_text())
    assert len(out["shapes"]) == 7
    for shape in out["shapes"].values():
        assert shape["max_abs_error_vs_fp32_reference"] <= 1e-2


def test_gpu_checks_verify_memory_report_cannot_lose_the_run():
    """The CUDA-only measurement of verification's peak memory runs first on a device: its numbers come
    from the planner, and a failure is reported in the table instead of ending the run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    from engine.planner import mask_bytes

    config = gpu_check.ModelConfig.from_dict(gpu_check.QWEN25_7B)
    vm = gpu_check.verify_memory(config, 289, 1000, 600_000_000)
    assert vm["planned_masks_bytes"] == mask_bytes(config, 289, 1289) > vm["planned_masks_without_sdpa_copy_bytes"]
    assert vm["logits_bytes"] == 289 * 152064 * 2
    assert gpu_check.verify_memory_text(vm).startswith("600 MB; ")
    assert gpu_check.verify_memory_text(None) == "not measured (CPU)"
    assert gpu_check.verify_memory_text({"error": "RuntimeError: x"}) == "not measured (RuntimeError: x)"


def test_gpu_checks_identity_run_drafts_the_streamed_layers_on_eager_ops_too():
    """The device run's float32 identity check with the draft on eager ops (what a GPU without the fused
    kernels gets): its substitutes are the streamed layers, so the draft's full-precision layers are the
    resident ones and never meet a streamed weight."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    out = gpu_check.float32_identity_check(torch.device("cpu"), tokens=12, fused=False, fused_ops=False)
    assert out["identical"] is True and out["sampled_auto_depth"]["identical"] is True
    assert out["penalized"]["identical"] is True
