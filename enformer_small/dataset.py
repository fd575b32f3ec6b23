"""tf.data input pipeline: DREAM codes -> batches of one-hot windows for pmap.

Modelled on Haiku's `examples/imagenet/dataset.py`: this module is the only
TensorFlow user of the training path; it hands numpy batches over with
`tfds.as_numpy`, shaped [local_devices, per_device_batch, ...] for `jax.pmap`.

Inputs are `DreamData`-like objects (`codes` uint8 [N, W], `expression`
float32 [N] or [N, T]) plus the row indices to use, e.g. from
`dream_data.holdout_split`. From raw files: `dream_data.read_dream_file`; from
TFDS: `tfds_dream.load_dream_data` / `tfds_dream.as_dream_data`.

The window (the seed's): `codes[row, crop_start + s : crop_start + s +
crop_length]` for a shift s in `config.shifts`, by default [15+s : 100+s] with s
in {-1, 0, +1}. One-hot columns are A, C, G, T; code 4 (N / padding) is an
all-zero column.

Rows may carry the real plasmid on each side of the construct
(`train_data.with_plasmid_context`), so that windows reach beyond the 110 bp.

Training order. Everything random in an epoch is drawn in numpy from
`SeedSequence([seed, epoch])` (independent child streams for the permutation,
the shifts and the reverse-complement flags), so it depends on nothing but
(seed, epoch, data size, config): not on TF's RNG, thread timing, the number of
processes or where a run was resumed.
  * shift_mode 'expand' (the seed): the epoch is every (row, shift) pair, so
    len(shifts) x the rows, in one random permutation.
  * shift_mode 'random': every row once, at a random shift.
The permuted examples are cut into global batches of `global_batch_size`; the
incomplete last global batch of an epoch is dropped (at most
global_batch_size - 1 examples, a different random set each epoch).

Multi-host. Every process computes the same permutation and cuts the same global
batches; process p takes the contiguous slice [p*G/P, (p+1)*G/P) of each global
batch and splits it over its local devices in order. The shards are disjoint,
cover the global batch, and concatenated in process order equal what a single
process would get: a run on P hosts x D devices sees the same global batches as
one on 1 host x P*D devices.

Resume. `train_batches(..., epoch=e, start_step=s)` yields exactly batches s, s+1,
... of epoch e of an uninterrupted run (the plan is sliced before it reaches
tf.data, nothing is skipped by iterating). `train_batches_repeated` does the
same from a global step, running on over epochs.

Evaluation and prediction do not use this module: they cut their windows in
numpy (`inference.predict_rows`, the one inference path).

Speed. All work is per batch and vectorised (one gather of the batch's rows,
one static slice per shift, one `tf.one_hot`); `tf.data` builds batches in
parallel and prefetches. The codes are handed to TensorFlow without a copy when
the array is writeable (DLPack); read-only arrays (what `read_dream_file`
returns) are copied once and the copy is reused while the array lives. The
pipeline reads the arrays in place: do not modify them while iterating.
"""

import dataclasses
import itertools
import threading
import weakref
from typing import Any, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from enformer_small.dream_data import PAD_CODE

# The pipeline runs on the host. A TensorFlow built with GPU support would otherwise
# reserve most of each GPU's memory for itself at its first op, memory JAX needs.
try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:  # TensorFlow's devices were already initialised by the caller.
  pass

Batch = Mapping[str, np.ndarray]

