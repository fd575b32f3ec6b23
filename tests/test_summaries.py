"""TensorBoard event files: what is written is what TensorBoard's reader sees."""

import math

import numpy as np

from enformer_small import summaries


def test_flatten_scalars_names_nested_numbers_and_drops_the_rest():
  record = {'epoch': 3, 'holdout': {'pearson': 0.5, 'spearman': 0.25},
            'train': {'pearson': 0.75}, 'note': 'x', 'flag': True, 'none': None}
  assert summaries.flatten_scalars(record) == {
      'epoch': 3.0, 'holdout/pearson': 0.5, 'holdout/spearman': 0.25,
      'train/pearson': 0.75}


def test_scalars_read_back_with_tensorboards_reader(tmp_path):
  with summaries.ScalarWriter(str(tmp_path)) as writer:
    writer.scalars(10, {'train/loss': 0.125, 'learning_rate': 0.01})
    writer.scalars(20, {'train/loss': 0.0625, 'learning_rate': 0.005})
    writer.scalars(20, {'holdout/pearson': float('nan')})
  assert list(tmp_path.glob('events.out.tfevents.*'))
  got = summaries.read_scalars(str(tmp_path))
  assert sorted(got) == ['holdout/pearson', 'learning_rate', 'train/loss']
  assert got['train/loss'] == [(10, 0.125), (20, 0.0625)]
  # Event files hold float32.
  assert got['learning_rate'] == [(10, float(np.float32(0.01))),
                                  (20, float(np.float32(0.005)))]
  (step, value), = got['holdout/pearson']
  assert step == 20 and math.isnan(value)
