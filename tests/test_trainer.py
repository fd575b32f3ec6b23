"""The training run as a library call: train -> resume -> predict, in one process.

`trainer.train` with a real_6370.flags-like recipe (tests/conftest.py's `tiny_run`):
its files, a resume that carries on where it stopped, and a checkpoint whose
predictions through the one inference path are what its held-out evaluation scored.
The long equivalences (a resumed run bit for bit the uninterrupted one, at an epoch's
end and within one) are in test_slow_training.py.
"""

import dataclasses
import json
import os

import pytest

from enformer_small import checkpoint
from enformer_small import dream_data
from enformer_small import inference
from enformer_small import metrics
from enformer_small import run_files
from enformer_small import trainer
from enformer_small import train_data
from enformer_small.train_errors import TrainingError


def test_a_run_writes_its_files_and_records_how_it_predicts(tiny_run):
  config, result = tiny_run
  names = set(os.listdir(config.run_dir))
  assert {run_files.METRICS_FILE, run_files.PLOT_FILE, run_files.CONFIG_FILE,
          checkpoint.BEST_NAME, 'checkpoints'} <= names
  assert len(result.history) == 1 and result.best_epoch == 1
  ckpt = checkpoint.load_checkpoint(os.path.join(config.run_dir, checkpoint.BEST_NAME))
  assert (ckpt.plasmid_context, ckpt.crop_start) == (10, 10)
  assert ckpt.recipe['eval_shifts'] == [-2, 0, 2]
  assert ckpt.recipe['eval_reverse_complement'] is True
  recorded = json.loads(open(os.path.join(config.run_dir, run_files.CONFIG_FILE)).read())
  assert recorded['resolved']['window'] == [10, 120]
  assert recorded['resolved']['row_length'] == 130


def test_the_checkpoint_predicts_what_its_evaluation_scored(tiny_run):
  """Held-out rows predicted by `inference` from checkpoint_best.npz give the held-out
  Pearson the run recorded: training evaluates through the same path."""
  config, result = tiny_run
  predictor = inference.load(os.path.join(config.run_dir, checkpoint.BEST_NAME))
  assert len(predictor.windows.passes) == 6
  data = dream_data.read_dream_file(train_data.synthetic_path(config),
                                    cache_dir=config.data_cache_dir)
  _, holdout = dream_data.holdout_split(len(data), config.num_holdout, config.split_seed)
  predictions = predictor.predict_codes(data.codes[holdout], batch_size=64)[:, 0]
  recorded = result.history[0]['holdout']['pearson']
  assert metrics.pearson_r(predictions, data.expression[holdout]) == recorded


def test_resume_carries_on_from_the_last_epoch(tiny_run, tmp_path):
  """A second epoch resumed from the first one's save: the history grows by one, and
  a start without --resume or --overwrite is refused in one line."""
  config, result = tiny_run
  run_dir = tmp_path / 'run'
  import shutil
  shutil.copytree(config.run_dir, run_dir)
  more = dataclasses.replace(config, run_dir=str(run_dir), num_epochs=2)
  with pytest.raises(TrainingError, match='already holds checkpoints'):
    trainer.train(more)
  resumed = trainer.train(more, trainer.RunOptions(resume=True, log_every_steps=0))
  assert [r['epoch'] for r in resumed.history] == [1, 2]
  assert resumed.history[0] == result.history[0]
  assert int(resumed.train_state.step) == 2 * 15
