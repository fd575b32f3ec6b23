r"""Reads, validates, encodes and caches a DREAM file ahead of a job.

  python -m experiments.prepare_data --input train_sequences.txt
  python -m experiments.prepare_data --input test_71103_measured.tsv \
      --allow_negative

Prints what the file holds (rows, lengths, N, expression range, rows set aside
by policy) and where the encoded arrays were cached; a later
`read_dream_file` of the same file content loads them instead of encoding
again. A malformed file prints its one-line `path:line: ...` message and exits
with status 1.
"""

import time

from absl import flags

from enformer_small import dream_data
from experiments import _runtime

_INPUT = flags.DEFINE_string(
    'input', None, 'DREAM file: sequence<TAB>expression, plain or gzip.')
_CACHE_DIR = flags.DEFINE_string(
    'cache_dir', None,
    f'cache root; default ${dream_data.CACHE_ENV_VAR} or '
    '~/.cache/enformer_small.')
_ALLOW_NEGATIVE = flags.DEFINE_bool(
    'allow_negative', False, 'accept negative expression (the test set '
    "measurements' MAUDE scale); off for training files.")
_USE_CACHE = flags.DEFINE_bool(
    'use_cache', True, 'look up and write the cache (off: only validate).')
flags.mark_flag_as_required('input')


def prepare() -> None:
  start = time.perf_counter()
  data = dream_data.read_dream_file(
      _INPUT.value, cache_dir=_CACHE_DIR.value, use_cache=_USE_CACHE.value,
      allow_negative=_ALLOW_NEGATIVE.value)
  seconds = time.perf_counter() - start
  report = data.report
  print(f'file: {data.source}')
  for line in dream_data.report_lines(report):
    print(line)
  if report.from_cache:
    print(f'cache: hit, {report.cache_path}')
  elif report.cache_path:
    print(f'cache: written, {report.cache_path}')
  else:
    print('cache: not used')
  print(f'seconds: {seconds:.2f}')


main = _runtime.command(prepare, (dream_data.DreamDataError,))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  _runtime.run(main)
