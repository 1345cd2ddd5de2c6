#!/usr/bin/env bash
# The GPU runbook's first item (docs/gpu-runbook.md) as one device call: the throughput runs
# against diffusers still open (docs/benchmarks.md, "First GPU figures"). Each run gets what
# is left of a shared deadline, so one slow compilation cannot eat the rest; the log goes to
# $OUT/throughput.log (the device tool brings it back).
#
#   bash benchmarks/gpu_throughput.sh [SECONDS]        # default 560; carry .whl (diffusers wheel)
#
# The first call (2026-11-29, one H200) ran the eager and compiled training and sampling of both
# cases and the upsampling A/B: its figures are in docs/benchmarks.md.
set -u
[[ ${1:-560} =~ ^[0-9]+$ ]] || { echo "gpu_throughput.sh: SECONDS is the call's budget in whole seconds, e.g. 560; got '$1'"; exit 2; }
DEADLINE=$((SECONDS + ${1:-560}))
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
LOG=$OUT/throughput.log
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=src:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.total --format=csv | tee -a "$LOG"
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)" | tee -a "$LOG"

run() {  # run LIMIT ARGS...: one benchmark, cut at LIMIT seconds or at the deadline
    local limit=$1; shift
    local left=$((DEADLINE - SECONDS - 5))
    ((left < limit)) && limit=$left
    if ((limit < 30)); then echo "SKIPPED (no time left): $*" | tee -a "$LOG"; return; fi
    echo "=== [$SECONDS s] $* (limit ${limit}s)" | tee -a "$LOG"
    timeout "$limit" python3 "$@" 2>&1 | grep -v -i "warn" | tee -a "$LOG"
    echo "=== rc ${PIPESTATUS[0]} after $SECONDS s" | tee -a "$LOG"
}

# 1. the memory-format A/B (2026-11-29's eager figures put ours behind diffusers in sampling)
run 60 benchmarks/train_throughput.py --case unet --device cuda --rounds 3 --ours-contiguous
run 90 benchmarks/sampling_throughput.py --case unet --device cuda --rounds 3 --ours-contiguous
run 60 benchmarks/sampling_throughput.py --case unet --device cuda --rounds 3
run 150 benchmarks/train_throughput.py --case dit --device cuda --rounds 3 --compile --ours-contiguous
# 2. the compiled U-Net runs that outran the first call (2026-11-29)
run 300 benchmarks/train_throughput.py --case unet --device cuda --rounds 3 --compile
run 300 benchmarks/sampling_throughput.py --case unet --device cuda --rounds 3 --compile
echo "done after $SECONDS s" | tee -a "$LOG"
