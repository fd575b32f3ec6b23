#!/usr/bin/env bash
# One run on a GPU machine: the step and the loop in both dtypes, then a profile of
# the batch-10,000 step with the fixes it may point to, measured in the same run.
# Run from a copy of the repository on the GPU machine, with dm-haiku and jmp wheels in
# .whl/ (the image has jax, optax, chex, numpy, absl, no haiku, no TensorFlow):
#   bash benchmarks/gpu_figures.sh "$OUT"
set -uo pipefail
OUT=${1:-/tmp/gpu_out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
# Compiled steps are reused between the benchmark's processes and the profile.
export JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import jax, haiku, optax; print('jax', jax.__version__, 'haiku', haiku.__version__, 'optax', optax.__version__, jax.devices())"
SECONDS=0
python3 benchmarks/bench_model.py --modes train,fed --dtypes float32,bfloat16 \
  --batches 1024,10000 --repeats 3 --min_seconds 2 --json_out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"
echo "bench: ${SECONDS}s"
python3 benchmarks/profile_step.py --batch 10000 --dtypes bfloat16,float32 \
  --variants base,rbg,unsafe_rbg --out "$OUT/profile" 2>&1 | tee "$OUT/profile.txt"
echo "total: ${SECONDS}s"
