"""Training: the loss, the input pipeline to the devices, the steps' dtypes, and a run
stopped by NaN within an epoch and resumed (train_loop, resume, run_files, evaluation).

The runs reuse tests/conftest.py's `tiny_run` (a real_6370.flags-like recipe on 600
synthetic rows) and its compiled steps. Whole trainings of their own, the two-device
step and the long equivalences are in test_slow_training.py.
"""

import dataclasses
import json
import logging
import math
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enformer_small import checkpoint
from enformer_small import checkpointer
from enformer_small import evaluation
from enformer_small import resume
from enformer_small import run_files
from enformer_small import summaries
from enformer_small import train_plan
from enformer_small import trainer
from enformer_small import training
from enformer_small.train_config import TrainConfig
from enformer_small.train_errors import NonFiniteError, TrainingError
from nan_targets import nan_targets_at
from seed_steps import seed_start, seed_train_step


def test_poisson_loss_matches_keras_formula_by_hand():
  """mean(pred - y * log(pred + 1e-7)); here (1 - 0) and (2 - 3 ln 2) -> mean."""
  pred = jnp.array([[1.0], [2.0]])
  target = jnp.array([[0.0], [3.0]])
  expected = ((1.0 - 0.0) + (2.0 - 3.0 * np.log(2.0 + 1e-7))) / 2  # 0.4602792...
  assert float(training.poisson_loss(pred, target)) == pytest.approx(expected, rel=1e-6)
  assert evaluation.poisson_loss_np(np.array([1.0, 2.0]), np.array([0.0, 3.0])) == (
      pytest.approx(expected, rel=1e-12))


def test_prefetch_to_device_yields_every_batch_in_order_and_reads_ahead():
  """Each host batch comes out once, in order, on the devices; when batch i is handed
  out, batches up to i + size have been taken from the source (their copies started)."""
  pulled = []

  def source():
    for i in range(5):
      pulled.append(i)
      yield {'inputs': np.full((jax.local_device_count(), 3, 2), i, np.uint8)}

  seen = []
  for i, batch in enumerate(training.prefetch_to_device(source(), size=2)):
    assert isinstance(batch['inputs'], jax.Array)
    assert len(pulled) == min(i + 2, 5)
    seen.append(int(np.asarray(batch['inputs']).max()))
  assert seen == [0, 1, 2, 3, 4]
  with pytest.raises(ValueError, match='size'):
    next(training.prefetch_to_device(source(), size=0))


def test_uint8_one_hot_inputs_train_exactly_as_float32():
  """The training loop ships one-hot inputs as uint8 (`train_plan.INPUT_DTYPE`); the step
  casts them on the device, so one step gives bit-identical parameters, state and
  metrics to float32 inputs. The step also hands back each example's prediction with
  its target, in batch order. (The seed's model, optimizer, start and step are shared
  with test_train_recipes' default-step test: seed_steps.py.)"""
  assert train_plan.INPUT_DTYPE == np.uint8
  _, _, state = seed_start()
  step = seed_train_step()
  d = jax.local_device_count()
  rng = np.random.default_rng(0)
  one_hot = np.eye(4, dtype=np.uint8)[rng.integers(0, 4, (d, 8, 85))]
  targets = rng.uniform(0, 17, (d, 8, 1)).astype(np.float32)
  out = {}
  for dtype in (np.uint8, np.float32):
    batch = training.shard_batch({'inputs': one_hot.astype(dtype), 'targets': targets})
    out[dtype] = jax.device_get(step(training.replicate(state), batch))
  for a, b in zip(jax.tree_util.tree_leaves(out[np.uint8]),
                  jax.tree_util.tree_leaves(out[np.float32])):
    np.testing.assert_array_equal(a, b)
  metrics = out[np.uint8][1]
  np.testing.assert_array_equal(metrics['targets'], targets[..., 0])
  assert metrics['predictions'].shape == (d, 8)


