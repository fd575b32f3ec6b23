"""NaN targets at one global step of a training run: how the tests make a run diverge.

In a test: `with nan_targets_at(17): trainer.train(...)`. As a command, for tests that
need a command-line run (several processes, the one-line errors):
`python tests/nan_targets.py 17 <experiments.train flags>` runs `experiments.train` so.
"""

import contextlib
import sys

import numpy as np

from enformer_small import train_loop
from experiments import _runtime
from experiments import train as train_lib


@contextlib.contextmanager
def nan_targets_at(global_step: int):
  """Within the block, the training batch of `global_step` (0-based) has NaN targets."""
  original = train_loop.epoch_batches

  def epoch_batches(run, epoch, first=0):
    index = global_step - epoch * run.plan.steps_per_epoch - first
    for i, batch in enumerate(original(run, epoch, first)):
      yield dict(batch, targets=np.full_like(batch['targets'], np.nan)) if i == index \
          else batch

  train_loop.epoch_batches = epoch_batches
  try:
    yield
  finally:
    train_loop.epoch_batches = original


if __name__ == '__main__':
  step = int(sys.argv.pop(1))
  train_lib.define_flags()
  with nan_targets_at(step):
    _runtime.run(train_lib.main)
