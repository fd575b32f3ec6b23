"""Specification of the input pipelines: training's tf.data pipeline
(`enformer_small.dataset`) and the windows evaluation and prediction cut in numpy
(`inference.predict_rows`, `window_average.Windows`, the one inference path).

Windows are checked against hand-written one-hot columns and against
`dream_data.one_hot` of numpy slices (an independent implementation); batch
contents are decoded back to (row, shift, strand) by matching every example
against all its candidate windows.
"""

import collections

import jax
import numpy as np
import pytest

from enformer_small import dataset
from enformer_small import dream_data
from enformer_small import inference
from enformer_small import window_average

A, C, G, T, N = np.eye(5, 4, dtype=np.float32)  # Hand one-hot columns.


def make_data(codes, expression=None):
  codes = np.asarray(codes, np.uint8)
  if expression is None:  # Expression = row index, so targets name the row.
    expression = np.arange(codes.shape[0], dtype=np.float32)
  return dream_data.DreamData(
      codes=codes, expression=np.asarray(expression, np.float32),
      lengths=np.full(codes.shape[0], codes.shape[1], np.int32), source='mem')


def random_data(num_rows, seed=0, with_n=False):
  rng = np.random.default_rng(seed)
  return make_data(rng.integers(0, 5 if with_n else 4, (num_rows, 110)))


def flat(batches, key):
  """Concatenates a key over batches, merging the device and batch axes."""
  return np.concatenate([b[key].reshape((-1,) + b[key].shape[2:])
                         for b in batches])


def decode(data, batches, config=dataset.PipelineConfig()):
  """(row, shift, reversed) of every example, checking it is a true window."""
  inputs = flat(batches, 'inputs').astype(np.float32)
  rows = flat(batches, 'targets')[:, 0].astype(np.int64)
  np.testing.assert_array_equal(data.expression[rows], rows)
  found = []
  for x, row in zip(inputs, rows):
    matches = []
    for s in config.shifts:
      start = config.crop_start + s
      window = dream_data.one_hot(data.codes[row, start:start + 85])
      for reverse in (False, True):
        candidate = window[::-1, ::-1] if reverse else window
        if np.array_equal(x, candidate):
          matches.append((int(row), s, reverse))
    assert len(matches) == 1, f'example of row {row} matches {matches}'
    found.append(matches[0])
  return found


def train(data, indices=None, **kwargs):
  kwargs.setdefault('local_device_count', 1)
  kwargs.setdefault('seed', 0)
  kwargs.setdefault('epoch', 0)
  if indices is None:
    indices = np.arange(len(data))
  return list(dataset.train_batches(data, indices, **kwargs))


class Evaluation:
  """What `inference.predict_rows` feeds the model and returns, with a forward pass that
  records its inputs and predicts, per row, a number naming the window it was given."""

  def __init__(self, codes, *, shift=0, reverse_complement=False, indices=None,
               batch_size=None):
    self.windows = window_average.Windows(15, 85, shifts=(shift,),
                                          reverse_complement=reverse_complement)
    self.batches = []
    size = batch_size or jax.local_device_count()
    self.predictions = inference.predict_rows(self._forward, codes, self.windows,
                                              batch_size=size, indices=indices)

  def _forward(self, inputs):
    x = np.asarray(inputs)
    self.batches.append(x)
    return name_windows(x.reshape((-1,) + x.shape[2:])).reshape(x.shape[:2] + (1,))

  def inputs(self, reverse=False):
    """[rows incl. padding, 85, 4]: the one-hot windows of the pass on that strand."""
    per_pass = len(self.batches) // len(self.windows.passes)
    chosen = self.batches[per_pass:] if reverse else self.batches[:per_pass]
    return np.concatenate([b.reshape((-1,) + b.shape[2:]) for b in chosen])


def name_windows(x):
  """float32 [N]: a number for each one-hot window [N, L, 4] (0 for all-N windows)."""
  weights = (np.arange(x.shape[1])[:, None] + 1) * (np.arange(4)[None] + 1) * 1e-3
  return (x * weights).sum(axis=(1, 2)).astype(np.float32)


