#!/usr/bin/env bash
# The one prepared call for a lent GPU machine (well inside 8 minutes): the fused low-bit kernel against
# F.linear on the dequantized weight (Qwen2.5-7B shapes, M=6), then gpu_check with the fused draft and
# with the dequantized one, side by side on the same machine, then auto depth replayed under both.
# Results go to $RESULTS (default: $OUT when set, else benchmarks/results).
#
# The device machines have torch, transformers and triton but not hqq: carry `.whl` (hqq and termcolor
# wheels, built here with `DISABLE_CUDA=1 pip wheel --no-deps hqq==0.2.8.post1 termcolor`), e.g.
#     run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=540)
set -u
RESULTS=${RESULTS:-${OUT:-benchmarks/results}}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1
mkdir -p "$RESULTS"
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RESULTS/gpu_session_device.txt"
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
    | tee -a "$RESULTS/gpu_session_device.txt"
# Each step has its own limit, so one that hangs cannot eat the others' time.
timeout 150 $PY benchmarks/lowbit_kernel_check.py --out "$RESULTS" --sweep 2>&1 | tee "$RESULTS/lowbit_kernel_check.log"
timeout 180 $PY benchmarks/gpu_check.py --out "$RESULTS" 2>&1 | tee "$RESULTS/gpu_check_fused.log"
timeout 150 $PY benchmarks/gpu_check.py --out "$RESULTS" --dequantized-draft 2>&1 | tee "$RESULTS/gpu_check_dequantized.log"
# Auto depth under the times just measured: the saved SmolLM2 acceptance traces replayed (seconds, no model).
for run in gpu_check gpu_check_dequantized; do
    [ -f "$RESULTS/$run.json" ] && timeout 60 $PY benchmarks/auto_depth_trace.py \
        --traces benchmarks/results/auto_depth_trace.json --timings-from "$RESULTS/$run.json" \
        --out "$RESULTS/auto_depth_replay_$run.json" 2>&1 | tee "$RESULTS/auto_depth_replay_$run.log"
done
ls -la "$RESULTS"
