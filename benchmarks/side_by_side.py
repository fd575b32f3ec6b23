r"""The seed's own TF/Sonnet code and this project, timed side by side on this machine.

Alternates the two (seed, project, seed, project, ...), each run in a fresh process
with jemalloc, each a median of --repeats timings of at least --min_seconds of whole
steps, and prints the median over --rounds runs of each side, their ratio, and each
side's peak RSS. The seed side is `../shared/reference/seed_tf/bench.sh` (its own venv,
never imported here); the project side is `benchmarks/bench_model.py`.

  python benchmarks/side_by_side.py --work train:256,train:1024,forward:1024 --rounds 3
  python benchmarks/side_by_side.py --work train:10000 --rounds 3 --min_seconds 30

Extra flags for the project side go after --project_args (e.g. --dtypes bfloat16);
extra environment for it (XLA_FLAGS=...) through --project_env. Nothing else may run
meanwhile: the load average at each run's end is printed beside it.
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
SEED_BENCH = REPO_ROOT.parent / 'shared' / 'reference' / 'seed_tf' / 'bench.sh'


def _result_line(stdout: str) -> dict:
  lines = [l for l in stdout.splitlines() if l.startswith('RESULT ')]
  if not lines:
    raise RuntimeError(f'no RESULT line in:\n{stdout[-2000:]}')
  return json.loads(lines[-1][len('RESULT '):])


SIGPIPE_EXIT = 141


def run_seed(mode: str, batch: int, repeats: int, min_seconds: float,
             attempts: int = 3) -> dict:
  command = ['bash', str(SEED_BENCH), '--mode', mode, '--batch', str(batch), '--repeats',
             str(repeats), '--min_seconds', str(min_seconds)]
  for _ in range(attempts):
    proc = subprocess.run(command, capture_output=True, text=True)
    # bench.sh runs under pipefail and finds jemalloc with `ldconfig -p | awk '...; exit'`:
    # when awk exits first, ldconfig's SIGPIPE fails the script before it times anything.
    if proc.returncode != SIGPIPE_EXIT:
      break
  proc.check_returncode()
  r = _result_line(proc.stdout)
  return dict(seq_s=r['seq_s'], peak_rss_gb=r['peak_rss_gb'], load1=r['load1'])


def run_project(mode: str, batch: int, repeats: int, min_seconds: float,
                extra_args: list, extra_env: dict) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'r.json')
    subprocess.run(
        [sys.executable, str(REPO_ROOT / 'benchmarks' / 'bench_model.py'), '--modes', mode,
         '--batches', str(batch), '--repeats', str(repeats), '--min_seconds',
         str(min_seconds), '--json_out', out, *extra_args],
        capture_output=True, text=True, check=True, cwd=REPO_ROOT,
        env={**os.environ, **extra_env})
    with open(out) as f:
      results = json.load(f)
  if not results:
    raise RuntimeError(f'bench_model.py failed for {mode}:{batch}')
  r = results[0]
  return dict(seq_s=r['seq_s'], peak_rss_gb=r['peak_gb'], load1=os.getloadavg()[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--work', default='train:256,train:1024,forward:1024',
                      help='comma-separated mode:batch (mode: train or forward)')
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--min_seconds', type=float, default=10.0)
  parser.add_argument('--project_env', default='',
                      help='NAME=VALUE;NAME=VALUE for the project side only')
  parser.add_argument('--project_args', nargs=argparse.REMAINDER, default=[])
  parser.add_argument('--json_out', default=None)
  args = parser.parse_args()
  extra_env = dict(kv.split('=', 1) for kv in args.project_env.split(';') if kv)

  rows = []
  for item in args.work.split(','):
    mode, batch = item.split(':')
    runs = {'seed': [], 'project': []}
    for i in range(args.rounds):
      for side in ('seed', 'project'):
        r = (run_seed(mode, int(batch), args.repeats, args.min_seconds) if side == 'seed'
             else run_project(mode, int(batch), args.repeats, args.min_seconds,
                              args.project_args, extra_env))
        runs[side].append(r)
        print(f'{mode} {batch} round {i + 1} {side}: {r["seq_s"]:.0f} seq/s, peak '
              f'{r["peak_rss_gb"]:.2f} GB, load {r["load1"]:.2f}', flush=True)
    med = {s: statistics.median(r['seq_s'] for r in runs[s]) for s in runs}
    peak = {s: max(r['peak_rss_gb'] for r in runs[s]) for s in runs}
    rows.append(dict(mode=mode, batch=int(batch), seed=med['seed'],
                     project=med['project'], ratio=med['project'] / med['seed'],
                     seed_peak_gb=peak['seed'], project_peak_gb=peak['project'],
                     runs=runs))
  print('\n| work | batch | seed TF seq/s | project seq/s | ratio | peak RSS seed / '
        'project GB |\n| --- | ---: | ---: | ---: | ---: | ---: |')
  for r in rows:
    print(f"| {r['mode']} | {r['batch']:,} | {r['seed']:,.0f} | {r['project']:,.0f} | "
          f"{r['ratio']:.2f}x | {r['seed_peak_gb']:.1f} / {r['project_peak_gb']:.1f} |")
  if args.json_out:
    with open(args.json_out, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  main()
