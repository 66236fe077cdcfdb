#!/usr/bin/env bash
# The accelerator part of shared/benchmarks.md, for a machine with one GPU (an H100):
#   W3 at the 0.5 B-parameter model (`0.5b` preset: Qwen2.5-0.5B's shape, 494 M parameters) with
#   bfloat16 activations, its fraction of the bf16 matmul rate measured in the same process (MFU;
#   target 40%), and W2 (sampling tokens/s) at the same model; then W2 / W3 at the float32
#   benchmark model for comparison with the CPU runs.
# Needs jax with the GPU's plugin, flax and optax (the workplace's GPU image has them); rl_jax is
# used from this checkout without installing it. Writes the JSON next to $OUT (or
# benchmarks/accelerator-out/) and prints the same lines as `rl-jax bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/accelerator-out}"
mkdir -p "$out"
python3 -c "import jax; print('devices:', jax.devices())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
PYTHONPATH=. python3 -m rl_jax.bench --workloads=w3,w2 --model=0.5b --dtype=bfloat16 \
  --json="$out/w3_w2_0.5b_bf16.json"
PYTHONPATH=. python3 -m rl_jax.bench --workloads=w3,w2 --json="$out/w3_w2_bench_f32.json"
