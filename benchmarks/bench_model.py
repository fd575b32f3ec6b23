"""Throughput, FLOPs and memory of the seed model, and what feeds it.

Modes (each (mode, batch, dtype) runs in a fresh subprocess so that its peak memory is
its own):
  forward  eval-mode forward pass on a batch already on the device;
  train    the pmapped train step on a batch already on the device (the step alone);
  feed     the input path alone: host batches -> `training.prefetch_to_device`, no step;
  fed      the train loop: host batches -> prefetch_to_device -> train step, fetching
           each step's predictions as `experiments/train.py` does.
Host batches come from the tf.data pipeline (`enformer_small.dataset`, 85 bp windows
at shifts -1/0/+1 over synthetic rows, uint8 one-hot as train.py ships them) when
TensorFlow is installed; without it (the GPU image) from a ring of pre-built batches,
which measures the transfer and not the pipeline (time that with bench_pipeline.py).
If `fed` is well below `train` while `feed` is not far above it, the input path is
the bottleneck.

Printed per configuration: compile time, sequences/s (median of repeats), XLA's FLOPs
per sequence, achieved FLOP/s and its share of the device's peak (dense peaks of known
GPUs for float32-as-TF32, which XLA uses for float32 matmuls and convolutions at JAX's
default precision, and for bfloat16; --peak_gflops for others), seconds per seed epoch
(20,187,774 sequences), and peak memory (host RSS on CPU, device peak on GPU).

  python benchmarks/bench_model.py                          # CPU, float32
  python benchmarks/bench_model.py --modes train,feed,fed --dtypes float32,bfloat16 \
      --batches 10000                                       # issue 5, on a GPU

On CPU the script re-executes itself with jemalloc preloaded, as the entry points do.
"""

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments import _runtime  # pylint: disable=g-import-not-at-top

# The seed's epoch: (6,739,258 rows - 10,000 held out) x 3 shifts.
SEED_EPOCH_SEQUENCES = (6_739_258 - 10_000) * 3
# Dense (no sparsity) tensor-core peaks in TFLOP/s from NVIDIA's datasheets, by a
# substring of jax's device_kind; float32 runs as TF32 at JAX's default precision.
GPU_PEAK_TFLOPS = (
    ('H100 PCIe', {'float32': 378.0, 'bfloat16': 756.0}),
    ('H100', {'float32': 494.7, 'bfloat16': 989.4}),   # SXM
    ('H200', {'float32': 494.7, 'bfloat16': 989.4}),
    ('A100', {'float32': 156.0, 'bfloat16': 312.0}),
)
# Rows of synthetic data the tf.data feed cuts its batches from.
FEED_ROWS = 200_000


def _flops(compiled):
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', float('nan'))) if cost else float('nan')


def _peak_memory_bytes(device):
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'], 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'host peak RSS'


