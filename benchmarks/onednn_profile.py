r"""oneDNN primitive time per step, by kind, from a run with ONEDNN_VERBOSE=profile_exec.

TensorFlow's CPU build runs convolutions, matmuls, pooling, softmax and layout reorders
as oneDNN primitives, and everything else (BatchNorm, GELU, dropout, the optimizer) in
Eigen. This sums the primitives' execution times of the seed's train step by kind and
direction, so that the oneDNN share of TF's step (and the rest, outside oneDNN) can be
set beside the project's XLA profile (`profile_step.py`).

  ONEDNN_VERBOSE=profile_exec .../seed_tf_venv/bin/python bench_seed.py --mode train \
      --batch 256 --repeats 1 --min_seconds 5 > /tmp/seed.log
  python benchmarks/onednn_profile.py /tmp/seed.log --skip 2

Steps are counted by a marker primitive that runs once per step (by default the stem's
forward convolution, 4 -> 48 channels, width 5); the first --skip steps (tracing,
first-call reorders) are left out.
"""

import argparse
import collections
import json


def parse(lines, marker, skip):
  """([{(kind, direction): ms}] per step, result dict or None)."""
  steps, result = [], None
  for line in lines:
    if line.startswith('RESULT '):
      result = json.loads(line[len('RESULT '):])
      continue
    fields = line.rstrip('\n').split(',')
    if len(fields) < 8 or fields[2] != 'primitive' or fields[3] != 'exec':
      continue
    kind, direction = fields[5], fields[7] or 'undef'
    if kind == 'convolution' and marker in line and direction == 'forward_training':
      steps.append(collections.Counter())
    if steps:
      steps[-1][(kind, direction)] += float(fields[-1])
  # The last step may be cut short by the end of the run; drop it with the warm-up.
  return steps[skip:-1], result


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('log')
  parser.add_argument('--skip', type=int, default=2)
  parser.add_argument('--marker', default='ic4oc48_ih1oh1kh1sh1dh0ph0_iw85ow85kw5')
  args = parser.parse_args()
  with open(args.log) as f:
    steps, result = parse(f, args.marker, args.skip)
  if not steps:
    raise SystemExit('no complete steps found')
  total = collections.Counter()
  for s in steps:
    total.update(s)
  per_step = {k: v / len(steps) for k, v in total.items()}
  onednn_ms = sum(per_step.values())
  print(f'{len(steps)} steps; oneDNN primitives {onednn_ms:.2f} ms per step')
  if result:
    step_ms = 1e3 * result['batch'] / result['seq_s']
    print(f"TF step {step_ms:.2f} ms wall ({result['seq_s']:.0f} seq/s at batch "
          f"{result['batch']}); outside oneDNN {step_ms - onednn_ms:.2f} ms "
          f'({100 * (1 - onednn_ms / step_ms):.0f}%)')
  by_kind = collections.Counter()
  for (kind, _), ms in per_step.items():
    by_kind[kind] += ms
  print('by kind: ' + '; '.join(f'{k} {v:.2f} ms' for k, v in by_kind.most_common()))
  print('by kind and direction:')
  for (kind, direction), ms in sorted(per_step.items(), key=lambda kv: -kv[1]):
    print(f'  {kind:14s} {direction:18s} {ms:8.2f} ms')


if __name__ == '__main__':
  main()
