"""Throughput, FLOPs and memory of the seed model's forward pass and train step.

Prints, per batch size: compile time, sequences/s (median of repeats), XLA's FLOPs per
sequence, achieved FLOP/s, and peak memory (host RSS on CPU, device peak on GPU). Each
(batch, dtype) runs in a fresh subprocess so that its peak memory is its own.

  python benchmarks/bench_model.py                          # CPU, float32
  python benchmarks/bench_model.py --dtypes float32,bfloat16 --batches 1024,10000

Set LD_PRELOAD to jemalloc on CPU (see BUILD_NOTES.md); the script re-executes
itself with it when it is installed.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JEMALLOC = '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2'


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


def run_one(mode, batch, dtype, repeats, min_seconds, input_length):
  """Measures one configuration in this process; returns a dict of figures."""
  sys.path.insert(0, REPO)
  import jax
  import jax.numpy as jnp
  import numpy as np
  from enformer_small import config as config_lib
  from enformer_small import training

  model_config = config_lib.seed_config(input_length)
  compute_dtype = jnp.dtype(dtype)
  optimizer = training.make_optimizer()
  train_state = training.replicate(
      training.init_train_state(model_config, optimizer, jax.random.PRNGKey(0)))
  n = jax.local_device_count()
  rng = np.random.default_rng(0)
  codes = rng.integers(0, 4, (n, batch // n, input_length))
  batch_np = {
      'inputs': np.eye(4, dtype=np.float32)[codes].astype(compute_dtype),
      'targets': rng.uniform(0, 17, (n, batch // n, 1)).astype(np.float32),
  }
  device_batch = training.shard_batch(batch_np)

  if mode == 'train':
    step = training.make_train_step(model_config, optimizer, compute_dtype=compute_dtype)
    args = (train_state, device_batch)
  else:
    step = training.make_eval_step(model_config, compute_dtype=compute_dtype)
    args = (train_state.params, train_state.state, device_batch['inputs'])

  t0 = time.perf_counter()
  compiled = step.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  flops_per_seq = _flops(compiled) / (batch // n)

  def call():
    nonlocal train_state
    if mode == 'train':
      train_state, metrics = step(train_state, device_batch)
      return metrics
    return step(*args)

  jax.block_until_ready(call())  # warm-up
  rates = []
  for _ in range(repeats):
    steps, t0 = 0, time.perf_counter()
    while True:
      out = call()
      steps += 1
      jax.block_until_ready(out)
      elapsed = time.perf_counter() - t0
      if elapsed >= min_seconds:
        break
    rates.append(steps * batch / elapsed)
  seq_s = statistics.median(rates)
  peak, peak_kind = _peak_memory_bytes(jax.local_devices()[0])
  return dict(mode=mode, batch=batch, dtype=dtype, device=str(jax.devices()[0].device_kind),
              devices=n, compile_s=compile_s, seq_s=seq_s, seq_s_all=rates,
              flops_per_seq=flops_per_seq, flop_s=seq_s * flops_per_seq,
              peak_gb=peak / 2**30, peak_kind=peak_kind)


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
  parser.add_argument('--peak_gflops', type=float, default=None,
                      help='the device peak, to print the share reached')
  parser.add_argument('--json_out', default=None)
  parser.add_argument('--one', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.one:  # Child process: one configuration, figures as JSON on stdout.
    mode, batch, dtype = args.one.split(':')
    result = run_one(mode, int(batch), dtype, args.repeats, args.min_seconds,
                     args.input_length)
    print('RESULT ' + json.dumps(result))
    return

  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  if os.path.exists(JEMALLOC) and 'jemalloc' not in env.get('LD_PRELOAD', ''):
    env['LD_PRELOAD'] = ':'.join(p for p in (JEMALLOC, env.get('LD_PRELOAD')) if p)
  results = []
  header = (f"{'mode':8s} {'batch':>6s} {'dtype':9s} {'compile s':>9s} {'seq/s':>9s} "
            f"{'MFLOP/seq':>9s} {'GFLOP/s':>8s} {'share':>6s} {'peak GB':>8s}  device")
  print(header, flush=True)
  for dtype in args.dtypes.split(','):
    for mode in args.modes.split(','):
      for batch in map(int, args.batches.split(',')):
        cmd = [sys.executable, os.path.abspath(__file__), '--one', f'{mode}:{batch}:{dtype}',
               '--repeats', str(args.repeats), '--min_seconds', str(args.min_seconds),
               '--input_length', str(args.input_length)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
        if proc.returncode or not lines:
          print(f'{mode:8s} {batch:6d} {dtype:9s} FAILED: {proc.stderr.strip()[-500:]}')
          continue
        r = json.loads(lines[-1][len('RESULT '):])
        results.append(r)
        share = (f"{100 * r['flop_s'] / 1e9 / args.peak_gflops:5.1f}%"
                 if args.peak_gflops else '     -')
        print(f"{mode:8s} {batch:6d} {dtype:9s} {r['compile_s']:9.1f} {r['seq_s']:9.0f} "
              f"{r['flops_per_seq'] / 1e6:9.1f} {r['flop_s'] / 1e9:8.1f} {share} "
              f"{r['peak_gb']:8.2f}  {r['device']} x{r['devices']} ({r['peak_kind']})",
              flush=True)
  if args.json_out:
    with open(args.json_out, 'w') as f:
      json.dump(results, f, indent=1)


if __name__ == '__main__':
  main()
