"""Throughput of the training input pipeline (`enformer_small.dataset`).

Synthetic codes the size of the challenge's training set (6,739,258 rows x 110,
random, ~1% N) are generated in numpy; the benchmark times what the training
loop would consume: `train_batches` (expand mode, crop + shift + one-hot +
batch + `tfds.as_numpy`), per one-hot dtype, in sequences per second over
`--batches` batches after `--warmup`, median of `--repeats` fresh pipelines
(each a different epoch). Then a breakdown of where the time goes:

  * epoch plan: the numpy permutation of (row, shift) pairs, once per epoch;
  * first batch: plan + pipeline construction + first batch (epoch start-up);
  * tf.data stages, cumulative, same parallelism: index batches only, + window
    gather, + one-hot, full batch (+ targets, per-device reshape) consumed as
    TF tensors, and full batch converted by `tfds.as_numpy`;
  * single ops on one batch (one thread, eager `tf.function`).

Run (jemalloc, as the entry points do):
  LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2 \
    .venv/bin/python benchmarks/bench_pipeline.py
"""

import os
import resource
import statistics
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from enformer_small import dataset
from enformer_small import dream_data

_ROWS = flags.DEFINE_integer('rows', 6_739_258, 'Rows of synthetic codes.')
_BATCH = flags.DEFINE_integer('batch', 10_000, 'Global batch size.')
_DEVICES = flags.DEFINE_integer('devices', 1, 'Local device count.')
_BATCHES = flags.DEFINE_integer('batches', 200, 'Timed batches per run.')
_WARMUP = flags.DEFINE_integer('warmup', 20, 'Untimed batches per run.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Runs per setting (median).')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'uint8', 'bfloat16'],
                            'One-hot dtypes to time.')
_BREAKDOWN = flags.DEFINE_bool('breakdown', True, 'Also time the stages.')


