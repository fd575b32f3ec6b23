"""Slow tier: whole trainings of their own. Resuming (at an epoch's end and within one,
past a damaged save), stopping on NaN, --overwrite, TensorBoard and the run directory of
a 2-epoch run, bfloat16 steps and runs, 2 devices == 1 device, a two-target table.

The runs use the real code path (the seed model at 85 bp, the tf.data pipeline, the
pmapped step) on a few hundred synthetic rows with a small batch.
"""

import logging
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from enformer_small import checkpoint
from enformer_small import checkpointer
from enformer_small import summaries
from enformer_small import trainer
from enformer_small import training
from enformer_small.train_config import TrainConfig
from enformer_small.train_errors import NonFiniteError, TrainingError
from nan_targets import nan_targets_at
from test_checkpoint import damage_save
from test_training import assert_same_train_state as _assert_same_train_state
from test_training import files_under as _files
from test_training import float_dtypes as _float_dtypes
from test_training import metrics_file as _metrics_file
from test_training import without_timings as _without_timings

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _train(config, **options):
  """trainer.train with these RunOptions."""
  return trainer.train(config, trainer.RunOptions(**options))


def test_bfloat16_steps_compute_in_bfloat16_and_keep_float32_state():
  """--compute_dtype=bfloat16: activations in bfloat16, parameters, BatchNorm averages
  and momentum in float32. Against float32 from the same state and batch: the loss
  within 1%, the update pointing the same way (cosine > 0.95), eval predictions within
  5% (bfloat16 keeps 8 significant bits, about 0.4% per rounding, over ~30 layers)."""
  from enformer_small import config
  model_config = config.seed_config(85).without_dropout()
  optimizer = training.make_optimizer()
  start = training.init_train_state(model_config, optimizer, jax.random.PRNGKey(0))
  d = jax.local_device_count()
  rng = np.random.default_rng(0)
  batch = training.shard_batch({
      'inputs': np.eye(4, dtype=np.uint8)[rng.integers(0, 4, (d, 64, 85))],
      'targets': rng.uniform(0, 17, (d, 64, 1)).astype(np.float32)})
  after, loss = {}, {}
  for dtype in ('float32', 'bfloat16'):
    step = training.make_train_step(model_config, optimizer, compute_dtype=dtype,
                                    donate=False)
    new_state, metrics = step(training.replicate(start), batch)
    after[dtype], loss[dtype] = training.unreplicate(new_state), float(metrics['loss'][0])
  assert _float_dtypes(after['bfloat16'].params, after['bfloat16'].state,
                       after['bfloat16'].opt_state) == {'float32'}
  assert loss['bfloat16'] != loss['float32']
  assert loss['bfloat16'] == pytest.approx(loss['float32'], rel=0.01)
  update = {k: np.concatenate([np.ravel(a - b) for a, b in zip(
      jax.tree_util.tree_leaves(v.params), jax.tree_util.tree_leaves(start.params))])
            for k, v in after.items()}
  cosine = update['bfloat16'] @ update['float32'] / (
      np.linalg.norm(update['bfloat16']) * np.linalg.norm(update['float32']))
  assert cosine > 0.95

  trained = training.replicate(after['float32'])  # BatchNorm averages filled in.
  eval_f32 = training.make_eval_step(model_config)
  reference = np.asarray(eval_f32(trained.params, trained.state, batch['inputs']))
  eval_bf16 = training.make_eval_step(model_config, compute_dtype='bfloat16')
  assert 'bf16' in eval_bf16.lower(trained.params, trained.state, batch['inputs']).as_text()
  predictions = np.asarray(eval_bf16(trained.params, trained.state, batch['inputs']))
  np.testing.assert_allclose(predictions, reference, rtol=0.05)
  assert not np.array_equal(predictions, reference)


def _tiny_config(tmp, name, **overrides):
  fields = dict(
      run_dir=str(tmp / name), synthetic_rows=300, synthetic_seed=3,
      synthetic_dir=str(tmp / 'data'), data_cache_dir=str(tmp / 'cache'),
      num_holdout=60, split_seed=1, batch_size=48, eval_batch_size=64,
      learning_rate=0.01, momentum=0.9, num_epochs=2, seed=5, keep_checkpoints=1)
  fields.update(overrides)
  return TrainConfig(**fields)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """An uninterrupted 2-epoch run, and 1 epoch + a resumed second epoch."""
  tmp = tmp_path_factory.mktemp('train')
  whole = _train(_tiny_config(tmp, 'whole'))
  first = _train(_tiny_config(tmp, 'split', num_epochs=1))
  # The stopped run, copied for the NaN test to resume from.
  shutil.copytree(tmp / 'split', tmp / 'nan')
  resumed = _train(_tiny_config(tmp, 'split'), resume=True)
  return dict(tmp=tmp, whole=whole, first=first, resumed=resumed)