def float_dtypes(*trees):
  """The floating-point dtypes among the leaves (BatchNorm's counters are int32)."""
  return {str(np.asarray(x).dtype) for x in jax.tree_util.tree_leaves(trees)
          if np.issubdtype(np.asarray(x).dtype, np.floating)}


def test_steps_of_different_dtypes_in_one_process_do_not_share_a_policy():
  """Haiku's mixed-precision policies are global: a bfloat16 step built before a float32
  one and traced after it must still run in bfloat16, and the float32 one in float32."""
  model_config, _, state = seed_start()
  start = training.replicate(state)
  inputs = training.shard_batch(np.zeros((jax.local_device_count(), 2, 85, 4),
                                         np.float32))
  eval_bf16 = training.make_eval_step(model_config, compute_dtype='bfloat16')
  eval_f32 = training.make_eval_step(model_config)
  assert 'bf16' in eval_bf16.lower(start.params, start.state, inputs).as_text()
  assert 'bf16' not in eval_f32.lower(start.params, start.state, inputs).as_text()


# ---------------------------------------------------------------------------
# tiny_run's run again, stopped within its epoch, and resumed.


def assert_same_train_state(a, b):
  """Bit for bit: parameters, BatchNorm state, optimizer state, rng and step."""
  for name in ('params', 'state', 'opt_state', 'rng', 'step'):
    x, y = getattr(a, name), getattr(b, name)
    assert jax.tree_util.tree_structure(x) == jax.tree_util.tree_structure(y)
    for u, v in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y)):
      np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=name)


def without_timings(history):
  return [{k: v for k, v in r.items() if 'second' not in k and 'per_s' not in k}
          for r in history]


def metrics_file(run_dir):
  return without_timings([json.loads(line) for line in
                          (pathlib.Path(run_dir) / run_files.METRICS_FILE).read_text()
                          .splitlines()])


def files_under(directory):
  """{relative path: bytes} of every file under `directory`."""
  directory = pathlib.Path(directory)
  return {str(p.relative_to(directory)): p.read_bytes()
          for p in sorted(directory.rglob('*')) if p.is_file()}


@pytest.fixture(scope='module')
def stopped(tiny_run, tmp_path_factory):
  """tiny_run's run again in a new directory, saving after every step, stopped by NaN
  targets at global step 2 (step 3 of 15) after its save of step 2. It compiles
  nothing: its steps are tiny_run's (`train_plan._COMPILED`)."""
  config, _ = tiny_run
  compiled = set(train_plan._COMPILED)
  config = dataclasses.replace(
      config, run_dir=str(tmp_path_factory.mktemp('stopped') / 'run'))
  with pytest.raises(NonFiniteError) as info, nan_targets_at(2):
    trainer.train(config, trainer.RunOptions(save_every_minutes=1e-9, log_every_steps=0))
  assert set(train_plan._COMPILED) == compiled
  return dict(config=config, message=str(info.value),
              files=files_under(config.run_dir))


def test_nan_loss_stops_the_run_and_keeps_its_last_save_within_the_epoch(stopped):
  """The message names the epoch, the step and the last good checkpoint; that save
  holds the position and the predictions of the steps before it; nothing of the epoch
  (metrics, best checkpoint) was written."""
  run_dir = pathlib.Path(stopped['config'].run_dir)
  message = stopped['message']
  assert 'the loss became nan in epoch 1, step 3 of 15' in message
  assert f'the last good checkpoint is {run_dir / "checkpoints" / "2"}' in message
  saver = checkpointer.Checkpointer(run_dir)
  assert saver.steps() == [2]  # The newest save within the epoch only.
  restored = saver.restore_latest()
  assert (restored.checkpoint.epoch, restored.checkpoint.step) == (0, 2)
  assert restored.progress.steps == 2
  assert restored.progress.predictions.shape == (2 * 32,)
  assert not restored.checkpoint.metrics
  assert not (run_dir / run_files.METRICS_FILE).exists()
  assert not (run_dir / checkpoint.BEST_NAME).exists()