NUM_BASES = 4
SHIFT_MODES = ('expand', 'random')
ONE_HOT_DTYPES = ('float32', 'bfloat16', 'float16', 'uint8')


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """How training / evaluation windows are cut and encoded.

  Attributes:
    crop_start: first position of the unshifted window in the 110-bp codes.
    crop_length: window length (the model's input length).
    shifts: offsets s of the window [crop_start + s, crop_start + s +
      crop_length) used in training.
    shift_mode: 'expand' (each training row at every shift in each epoch: an
      epoch is len(shifts) x the rows) or 'random' (each row once per epoch, at
      a shift drawn uniformly from `shifts`).
    reverse_complement: training only: reverse-complement each example with
      probability 0.5 (reverse the length and channel axes of the one-hot).
    one_hot_dtype: dtype of `inputs`: 'float32', or 'bfloat16' / 'float16' /
      'uint8' to cut host-to-device bytes (the model casts).
    prefetch: batches prefetched by tf.data; None = AUTOTUNE, 0 = none.
    num_parallel_calls: batches built in parallel; None = AUTOTUNE.
  """
  crop_start: int = 15
  crop_length: int = 85
  shifts: Tuple[int, ...] = (-1, 0, 1)
  shift_mode: str = 'expand'
  reverse_complement: bool = False
  one_hot_dtype: str = 'float32'
  prefetch: Optional[int] = None
  num_parallel_calls: Optional[int] = None

  def __post_init__(self):
    object.__setattr__(self, 'shifts', tuple(int(s) for s in self.shifts))
    try:
      dtype = np.dtype(tf.as_dtype(self.one_hot_dtype).as_numpy_dtype).name
    except TypeError:
      dtype = repr(self.one_hot_dtype)
    object.__setattr__(self, 'one_hot_dtype', dtype)
    if self.shift_mode not in SHIFT_MODES:
      raise ValueError(f'shift_mode must be one of {SHIFT_MODES}, got '
                       f'{self.shift_mode!r}')
    if not self.shifts:
      raise ValueError('shifts must hold at least one offset, e.g. (0,)')
    if len(set(self.shifts)) != len(self.shifts):
      raise ValueError(f'shifts must be distinct, got {self.shifts}')
    if self.crop_length <= 0 or self.crop_start < 0:
      raise ValueError(f'need crop_start >= 0 and crop_length > 0, got '
                       f'{self.crop_start} and {self.crop_length}')
    if self.one_hot_dtype not in ONE_HOT_DTYPES:
      raise ValueError(f'one_hot_dtype must be one of {ONE_HOT_DTYPES}, got '
                       f'{self.one_hot_dtype!r}')
    if self.prefetch is not None and self.prefetch < 0:
      raise ValueError(f'prefetch must be None (AUTOTUNE) or >= 0, got '
                       f'{self.prefetch}')
    if self.num_parallel_calls is not None and self.num_parallel_calls < 1:
      raise ValueError(f'num_parallel_calls must be None (AUTOTUNE) or >= 1, '
                       f'got {self.num_parallel_calls}')

  @property
  def examples_per_row(self) -> int:
    """Training examples per row per epoch."""
    return len(self.shifts) if self.shift_mode == 'expand' else 1


# ---------------------------------------------------------------------------
# Batch geometry.


def _check_geometry(global_batch_size: int, local_device_count: int,
                    process_index: int, process_count: int) -> int:
  """Validates the sharding; returns the per-device batch size."""
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'need 0 <= process_index < process_count, got '
                     f'process_index={process_index}, '
                     f'process_count={process_count}')
  if local_device_count < 1 or global_batch_size < 1:
    raise ValueError(f'need global_batch_size >= 1 and local_device_count >= '
                     f'1, got {global_batch_size} and {local_device_count}')
  shards = process_count * local_device_count
  if global_batch_size % shards:
    raise ValueError(
        f'global_batch_size ({global_batch_size}) must be divisible by '
        f'process_count * local_device_count ({process_count} * '
        f'{local_device_count} = {shards}); e.g. use '
        f'{max(shards, global_batch_size // shards * shards)}')
  return global_batch_size // shards


def _check_window(config: PipelineConfig, shifts: Sequence[int],
                  row_length: int) -> None:
  lo = config.crop_start + min(shifts)
  hi = config.crop_start + max(shifts) + config.crop_length
  if lo < 0 or hi > row_length:
    raise ValueError(
        f'window [{config.crop_start} + s, {config.crop_start} + s + '
        f'{config.crop_length}) for shifts {tuple(shifts)} spans [{lo}, {hi}), '
        f'outside the {row_length} codes of a row')


