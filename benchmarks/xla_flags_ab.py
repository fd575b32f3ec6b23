r"""XLA:CPU flag settings against the default, timed alternately on this machine.

Each round runs `benchmarks/bench_model.py` once per setting (default first), each in a
fresh process (jemalloc, as the entry points run), so that a slow spell of a shared
machine falls on every setting alike; prints every run and, per setting, the median
over the rounds and its ratio to the default's median. Nothing else may run meanwhile.

  python benchmarks/xla_flags_ab.py --work train:256 --rounds 3 \
      --settings='--xla_cpu_use_thunk_runtime=false;--xla_cpu_multi_thread_eigen=false'
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def bench(mode: str, batch: int, xla_flags: str, repeats: int, min_seconds: float,
          ) -> float:
  """seq/s of one bench_model.py run with XLA_FLAGS=xla_flags (empty: unset)."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  if xla_flags:
    env['XLA_FLAGS'] = xla_flags
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'r.json')
    subprocess.run(
        [sys.executable, str(REPO_ROOT / 'benchmarks' / 'bench_model.py'), '--modes', mode,
         '--batches', str(batch), '--repeats', str(repeats), '--min_seconds',
         str(min_seconds), '--json_out', out],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT, env=env)
    with open(out) as f:
      return json.load(f)[0]['seq_s']


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--work', default='train:256', help='mode:batch')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--min_seconds', type=float, default=4.0)
  parser.add_argument('--settings', required=True,
                      help='XLA_FLAGS values to compare with the default, separated by ";" '
                      '(write --settings=... : the values start with --)')
  args = parser.parse_args()
  mode, batch = args.work.split(':')
  settings = [''] + [s for s in args.settings.split(';') if s]
  runs = {s: [] for s in settings}
  for i in range(args.rounds):
    for s in settings:
      runs[s].append(bench(mode, int(batch), s, args.repeats, args.min_seconds))
      print(f'round {i + 1} {s or "(default)"}: {runs[s][-1]:.0f} seq/s, load '
            f'{os.getloadavg()[0]:.2f}', flush=True)
  base = statistics.median(runs[''])
  print(f'\n| XLA_FLAGS | {mode} {batch} seq/s, median of {args.rounds} | runs | ratio |'
        '\n| --- | ---: | --- | ---: |')
  for s in settings:
    med = statistics.median(runs[s])
    print(f'| {s or "(default)"} | {med:.0f} | {", ".join(f"{r:.0f}" for r in runs[s])} '
          f'| {med / base:.3f} |')


if __name__ == '__main__':
  main()