def test_resume_within_an_epoch_equals_the_uninterrupted_run(tiny_run, stopped, tmp_path,
                                                             caplog):
  """--resume continues at step 3 of the epoch (random shifts, both strands, EMA,
  BatchNorm recalibration): the final state, the history and metrics.jsonl (but for
  timings) equal tiny_run's uninterrupted run, bit for bit; nothing is compiled again."""
  config, uninterrupted = tiny_run
  run_dir = tmp_path / 'resumed'
  shutil.copytree(stopped['config'].run_dir, run_dir)
  compiled = set(train_plan._COMPILED)
  with caplog.at_level(logging.INFO, logger='enformer_small'):
    resumed = trainer.train(dataclasses.replace(config, run_dir=str(run_dir)),
                            trainer.RunOptions(resume=True, log_every_steps=0))
  assert set(train_plan._COMPILED) == compiled
  assert (f'resuming from {run_dir / "checkpoints" / "2"}: epoch 0, step 2 (2 of the '
          '15 steps of epoch 1 done)') in caplog.messages
  assert_same_train_state(uninterrupted.train_state, resumed.train_state)
  assert without_timings(uninterrupted.history) == without_timings(resumed.history)
  assert metrics_file(run_dir) == metrics_file(config.run_dir)
  assert checkpointer.Checkpointer(run_dir).steps() == [15]


def test_resume_refuses_other_recipe_flags_and_a_schedule_of_another_length(tiny_run):
  """The flags a checkpoint recorded against the run that would continue it: paths and
  the epoch count may change; the recipe may not, nor the epoch count when the
  learning-rate schedule spans the run."""
  config, _ = tiny_run
  best = checkpoint.load_checkpoint(os.path.join(config.run_dir, checkpoint.BEST_NAME))
  saved = best.extra['train_config']
  assert saved == config.to_json_dict()
  resume.check_resume_config(saved, config, best.path)
  resume.check_resume_config(saved, dataclasses.replace(
      config, run_dir='elsewhere', num_epochs=3, eval_batch_size=7), best.path)
  with pytest.raises(TrainingError, match=r'--learning_rate: checkpoint 0\.002, now 0\.1'):
    resume.check_resume_config(saved, dataclasses.replace(config, learning_rate=0.1),
                               best.path)
  with pytest.raises(TrainingError, match='--ema_decay'):
    resume.check_resume_config(saved, dataclasses.replace(config, ema_decay=0.5),
                               best.path)
  one_cycle = dataclasses.replace(config, schedule='one_cycle')
  with pytest.raises(TrainingError, match='num_epochs.*schedule'):
    resume.check_resume_config(one_cycle.to_json_dict(),
                               dataclasses.replace(one_cycle, num_epochs=3), best.path)


def test_tensorboard_event_files_hold_every_epoch_metric_and_the_step_values(tiny_run):
  """Read back with TensorBoard's own reader: each per-epoch metric at the epoch's last
  global step (15), and every 10 steps the step loss, learning rate and seq/s."""
  config, result = tiny_run
  scalars = summaries.read_scalars(config.run_dir)
  history = result.history
  for tag in summaries.flatten_scalars(history[0]):
    expected = [(r['step'], np.float32(summaries.flatten_scalars(r)[tag]))
                for r in history]
    assert [(step, np.float32(v)) for step, v in scalars[tag]] == expected, tag
  for tag in ('step/loss', 'step/learning_rate', 'step/seq_per_s'):
    assert [step for step, _ in scalars[tag]] == [10], tag
  assert [v for _, v in scalars['step/learning_rate']] == [np.float32(0.002)]
  assert all(v > 0 for _, v in scalars['step/seq_per_s'])