def _check_codes(codes) -> np.ndarray:
  # Not np.asarray: it would wrap a memmap in a new view each call and defeat
  # the per-array tensor cache of `_as_tensor`.
  if not isinstance(codes, np.ndarray):
    codes = np.asarray(codes)
  if codes.ndim != 2 or codes.dtype != np.uint8:
    raise ValueError(f'codes must be uint8 [N, L], got {codes.dtype} '
                     f'{codes.shape}')
  return codes


def _check_indices(indices, num_rows: int) -> np.ndarray:
  indices = np.asarray(indices)
  if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or
                               indices.size == 0):
    raise ValueError(f'indices must be a 1-D integer array, got '
                     f'{indices.dtype} {indices.shape}')
  indices = indices.astype(np.int64, copy=False)
  if indices.size and (indices.min() < 0 or indices.max() >= num_rows):
    raise ValueError(f'indices must lie in [0, {num_rows}), got '
                     f'{indices.min()}..{indices.max()}')
  return indices


def num_train_batches(num_rows: int, global_batch_size: int,
                      config: PipelineConfig = PipelineConfig()) -> int:
  """Global batches per training epoch (the incomplete last one is dropped)."""
  return num_rows * config.examples_per_row // global_batch_size


# ---------------------------------------------------------------------------
# NumPy -> TensorFlow without repeated copies.

_TF_ALIGNMENT = 64  # EIGEN_MAX_ALIGN_BYTES of TensorFlow's CPU builds.
_TENSOR_CACHE: dict = {}  # id(array) -> (weakref to array, tf.Tensor)
_TENSOR_CACHE_LOCK = threading.Lock()


def _as_tensor(array: np.ndarray) -> tf.Tensor:
  """A CPU tensor with the array's contents, avoiding copies of big arrays.

  Writeable, C-contiguous, 64-byte aligned arrays (TF kernels CHECK-fail on
  misaligned buffers) are shared through DLPack: no copy. Read-only ones (e.g.
  memory-mapped; DLPack cannot export them) are copied once and the copy is
  cached for as long as the array lives, so building one pipeline per epoch
  does not copy 740 MB of codes per epoch. Other arrays are copied.
  """
  if (type(array) is np.ndarray and array.size and array.flags.c_contiguous and
      array.flags.writeable and array.ctypes.data % _TF_ALIGNMENT == 0):
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
  key = id(array)
  with _TENSOR_CACHE_LOCK:
    entry = _TENSOR_CACHE.get(key)
    if entry is not None and entry[0]() is array:
      return entry[1]
  with tf.device('/device:CPU:0'):  # Never on an accelerator TF might see.
    tensor = tf.constant(np.ascontiguousarray(array))
  if array.flags.writeable:  # Could change under us: never cache.
    return tensor
  try:
    ref = weakref.ref(array, lambda _, key=key: _TENSOR_CACHE.pop(key, None))
  except TypeError:  # Not weak-referenceable: no caching.
    return tensor
  with _TENSOR_CACHE_LOCK:
    _TENSOR_CACHE[key] = (ref, tensor)
  return tensor


# ---------------------------------------------------------------------------
# Per-batch TensorFlow work.


