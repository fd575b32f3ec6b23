r"""Benchmark: reading a full-size DREAM training file with `read_dream_file`.

Writes a synthetic file shaped like `train_sequences.txt` (6,739,258 rows:
flanks + random region, the real length mix 87..135, a few rows with N, 58%
integer expressions in 0..17) unless --input names one, then times, each in a
fresh subprocess so that its peak RSS (VmHWM) is its own:

  cold    read + validate + encode, cache disabled (use_cache=False);
  write   first read with the cache on (hash + encode + write the cache);
  cached  read again (hash the source + memory-map the cached arrays);

and prints the median of --repeats runs of each: wall time, CPU time (user +
system) and peak RSS. Run with jemalloc, as every
CPU benchmark of the project:

  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
    .venv/bin/python -m benchmarks.bench_read
"""

import gzip
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from enformer_small import dream_data

_INPUT = flags.DEFINE_string(
    'input', None, 'DREAM file to read; default: write a synthetic one.')
_ROWS = flags.DEFINE_integer(
    'rows', 6_739_258, 'rows of the synthetic file (the real training file: '
    '6,739,258).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'runs per measurement.')
_WORK_DIR = flags.DEFINE_string(
    'work_dir', None, 'where the synthetic file and cache go; default: a '
    'temporary directory, deleted afterwards.')
_GZIP = flags.DEFINE_bool('gzip', False, 'gzip the synthetic file.')
_CHILD = flags.DEFINE_enum(
    'child', None, ['cold', 'write', 'cached'], 'internal: run one measurement '
    'in this process and print it as JSON.')
_CACHE_DIR = flags.DEFINE_string('cache_dir', None, 'internal: cache dir.')

_FLANK_5 = dream_data.FLANK_5.encode()
_FLANK_3 = dream_data.FLANK_3.encode()
# Length mix of the real training rows (train_6370.txt: 82% 110, 13% 109...).
_LENGTHS = np.array([110, 109, 108, 107, 106, 105, 100, 95, 87, 111, 115, 125,
                     135])
_LENGTH_P = np.array([0.819, 0.127, 0.024, 0.008, 0.005, 0.004, 0.004, 0.002,
                      0.001, 0.002, 0.002, 0.001, 0.001])
_TEXT_WIDTH = 24  # room for repr() of any float64, e.g. '1.2345678901234567e-05'.


def _synthetic_lines(rng: np.random.Generator, num_rows: int) -> bytes:
  """num_rows lines `sequence<TAB>expression\\n` as one bytes object."""
  lengths = rng.choice(_LENGTHS, size=num_rows, p=_LENGTH_P / _LENGTH_P.sum())
  width = int(_LENGTHS.max())
  seq = np.frombuffer(b'ACGT', np.uint8)[rng.integers(0, 4, (num_rows, width))]
  seq[:, :len(_FLANK_5)] = np.frombuffer(_FLANK_5, np.uint8)
  # 3' flank at the end of each row's own length.
  flank_cols = lengths[:, None] - len(_FLANK_3) + np.arange(len(_FLANK_3))
  seq[np.arange(num_rows)[:, None], flank_cols] = np.frombuffer(_FLANK_3,
                                                                np.uint8)
  with_n = np.flatnonzero(rng.random(num_rows) < 0.004)
  seq[with_n, 20:35] = ord('N')
  seq[np.arange(width) >= lengths[:, None]] = 0

  values = rng.uniform(0, 17, num_rows)
  integer = rng.random(num_rows) < 0.58
  values[integer] = np.round(values[integer])
  text_float = values.astype(f'S{_TEXT_WIDTH}')
  text_int = values.astype(np.int64).astype(f'S{_TEXT_WIDTH}')
  text = np.where(integer, text_int, text_float)
  text_bytes = text.view(np.uint8).reshape(num_rows, _TEXT_WIDTH)

  line = np.zeros((num_rows, width + 1 + _TEXT_WIDTH + 1), np.uint8)
  line[:, :width] = seq
  rows = np.arange(num_rows)[:, None]
  line[np.arange(num_rows), lengths] = ord('\t')
  line[rows, lengths[:, None] + 1 + np.arange(_TEXT_WIDTH)] = text_bytes
  text_len = np.count_nonzero(text_bytes, axis=1)
  line[np.arange(num_rows), lengths + 1 + text_len] = ord('\n')
  return line[line != 0].tobytes()


def write_synthetic(path: pathlib.Path, num_rows: int, compress: bool) -> None:
  rng = np.random.default_rng(0)
  with (gzip.open(path, 'wb', compresslevel=1) if compress else
        open(path, 'wb')) as f:
    for start in range(0, num_rows, 500_000):
      f.write(_synthetic_lines(rng, min(500_000, num_rows - start)))


def _peak_rss_mb() -> float:
  """This process's peak RSS in MiB.

  VmHWM, not ru_maxrss: on Linux ru_maxrss also counts the memory of the
  parent at fork time (kept across exec), so a child of a big parent would
  report the parent's size.
  """
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def _run_child(kind: str, path: str, cache_dir: str) -> None:
  baseline_mb = _peak_rss_mb()
  start, cpu_start = time.perf_counter(), _cpu_seconds()
  data = dream_data.read_dream_file(
      path, cache_dir=cache_dir, use_cache=kind != 'cold')
  seconds = time.perf_counter() - start
  cpu = _cpu_seconds() - cpu_start
  assert data.report.from_cache == (kind == 'cached'), data.report
  print(json.dumps(dict(
      seconds=seconds, cpu_seconds=cpu, rows=len(data),
      peak_rss_mb=_peak_rss_mb(), baseline_rss_mb=baseline_mb)))


def _measure(kind: str, path: str, cache_dir: str) -> dict[str, float]:
  out = subprocess.run(
      [sys.executable, '-m', 'benchmarks.bench_read', f'--child={kind}',
       f'--input={path}', f'--cache_dir={cache_dir}'],
      check=False, capture_output=True, text=True,
      cwd=pathlib.Path(__file__).resolve().parent.parent)
  if out.returncode:
    raise RuntimeError(f'{kind} run failed:\n{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _CHILD.value:
    _run_child(_CHILD.value, _INPUT.value, _CACHE_DIR.value)
    return
  work = pathlib.Path(_WORK_DIR.value or tempfile.mkdtemp(prefix='bench_read'))
  work.mkdir(parents=True, exist_ok=True)
  try:
    path = _INPUT.value
    if path is None:
      path = str(work / ('synthetic.txt.gz' if _GZIP.value else
                         'synthetic.txt'))
      if not os.path.exists(path):
        start = time.perf_counter()
        write_synthetic(pathlib.Path(path), _ROWS.value, _GZIP.value)
        print(f'wrote {path} ({_ROWS.value:,} rows, '
              f'{os.path.getsize(path) / 2**20:.0f} MiB) in '
              f'{time.perf_counter() - start:.1f} s')
    print(f'input: {path} ({os.path.getsize(path) / 2**20:.0f} MiB); '
          f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '')!r}")
    results = {'cold': [], 'write': [], 'cached': []}
    for _ in range(_REPEATS.value):
      cache_dir = str(work / 'cache')
      shutil.rmtree(cache_dir, ignore_errors=True)
      results['cold'].append(_measure('cold', path, cache_dir))
      results['write'].append(_measure('write', path, cache_dir))
      results['cached'].append(_measure('cached', path, cache_dir))
    rows = results['cold'][0]['rows']
    print(f'rows: {rows:,}; medians of {_REPEATS.value} runs, each in a fresh '
          'process:')
    for kind, runs in results.items():
      seconds = statistics.median(r['seconds'] for r in runs)
      cpu = statistics.median(r['cpu_seconds'] for r in runs)
      peak = statistics.median(r['peak_rss_mb'] for r in runs)
      base = statistics.median(r['baseline_rss_mb'] for r in runs)
      print(f'  {kind:7s} {seconds:6.2f} s wall ({cpu:6.2f} s CPU)  peak RSS '
            f'{peak:5.0f} MiB (before reading: {base:.0f} MiB)  wall runs: ' +
            ', '.join(f"{r['seconds']:.2f}" for r in runs))
    print(f'load average now: {os.getloadavg()[0]:.1f} on {os.cpu_count()} '
          'CPUs (other jobs inflate wall time; CPU time is steadier)')
  finally:
    if _WORK_DIR.value is None:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
  app.run(main)
