r"""Benchmark: writing a full-size synthetic DREAM training file.

Times `enformer_small.synthetic.write_synthetic_file` for --rows rows (default 6,739,258,
the size of the real `train_sequences.txt`), each run in a fresh subprocess so that its
peak RSS is its own, and prints per run and as medians: wall seconds, CPU seconds (user +
system, worker processes included), rows/s, file size, peak RSS of the writing process and
of the largest worker, and the noise ceiling. The file is deleted after each run unless
--keep. Run with jemalloc, as every CPU benchmark of the project:

  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
    .venv/bin/python -m benchmarks.bench_synthetic
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from experiments import _runtime

_ROWS = flags.DEFINE_integer('rows', 6_739_258, 'rows to write.')
_SEED = flags.DEFINE_integer('seed', 0, 'random seed.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'runs (each in a fresh process).')
_WORKERS = flags.DEFINE_integer('workers', None, 'generator processes (default: auto).')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', None, 'where to write (default: /tmp).')
_GZIP = flags.DEFINE_bool('gzip', False, 'write .gz.')
_KEEP = flags.DEFINE_bool('keep', False, 'keep the last file.')
_CHILD = flags.DEFINE_string('child', None, 'internal: write this path, print JSON.')


def _child(path: str) -> None:
  from enformer_small import synthetic  # pylint: disable=g-import-not-at-top
  config = synthetic.SyntheticConfig(num_rows=_ROWS.value, seed=_SEED.value)
  cpu = time.process_time()
  report = synthetic.write_synthetic_file(path, config, workers=_WORKERS.value)
  self_usage = resource.getrusage(resource.RUSAGE_SELF)
  child_usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  print(json.dumps({
      'seconds': report.seconds,
      'cpu_seconds': (time.process_time() - cpu) + child_usage.ru_utime
                     + child_usage.ru_stime,
      'rows': report.rows,
      'rows_per_second': report.rows_per_second,
      'bytes': report.bytes_written,
      'writer_peak_rss_mib': self_usage.ru_maxrss / 1024,
      'worker_peak_rss_mib': child_usage.ru_maxrss / 1024,
      'noise_ceiling': report.noise_ceiling_pearson,
      'mean': report.expression_mean,
      'sd': report.expression_sd,
      'integer_share': report.integer_share,
  }))


def main(argv):
  del argv
  if _CHILD.value:
    _child(_CHILD.value)
    return
  directory = _OUTPUT_DIR.value or tempfile.gettempdir()
  path = os.path.join(directory, f'bench_synthetic_{os.getpid()}.txt'
                      + ('.gz' if _GZIP.value else ''))
  args = [f'--rows={_ROWS.value}', f'--seed={_SEED.value}']
  if _WORKERS.value is not None:
    args.append(f'--workers={_WORKERS.value}')
  runs = []
  try:
    for run in range(_REPEATS.value):
      out = subprocess.run([sys.executable, '-m', 'benchmarks.bench_synthetic',
                            f'--child={path}', *args],
                           check=True, capture_output=True, text=True).stdout
      result = json.loads(out.strip().splitlines()[-1])
      runs.append(result)
      print(f'run {run + 1}: {result["seconds"]:.1f} s wall, {result["cpu_seconds"]:.1f} s '
            f'CPU, {result["rows_per_second"]:,.0f} rows/s, '
            f'{result["bytes"] / 2**20:,.0f} MiB, writer peak RSS '
            f'{result["writer_peak_rss_mib"]:.0f} MiB, worker peak RSS '
            f'{result["worker_peak_rss_mib"]:.0f} MiB', flush=True)
  finally:
    if not _KEEP.value and os.path.exists(path):
      os.remove(path)
  def median(key):
    return statistics.median(r[key] for r in runs)
  last = runs[-1]
  print(f'rows: {last["rows"]:,}  file: {last["bytes"]:,} bytes'
        f'{" (gzip)" if _GZIP.value else ""}')
  print(f'median of {len(runs)}: {median("seconds"):.1f} s wall, '
        f'{median("cpu_seconds"):.1f} s CPU, {median("rows_per_second"):,.0f} rows/s, '
        f'writer peak RSS {median("writer_peak_rss_mib"):.0f} MiB, worker peak RSS '
        f'{median("worker_peak_rss_mib"):.0f} MiB')
  print(f'noise ceiling (Pearson noise-free vs written): {last["noise_ceiling"]:.4f}; '
        f'expression mean {last["mean"]:.2f}, sd {last["sd"]:.2f}, '
        f'integer share {last["integer_share"]:.3f}')
  if _KEEP.value:
    print(f'kept {path}')


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  app.run(main)