class _WindowEncoder:
  """Builds one batch of one-hot windows from (row, shift) pairs.

  Holds the codes ([N, L] uint8) and expression tensors; every method works
  on a whole batch (vectorised), never per example. Windows are cut from
  whole gathered rows with one static slice per possible shift (a row gather
  copies 110 contiguous bytes; gathering the 85 window bytes one by one was
  4x slower).
  """

  def __init__(self, codes: np.ndarray, expression: Optional[np.ndarray],
               config: PipelineConfig, shifts: Sequence[int],
               local_device_count: int):
    self.codes = _as_tensor(codes)
    # [N, T] targets of several columns stay 2-D; one target is read as [N].
    self.multi_target = expression is not None and np.ndim(expression) == 2
    self.expression = (None if expression is None else
                       _as_tensor(expression) if self.multi_target else
                       tf.reshape(_as_tensor(expression), [-1]))
    self.crop_start = config.crop_start
    self.crop_length = config.crop_length
    self.shifts = tuple(shifts)
    self.dtype = tf.as_dtype(config.one_hot_dtype)
    self.devices = local_device_count

  def windows(self, rows: tf.Tensor, shifts: Optional[tf.Tensor] = None,
              reverse: Optional[tf.Tensor] = None) -> tf.Tensor:
    """uint8 [B, crop_length] codes[row, crop_start + s : ... + crop_length].

    Args:
      rows: int [B] row indices.
      shifts: int8 [B] shifts, each one of `self.shifts`; None when there is
        a single shift.
      reverse: bool [B]; where True the window is reverse-complemented (read
        backwards and complemented: one-hot length and channel axes
        reversed); None for none.
    """
    full = tf.gather(self.codes, rows)

    def cut(shift):
      start = self.crop_start + shift
      return full[:, start:start + self.crop_length]

    window = cut(self.shifts[0])
    for shift in self.shifts[1:]:
      window = tf.where((shifts == shift)[:, None], cut(shift), window)
    if reverse is not None:
      # 3 - c swaps A<->T (0, 3) and C<->G (1, 2); the pad code stays.
      backwards = tf.reverse(window, axis=[1])
      complement = tf.where(backwards < PAD_CODE, 3 - backwards, backwards)
      window = tf.where(reverse[:, None], complement, window)
    return window

  def one_hot(self, window: tf.Tensor) -> tf.Tensor:
    """[B, L] codes -> [B, L, 4]; code 4 (N / padding) gives zeros."""
    return tf.one_hot(window, NUM_BASES, dtype=self.dtype)

  def targets(self, rows: tf.Tensor) -> tf.Tensor:
    """float32 [B, T] targets of the rows (T = 1 for one target)."""
    targets = tf.gather(self.expression, rows)
    return targets if self.multi_target else targets[:, None]

  def per_device(self, x: tf.Tensor) -> tf.Tensor:
    """[B, ...] -> [devices, B / devices, ...]."""
    shape = tf.concat([[self.devices, -1], tf.shape(x)[1:]], axis=0)
    return tf.reshape(x, shape)


def _finish(ds: tf.data.Dataset, config: PipelineConfig) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True  # Batch order is part of reproducibility.
  # tf.data's default graph rewrites serialise the dataset graph, copying the
  # captured codes tensor (740 MB, ~1.2 s per iterator, per epoch). The
  # pipeline is already parallel and prefetched by hand, so nothing is lost.
  options.experimental_optimization.apply_default_optimizations = False
  ds = ds.with_options(options)
  if config.prefetch != 0:
    ds = ds.prefetch(tf.data.AUTOTUNE if config.prefetch is None
                     else config.prefetch)
  return ds


def _parallel_calls(config: PipelineConfig) -> int:
  return (tf.data.AUTOTUNE if config.num_parallel_calls is None
          else config.num_parallel_calls)


def _compact_rows(rows: np.ndarray, num_rows: int) -> np.ndarray:
  """Row indices as int32 when they fit (half the bytes tf.data slices)."""
  return rows.astype(np.int32) if num_rows <= np.iinfo(np.int32).max else rows


# ---------------------------------------------------------------------------
# Training.


@dataclasses.dataclass(frozen=True)
class EpochPlan:
  """One process's examples for one epoch, in batch order.

  Attributes:
    rows: int64 [num_batches, B] row indices into the data (B = global batch
      size / process count).
    shifts: int64 [num_batches, B] window shifts.
    reverse: bool [num_batches, B] reverse-complement flags, or None when
      reverse-complement augmentation is off.
  """
  rows: np.ndarray
  shifts: np.ndarray
  reverse: Optional[np.ndarray]