def test_resumed_run_equals_uninterrupted_run(runs):
  """1 epoch, stop, --resume for the 2nd: the same parameters, state, optimizer, rng."""
  whole, resumed = runs['whole'].train_state, runs['resumed'].train_state
  _assert_same_train_state(whole, resumed)
  assert int(whole.step) == 2 * 15  # 240 rows x 3 shifts / 48 per step, 2 epochs
  assert (_without_timings(runs['whole'].history) ==
          _without_timings(runs['resumed'].history))


@pytest.fixture(scope='module')
def stopped_within_an_epoch(runs):
  """The 'whole' run saving after every step, stopped by NaN targets at global step 19
  (epoch 2, step 5 of 15) after its save of step 19 (4 steps into epoch 2)."""
  config = _tiny_config(runs['tmp'], 'within', keep_checkpoints=2)
  with pytest.raises(NonFiniteError), nan_targets_at(19):
    _train(config, save_every_minutes=1e-9)
  return runs['tmp'] / 'within'


def test_saves_within_an_epoch_hold_the_position_and_predictions(stopped_within_an_epoch):
  saver = checkpointer.Checkpointer(stopped_within_an_epoch)
  assert saver.steps() == [15, 19]  # Epoch 1's end and the newest save (keep 2).
  restored = saver.restore_latest()
  assert (restored.checkpoint.epoch, restored.checkpoint.step) == (1, 19)
  assert restored.progress.steps == 4
  assert restored.progress.predictions.shape == (4 * 48,)
  assert [m['epoch'] for m in restored.checkpoint.metrics] == [1]


def test_resume_within_an_epoch_equals_the_uninterrupted_run(
    runs, stopped_within_an_epoch, tmp_path):
  """--resume continues at step 5 of epoch 2: the final state, the history and
  metrics.jsonl (but for timings) equal the uninterrupted run's, bit for bit."""
  run_dir = tmp_path / 'resumed_within'
  shutil.copytree(stopped_within_an_epoch, run_dir)
  resumed = _train(_tiny_config(tmp_path, 'resumed_within'), resume=True)
  _assert_same_train_state(runs['whole'].train_state, resumed.train_state)
  assert (_without_timings(runs['whole'].history) ==
          _without_timings(resumed.history))
  assert _metrics_file(run_dir) == _metrics_file(runs['whole'].run_dir)
  assert checkpointer.Checkpointer(run_dir).steps() == [30]


@pytest.mark.parametrize('damage', ['truncate', 'flip_bytes'])
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(
    runs, stopped_within_an_epoch, tmp_path, caplog, damage):
  """The save of step 19 damaged: a warning names it and why; the run resumes from the
  save of step 15 and still ends as the uninterrupted run."""
  run_dir = tmp_path / 'damaged'
  shutil.copytree(stopped_within_an_epoch, run_dir)
  newest = run_dir / 'checkpoints' / '19'
  damage_save(newest, damage)
  with caplog.at_level(logging.WARNING, logger='enformer_small'):
    resumed = _train(_tiny_config(tmp_path, 'damaged'), resume=True)
  # The library's warnings (the command line prints each as a `warning: ...` line).
  warnings = [r.getMessage() for r in caplog.records
              if r.name.startswith('enformer_small') and r.levelno >= logging.WARNING]
  assert len(warnings) == 1
  assert f'skipping a damaged checkpoint: {newest}:' in warnings[0]
  _assert_same_train_state(runs['whole'].train_state, resumed.train_state)
  assert _metrics_file(run_dir) == _metrics_file(runs['whole'].run_dir)


def test_tensorboard_event_files_hold_every_epoch_metric_and_the_step_values(runs):
  """Read back with TensorBoard's own reader: each per-epoch metric at the epoch's last
  global step (15, 30), and every 10 steps the step loss, learning rate and seq/s."""
  scalars = summaries.read_scalars(runs['whole'].run_dir)
  history = runs['whole'].history
  for tag in summaries.flatten_scalars(history[0]):
    expected = [(r['step'], np.float32(summaries.flatten_scalars(r)[tag]))
                for r in history]
    assert [(step, np.float32(v)) for step, v in scalars[tag]] == expected, tag
  for tag in ('step/loss', 'step/learning_rate', 'step/seq_per_s'):
    assert [step for step, _ in scalars[tag]] == [10, 20, 30], tag
  assert [v for _, v in scalars['step/learning_rate']] == [np.float32(0.01)] * 3
  assert all(v > 0 for _, v in scalars['step/seq_per_s'])


