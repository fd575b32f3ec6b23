#!/usr/bin/env bash
# One run on a GPU machine screening recipe variants on the real rows (issue 10): every
# variant of benchmarks/real_6370_sweep.py in its own process (they compile in parallel
# on the machine's cores and share the GPU), 3 seeds each, each process stopped at the
# deadline; the JSON lines written so far come back.
# Run from a copy of the repository on the GPU machine, with dm-haiku and jmp wheels
# installed (see benchmarks/gpu_figures.sh) and the data in DATA_DIR:
#   bash benchmarks/real_6370_sweep_gpu.sh DATA_DIR OUT DEADLINE_S [VARIANTS]
set -uo pipefail
DATA_DIR=$1 OUT=$2 DEADLINE=$3
VARIANTS=${4:-base,epochs_30,epochs_40,lr_0035,lr_0015,lr_0015_epochs_30,wd_0.05,wd_0.1,ema_0.995,ema_0.995_epochs_30,batch_64,bn_recal_40,shift_5,clip_1,nodropout}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 XLA_PYTHON_CLIENT_PREALLOCATE=false
# float32 matrix products as on the CPU, not TF32.
export JAX_DEFAULT_MATMUL_PRECISION=highest
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
python3 -c "import jax, haiku, optax; print('jax', jax.__version__, 'haiku', haiku.__version__, 'optax', optax.__version__, jax.devices())" 2>&1 | tee -a "$OUT/gpu.txt"
for v in ${VARIANTS//,/ }; do
  timeout "$DEADLINE" python3 benchmarks/real_6370_sweep.py --variants "$v" --seeds "${SEEDS:-0,1,2}" \
    --data_dir "$DATA_DIR" --out "$OUT/sweep.jsonl" > "$OUT/$v.log" 2>&1 &
done
wait
echo "done after ${SECONDS}s"
