"""What each part of the model costs in the train step: the step timed with parts taken out.

A measurement, not an option: with a part taken out the model is another model (fewer
FLOPs, other values), so these figures only bound what making that part faster could
give. Per-kernel profiles (`profile_step.py`) cannot give this on a CPU: XLA:CPU runs
convolutions on Eigen's pool, so their time shows up inside other kernels.

Parts (comma-separated, each variant a '+'-joined set):
  dropout         every dropout is the identity (masks, their bits and their gradients);
  batch_norm      every BatchNorm is the identity (statistics, normalisation, averages);
  gelu            GELU is ReLU;
  layer_norm      every LayerNorm is the identity;
  attention_core  each attention block is embedding_layer(v) (+ 0 x the sums of the q
                  and k projections, so that their matmuls stay whole): no logits,
                  relative positions, softmax or weighted sum.

Variants alternate in fresh processes (jemalloc), each a median of --repeats timings of
>= --min_seconds of whole steps (`bench_model.run_one`), --rounds rounds; printed: median
seq/s, ms per step and its difference from the whole model, and XLA's MFLOP a sequence
(what is left of the work).

  python benchmarks/cost_of_parts.py --batch 256 --fast_cpu \
      --variants dropout+batch_norm+gelu+layer_norm,dropout+batch_norm+gelu+layer_norm+attention_core
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from experiments import _runtime  # pylint: disable=g-import-not-at-top

PARTS = ('dropout', 'batch_norm', 'gelu', 'layer_norm', 'attention_core')


def take_out(parts) -> None:
  """Replaces the given parts of the model by the identity (see the module docstring)."""
  import haiku as hk
  import jax
  from enformer_small import attention_module
  from enformer_small import enformer
  if 'dropout' in parts:
    enformer.dropout = attention_module.dropout = lambda key, rate, x: x
  if 'batch_norm' in parts:
    hk.BatchNorm.__call__ = lambda self, inputs, is_training, *a, **k: inputs
  if 'gelu' in parts:
    enformer.gelu = jax.nn.relu
  if 'layer_norm' in parts:
    hk.LayerNorm.__call__ = lambda self, inputs, *a, **k: inputs
  if 'attention_core' in parts:
    def projections_only(self, inputs, is_training=False):
      q, k, v = self._q_layer(inputs), self._k_layer(inputs), self._v_layer(inputs)
      # Every column used: a slice of q or k would let XLA shrink their matmuls.
      unused = q.sum(-1, keepdims=True) + k.sum(-1, keepdims=True)
      return self._embedding_layer(v + 0.0 * unused)
    attention_module.MultiheadAttention.__call__ = projections_only


def _child(args) -> None:
  import bench_model
  parts = [p for p in args.one.split('+') if p and p != 'none']
  take_out(parts)
  result = bench_model.run_one('train', args.batch, 'float32', args.repeats,
                               args.min_seconds, args.input_length, None, args.fast_cpu)
  print('RESULT ' + json.dumps(result))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--variants', default='+'.join(PARTS[:4]) + ',' + '+'.join(PARTS),
                      help='comma-separated; each a +-joined set of parts to take out')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--min_seconds', type=float, default=4.0)
  parser.add_argument('--input_length', type=int, default=85)
  parser.add_argument('--fast_cpu', action='store_true',
                      help='the step arranged for XLA:CPU (`enformer_small/fast_cpu.py`)')
  parser.add_argument('--one', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one:
    _child(args)
    return
  variants = ['none'] + [v for v in args.variants.split(',') if v != 'none']
  unknown = {p for v in variants[1:] for p in v.split('+')} - set(PARTS)
  if unknown:
    parser.error(f'unknown part(s) {sorted(unknown)}; parts: {", ".join(PARTS)}')
  _runtime.reexec_with_jemalloc()  # The children inherit LD_PRELOAD.
  rates, mflops = {v: [] for v in variants}, {}
  for round_ in range(args.rounds):
    for variant in variants:
      cmd = [sys.executable, os.path.abspath(__file__), '--one', variant,
             '--batch', str(args.batch), '--repeats', str(args.repeats),
             '--min_seconds', str(args.min_seconds), '--input_length',
             str(args.input_length)] + (['--fast_cpu'] if args.fast_cpu else [])
      proc = subprocess.run(cmd, capture_output=True, text=True)
      lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
      if proc.returncode or not lines:
        sys.exit(f'{variant} failed: {proc.stderr.strip()[-800:]}')
      result = json.loads(lines[-1][len('RESULT '):])
      rates[variant].append(result['seq_s'])
      mflops[variant] = result['flops_per_seq'] / 1e6
      print(f'round {round_ + 1} {variant}: {rates[variant][-1]:.0f} seq/s', flush=True)
  whole_ms = args.batch / statistics.median(rates['none']) * 1e3
  print(f'\nbatch {args.batch}{", --fast_cpu" if args.fast_cpu else ""}; taken out | '
        'seq/s (rounds) | ms a step | ms less than the whole model | MFLOP a sequence')
  for variant in variants:
    rate = statistics.median(rates[variant])
    ms = args.batch / rate * 1e3
    print(f'{variant} | {rate:.0f} ({", ".join(f"{r:.0f}" for r in rates[variant])}) | '
          f'{ms:.1f} | {whole_ms - ms:.1f} | {mflops[variant]:.1f}')


if __name__ == '__main__':
  main()