# A hand-made row: window starts / ends differ at every shift.
#   position: 14 15 16 ... 98 99 100
#   base:      T  C  A ... A  G  T
HAND_ROW = 'G' * 14 + 'TC' + 'A' * 83 + 'GT' + 'C' * 9


def test_hand_row_is_what_the_comments_say():
  assert len(HAND_ROW) == 110
  assert HAND_ROW[14:17] == 'TCA' and HAND_ROW[98:101] == 'AGT'


@pytest.mark.parametrize('shift, first, second, second_last, last', [
    (-1, T, C, A, A),   # window [14, 99)
    (0, C, A, A, G),    # window [15, 100)
    (1, A, A, G, T),    # window [16, 101)
])
def test_window_at_each_shift_is_the_hand_checked_one_hot(
    shift, first, second, second_last, last):
  """Shift s gives codes[15+s : 100+s], A C G T columns."""
  data = make_data(dream_data.encode_sequences([HAND_ROW]))
  (x,) = Evaluation(data.codes, shift=shift).inputs()
  assert x.shape == (85, 4)
  np.testing.assert_array_equal(x[[0, 1, -2, -1]],
                                [first, second, second_last, last])
  np.testing.assert_array_equal(x[2:-2], np.tile(A, (81, 1)))


def test_expand_mode_yields_the_three_hand_checked_windows_of_a_row():
  data = make_data(dream_data.encode_sequences([HAND_ROW]))
  (batch,) = train(data, global_batch_size=3)
  x = batch['inputs'][0]
  starts_ends = sorted((tuple(w[0]), tuple(w[-1])) for w in x)
  expected = sorted([(tuple(T), tuple(A)), (tuple(C), tuple(G)),
                     (tuple(A), tuple(T))])
  assert starts_ends == expected
  np.testing.assert_array_equal(batch['targets'], [[[0.], [0.], [0.]]])


def test_n_and_end_padding_give_all_zero_columns():
  """Code 4 (N, or padding of a short row) -> all-zero one-hot column."""
  short = 'ACGTN' * 20  # 100 bp: codes 100..109 are padding.
  data = make_data(dream_data.encode_sequences([short]))
  (x,) = Evaluation(data.codes, shift=1).inputs()  # window [16, 101)
  window = short[16:100]
  for i, base in enumerate(window):
    expected = {'A': A, 'C': C, 'G': G, 'T': T, 'N': N}[base]
    np.testing.assert_array_equal(x[i], expected)
  np.testing.assert_array_equal(x[84], N)  # position 100: end padding.


def test_windows_match_numpy_slices_for_random_rows():
  data = random_data(40, with_n=True)
  for shift in (-1, 0, 1):
    evaluation = Evaluation(data.codes, shift=shift, batch_size=8)
    expected = dream_data.one_hot(data.codes[:, 15 + shift:100 + shift])
    np.testing.assert_array_equal(evaluation.inputs(), expected)
    np.testing.assert_array_equal(evaluation.predictions[:, 0], name_windows(expected))


def test_expand_mode_covers_every_row_at_every_shift_once_per_epoch():
  data = random_data(30)
  batches = train(data, global_batch_size=9, local_device_count=3)
  assert len(batches) == dataset.num_train_batches(30, 9) == 10
  counts = collections.Counter(decode(data, batches))
  assert counts == {(r, s, False): 1 for r in range(30) for s in (-1, 0, 1)}


def test_expand_mode_shuffles_rows_and_shifts_together():
  """Not all shifts of a row in a row, not all rows of one shift first."""
  data = random_data(30)
  shifts = [s for _, s, _ in decode(data, train(data, global_batch_size=9))]
  assert shifts != sorted(shifts)


