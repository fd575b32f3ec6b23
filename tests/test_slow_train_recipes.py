"""Slow tier: every recipe option together through train / resume / predict.

The runs use the real code path on a few hundred synthetic rows with a small batch.
"""

import json
import shutil

import jax
import numpy as np
import pytest

from enformer_small import checkpoint
from enformer_small import checkpointer
from enformer_small import dream_data
from enformer_small import inference
from enformer_small import metrics as metrics_lib
from enformer_small import recipe as recipe_lib
from enformer_small import train_data
from enformer_small import trainer
from enformer_small.train_config import TrainConfig
from enformer_small.train_errors import TrainingError

# Every option at once: AdamW with decay and clipping on a one-cycle schedule, EMA,
# both kinds of reverse complement, windows shifted 10 bp into the plasmid (in training
# and averaged in evaluation), BatchNorm recalibration (with the seed's dropout on),
# soft-bin targets, early stopping armed.
RECIPE = dict(optimizer='adamw', learning_rate=0.002, weight_decay=0.01,
              schedule='one_cycle', clip_global_norm=1.0, ema_decay=0.9,
              reverse_complement=True, eval_reverse_complement=True,
              eval_shifts=(-10, 0, 10), plasmid_context=10, shifts=(-10, 0, 10),
              bn_recalibration_batches=2,
              loss='soft_bin', early_stopping_patience=5)


def _config(tmp, name, **overrides):
  fields = dict(
      run_dir=str(tmp / name), synthetic_rows=300, synthetic_seed=3,
      synthetic_dir=str(tmp / 'data'), data_cache_dir=str(tmp / 'cache'),
      num_holdout=60, split_seed=1, batch_size=48, eval_batch_size=64, num_epochs=2,
      seed=5, keep_checkpoints=0, **RECIPE)
  fields.update(overrides)
  return TrainConfig(**fields)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """2 epochs straight; and the same run resumed from the copy of its epoch-1
  checkpoint, in the middle of the schedule."""
  tmp = tmp_path_factory.mktemp('recipes')
  whole = trainer.train(_config(tmp, 'whole'))
  shutil.copytree(tmp / 'whole' / 'checkpoints' / '15',  # epoch 1's end
                  tmp / 'split' / 'checkpoints' / '15')
  resumed = trainer.train(_config(tmp, 'split'), trainer.RunOptions(resume=True))
  return dict(tmp=tmp, whole=whole, resumed=resumed)


def test_resume_mid_schedule_equals_the_uninterrupted_run(runs):
  whole, resumed = runs['whole'].train_state, runs['resumed'].train_state
  assert int(whole.step) == 2 * 15  # 240 rows x 3 shifts / 48, 2 epochs
  assert (jax.tree_util.tree_structure(whole) == jax.tree_util.tree_structure(resumed))
  for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  def without_timings(history):
    return [{k: v for k, v in r.items() if 'second' not in k and 'per_s' not in k}
            for r in history]
  assert without_timings(runs['whole'].history) == without_timings(runs['resumed'].history)
  schedule = recipe_lib.learning_rate_schedule(_config(runs['tmp'], 'x').recipe, 30)
  assert [r['learning_rate'] for r in runs['whole'].history] == [
      pytest.approx(float(schedule(s))) for s in (14, 29)]


def test_checkpoints_hold_the_evaluated_and_the_training_variables(runs):
  """Params are the Polyak average (what was evaluated), train_params what training
  continues from; state the recalibrated BatchNorm averages; the recipe, the plasmid
  context and the window are recorded; the model has the 18-bin head."""
  ckpt = checkpointer.Checkpointer(runs['tmp'] / 'whole').restore_latest().checkpoint
  assert ckpt.epoch == 2
  final = runs['whole'].train_state
  for module, values in final.params.items():
    for name, value in values.items():
      np.testing.assert_array_equal(ckpt.train_params[module][name], value)
      np.testing.assert_array_equal(ckpt.params[module][name],
                                    final.opt_state.ema[module][name])
  assert not np.array_equal(ckpt.params['enformer/~/head_yeast/~/output']['w'],
                            ckpt.train_params['enformer/~/head_yeast/~/output']['w'])
  average = 'enformer/~/trunk/~/stem/~/pointwise_conv_block/~/batch_norm/~/mean_ema'
  assert not np.array_equal(ckpt.state[average]['average'],
                            ckpt.train_state[average]['average'])
  assert ckpt.recipe['loss'] == 'soft_bin' and ckpt.recipe['eval_reverse_complement']
  assert ckpt.recipe['eval_shifts'] == [-10, 0, 10]
  assert ckpt.plasmid_context == 10 and ckpt.crop_start == 25
  assert ckpt.model_config.head_kind == 'soft_bins'


def test_train_config_json_records_what_was_used(runs):
  config = _config(runs['tmp'], 'whole')
  used = json.loads((runs['tmp'] / 'whole' / 'train_config.json').read_text())
  assert used['train_file'] == train_data.synthetic_path(config)
  assert used['crop_start'] == 25 and used['plasmid_context'] == 10
  assert used['resolved']['parameters'] == 2_005_426
  assert used['resolved']['steps_per_epoch'] == 15
  assert used['resolved']['window'] == [25, 110]
  assert used['resolved']['train_rows'] == 240


def test_resume_refuses_another_recipe_or_schedule_length(runs):
  with pytest.raises(TrainingError, match='--ema_decay'):
    trainer.train(_config(runs['tmp'], 'whole', ema_decay=0.5),
                  trainer.RunOptions(resume=True))
  with pytest.raises(TrainingError, match='num_epochs.*schedule'):
    trainer.train(_config(runs['tmp'], 'whole', num_epochs=3),
                  trainer.RunOptions(resume=True))


def test_predict_applies_the_recorded_inference_settings(runs):
  """The checkpoint's predictor on the held-out rows with no options reproduces the
  held-out Pearson training recorded for the best epoch (plasmid context, soft-bin
  expectation, shift and strand averaging all applied); forcing single-strand or
  unshifted prediction changes it."""
  config = _config(runs['tmp'], 'whole')
  data = dream_data.read_dream_file(train_data.synthetic_path(config),
                                    cache_dir=config.data_cache_dir)
  _, holdout = dream_data.holdout_split(len(data), config.num_holdout, config.split_seed)
  best = checkpoint.load_checkpoint(checkpoint.best_checkpoint_path(config.run_dir))
  record = runs['whole'].history[best.epoch - 1]
  codes = data.codes[holdout]

  def predict_codes(**options):
    predictor = inference.from_checkpoint(best, inference.InferenceOptions(**options))
    return predictor.predict_codes(codes, batch_size=64)[:, 0]

  pred = predict_codes()
  r = metrics_lib.pearson_r(pred, data.expression[holdout])
  assert r == pytest.approx(record['holdout']['pearson'], abs=1e-5)
  one_strand = predict_codes(reverse_complement_average=False)
  assert not np.allclose(one_strand, pred)
  unshifted = predict_codes(eval_shifts=())
  assert not np.allclose(unshifted, pred)