def test_run_directory_holds_metrics_plot_and_checkpoints(runs):
  import json
  run_dir = pathlib.Path(runs['whole'].run_dir)
  records = [json.loads(line) for line in
             (run_dir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['epoch'] for r in records] == [1, 2]
  for record in records:
    for part in ('train', 'holdout'):
      assert set(record[part]) >= {'loss', 'mse', 'mae', 'pearson', 'spearman'}
    assert record['holdout']['n'] == 60
    assert record['train']['n'] == 15 * 48
    assert record['train_seq_per_s'] > 0
  assert (run_dir / 'pearson.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  # keep_checkpoints=1: only the last epoch (global step 30), plus the best one.
  assert checkpointer.Checkpointer(run_dir).steps() == [30]
  best = checkpoint.load_checkpoint(checkpoint.best_checkpoint_path(run_dir))
  assert best.epoch == runs['whole'].best_epoch
  assert best.extra['crop_start'] == 15
  assert best.extra['train_config']['batch_size'] == 48
  last = checkpointer.Checkpointer(run_dir).restore_latest().checkpoint
  assert [m['epoch'] for m in last.metrics] == [1, 2]


def test_a_bfloat16_run_trains_and_writes_float32_checkpoints(runs):
  """train(compute_dtype='bfloat16'): finite metrics near the float32 run's first epoch,
  a checkpoint of float32 parameters and BatchNorm averages."""
  result = _train(_tiny_config(runs['tmp'], 'bf16', num_epochs=1,
                               compute_dtype='bfloat16'))
  f32_loss = runs['first'].history[0]['train']['loss']
  assert result.history[0]['train']['loss'] == pytest.approx(f32_loss, rel=0.02)
  assert np.isfinite(result.history[0]['holdout']['pearson'])
  best = checkpoint.load_checkpoint(checkpoint.best_checkpoint_path(result.run_dir))
  assert _float_dtypes(best.params, best.state) == {'float32'}


def test_best_epoch_is_the_one_with_the_best_holdout_pearson(runs):
  history = runs['whole'].history
  best = max(history, key=lambda r: r['holdout']['pearson'])
  assert runs['whole'].best_epoch == best['epoch']


def test_resume_with_other_recipe_flags_is_refused(runs):
  config = _tiny_config(runs['tmp'], 'split', learning_rate=0.1, num_epochs=3)
  with pytest.raises(TrainingError, match='learning_rate'):
    _train(config, resume=True)


def test_existing_run_directory_is_not_overwritten_without_asking(runs):
  with pytest.raises(TrainingError, match='--resume'):
    _train(_tiny_config(runs['tmp'], 'whole'))


def test_overwrite_starts_afresh_without_the_old_checkpoints_and_curves(runs, tmp_path):
  run_dir = tmp_path / 'again'
  shutil.copytree(runs['whole'].run_dir, run_dir)
  result = _train(_tiny_config(tmp_path, 'again', num_epochs=1), overwrite=True)
  assert checkpointer.Checkpointer(run_dir).steps() == [15]
  assert len([p for p in os.listdir(run_dir) if p.startswith('events.out')]) == 1
  assert [s for s, _ in summaries.read_scalars(run_dir)['holdout/pearson']] == [15]
  assert (_without_timings(result.history) ==
          _without_timings(runs['first'].history))


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(runs):
  """NaN targets in epoch 2 (global step 17 = epoch 2, step 3): stop, save nothing."""
  tmp = runs['tmp']
  run_dir = tmp / 'nan'  # a copy of a run stopped after epoch 1
  ckpt_path = run_dir / 'checkpoints' / '15'
  before = _files(ckpt_path)
  best_before = pathlib.Path(checkpoint.best_checkpoint_path(run_dir)).read_bytes()
  with pytest.raises(NonFiniteError) as info, nan_targets_at(17):
    _train(_tiny_config(tmp, 'nan'), resume=True)
  message = str(info.value)
  assert 'epoch 2, step 3 of 15' in message and 'nan' in message
  assert str(ckpt_path) in message
  assert _files(ckpt_path) == before
  best = pathlib.Path(checkpoint.best_checkpoint_path(run_dir))
  assert best.read_bytes() == best_before
  assert checkpointer.Checkpointer(run_dir).steps() == [15]
  assert len((run_dir / 'metrics.jsonl').read_text().splitlines()) == 1


# A few steps of the pmapped train step on one global batch, written to an .npz; run
# in a subprocess because the device count is fixed when jax starts.
_STEPS_SCRIPT = textwrap.dedent('''
    import sys
    import jax
    import numpy as np
    from enformer_small import config, training
    out, num_steps, global_batch = sys.argv[1], int(sys.argv[2]), 32
    model_config = config.seed_config(85).without_dropout()
    optimizer = training.make_optimizer(0.01, 0.9)
    init = training.init_train_state(model_config, optimizer, jax.random.PRNGKey(0))
    state = training.replicate(init)
    step = training.make_train_step(model_config, optimizer)
    d = jax.local_device_count()
    rng = np.random.default_rng(0)
    for i in range(num_steps):
      codes = rng.integers(0, 4, (global_batch, 85))
      inputs = np.eye(4, dtype=np.float32)[codes]
      targets = rng.uniform(0, 17, (global_batch, 1)).astype(np.float32)
      batch = {'inputs': inputs.reshape(d, global_batch // d, 85, 4),
               'targets': targets.reshape(d, global_batch // d, 1)}
      state, metrics = step(state, training.shard_batch(batch))
    host = training.unreplicate(state)
    leaves = {}
    for prefix, tree in (('params', host.params), ('state', host.state),
                         ('init', jax.device_get(init.params))):
      for module, values in tree.items():
        for name, value in values.items():
          leaves[prefix + ':' + module + ':' + name] = value
    leaves['loss'] = np.asarray(metrics['loss'])[0]
    np.savez(out, **leaves)
    print('devices', d)
''')


def _start_steps(out, devices, num_steps):
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      f' --xla_force_host_platform_device_count={devices}').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), env.get('PYTHONPATH', '')])
  return subprocess.Popen([sys.executable, '-c', _STEPS_SCRIPT, str(out), str(num_steps)],
                          env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def test_two_devices_give_the_same_update_as_one(tmp_path):
  """One global batch of 32 split over 2 CPU devices: gradients and BatchNorm batch
  statistics are averaged across devices (pmean), so the parameters and the BatchNorm
  moving averages after the step match those of 1 device (dropout off).

  One step: a second one multiplies float32 rounding differences by ~100 (the Poisson
  loss's y / pred is steep where the first step left the predictions), which would
  blur the comparison, not the rule.
  """
  outs = {d: tmp_path / f'devices{d}.npz' for d in (1, 2)}
  procs = {d: _start_steps(outs[d], d, num_steps=1) for d in (1, 2)}
  for d, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    assert f'devices {d}' in stdout
  one, two = np.load(outs[1]), np.load(outs[2])
  assert sorted(one.files) == sorted(two.files)
  assert any(k.startswith('state:') for k in one.files)
  moved = [k for k in one.files if k.startswith('params:') and
           not np.array_equal(one[k], one['init:' + k[len('params:'):]])]
  assert len(moved) > 0.5 * sum(k.startswith('params:') for k in one.files)
  for key in one.files:
    np.testing.assert_allclose(one[key], two[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_a_two_target_table_resumed_within_an_epoch_equals_the_uninterrupted_run(tmp_path):
  """Saves within an epoch keep the per-target predictions ([rows, targets]) too."""
  from enformer_small import synthetic
  rows = synthetic.generate(synthetic.SyntheticConfig(num_rows=200, seed=3))
  table = tmp_path / 'own.tsv'
  table.write_text('sequence\tx\ty\n' + ''.join(
      f'{s}\t{v}\t{17 - v}\n' for s, v in zip(rows.sequences(), rows.expression)))

  def config(name, **overrides):
    return TrainConfig(
        run_dir=str(tmp_path / name), table_file=str(table), target_columns=('x', 'y'),
        sequence_length=110, pad_sequences=True, input_length=110, shifts=(0,),
        dropout=False, batch_size=32, eval_batch_size=64, num_holdout=40, num_epochs=1, seed=5,
        keep_checkpoints=2, data_cache_dir=str(tmp_path / 'cache'), **overrides)

  whole = _train(config('whole'))
  with pytest.raises(NonFiniteError), nan_targets_at(3):
    _train(config('within'), save_every_minutes=1e-9)
  restored = checkpointer.Checkpointer(tmp_path / 'within').restore_latest()
  assert restored.progress.predictions.shape == (3 * 32, 2)
  resumed = _train(config('within'), resume=True)
  _assert_same_train_state(whole.train_state, resumed.train_state)
  assert _without_timings(whole.history) == _without_timings(resumed.history)
