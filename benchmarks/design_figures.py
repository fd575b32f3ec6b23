"""Designs judged by a model that did not design them: real_6370.flags seeds on real rows.

  python benchmarks/design_figures.py --designer runs/real_6370_s0,runs/real_6370_s1 \
      --judge runs/real_6370_s2 --out runs/figs/design

Runs `experiments.design` as a user would, for 100 random 80 bp starts in the DREAM
construct (one set, --seed), per method (greedy, evolve, gradient) at equal budgets of
candidate evaluations per design (240 x the edits allowed: what greedy needs to make
them one at a time; --per_edit for others, e.g. 720 for a beam of 3), at most 5, 10 and
20 edits, maximising; then at 10 edits with the ensemble penalty (--spread_penalty=1)
and minimising with and without it, with --penalty_methods (greedy). The designer
searches with one window a member (--eval_shifts=0, no strand averaging: the cheap
search) or, with --designer_windows, both strands ('strands', 2x the cost) or its
checkpoint's recorded windows ('recorded', 10x); those runs are named with the suffix
(min_10_strands). The judge predicts with its checkpoint's
recorded windows (10 a sequence) and never designs.

Prints, per run: the designer's predicted gain (mean over designs of design - start),
the judge's, the share the judge keeps, the judge's mean prediction against the 99th
(1st) percentile of the judge's own predictions of the 71,103 real test sequences (its
`test.tsv`: the test set's measured values are on another scale, MAUDE, so the
percentile is taken where the model's values live), the seconds and evaluations per
second.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ('greedy', 'evolve', 'gradient')
PER_EDIT = 240  # Single substitutions of the 80 bp region: one greedy round.
DESIGNER_WINDOWS = {
    'one': ['--eval_shifts=0', '--noreverse_complement_average'],
    'strands': ['--eval_shifts=0', '--reverse_complement_average'],
    'recorded': [],
}


def runs_to_make(args):
  """(name, methods, extra flags) of every design run: every method at 10, 5 and 20
  edits; the ensemble penalty and minimisation with --penalty_methods (the longest
  run, 20 edits, last)."""
  extra = tuple(args.penalty_methods.split(','))
  methods = tuple(args.methods.split(','))

  def at_most(edits):
    return (f'max_{edits}', methods, ['--objective=max', f'--max_edits={edits}',
                                      f'--budget={args.per_edit * edits}'])
  return [at_most(10), at_most(5),
          ('max_10_k1', extra, ['--objective=max', '--max_edits=10',
                                f'--budget={args.per_edit * 10}', '--spread_penalty=1']),
          ('min_10', extra, ['--objective=min', '--max_edits=10',
                             f'--budget={args.per_edit * 10}']),
          ('min_10_k1', extra, ['--objective=min', '--max_edits=10',
                                f'--budget={args.per_edit * 10}', '--spread_penalty=1']),
          at_most(20)]


def run_design(args, name, methods, extra):
  """Runs the command into --out/name; (output directory, stdout, seconds)."""
  out = os.path.join(args.out, name)
  cmd = [sys.executable, '-m', 'experiments.design', f'--checkpoint={args.designer}',
         f'--judge={args.judge}', f'--random_starts={args.starts}', f'--seed={args.seed}',
         f'--methods={",".join(methods)}', *DESIGNER_WINDOWS[args.designer_windows],
         f'--batch_size={args.batch_size}', f'--output_dir={out}', '--noprogress'] + extra
  started = time.perf_counter()
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  with open(os.path.join(args.out, f'{name}.log'), 'w') as f:
    f.write(' '.join(cmd) + '\n' + proc.stdout + proc.stderr)
  if proc.returncode:
    raise RuntimeError(f'{name} failed:\n{proc.stderr[-2000:]}')
  return out, proc.stdout, time.perf_counter() - started


def method_seconds(stdout):
  """{method: (seconds, evaluations/s)} from the command's lines (named as in its
  designs.tsv: beam3 for --methods=beam)."""
  found = {}
  for line in stdout.splitlines():
    head, _, rest = line.partition(': ')
    if ' designs in ' in rest:
      seconds = float(rest.split(' designs in ')[1].split(' s ')[0])
      rate = float(rest.split('(')[1].split(' evaluations/s')[0].replace(',', ''))
      found[head] = (seconds, rate)
  return found


def summarise(table_path, judge_test):
  """Per method: the designer's and the judge's gains, the share the judge keeps, and
  where the judged designs fall among the judge's predictions `judge_test` (sorted) of
  the test sequences."""
  with open(table_path) as f:
    rows = list(csv.DictReader(f, delimiter='\t'))
  p99, p1 = np.percentile(judge_test, 99), np.percentile(judge_test, 1)
  out = {}
  for method in dict.fromkeys(r['method'] for r in rows):
    mine = [r for r in rows if r['method'] == method]

    def column(name):
      return np.array([float(r[name]) for r in mine])
    designer_gain = column('mean') - column('start_mean')
    judge_gain = column('judge_mean') - column('judge_start_mean')
    judged = column('judge_mean')
    out[method] = dict(
        designer_gain=float(designer_gain.mean()), judge_gain=float(judge_gain.mean()),
        share_kept=float(judge_gain.mean() / designer_gain.mean()),
        designer_mean=float(column('mean').mean()),
        judge_mean=float(judged.mean()),
        judge_start_mean=float(column('judge_start_mean').mean()),
        edits=float(column('edits').mean()),
        judge_median_percentile=float(np.median(
            100 * np.searchsorted(judge_test, judged) / judge_test.size)),
        share_above_p99=float(np.mean(judged > p99)),
        share_below_p1=float(np.mean(judged < p1)))
  return out


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--designer', required=True)
  parser.add_argument('--judge', required=True)
  parser.add_argument('--starts', type=int, default=100)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--batch_size', type=int, default=1000)
  parser.add_argument('--out', default=os.path.join(REPO, 'runs', 'figs', 'design'))
  parser.add_argument('--only', default='', help='comma-separated run names')
  parser.add_argument('--methods', default=','.join(METHODS),
                      help='methods of the runs at 5, 10 and 20 edits')
  parser.add_argument('--per_edit', type=int, default=PER_EDIT,
                      help='evaluations a design per edit allowed (beam of width w '
                      'needs w x 240 to make its edits)')
  parser.add_argument('--penalty_methods', default='greedy',
                      help='methods of the k=1 and minimising runs')
  parser.add_argument('--designer_windows', default='one', choices=sorted(DESIGNER_WINDOWS),
                      help="the designer's windows a member: one (shift 0, one strand), "
                      "strands (both strands), recorded (its checkpoint's)")
  parser.add_argument('--report', action='store_true',
                      help='run nothing: the runs of --out/results.json as a Markdown '
                      'table, summarised again from their designs.tsv')
  return parser.parse_args()


def make_runs(args, values, results, saved):
  """Runs the selected designs, adding each to `results` and writing them to `saved`."""
  p99, p1 = np.percentile(values, 99), np.percentile(values, 1)
  suffix = '' if args.designer_windows == 'one' else f'_{args.designer_windows}'
  for name, methods, extra in runs_to_make(args):
    if args.only and name not in args.only.split(','):
      continue
    name += suffix
    # A run already made keeps its tables: more methods for it go into a directory of
    # their own (max_20_evolve_gradient) and join its entry in results.json.
    directory = name if name not in results else f'{name}_{"_".join(methods)}'
    out, stdout, seconds = run_design(args, directory, methods, extra)
    found = summarise(os.path.join(out, 'designs.tsv'), values)
    timing = method_seconds(stdout)
    for method, figures in found.items():
      figures['seconds'], figures['evaluations_per_s'] = timing.get(method, (None, None))
      figures['directory'] = directory
    results[name] = {**results.get(name, {}), **found}
    print(f'{name} ({seconds:.0f} s):\n' + json.dumps(found, indent=1), flush=True)
    # Written after every run: the whole set takes the better part of an hour.
    with open(saved, 'w') as f:
      json.dump(dict(p99=p99, p1=p1, runs=results), f, indent=1)


def report(args, values, results) -> str:
  """A Markdown row per run and method; the shares beyond the percentile are above the
  99th for maximising runs, below the 1st for minimising ones."""
  lines = ["| run | method | designer's gain | judge's gain | judge keeps | judge's mean | "
           "judge's median percentile | beyond the percentile | mean edits | seconds | "
           "evaluations/s |", '|---|---|' + '---:|' * 9]
  summaries = {}  # A table summarises all its methods at once.
  for name, methods in results.items():
    for method, saved in methods.items():
      table = os.path.join(args.out, saved.get('directory', name), 'designs.tsv')
      if table not in summaries:
        summaries[table] = summarise(table, values)
      f = summaries[table][method]
      beyond = f['share_below_p1'] if name.startswith('min') else f['share_above_p99']
      timing = (f"{saved['seconds']:.1f} | {saved['evaluations_per_s']:,.0f}"
                if saved.get('seconds') else '|')
      lines.append(
          f"| {name} | {method} | {f['designer_gain']:.3f} | {f['judge_gain']:.3f} | "
          f"{100 * f['share_kept']:.1f}% | {f['judge_mean']:.3f} | "
          f"{f['judge_median_percentile']:.2f} | {100 * beyond:.0f}% | {f['edits']:.2f} | "
          f'{timing} |')
  return '\n'.join(lines)


def main():
  args = parse_args()
  os.makedirs(args.out, exist_ok=True)
  judge_test = os.path.join(args.judge.split(',')[0], 'test.tsv')
  values = np.sort([float(line.split('\t')[1]) for line in open(judge_test)])
  print(f"judge's predictions of the 71,103 test sequences: 99th percentile "
        f'{np.percentile(values, 99):.3f}, 1st {np.percentile(values, 1):.3f}', flush=True)
  # Runs of earlier invocations into the same --out are kept (e.g. --only max_20).
  saved = os.path.join(args.out, 'results.json')
  results = json.load(open(saved))['runs'] if os.path.exists(saved) else {}
  if args.report:
    print(report(args, values, results))
  else:
    make_runs(args, values, results, saved)


if __name__ == '__main__':
  main()
