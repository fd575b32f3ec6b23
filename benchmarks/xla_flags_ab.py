r"""XLA:CPU flag settings against the default, timed alternately on this machine.

Each round runs `benchmarks/bench_model.py` once per setting (default first), each in a
fresh process (jemalloc, as the entry points run), so that a slow spell of a shared
machine falls on every setting alike; prints every run and, per setting, the median
over the rounds and its ratio to the default's median. Nothing else may run meanwhile.

  python benchmarks/xla_flags_ab.py --work train:256 --rounds 3 \
      --settings='--xla_cpu_use_thunk_runtime=false;--xla_cpu_multi_thread_eigen=false'
"""

import argparse
import os
import statistics

import side_by_side  # benchmarks/, this script's own folder.


def bench(mode: str, batch: int, xla_flags: str, repeats: int, min_seconds: float,
          ) -> float:
  """seq/s of one bench_model.py run with XLA_FLAGS=xla_flags (empty: unset)."""
  extra_env = {'XLA_FLAGS': xla_flags} if xla_flags else {}
  return side_by_side.run_project(mode, batch, repeats, min_seconds, [],
                                  extra_env)['seq_s']


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
  os.environ.pop('XLA_FLAGS', None)  # The default is XLA's own.
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
