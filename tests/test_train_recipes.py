"""Recipes in the training loop: the seed's step unchanged, every option together through
train / resume / predict, and the command line's Ctrl-C and log lines.

The runs use the real code path on a few hundred synthetic rows with a small batch.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from enformer_small import checkpoint
from enformer_small import checkpointer
from enformer_small import config as config_lib
from enformer_small import dream_data
from enformer_small import metrics as metrics_lib
from enformer_small import recipe as recipe_lib
from enformer_small import training
from enformer_small.model import make_model
from experiments import predict as predict_lib
from experiments import train as train_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _seed_train_step(model_config, optimizer, axis_name=training.AXIS_NAME):
  """The seed's train step as it stood before recipes existed (frozen here as the
  specification of the default): Poisson loss, pmean'd gradients, optax update."""
  model = make_model(model_config, cross_replica_axis=axis_name)

  def loss_fn(params, state, rng, inputs, targets):
    outputs, new_state = model.apply(params, state, rng, inputs, is_training=True)
    predictions = outputs['yeast'].astype(jnp.float32)
    return training.poisson_loss(predictions, targets), (new_state, predictions)

  def train_step(train_state, batch):
    rng, step_rng = jax.random.split(train_state.rng)
    step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
    inputs = batch['inputs'].astype(jnp.float32)
    targets = batch['targets'].astype(jnp.float32)
    grads, (new_state, predictions) = jax.grad(loss_fn, has_aux=True)(
        train_state.params, train_state.state, step_rng, inputs, targets)
    grads = jax.lax.pmean(grads, axis_name)
    updates, opt_state = optimizer.update(grads, train_state.opt_state,
                                          train_state.params)
    params = optax.apply_updates(train_state.params, updates)
    loss = training.poisson_loss(predictions, targets)
    err = predictions - targets
    metrics = jax.lax.pmean({'loss': loss, 'mse': jnp.mean(err**2),
                             'mae': jnp.mean(jnp.abs(err))}, axis_name)
    metrics['predictions'] = predictions[..., 0]
    metrics['targets'] = targets[..., 0]
    return training.TrainState(params=params, state=new_state, opt_state=opt_state,
                               rng=rng, step=train_state.step + 1), metrics

  return jax.pmap(train_step, axis_name=axis_name)


def test_default_recipe_steps_are_the_seeds_bit_for_bit():
  """Two steps (dropout on) with Recipe()'s optimizer through make_train_step: the same
  parameters, BatchNorm state, momentum, key and metrics as the frozen seed step."""
  model_config = config_lib.seed_config(85)
  optimizer = recipe_lib.make_optimizer(recipe_lib.Recipe())
  start = training.init_train_state(model_config, optimizer, jax.random.PRNGKey(0))
  d = jax.local_device_count()
  rng = np.random.default_rng(0)
  batches = [training.shard_batch({
      'inputs': np.eye(4, dtype=np.uint8)[rng.integers(0, 4, (d, 8, 85))],
      'targets': rng.uniform(0, 17, (d, 8, 1)).astype(np.float32)}) for _ in range(2)]
  results = []
  for step in (training.make_train_step(model_config, optimizer, donate=False,
                                        return_predictions=True),
               _seed_train_step(model_config, optax.sgd(0.01, momentum=0.9))):
    state, outputs = training.replicate(start), []
    for batch in batches:
      state, metrics = step(state, batch)
      outputs.append(metrics)
    results.append(jax.device_get((state, outputs)))
  ours, seed = results
  assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(seed)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(seed)):
    np.testing.assert_array_equal(a, b)


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
  return train_lib.TrainConfig(**fields)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """2 epochs straight; and the same run resumed from the copy of its epoch-1
  checkpoint, in the middle of the schedule."""
  tmp = tmp_path_factory.mktemp('recipes')
  whole = train_lib.train(_config(tmp, 'whole'), verbose=False)
  shutil.copytree(tmp / 'whole' / 'checkpoints' / '15',  # epoch 1's end
                  tmp / 'split' / 'checkpoints' / '15')
  resumed = train_lib.train(_config(tmp, 'split'), resume=True, verbose=False)
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
  assert used['train_file'] == train_lib.synthetic_path(config)
  assert used['crop_start'] == 25 and used['plasmid_context'] == 10
  assert used['resolved']['parameters'] == 2_005_426
  assert used['resolved']['steps_per_epoch'] == 15
  assert used['resolved']['window'] == [25, 110]
  assert used['resolved']['train_rows'] == 240


