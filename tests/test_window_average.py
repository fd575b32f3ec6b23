"""Test-time averaging over shifted windows (and strands): `window_average`, as the one
inference path (`inference`: experiments.predict, the commands built on it and
training's held-out evaluation) uses it.

The expectations are computed here by hand: the extended rows from the plasmid strings,
the windows by numpy slicing, the model called on each window set directly.
"""

import jax
import numpy as np
import pytest

from enformer_small import checkpoint
from enformer_small import config as config_lib
from enformer_small import plasmid
from enformer_small import recipe as recipe_lib
from enformer_small import training
from enformer_small import window_average
from enformer_small import inference
from enformer_small.train_config import TrainConfig
from random_model import random_variables

CONTEXT, LENGTH, START = 10, 110, 10   # 110 bp windows centred in 130 bp rows
FLANK_5, FLANK_3 = 'TGCATTTTTTTCACATC', 'GGTTACGGCTGTT'
NUM_ROWS = 24
BATCH = 64  # Rows per forward pass: as test_inference.py and test_trainer.py predict.


def test_passes_are_every_shift_on_each_strand_in_order():
  def windows(**kwargs):
    return window_average.Windows(START, LENGTH, **kwargs)
  assert windows().passes == ((0, False),)
  assert windows(reverse_complement=True).passes == (
      (0, False), (0, True))
  assert windows(shifts=(-5, 0, 5)).passes == (
      (-5, False), (0, False), (5, False))
  assert windows(shifts=(3, -2), reverse_complement=True).passes == (
      (3, False), (3, True), (-2, False), (-2, True))


def test_a_recipe_records_its_shifts_and_the_default_has_none():
  unshifted = window_average.Windows(START, LENGTH)
  assert recipe_lib.Recipe().eval_shifts == ()
  assert window_average.of_recipe(recipe_lib.Recipe(), START, LENGTH) == unshifted
  recipe = recipe_lib.Recipe(eval_shifts=[-10, '5'], eval_reverse_complement=True)
  assert recipe.eval_shifts == (-10, 5)
  recorded = recipe_lib.fields_as_dict(recipe)
  assert recipe_lib.from_fields(recorded) == recipe
  assert window_average.of_recipe(recorded, START, LENGTH) == window_average.Windows(
      START, LENGTH, shifts=(-10, 5), reverse_complement=True)
  # older checkpoints
  assert window_average.of_recipe({}, START, LENGTH) == unshifted


def test_repeated_shifts_are_refused():
  with pytest.raises(ValueError, match=r'eval_shifts must be distinct, got \(0, 5, 0\)'):
    recipe_lib.Recipe(eval_shifts=(0, 5, 0))


def test_average_is_the_mean_and_one_window_comes_back_unchanged():
  rng = np.random.default_rng(0)
  by_pass = {(s, r): rng.uniform(0, 17, 1000).astype(np.float32)
             for s in (-4, 0, 4) for r in (False, True)}
  one = window_average.average(lambda s, r: by_pass[s, r],
                               window_average.Windows(START, LENGTH))
  np.testing.assert_array_equal(one, by_pass[0, False], strict=True)
  # Both strands: bit for bit the float32 (a + b) / 2 evaluation used before shifts.
  two = window_average.average(lambda s, r: by_pass[s, r], window_average.Windows(
      START, LENGTH, reverse_complement=True))
  np.testing.assert_array_equal(two, (by_pass[0, False] + by_pass[0, True]) / 2,
                                strict=True)
  six = window_average.average(lambda s, r: by_pass[s, r], window_average.Windows(
      START, LENGTH, shifts=(-4, 0, 4), reverse_complement=True))
  expected = np.mean(np.stack(list(by_pass.values())).astype(np.float64), axis=0)
  np.testing.assert_array_equal(six, expected.astype(np.float32), strict=True)


def test_a_shift_must_keep_the_window_in_the_extended_rows():
  window_average.Windows(START, LENGTH, shifts=(-10, -5, 0, 5, 10)).check(130)
  with pytest.raises(ValueError) as raised:
    window_average.Windows(START, LENGTH, shifts=(-11, 0, 10, 12)).check(130)
  assert str(raised.value) == (
      'eval shifts (-11, 12) move the 110 bp window [10:120] outside the 130 bp rows '
      'it is cut from: use smaller shifts or, for DREAM rows, a larger plasmid context')


def test_train_refuses_eval_shifts_beyond_the_plasmid_context():
  fields = dict(input_length=110, plasmid_context=5, shifts=(0,))
  config = TrainConfig(eval_shifts=(-5, 5), **fields)
  assert config.recipe.eval_shifts == (-5, 5)
  with pytest.raises(ValueError, match=r'eval shifts \(6,\) move the 110 bp window '
                     r'\[5:115\] outside the 120 bp rows'):
    TrainConfig(eval_shifts=(-5, 6), **fields)
  with pytest.raises(ValueError, match=r'eval shifts \(-1,\) move'):
    TrainConfig(input_length=110, shifts=(0,), eval_shifts=(-1,))


# ---------------------------------------------------------------------------
# Through the one inference path, against windows sliced by hand.