def test_run_directory_holds_metrics_plot_and_checkpoints(tiny_run):
  config, result = tiny_run
  run_dir = pathlib.Path(config.run_dir)
  records = [json.loads(line) for line in
             (run_dir / run_files.METRICS_FILE).read_text().splitlines()]
  assert [r['epoch'] for r in records] == [1]
  for record in records:
    assert set(record['train']) >= {'mse', 'mae', 'pearson', 'spearman'}
    assert set(record['holdout']) >= {'mse', 'mae', 'pearson', 'spearman'}
    assert 'loss' not in record['holdout']  # Soft bins: the bins' logits are not kept.
    assert record['holdout']['n'] == 100
    assert record['train']['n'] == 15 * 32
    assert record['train_seq_per_s'] > 0
    assert record['best_epoch'] == 1
  assert (run_dir / run_files.PLOT_FILE).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  best = checkpoint.load_checkpoint(checkpoint.best_checkpoint_path(str(run_dir)))
  assert best.epoch == result.best_epoch == 1
  assert best.extra['crop_start'] == 10 and best.extra['best_epoch'] == 1
  assert best.extra['train_config']['batch_size'] == 32
  assert best.extra['data']['num_rows'] == 600 and best.extra['data']['content_hash']


# ---------------------------------------------------------------------------
# The parts of a run, one at a time.


def test_best_epoch_skips_non_finite_held_out_pearsons():
  history = [dict(epoch=e, holdout=dict(pearson=r))
             for e, r in enumerate([0.5, float('nan'), 0.7, None, 0.6], 1)]
  assert run_files.best_of(history) == (3, 0.7)
  assert run_files.best_of([]) == (0, -math.inf)


def test_the_epoch_line_names_each_metric_and_the_best_epoch():
  record = dict(epoch=2, train=dict(loss=0.5, pearson=0.25),
                holdout=dict(mse=1.5, mae=1.0, pearson=0.75, spearman=0.5,
                             per_target=dict(x=dict(pearson=0.5), y=dict(pearson=1.0))),
                train_seq_per_s=123.4, epoch_seconds=9.6)
  assert run_files.epoch_line(record, 3, is_best=True) == (
      'epoch 2/3: train loss 0.5000 r 0.2500 | held-out mse 1.500 mae 1.000 r 0.7500 '
      'rho 0.5000 (r per target: x 0.5000 y 1.0000) | 123 seq/s, 10 s [best]')


def test_several_targets_are_scored_each_and_by_their_mean():
  config = TrainConfig(table_file='own.tsv', target_columns=('x', 'y'),
                       sequence_length=110, loss='mse')
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(50, 2)), rng.normal(size=(50, 2))
  out = evaluation.summarise_targets(pred, target, config)
  assert set(out['per_target']) == {'x', 'y'} and out['n'] == 50
  for i, name in enumerate('xy'):
    assert out['per_target'][name] == evaluation.summarise(pred[:, i], target[:, i], 'mse')
  for key in ('loss', 'mse', 'mae', 'pearson', 'spearman'):
    assert out[key] == pytest.approx(np.mean([out['per_target'][t][key] for t in 'xy']))
  assert out['loss'] == out['mse']
  assert evaluation.per_row(np.zeros((2, 3, 2)), config).shape == (6, 2)
  one = dataclasses.replace(config, target_columns=('x',))
  assert evaluation.per_row(np.zeros((2, 3)), one).shape == (6,)
  assert 'per_target' not in evaluation.summarise_targets(pred[:, 0], target[:, 0], one)


def test_a_plan_counts_the_steps_and_refuses_data_without_a_full_batch(tiny_run):
  """tiny_run's recipe (random shifts: each row once an epoch) on its 500 training
  rows: 15 full batches of 32; on 31 rows, none."""
  config, _ = tiny_run
  plan = train_plan.make_plan(config, 500)
  assert (plan.steps_per_epoch, plan.total_steps) == (15, 15)
  assert plan.eval_batch_size == 64 and plan.pipeline.crop_start == 10
  assert plan.pipeline.one_hot_dtype == 'uint8'
  with pytest.raises(train_plan.PlanError, match='31 training rows x 1 shift.s. hold no '
                     'full batch of 32: lower --batch_size'):
    train_plan.make_plan(config, 31)