def test_resume_refuses_another_recipe_or_schedule_length(runs):
  with pytest.raises(train_lib.TrainingError, match='--ema_decay'):
    train_lib.train(_config(runs['tmp'], 'whole', ema_decay=0.5), resume=True,
                    verbose=False)
  with pytest.raises(train_lib.TrainingError, match='num_epochs.*schedule'):
    train_lib.train(_config(runs['tmp'], 'whole', num_epochs=3), resume=True,
                    verbose=False)


def test_predict_applies_the_recorded_inference_settings(runs):
  """predict_codes on the held-out rows with no options reproduces the held-out Pearson
  training recorded for the best epoch (plasmid context, soft-bin expectation, shift
  and strand averaging all applied); forcing single-strand or unshifted prediction
  changes it."""
  config = _config(runs['tmp'], 'whole')
  data = dream_data.read_dream_file(train_lib.synthetic_path(config))
  _, holdout = dream_data.holdout_split(len(data), config.num_holdout, config.split_seed)
  best = checkpoint.load_checkpoint(checkpoint.best_checkpoint_path(config.run_dir))
  record = runs['whole'].history[best.epoch - 1]
  codes = data.codes[holdout]
  pred = predict_lib.predict_codes(best, codes, batch_size=64)
  r = metrics_lib.pearson_r(pred, data.expression[holdout])
  assert r == pytest.approx(record['holdout']['pearson'], abs=1e-5)
  one_strand = predict_lib.predict_codes(best, codes, batch_size=64,
                                         reverse_complement_average=False)
  assert not np.allclose(one_strand, pred)
  unshifted = predict_lib.predict_codes(best, codes, batch_size=64, eval_shifts=())
  assert not np.allclose(unshifted, pred)


# ---------------------------------------------------------------------------
# The command line: log lines off a terminal, and Ctrl-C.


def test_ctrl_c_prints_one_line_and_exits_130_at_once(tmp_path):
  """Off a terminal the run logs epoch, step, loss and seq/s every --log_every_steps;
  SIGINT in the middle of epoch 2 ends it within seconds, status 130, with one line
  naming the epoch, step and last checkpoint (epoch 1's, whole), and no traceback."""
  run_dir = tmp_path / 'run'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', TF_ENABLE_ONEDNN_OPTS='0',
             PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]))
  proc = subprocess.Popen(
      [sys.executable, '-m', 'experiments.train', f'--run_dir={run_dir}',
       '--synthetic_rows=300', '--synthetic_seed=3', f'--synthetic_dir={tmp_path / "d"}',
       f'--data_cache_dir={tmp_path / "c"}', '--num_holdout=60', '--batch_size=16',
       '--eval_batch_size=64', '--num_epochs=50', '--nodropout', '--log_every_steps=2'],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    seen = []
    for line in proc.stdout:
      seen.append(line)
      if 'epoch 2/50 step 4/45' in line:
        break
    assert 'epoch 1/50 step 2/45 (global 2): poisson loss ' in ''.join(seen), ''.join(seen)
    assert 'epoch 2/50 step 4/45 (global 49): poisson loss ' in seen[-1]
    assert 'seq/s' in seen[-1]
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    seconds = time.monotonic() - sent
  finally:
    proc.kill()
  assert proc.returncode == 130, stderr[-2000:]
  assert seconds < 5
  assert 'Traceback' not in stderr
  lines = [l for l in stderr.splitlines() if 'interrupted' in l]
  assert len(lines) == 1
  last = run_dir / 'checkpoints' / '45'  # epoch 1's end
  assert lines[0].startswith('interrupted at epoch 2, step ')
  assert lines[0].endswith(f'the last checkpoint is {last}; --resume continues')
  saver = checkpointer.Checkpointer(run_dir)
  assert saver.steps() == [45]
  assert saver.restore_latest().checkpoint.step == 45
  assert not [p for p in os.listdir(run_dir) if p.endswith('.tmp')]
  assert not [p for p in os.listdir(run_dir / 'checkpoints') if 'tmp' in p]
  used = json.loads((run_dir / 'train_config.json').read_text())
  assert used['train_file'].endswith('synthetic_300rows_seed3.txt')