def synthetic_data(num_rows: int, seed: int = 0) -> dream_data.DreamData:
  """Random codes (about 1% N) and expression, DreamData-shaped."""
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, 4, (num_rows, dream_data.SEQUENCE_LENGTH),
                       dtype=np.uint8)
  codes.reshape(-1)[rng.integers(0, codes.size, codes.size // 100)] = (
      dream_data.PAD_CODE)
  expression = rng.uniform(0, 17, num_rows).astype(np.float32)
  return dream_data.DreamData(
      codes=codes, expression=expression,
      lengths=np.full(num_rows, dream_data.SEQUENCE_LENGTH, np.int32),
      source='synthetic')


def time_iterator(make_iterator, warmup: int, batches: int):
  """(seconds to first item, seconds for `batches` items after warm-up)."""
  start = time.perf_counter()
  iterator = make_iterator()
  next(iterator)
  first = time.perf_counter() - start
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  return first, time.perf_counter() - start


def summary(values):
  return (f'median {statistics.median(values):>12,.0f}  '
          f'(min {min(values):,.0f}, max {max(values):,.0f})')


def time_train_batches(data, indices, config, repeats):
  """Seq/s and start-up seconds of `train_batches`, one per repeat."""
  rates, firsts = [], []
  for epoch in range(repeats):
    first, seconds = time_iterator(
        lambda: dataset.train_batches(  # pylint: disable=cell-var-from-loop
            data, indices, global_batch_size=_BATCH.value,
            local_device_count=_DEVICES.value, config=config, seed=0,
            epoch=epoch),
        _WARMUP.value, _BATCHES.value)
    rates.append(_BATCHES.value * _BATCH.value / seconds)
    firsts.append(first)
  return rates, firsts


def stage_datasets(data, plan, config):
  """Cumulative pipeline stages over one epoch plan, name -> tf.data.Dataset."""
  encoder = dataset._WindowEncoder(  # pylint: disable=protected-access
      data.codes, data.expression, config, config.shifts, _DEVICES.value)
  slices = (plan.rows.astype(np.int32), plan.shifts.astype(np.int8))
  stages = {
      'index batches only': lambda r, s: (r, s),
      '+ gather rows, cut windows': encoder.windows,
      '+ one_hot': lambda r, s: encoder.one_hot(encoder.windows(r, s)),
      'full batch (TF tensors)': lambda r, s: dict(
          inputs=encoder.per_device(encoder.one_hot(encoder.windows(r, s))),
          targets=encoder.per_device(encoder.targets(r))),
  }
  out = {}
  for name, fn in stages.items():
    ds = tf.data.Dataset.from_tensor_slices(slices)
    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    out[name] = ds.prefetch(tf.data.AUTOTUNE)
  return out


def breakdown(data, indices):
  batch, batches, warmup = _BATCH.value, _BATCHES.value, _WARMUP.value
  config = dataset.PipelineConfig()
  plan_seconds = []
  for epoch in range(3):
    start = time.perf_counter()
    plan = dataset.epoch_plan(indices, global_batch_size=batch,
                              config=config, seed=0, epoch=epoch)
    plan_seconds.append(time.perf_counter() - start)
  print(f'epoch plan (numpy, {len(indices) * 3:,} examples): median '
        f'{statistics.median(plan_seconds):.2f} s per epoch')

  print(f'\ntf.data stages, float32, seq/s ({batches} batches of {batch:,}):')
  for name, ds in stage_datasets(data, plan, config).items():
    rates = []
    for _ in range(3):
      _, seconds = time_iterator(lambda: iter(ds), warmup, batches)  # pylint: disable=cell-var-from-loop
      rates.append(batches * batch / seconds)
    print(f'  {name:<28} {summary(rates)}')
  rates = []
  full = stage_datasets(data, plan, config)['full batch (TF tensors)']
  for _ in range(3):
    _, seconds = time_iterator(lambda: iter(tfds.as_numpy(full)), warmup,
                               batches)
    rates.append(batches * batch / seconds)
  print(f'  {"full batch + tfds.as_numpy":<28} {summary(rates)}')

  print(f'\nsingle ops on one batch of {batch:,} (one thread), ms:')
  encoder = dataset._WindowEncoder(  # pylint: disable=protected-access
      data.codes, data.expression, config, config.shifts, _DEVICES.value)
  rows = tf.constant(plan.rows[0].astype(np.int32))
  shifts = tf.constant(plan.shifts[0].astype(np.int8))
  window = encoder.windows(rows, shifts)
  ops = {
      'gather rows [B, 110]': tf.function(lambda r: tf.gather(encoder.codes,
                                                              r)),
      'rows + cut windows [B, 85]': tf.function(encoder.windows),
      'one_hot -> float32': tf.function(encoder.one_hot),
      'one_hot -> uint8': tf.function(lambda w: tf.one_hot(w, 4,
                                                           dtype=tf.uint8)),
      'one_hot -> bfloat16': tf.function(
          lambda w: tf.one_hot(w, 4, dtype=tf.bfloat16)),
      'targets gather': tf.function(encoder.targets),
  }
  args = {'gather rows [B, 110]': (rows,),
          'rows + cut windows [B, 85]': (rows, shifts),
          'targets gather': (rows,)}
  one_hot = encoder.one_hot(window)
  with tf.device('/cpu:0'):
    for name, fn in ops.items():
      x = args.get(name, (window,))
      fn(*x)
      start = time.perf_counter()
      for _ in range(50):
        y = fn(*x)
      _ = y.shape
      print(f'  {name:<32} {(time.perf_counter() - start) / 50 * 1e3:7.2f}')
    for name, convert in (('tfds.as_numpy (._numpy(), no copy)',
                           lambda t: t._numpy()),  # pylint: disable=protected-access
                          ('EagerTensor.numpy() (copies)', lambda t: t.numpy())):
      start = time.perf_counter()
      for _ in range(50):
        convert(one_hot)
      print(f'  {name:<32} {(time.perf_counter() - start) / 50 * 1e3:7.2f}')


def main(argv):
  del argv
  preload = os.environ.get('LD_PRELOAD', '')
  print(f'allocator: {"jemalloc" if "jemalloc" in preload else "glibc"}; '
        f'{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; '
        f'TF {tf.__version__}')
  start = time.perf_counter()
  data = synthetic_data(_ROWS.value)
  indices = np.arange(_ROWS.value, dtype=np.int64)
  print(f'synthetic codes {data.codes.shape} generated in '
        f'{time.perf_counter() - start:.1f} s')
  print(f'\ntrain_batches, expand mode, batch {_BATCH.value:,} x '
        f'{_DEVICES.value} device(s), {_BATCHES.value} batches after '
        f'{_WARMUP.value} warm-up, {_REPEATS.value} runs:')
  for dtype in _DTYPES.value:
    config = dataset.PipelineConfig(one_hot_dtype=dtype)
    rates, firsts = time_train_batches(data, indices, config, _REPEATS.value)
    print(f'  {dtype:<9} seq/s {summary(rates)};  first batch median '
          f'{statistics.median(firsts):.2f} s')
  config = dataset.PipelineConfig(reverse_complement=True)
  rates, firsts = time_train_batches(data, indices, config, _REPEATS.value)
  print(f'  {"float32 + RC":<9} seq/s {summary(rates)};  first batch median '
        f'{statistics.median(firsts):.2f} s')
  config = dataset.PipelineConfig(shift_mode='random')
  rates, firsts = time_train_batches(data, indices, config, _REPEATS.value)
  print(f'  {"float32, random shift":<9} seq/s {summary(rates)};  first batch '
        f'median {statistics.median(firsts):.2f} s')
  if _BREAKDOWN.value:
    print()
    breakdown(data, indices)
  print(f'\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f}'
        ' GiB')


if __name__ == '__main__':
  app.run(main)