def test_random_mode_covers_every_row_once_at_a_shift_from_the_set():
  data = random_data(30)
  config = dataset.PipelineConfig(shift_mode='random')
  seen_shifts = set()
  for epoch in range(3):
    batches = train(data, global_batch_size=10, config=config, epoch=epoch)
    assert len(batches) == dataset.num_train_batches(30, 10, config) == 3
    examples = decode(data, batches, config)
    assert sorted(r for r, _, _ in examples) == list(range(30))
    seen_shifts |= {s for _, s, _ in examples}
  assert seen_shifts == {-1, 0, 1}


def test_only_the_given_indices_are_used():
  data = random_data(30)
  indices = np.array([3, 7, 11, 20, 29])
  examples = decode(data, train(data, indices, global_batch_size=5))
  assert sorted({r for r, _, _ in examples}) == indices.tolist()


def test_incomplete_last_global_batch_is_dropped_in_training():
  """10 rows x 3 shifts = 30 examples: 3 batches of 8, 6 examples dropped."""
  data = random_data(10)
  batches = train(data, global_batch_size=8, local_device_count=2)
  assert len(batches) == dataset.num_train_batches(10, 8) == 3
  assert len(set(decode(data, batches))) == 24


def test_same_seed_and_epoch_reproduce_the_batches():
  data = random_data(30)
  first = train(data, global_batch_size=9, seed=5, epoch=3)
  again = train(data, global_batch_size=9, seed=5, epoch=3)
  for a, b in zip(first, again, strict=True):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
    np.testing.assert_array_equal(a['targets'], b['targets'])


def test_different_epochs_and_seeds_give_different_orders():
  data = random_data(30)
  base = flat(train(data, global_batch_size=9, seed=5, epoch=3), 'targets')
  other_epoch = flat(train(data, global_batch_size=9, seed=5, epoch=4),
                     'targets')
  other_seed = flat(train(data, global_batch_size=9, seed=6, epoch=3),
                    'targets')
  assert not np.array_equal(base, other_epoch)
  assert not np.array_equal(base, other_seed)


def test_resuming_at_a_step_reproduces_the_rest_of_the_epoch():
  data = random_data(30)
  full = train(data, global_batch_size=9, seed=1, epoch=2)
  tail = train(data, global_batch_size=9, seed=1, epoch=2, start_step=4)
  assert len(tail) == len(full) - 4
  for a, b in zip(full[4:], tail, strict=True):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
    np.testing.assert_array_equal(a['targets'], b['targets'])


def test_repeated_batches_resume_across_epochs_from_a_global_step():
  """Global step g = batch g % S of epoch g // S (S batches per epoch)."""
  data = random_data(10)  # 30 examples, batch 9: S = 3 batches per epoch.
  kwargs = dict(global_batch_size=9, local_device_count=1, seed=4)
  epochs = [b for e in range(3) for b in train(data, epoch=e, **kwargs)]
  resumed = list(dataset.train_batches_repeated(
      data, np.arange(10), start_step=2, num_steps=6, **kwargs))
  assert len(resumed) == 6
  for a, b in zip(epochs[2:8], resumed, strict=True):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16', 'uint8'])
def test_batch_shapes_and_dtypes(dtype):
  data = random_data(20)
  config = dataset.PipelineConfig(one_hot_dtype=dtype)
  batches = train(data, global_batch_size=12, local_device_count=4,
                  config=config)
  assert len(batches) == 5
  for batch in batches:
    assert set(batch) == {'inputs', 'targets'}
    assert batch['inputs'].shape == (4, 3, 85, 4)
    assert batch['inputs'].dtype.name == dtype
    assert batch['targets'].shape == (4, 3, 1)
    assert batch['targets'].dtype == np.float32
  decode(data, batches)  # Same windows whatever the dtype.


def test_two_processes_split_each_global_batch_like_one_process():
  """Process p gets columns [p*G/P, (p+1)*G/P) of the same global batch."""
  data = random_data(30)
  kwargs = dict(global_batch_size=12, seed=3, epoch=1)
  single = train(data, local_device_count=4, **kwargs)
  shards = [train(data, local_device_count=2, process_index=p,
                  process_count=2, **kwargs) for p in range(2)]
  assert len(shards[0]) == len(shards[1]) == len(single) == 7
  for b, whole in enumerate(single):
    parts = [shards[p][b] for p in range(2)]
    for key in ('inputs', 'targets'):
      np.testing.assert_array_equal(
          np.concatenate([part[key] for part in parts]), whole[key])
    p0, p1 = (set(decode(data, [part])) for part in parts)
    assert not p0 & p1
    assert len(p0) + len(p1) == 12