def _random_host_batch(rng, batch, n, input_length, input_dtype):
  """Random one-hot inputs and targets, as host arrays [n, batch // n, ...]."""
  import numpy as np
  return {'inputs': np.eye(4, dtype=input_dtype)[
              rng.integers(0, 4, (n, batch // n, input_length))],
          'targets': rng.uniform(0, 17, (n, batch // n, 1)).astype(np.float32)}


def _host_batches(batch, n, input_length, input_dtype):
  """(endless iterator of host batches [n, batch // n, ...], description)."""
  import numpy as np
  try:
    from enformer_small import dataset
  except ImportError:  # No TensorFlow: pre-built batches, cycled.
    rng = np.random.default_rng(0)
    ring = [_random_host_batch(rng, batch, n, input_length, input_dtype)
            for _ in range(4)]
    return itertools.cycle(ring), 'ring of 4 host batches (no TensorFlow)'
  from enformer_small import dream_data
  from enformer_small import plasmid
  from enformer_small import synthetic
  rows = synthetic.generate(synthetic.SyntheticConfig(num_rows=FEED_ROWS, seed=0))
  data = dream_data.DreamData(codes=rows.codes(), expression=rows.expression,
                              lengths=rows.lengths, source='synthetic')
  crop_start = plasmid.default_window_start(input_length)
  shifts = tuple(s for s in (-1, 0, 1) if 0 <= crop_start + s and
                 crop_start + s + input_length <= dream_data.SEQUENCE_LENGTH)
  config = dataset.PipelineConfig(crop_start=crop_start, crop_length=input_length,
                                  shifts=shifts, one_hot_dtype=np.dtype(input_dtype).name)
  batches = dataset.train_batches_repeated(
      data, np.arange(FEED_ROWS), global_batch_size=batch, local_device_count=n,
      config=config, seed=0)
  return batches, f'tf.data pipeline, {FEED_ROWS:,} synthetic rows, shifts {shifts}'


def run_one(mode, batch, dtype, repeats, min_seconds, input_length, input_dtype,
            fast_cpu=False):
  """Measures one configuration in this process; returns a dict of figures."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from enformer_small import config as config_lib
  from enformer_small import training
  from enformer_small import train_loop
  from enformer_small import train_plan

  model_config = config_lib.seed_config(input_length)
  compute_dtype = jnp.dtype(dtype)
  input_dtype = np.dtype(input_dtype or train_plan.INPUT_DTYPE)
  optimizer = training.make_optimizer()
  train_state = training.replicate(
      training.init_train_state(model_config, optimizer, jax.random.PRNGKey(0)))
  n = jax.local_device_count()
  device_batch = training.shard_batch(_random_host_batch(
      np.random.default_rng(0), batch, n, input_length, input_dtype))
  feed = None
  if mode in ('feed', 'fed'):
    host_batches, feed = _host_batches(batch, n, input_length, input_dtype)
    device_batches = training.prefetch_to_device(host_batches,
                                                train_loop.DEVICE_PREFETCH)

  if mode == 'forward':
    step = training.make_eval_step(model_config, compute_dtype=compute_dtype,
                                   fast_cpu=fast_cpu)
    args = (train_state.params, train_state.state, device_batch['inputs'])
  else:
    step = training.make_train_step(model_config, optimizer, compute_dtype=compute_dtype,
                                    return_predictions=mode == 'fed',
                                    fast_cpu=fast_cpu)
    args = (train_state, device_batch)

  compile_s, flops_per_seq = 0.0, 0.0
  if mode != 'feed':
    t0 = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    flops_per_seq = _flops(compiled) / (batch // n)
  pending = None

  def call():
    nonlocal train_state, pending
    if mode == 'forward':
      return step(*args)
    if mode == 'train':
      train_state, metrics = step(train_state, device_batch)
      return metrics
    if mode == 'feed':
      return next(device_batches)
    train_state, metrics = step(train_state, next(device_batches))
    if pending is not None:  # The previous step's predictions, as train.py fetches them.
      jax.device_get(pending)
    pending = metrics
    return None

  def sync(out):
    jax.block_until_ready(pending if mode == 'fed' else out)

  rates = _rates(call, sync, mode, batch, repeats, min_seconds)
  seq_s = statistics.median(rates)
  peak, peak_kind = _peak_memory_bytes(jax.local_devices()[0])
  return dict(mode=mode, batch=batch, dtype=dtype, input_dtype=input_dtype.name,
              fast_cpu=fast_cpu,
              device=str(jax.devices()[0].device_kind), devices=n, feed=feed,
              compile_s=compile_s, seq_s=seq_s, seq_s_all=rates,
              flops_per_seq=flops_per_seq, flop_s=seq_s * flops_per_seq,
              peak_gb=peak / 2**30, peak_kind=peak_kind)


def _rates(call, sync, mode, batch, repeats, min_seconds):
  """seq/s of `repeats` timings of at least `min_seconds` of whole calls, after one
  warm-up call."""
  sync(call())
  rates = []
  for _ in range(repeats):
    steps, t0, out = 0, time.perf_counter(), None
    while True:
      out = call()
      steps += 1
      # Like the train loop, `fed` only waits for a step when fetching its results.
      if mode != 'fed':
        sync(out)
      if time.perf_counter() - t0 >= min_seconds:
        break
    sync(out)
    rates.append(steps * batch / (time.perf_counter() - t0))
  return rates


def peak_gflops(device_kind, dtype, override):
  if override:
    return override
  for name, peaks in GPU_PEAK_TFLOPS:
    if name in device_kind:
      return peaks.get(dtype, 0) * 1e3 or None
  return None


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--modes', default='forward,train')
  parser.add_argument('--batches', default='256,1024,10000')
  parser.add_argument('--dtypes', default='float32')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--min_seconds', type=float, default=3.0,
                      help='each repeat runs whole steps for at least this long')
  parser.add_argument('--input_length', type=int, default=85)
  parser.add_argument('--input_dtype', default='',
                      help='dtype of the one-hot inputs sent to the device (default: '
                      "experiments/train.py's INPUT_DTYPE)")
  parser.add_argument('--peak_gflops', type=float, default=None,
                      help='the device peak, to print the share reached (default: '
                      'known GPUs only)')
  parser.add_argument('--fast_cpu', action='store_true',
                      help='steps built with fast_cpu=True (`enformer_small/fast_cpu.py`)')
  parser.add_argument('--json_out', default=None)
  parser.add_argument('--one', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.one:  # Child process: one configuration, figures as JSON on stdout.
    mode, batch, dtype = args.one.split(':')
    result = run_one(mode, int(batch), dtype, args.repeats, args.min_seconds,
                     args.input_length, args.input_dtype, args.fast_cpu)
    print('RESULT ' + json.dumps(result))
    return

  _runtime.reexec_with_jemalloc()  # The children inherit LD_PRELOAD.
  results = []
  header = (f"{'mode':8s} {'batch':>6s} {'dtype':9s} {'compile s':>9s} {'seq/s':>9s} "
            f"{'MFLOP/seq':>9s} {'GFLOP/s':>8s} {'share':>6s} {'epoch s':>8s} "
            f"{'peak GB':>8s}  device")
  print(header, flush=True)
  for dtype in args.dtypes.split(','):
    for mode in args.modes.split(','):
      for batch in map(int, args.batches.split(',')):
        cmd = [sys.executable, os.path.abspath(__file__), '--one', f'{mode}:{batch}:{dtype}',
               '--repeats', str(args.repeats), '--min_seconds', str(args.min_seconds),
               '--input_length', str(args.input_length), '--input_dtype', args.input_dtype,
               *(['--fast_cpu'] if args.fast_cpu else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
        if proc.returncode or not lines:
          print(f'{mode:8s} {batch:6d} {dtype:9s} FAILED: {proc.stderr.strip()[-500:]}')
          continue
        r = json.loads(lines[-1][len('RESULT '):])
        peak = peak_gflops(r['device'], dtype, args.peak_gflops)
        r['share'] = r['flop_s'] / 1e9 / peak if peak and r['flop_s'] else None
        r['epoch_s'] = SEED_EPOCH_SEQUENCES / r['seq_s'] if mode != 'forward' else None
        results.append(r)
        share = f"{100 * r['share']:5.1f}%" if r['share'] else '     -'
        epoch = f"{r['epoch_s']:8.0f}" if r['epoch_s'] else '       -'
        print(f"{mode:8s} {batch:6d} {dtype:9s} {r['compile_s']:9.1f} {r['seq_s']:9.0f} "
              f"{r['flops_per_seq'] / 1e6:9.1f} {r['flop_s'] / 1e9:8.1f} {share} {epoch} "
              f"{r['peak_gb']:8.2f}  {r['device']} x{r['devices']} ({r['peak_kind']}"
              f"{'; feed: ' + r['feed'] if r['feed'] else ''})", flush=True)
  sent = ', '.join(sorted({r['input_dtype'] for r in results})) or '-'
  print(f'inputs sent as {sent} one-hot; epoch s: {SEED_EPOCH_SEQUENCES:,} '
        'sequences at that rate (train, feed, fed)')
  if args.json_out:
    with open(args.json_out, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
