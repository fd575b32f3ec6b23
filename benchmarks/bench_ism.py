"""In-silico mutagenesis speed against the plain forward pass, and peak memory.

Modes (each in a fresh subprocess so that its peak memory is its own):
  forward  `model.predict_fn` on a batch of one-hot sequences already on the device
           (sequences/s, median of repeats of >= --min_seconds of whole batches);
  ism      `attribution.ism` of --sequences random sequences (every single-base
           substitution: 3 L per sequence, plus one reference row each), from host
           one-hot to the [N, L, 4] effects on the host (mutants/s counts substitutions
           only; median of --ism_repeats runs after a compiling warm-up).
ISM has no per-mutant overhead when its mutants/s is close to the forward pass's
sequences/s at the same batch size (goal: within 1.2x).

  python benchmarks/bench_ism.py                        # 1,000 sequences at 85 bp
  python benchmarks/bench_ism.py --batches 256,1024 --sequences 1000
  python benchmarks/bench_ism.py --fast_cpu             # both arranged for XLA:CPU

The model is the seed's at its init (weights do not change the work). On CPU the script
re-executes itself with jemalloc preloaded, as the entry points do.
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
sys.path.insert(0, REPO)

from experiments import _runtime  # pylint: disable=g-import-not-at-top


def _peak_memory_gb(device) -> tuple:
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    return stats['peak_bytes_in_use'] / 1e9, 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 'host peak RSS'


def _model(input_length):
  import jax
  from enformer_small import config as config_lib
  from enformer_small import model as model_lib
  config = config_lib.seed_config(input_length)
  params, state = model_lib.init(config, jax.random.PRNGKey(0))
  return config, params, state


def run_forward(batch, input_length, repeats, min_seconds, fast_cpu):
  import jax
  import numpy as np
  from enformer_small import model as model_lib
  config, params, state = _model(input_length)
  predict = model_lib.predict_fn(config, fast_cpu=fast_cpu)
  rng = np.random.default_rng(0)
  x = jax.device_put(np.eye(4, dtype=np.float32)[rng.integers(0, 4, (batch, input_length))])
  started = time.perf_counter()
  jax.block_until_ready(predict(params, state, x))
  compile_s = time.perf_counter() - started
  rates = []
  for _ in range(repeats):
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < min_seconds:
      jax.block_until_ready(predict(params, state, x))
      done += batch
    rates.append(done / (time.perf_counter() - started))
  peak, kind = _peak_memory_gb(jax.devices()[0])
  return dict(rate=statistics.median(rates), rates=rates, compile_s=compile_s,
              peak_gb=peak, peak_kind=kind, device=jax.devices()[0].device_kind,
              fast_cpu=fast_cpu)


def run_ism(batch, input_length, sequences, repeats, fast_cpu):
  import jax
  import numpy as np
  from enformer_small import attribution
  from enformer_small import inference
  config, params, state = _model(input_length)
  predictor = inference.model_predictor(config, params, state, fast_cpu=fast_cpu,
                                        batch_size=batch)
  rng = np.random.default_rng(0)
  x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (sequences, input_length))]
  started = time.perf_counter()
  attribution.ism(predictor, x[:max(1, batch // (3 * input_length) + 1)])
  compile_s = time.perf_counter() - started
  mutants = 3 * input_length * sequences
  rates, seconds = [], []
  for _ in range(repeats):
    started = time.perf_counter()
    effects = attribution.ism(predictor, x)
    seconds.append(time.perf_counter() - started)
    rates.append(mutants / seconds[-1])
  assert effects.shape == (sequences, input_length, 4, 1)
  peak, kind = _peak_memory_gb(jax.devices()[0])
  return dict(rate=statistics.median(rates), rates=rates, seconds=seconds,
              compile_s=compile_s, mutants=mutants, peak_gb=peak, peak_kind=kind,
              device=jax.devices()[0].device_kind, fast_cpu=fast_cpu)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batches', default='256')
  parser.add_argument('--sequences', type=int, default=1000)
  parser.add_argument('--input_length', type=int, default=85)
  parser.add_argument('--repeats', type=int, default=3, help='forward repeats')
  parser.add_argument('--min_seconds', type=float, default=5.0)
  parser.add_argument('--ism_repeats', type=int, default=1)
  parser.add_argument('--fast_cpu', action='store_true',
                      help='both arranged for XLA:CPU (`enformer_small/fast_cpu.py`)')
  parser.add_argument('--json_out', default=None)
  parser.add_argument('--one', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.one:  # Child process: one (mode, batch), figures as JSON on stdout.
    mode, batch = args.one.split(':')
    result = (run_forward(int(batch), args.input_length, args.repeats, args.min_seconds,
                          args.fast_cpu)
              if mode == 'forward' else
              run_ism(int(batch), args.input_length, args.sequences, args.ism_repeats,
                      args.fast_cpu))
    print('RESULT ' + json.dumps(dict(result, mode=mode, batch=int(batch))))
    return

  _runtime.reexec_with_jemalloc()  # The children inherit LD_PRELOAD.
  print(f'{args.sequences:,} sequences at {args.input_length} bp '
        f'({3 * args.input_length * args.sequences:,} mutants)'
        f'{"; --fast_cpu" if args.fast_cpu else ""}', flush=True)
  print(f"{'mode':8s} {'batch':>6s} {'compile s':>9s} {'rows/s':>9s} {'peak GB':>8s}  "
        'device', flush=True)
  results = {}
  for batch in map(int, args.batches.split(',')):
    for mode in ('forward', 'ism'):
      cmd = [sys.executable, os.path.abspath(__file__), '--one', f'{mode}:{batch}',
             '--sequences', str(args.sequences), '--input_length', str(args.input_length),
             '--repeats', str(args.repeats), '--min_seconds', str(args.min_seconds),
             '--ism_repeats', str(args.ism_repeats)] + (['--fast_cpu'] if args.fast_cpu else [])
      proc = subprocess.run(cmd, capture_output=True, text=True)
      lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
      if proc.returncode or not lines:
        print(f'{mode:8s} {batch:6d} FAILED: {proc.stderr.strip()[-800:]}', flush=True)
        continue
      r = results[mode, batch] = json.loads(lines[-1][len('RESULT '):])
      unit = 'seq/s' if mode == 'forward' else 'mutants/s'
      print(f"{mode:8s} {batch:6d} {r['compile_s']:9.1f} {r['rate']:9.0f} "
            f"{r['peak_gb']:8.2f}  {r['device']} ({unit}; {r['peak_kind']}; runs "
            f"{', '.join(f'{x:.0f}' for x in r['rates'])})", flush=True)
    if ('forward', batch) in results and ('ism', batch) in results:
      ratio = results['forward', batch]['rate'] / results['ism', batch]['rate']
      print(f'batch {batch}: forward seq/s / ISM mutants/s = {ratio:.3f}', flush=True)
  if args.json_out:
    with open(args.json_out, 'w') as f:
      json.dump([dict(r) for r in results.values()], f, indent=1)


if __name__ == '__main__':
  main()