def epoch_plan(indices: np.ndarray, *, global_batch_size: int,
               process_index: int = 0, process_count: int = 1,
               config: PipelineConfig = PipelineConfig(), seed: int,
               epoch: int, start_step: int = 0) -> EpochPlan:
  """The (row, shift, reverse) of every example this process sees in an epoch.

  Pure numpy; `train_batches` turns the plan into one-hot batches. Batches
  `start_step` and later only.

  Args:
    indices: int [n] training rows.
    global_batch_size: G, examples per step over all processes.
    process_index, process_count: this process p of P; takes columns
      [p*G/P, (p+1)*G/P) of each global batch.
    config: shifts, shift mode and augmentation.
    seed, epoch: non-negative ints; the plan depends on nothing else.
    start_step: first batch of the epoch to include (for resuming).
  Returns:
    EpochPlan with [num_train_batches - start_step, G/P] arrays.
  """
  if seed < 0 or epoch < 0:
    raise ValueError(f'seed and epoch must be >= 0, got {seed} and {epoch}')
  _check_geometry(global_batch_size, 1, process_index, process_count)
  indices = np.asarray(indices, np.int64)
  n = indices.shape[0]
  num_batches = num_train_batches(n, global_batch_size, config)
  if not 0 <= start_step <= num_batches:
    raise ValueError(f'start_step must lie in [0, {num_batches}] (batches in '
                     f'this epoch), got {start_step}')
  order_rng, shift_rng, reverse_rng = (
      np.random.default_rng(s)
      for s in np.random.SeedSequence([seed, epoch]).spawn(3))
  shifts = np.asarray(config.shifts, np.int64)
  if config.shift_mode == 'expand':
    # Example k of the epoch is (indices[k % n], shifts[k // n]).
    order = order_rng.permutation(n * len(shifts))
    example_shift = shifts[order // n]
    order %= n
  else:
    order = order_rng.permutation(n)
    example_shift = shifts[shift_rng.integers(0, len(shifts), n)]
  reverse = None
  if config.reverse_complement:
    reverse = reverse_rng.random(order.shape[0]) < 0.5

  # Cut into global batches (dropping the remainder), keep this process's
  # columns and the batches from start_step on.
  local = global_batch_size // process_count
  columns = slice(process_index * local, (process_index + 1) * local)

  def take(a):
    a = a[:num_batches * global_batch_size].reshape(num_batches,
                                                    global_batch_size)
    return np.ascontiguousarray(a[start_step:, columns])

  return EpochPlan(rows=take(indices[order]),
                   shifts=take(example_shift),
                   reverse=None if reverse is None else take(reverse))


def train_dataset(data: Any, indices: np.ndarray, *, global_batch_size: int,
                  local_device_count: int, process_index: int = 0,
                  process_count: int = 1,
                  config: PipelineConfig = PipelineConfig(), seed: int,
                  epoch: int, start_step: int = 0) -> tf.data.Dataset:
  """The tf.data.Dataset behind `train_batches` (same arguments)."""
  _check_geometry(global_batch_size, local_device_count, process_index,
                  process_count)
  codes = _check_codes(data.codes)
  _check_window(config, config.shifts, codes.shape[1])
  indices = _check_indices(indices, codes.shape[0])
  if num_train_batches(len(indices), global_batch_size, config) == 0:
    raise ValueError(
        f'an epoch of {len(indices)} rows x {config.examples_per_row} '
        f'examples per row holds no full global batch of {global_batch_size}')
  plan = epoch_plan(indices, global_batch_size=global_batch_size,
                    process_index=process_index, process_count=process_count,
                    config=config, seed=seed, epoch=epoch,
                    start_step=start_step)
  encoder = _WindowEncoder(codes, data.expression, config, config.shifts,
                           local_device_count)
  slices = (_compact_rows(plan.rows, codes.shape[0]),
            plan.shifts.astype(np.int8))
  if plan.reverse is not None:
    slices += (plan.reverse,)

  def make_batch(rows, shifts, reverse=None):
    window = encoder.windows(rows, shifts, reverse)
    return dict(inputs=encoder.per_device(encoder.one_hot(window)),
                targets=encoder.per_device(encoder.targets(rows)))

  ds = tf.data.Dataset.from_tensor_slices(slices)
  ds = ds.map(make_batch, num_parallel_calls=_parallel_calls(config),
              deterministic=True)
  return _finish(ds, config)


def train_batches(data: Any, indices: np.ndarray, *, global_batch_size: int,
                  local_device_count: int, process_index: int = 0,
                  process_count: int = 1,
                  config: PipelineConfig = PipelineConfig(), seed: int,
                  epoch: int, start_step: int = 0) -> Iterator[Batch]:
  """One training epoch of this process's batches (numpy).

  Args:
    data: `DreamData` (codes uint8 [N, L], expression float32 [N]).
    indices: int [n] rows to train on.
    global_batch_size: G examples per step over all processes; must be
      divisible by process_count * local_device_count.
    local_device_count: D, devices of this process (leading batch axis).
    process_index, process_count: this process p of P (multi-host).
    config: windows, shifts and augmentation.
    seed, epoch: the epoch's order, shifts and flips depend only on these (and
      the data size and config).
    start_step: skip the epoch's first `start_step` batches (resuming); the
      batches yielded equal those of an uninterrupted run.
  Yields:
    num_train_batches(n, G, config) - start_step dicts: `inputs` [D, G/(P*D),
    crop_length, 4] one_hot_dtype, `targets` float32 [D, G/(P*D), 1].
  Raises:
    ValueError: bad geometry (indivisible batch size), indices, window or
      start_step; or an epoch too small for one global batch.
  """
  ds = train_dataset(
      data, indices, global_batch_size=global_batch_size,
      local_device_count=local_device_count, process_index=process_index,
      process_count=process_count, config=config, seed=seed, epoch=epoch,
      start_step=start_step)
  return iter(tfds.as_numpy(ds))


def train_batches_repeated(data: Any, indices: np.ndarray, *,
                           global_batch_size: int, local_device_count: int,
                           process_index: int = 0, process_count: int = 1,
                           config: PipelineConfig = PipelineConfig(),
                           seed: int, start_step: int = 0,
                           num_steps: Optional[int] = None
                           ) -> Iterator[Batch]:
  """Training batches over successive epochs, from a global step.

  Global step g is batch g % S of epoch g // S (S = num_train_batches), so a
  run resumed at `start_step=g` continues exactly where an uninterrupted run
  would be. Each epoch builds its own pipeline when the previous one is used
  up (a pause of a few seconds for the full 20M-example epoch: the numpy
  permutation).

  Args:
    (as `train_batches`, without epoch)
    start_step: global step of the first batch.
    num_steps: stop after this many batches; None runs forever.
  """
  _check_geometry(global_batch_size, local_device_count, process_index,
                  process_count)
  steps_per_epoch = num_train_batches(len(indices), global_batch_size, config)
  if steps_per_epoch == 0:
    raise ValueError(
        f'an epoch of {len(indices)} rows x {config.examples_per_row} '
        f'examples per row holds no full global batch of {global_batch_size}')
  if start_step < 0:
    raise ValueError(f'start_step must be >= 0, got {start_step}')
  if num_steps is not None and num_steps < 0:
    raise ValueError(f'num_steps must be >= 0 or None, got {num_steps}')

  def generate():
    epoch, step = divmod(start_step, steps_per_epoch)
    while True:
      yield from train_batches(
          data, indices, global_batch_size=global_batch_size,
          local_device_count=local_device_count, process_index=process_index,
          process_count=process_count, config=config, seed=seed, epoch=epoch,
          start_step=step)
      epoch, step = epoch + 1, 0

  batches = generate()
  return batches if num_steps is None else itertools.islice(batches,
                                                            num_steps)
