#!/usr/bin/env bash
# Issue 17's GPU figures in one short run, for a session lent an accelerator:
#
#     bash experiments/device_check.sh        # on the device machine, from the repo root
#
# Prints the device, then `bench_eval.py --sections batch` (full result, sweep merge and
# step time per second on the default JAX device) and `bench_sweep.py --sizes 1e6,1e7`
# (sweeps end to end), each under its own time limit so that the whole run stays within
# ~9 minutes. Outputs are kept in $OUT (the device tool's folder) or, where $OUT is unset,
# in experiments/figures/device/. Uses the machine's own JAX (emu's dependencies: jax,
# flax, optax, chex, numpy); runs on a CPU-only machine as well (the figures are then CPU
# figures, and say so in their first line).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py="${PYTHON:-python3}"
out="${OUT:-experiments/figures/device}"
mkdir -p "$out"
{
    date -u
    (nvidia-smi -L 2>/dev/null || echo "no nvidia-smi")
    "$py" -c "import jax; print('jax', jax.__version__, jax.devices())"
} 2>&1 | tee "$out/device.txt"
timeout 240 "$py" experiments/bench_eval.py --sections batch 2>&1 | tee "$out/bench_eval_batch.txt"
timeout 240 "$py" experiments/bench_sweep.py --sizes 1e6,1e7 2>&1 | tee "$out/bench_sweep.txt"