def test_reverse_complement_flips_about_half_the_examples():
  """RC = one-hot reversed on both axes; other examples stay forward."""
  data = random_data(100)
  config = dataset.PipelineConfig(reverse_complement=True)
  examples = decode(data, train(data, global_batch_size=10, config=config),
                    config)
  flipped = sum(reverse for _, _, reverse in examples)
  assert 90 < flipped < 210  # 300 fair coin flips: mean 150, sd 8.7.
  # Turning the augmentation on does not change which examples come when.
  plain = decode(data, train(data, global_batch_size=10))
  assert [e[:2] for e in examples] == [e[:2] for e in plain]


def test_reverse_complement_of_a_hand_example():
  """Window ACGGN... -> reverse complement ...NCCGT; N stays all-zero."""
  row = 'T' * 15 + 'ACGGN' + 'T' * 80 + 'C' * 10  # window [15, 100)
  data = make_data(dream_data.encode_sequences([row]))
  (x,) = Evaluation(data.codes, reverse_complement=True).inputs(reverse=True)
  np.testing.assert_array_equal(x[:80], np.tile(A, (80, 1)))  # T -> A
  np.testing.assert_array_equal(x[80:], [N, C, C, G, T])


def test_eval_predicts_every_row_once_in_order_and_drops_the_padding():
  """23 rows in global batches of 10: the last batch's 7 padded rows are all N, and
  their predictions are dropped."""
  data = random_data(23)
  size = 10 * jax.local_device_count()
  columns = inference._global_batches(np.arange(23), size)  # pylint: disable=protected-access
  assert columns.shape == (-(-23 // size), size)
  np.testing.assert_array_equal(columns.ravel(),
                                list(range(23)) + [-1] * (columns.size - 23))
  evaluation = Evaluation(data.codes, batch_size=size)
  inputs = evaluation.inputs()
  assert inputs.shape == (columns.size, 85, 4) and inputs.dtype == np.uint8
  np.testing.assert_array_equal(inputs[23:], 0)
  np.testing.assert_array_equal(inputs[:23], dream_data.one_hot(data.codes[:, 15:100]))
  np.testing.assert_array_equal(evaluation.predictions[:, 0], name_windows(inputs[:23]))
  for b in evaluation.batches:
    assert b.shape == (jax.local_device_count(), 10, 85, 4)


def test_eval_keeps_the_given_order_of_indices():
  data = random_data(20)
  indices = np.array([9, 2, 17, 4])
  size = 3 * jax.local_device_count()
  columns = inference._global_batches(indices, size)  # pylint: disable=protected-access
  np.testing.assert_array_equal(columns.ravel(), [9, 2, 17, 4] + [-1] * (columns.size - 4))
  evaluation = Evaluation(data.codes, indices=indices, batch_size=size)
  np.testing.assert_array_equal(
      evaluation.predictions[:, 0],
      name_windows(dream_data.one_hot(data.codes[indices, 15:100])))


def fake_processes(monkeypatch, count, index):
  monkeypatch.setattr(jax, 'process_count', lambda: count)
  monkeypatch.setattr(jax, 'process_index', lambda: index)


def test_eval_shards_cover_every_row_once_with_equal_batch_counts(monkeypatch):
  """3 processes, 7 rows, batch 6: the last process's second batch is padding."""
  shards = []
  for p in range(3):
    fake_processes(monkeypatch, 3, p)
    shards.append(inference._global_batches(np.arange(7), 6))  # pylint: disable=protected-access
  assert [len(s) for s in shards] == [2, 2, 2]
  np.testing.assert_array_equal(shards[2][1], [-1, -1])
  seen = np.concatenate([s.ravel() for s in shards])
  assert sorted(seen[seen >= 0].tolist()) == list(range(7))
  # Concatenated in process order, batch by batch, they are the global order.
  order = np.concatenate([np.concatenate([s[b].ravel()
                                          for s in shards]) for b in range(2)])
  np.testing.assert_array_equal(order, list(range(7)) + [-1] * 5)


def test_prediction_needs_no_targets():
  """Codes alone (no expression): predict_rows cuts the windows of the rows it is given."""
  data = random_data(5)
  evaluation = Evaluation(data.codes, batch_size=4 * jax.local_device_count())
  np.testing.assert_array_equal(evaluation.inputs()[:5],
                                dream_data.one_hot(data.codes[:, 15:100]))


def test_pipeline_reads_read_only_memory_mapped_and_misaligned_codes(
    tmp_path):
  """What read_dream_file returns (read-only, memory-mapped) must work too."""
  data = random_data(12)
  np.save(tmp_path / 'codes.npy', data.codes)
  mapped = np.load(tmp_path / 'codes.npy', mmap_mode='r')
  misaligned = np.empty(12 * 110 + 1, np.uint8)[1:].reshape(12, 110)
  misaligned[:] = data.codes
  expected = dream_data.one_hot(data.codes[:, 15:100])
  for codes in (mapped, misaligned):
    np.testing.assert_array_equal(Evaluation(codes, batch_size=4).inputs(), expected)
    batches = train(make_data(codes), global_batch_size=4)
    assert sorted(decode(data, batches)) == [(r, s, False) for r in range(12)
                                             for s in (-1, 0, 1)]


def test_read_only_codes_are_copied_to_tensorflow_once_per_array(tmp_path):
  """Pipelines built each epoch reuse one TF copy of read-only codes."""
  np.save(tmp_path / 'codes.npy', random_data(12).codes)
  mapped = np.load(tmp_path / 'codes.npy', mmap_mode='r')
  first = dataset._as_tensor(mapped)  # pylint: disable=protected-access
  assert dataset._as_tensor(mapped) is first  # pylint: disable=protected-access


@pytest.mark.parametrize('kwargs, message', [
    (dict(global_batch_size=10, local_device_count=4), 'divisible'),
    (dict(global_batch_size=12, local_device_count=2, process_count=4),
     'divisible'),
    (dict(global_batch_size=12, local_device_count=1, process_index=2,
          process_count=2), 'process_index'),
])
def test_bad_batch_geometry_is_a_clear_error(kwargs, message):
  data = random_data(20)
  with pytest.raises(ValueError, match=message):
    dataset.train_batches(data, np.arange(20), seed=0, epoch=0, **kwargs)


def test_an_eval_batch_must_divide_over_the_devices_of_every_process(monkeypatch):
  fake_processes(monkeypatch, 4, 0)
  devices = 4 * jax.local_device_count()
  with pytest.raises(ValueError, match=rf'batch_size \(10\) must be a multiple of the '
                     rf'{devices} devices'):
    Evaluation(random_data(20).codes, batch_size=10)


def test_other_bad_arguments_are_clear_errors():
  data = random_data(20)
  kwargs = dict(global_batch_size=6, local_device_count=1, seed=0, epoch=0)
  with pytest.raises(ValueError, match='start_step'):
    dataset.train_batches(data, np.arange(20), start_step=11, **kwargs)
  with pytest.raises(ValueError, match='no full global batch'):
    dataset.train_batches(data, np.arange(1), **kwargs)
  with pytest.raises(ValueError, match='indices'):
    dataset.train_batches(data, np.arange(25), **kwargs)
  with pytest.raises(ValueError, match='outside the 110 codes'):
    dataset.train_batches(data, np.arange(20), config=dataset.PipelineConfig(
        crop_start=0), **kwargs)
  with pytest.raises(ValueError, match='shift_mode'):
    dataset.PipelineConfig(shift_mode='expanded')
  with pytest.raises(ValueError, match='one_hot_dtype'):
    dataset.PipelineConfig(one_hot_dtype='int32')