def rows(n):
  """110 bp DREAM rows (one with N, one 5 bp short and so N-padded at the 3' end)."""
  rng = np.random.default_rng(1)
  sequences = []
  for i in range(n):
    insert = ''.join(rng.choice(list('ACGT'), 75 if i == 3 else 80))
    if i == 5:
      insert = insert[:30] + 'NNNN' + insert[34:]
    sequences.append(FLANK_5 + insert + FLANK_3)
  return sequences


def one_hot(text):
  return np.array([[float(base == b) for b in 'ACGT'] for base in text], np.float32)


def extended_rows(sequences):
  """[N, 130, 4]: 10 bp of the plasmid, the sequence N-padded to 110 bp, 10 bp more."""
  return np.stack([one_hot(plasmid.UPSTREAM[-CONTEXT:] + s.ljust(110, 'N')
                           + plasmid.DOWNSTREAM[:CONTEXT]) for s in sequences])


def by_hand(ckpt, sequences, passes):
  """The mean over `passes` of the eval step on the windows sliced from the rows (in a
  batch of BATCH, padded with N rows as the inference path pads its batches)."""
  step = training.make_eval_step(ckpt.model_config)
  params, state = training.replicate(ckpt.params), training.replicate(ckpt.state)
  x = extended_rows(sequences)
  outs = []
  for shift, reverse in passes:
    window = x[:, START + shift:START + shift + LENGTH]
    if reverse:  # complement = channels reversed (A<->T, C<->G), then positions
      window = window[:, ::-1, ::-1]
    batch = np.zeros((BATCH,) + window.shape[1:], np.float32)
    batch[:len(window)] = window
    out = step(params, state, batch.reshape((jax.local_device_count(), -1) + window.shape[1:]))
    outs.append(np.asarray(out).reshape(BATCH, -1)[:len(window)])
  return np.mean(np.stack(outs).astype(np.float64), axis=0).astype(np.float32), outs


@pytest.fixture(scope='module')
def soft_bin_checkpoint(tmp_path_factory):
  """A 110 bp soft-bin model with random weights (so every window counts), saved
  with 10 bp of plasmid context, both strands and shifts -10, -3, 0, 7, 10 recorded.
  The model configuration of tests/conftest.py's `tiny_run` (one compilation for both)."""
  model_config = config_lib.seed_config(LENGTH).with_soft_bin_head(
      recipe_lib.NUM_SOFT_BINS)
  params, state = random_variables(model_config, seed=7)
  recipe = recipe_lib.Recipe(eval_reverse_complement=True, eval_shifts=(-10, -3, 0, 7, 10),
                             plasmid_context=CONTEXT, loss='soft_bin')
  path = tmp_path_factory.mktemp('window_average') / 'model.npz'
  checkpoint.save_checkpoint(
      path, params=params, state=state, model_config=model_config,
      extra=dict(crop_start=START, plasmid_context=CONTEXT,
                 recipe=recipe_lib.fields_as_dict(recipe)))
  return checkpoint.load_checkpoint(path)


def predicted(ckpt, sequences, **overrides):
  """[N]: the predictions of the one inference path (`inference.from_checkpoint`)."""
  predictor = inference.from_checkpoint(ckpt, inference.InferenceOptions(
      batch_size=BATCH, **overrides))
  return predictor.predict(sequences)


def test_recorded_shifts_and_strands_are_the_mean_of_the_hand_sliced_windows(
    soft_bin_checkpoint):
  sequences = rows(NUM_ROWS)
  passes = [(s, r) for s in (-10, -3, 0, 7, 10) for r in (False, True)]
  expected, outs = by_hand(soft_bin_checkpoint, sequences, passes)
  # Every window predicts something else: none of them could stand in for the mean.
  assert min(np.abs(a - b).max() for i, a in enumerate(outs) for b in outs[i + 1:]) > 1e-4
  np.testing.assert_array_equal(predicted(soft_bin_checkpoint, sequences), expected,
                                strict=True)


def test_overridden_shifts_on_one_strand_are_the_mean_of_the_hand_sliced_windows(
    soft_bin_checkpoint):
  sequences = rows(NUM_ROWS)
  expected, _ = by_hand(soft_bin_checkpoint, sequences, [(-10, False), (4, False)])
  np.testing.assert_array_equal(
      predicted(soft_bin_checkpoint, sequences, eval_shifts=(-10, 4),
                reverse_complement_average=False), expected, strict=True)


def test_no_shifts_is_the_unshifted_window_bit_for_bit(soft_bin_checkpoint):
  sequences = rows(NUM_ROWS)
  for reverse_complement in (False, True):
    passes = [(0, False)] + ([(0, True)] if reverse_complement else [])
    _, outs = by_hand(soft_bin_checkpoint, sequences, passes)
    # As predict averaged before shifts existed: float32 (a + b) / 2 for two strands.
    expected = outs[0] if len(outs) == 1 else (outs[0] + outs[1]) / 2
    np.testing.assert_array_equal(
        predicted(soft_bin_checkpoint, sequences, eval_shifts=(),
                  reverse_complement_average=reverse_complement),
        expected, strict=True)


def test_predict_refuses_a_shift_beyond_the_plasmid_context(soft_bin_checkpoint):
  with pytest.raises(ValueError, match=r'eval shifts \(11,\) move the 110 bp window '
                     r'\[10:120\] outside the 130 bp rows'):
    predicted(soft_bin_checkpoint, rows(2), eval_shifts=(0, 11))
