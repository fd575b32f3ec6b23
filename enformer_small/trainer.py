"""A training run as a library call: `train(config, options) -> TrainResult`.

The run, in the order it happens: the data and its split (`train_data`), the plan and
the compiled steps (`train_plan`), a fresh, warm or resumed start (`resume`); then per
epoch: train (`train_loop`), evaluate (`evaluation`), save (the checkpoints, the best
model, `run_files`). It reports through the `logging` logger of each module (the entry
point decides what is shown) and a progress factory; it prints nothing.

A run directory (`TrainConfig.run_dir`) receives, from process 0 only:
  metrics.jsonl, pearson.png, train_config.json   (`run_files`)
  events.out.tfevents.*      TensorBoard: every per-epoch metric at the epoch's last
                             global step, and the step loss, learning rate and seq/s
                             every `tensorboard_every_steps` steps
  checkpoints/<step>/        orbax saves at the end of every epoch and every
                             `save_every_minutes` within one (`checkpointer`)
  checkpoint_best.npz        the epoch with the best held-out Pearson so far, one
                             pickle-free file (what the other commands read)
  damaged_checkpoints/       saves a resume found damaged and skipped (with a warning)

Checkpoints hold what is evaluated (with --ema_decay the parameter average, with
--bn_recalibration_batches the re-estimated BatchNorm averages), what training goes on
from, the recipe and the window; the inference path applies the recorded settings.

A run resumed from its newest checkpoint, at an epoch's end or within one, repeats bit
for bit what the uninterrupted run computes from the next step on. A NaN or inf loss
stops the run (`NonFiniteError`) before anything after the last checkpoint is written.
Ctrl-C stops it between steps (`Interrupted`, naming the last checkpoint); files are
written whole or not at all.

Multi-host: every process runs `train`; each feeds its devices its slice of every
global batch; held-out predictions are gathered and scored once; only process 0
writes; the processes check that they agree on settings, data and starting point.
"""

import dataclasses
import logging
import math
import os
import tempfile
import time
from typing import Any, Dict, List, Optional

import jax
import numpy as np

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import checkpointer as checkpointer_lib
from enformer_small import distributed
from enformer_small import evaluation
from enformer_small import model as model_lib
from enformer_small import recipe as recipe_lib
from enformer_small import resume as resume_lib
from enformer_small import run_files
from enformer_small import run_lock
from enformer_small import summaries
from enformer_small import train_config as train_config_lib
from enformer_small import train_data
from enformer_small import train_loop
from enformer_small import train_plan
from enformer_small import training
from enformer_small.settings import setting
from enformer_small.train_config import TrainConfig
from enformer_small.train_errors import Interrupted, NonFiniteError, TrainingError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """How a run goes about its work; none of these changes what it computes."""
  resume: bool = setting(False, 'Continue from the latest checkpoint in --run_dir.')
  overwrite: bool = setting(
      False, 'Start afresh in a --run_dir that holds checkpoints (deletes them).')
  save_every_minutes: float = setting(
      30.0, 'Also save within an epoch this often, so that --resume continues at the '
      'next step; 0: at the end of each epoch only.')
  tensorboard_every_steps: int = setting(
      10, 'TensorBoard event files in --run_dir: the step loss, learning rate and seq/s '
      'every this many steps (and every per-epoch metric); 0: the per-epoch metrics '
      'only.')
  log_every_steps: int = setting(
      100, 'Without a progress bar (output not a terminal, or --noprogress): a line with '
      'epoch, step, loss and seq/s every this many steps; 0: none.')


@dataclasses.dataclass
class TrainResult:
  """What `train` did.

  train_state: the unreplicated final TrainState (numpy).
  history: one metrics dict per completed epoch (resumed epochs included).
  best_epoch, best_pearson: the epoch with the best held-out Pearson.
  noise_ceiling: held-out Pearson of the noise-free with the measured expression
    (synthetic data only, else None).
  stopped_early: whether --early_stopping_patience ended the run.
  """
  train_state: training.TrainState
  history: List[Dict[str, Any]]
  best_epoch: int
  best_pearson: float
  noise_ceiling: Optional[float]
  run_dir: str
  stopped_early: bool = False


def check_run_dir_writable(run_dir: str) -> None:
  """Fails before data loading and compilation, not at the first save, where the run
  directory cannot be created or written."""
  try:
    os.makedirs(run_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=run_dir, prefix='.write_test_'):
      pass
  except OSError as e:
    raise TrainingError(
        f'cannot write to the run directory {run_dir}: {e.strerror or e}. Make it '
        f'writable, or choose another --run_dir.') from None


def check_can_start(config: TrainConfig, options: RunOptions) -> None:
  """Refuses a run directory that holds another run, unless resuming or overwriting."""
  latest = checkpointer_lib.Checkpointer(config.run_dir).latest()
  if latest and not options.resume and not options.overwrite:
    raise TrainingError(
        f'{config.run_dir} already holds checkpoints (latest {latest}). Pass --resume '
        f'to continue that run, --overwrite to start afresh (its checkpoints are '
        f'deleted), or choose another --run_dir.')


def train(config: TrainConfig, options: RunOptions = RunOptions(), *,
          progress: Optional[train_loop.ProgressFactory] = None) -> TrainResult:
  """Runs (or resumes) training; see the module docstring.

  progress: makes the progress bar of an epoch (process 0), e.g. a tqdm factory; None:
    `options.log_every_steps` lines instead.

  Raises:
    TrainingError: missing data, a run directory in the way or in use by another
      process (`run_lock`), flags that do not match the checkpoint being resumed, no
      epoch with a finite held-out Pearson. NonFiniteError: NaN/inf loss or parameters.
    Interrupted: Ctrl-C; its message names the epoch, step and last checkpoint.
    dream_data.DreamDataError, checkpoint.CheckpointError: bad files.
  """
  why = train_config_lib.window_error(config)
  if why:
    raise TrainingError(why)
  lock = None
  if jax.process_index() == 0:  # The one writer: it alone holds the directory.
    check_run_dir_writable(config.run_dir)
    lock = run_lock.RunLock(config.run_dir).acquire()
  try:
    check_can_start(config, options)
    return _train_interruptibly(config, options, progress)
  finally:
    if lock is not None:
      lock.release()


def _train_interruptibly(config, options, progress) -> TrainResult:
  where = train_loop.Position()
  try:
    with train_loop.ctrl_c_between_steps(where):
      return _train(config, options, progress, where)
  except KeyboardInterrupt:
    last = checkpointer_lib.Checkpointer(config.run_dir).latest()
    at = (f'at epoch {where.epoch}, step {where.step}' if where.epoch else
          'before training started')
    raise Interrupted(
        f'interrupted {at}; ' +
        (f'the last checkpoint is {last}; --resume continues' if last else
         'no checkpoint was written yet; run again to start over')) from None


def _check_processes_agree(config: TrainConfig, run_data, start) -> None:
  differ = distributed.disagreements(
      flags=distributed.fingerprint({k: v for k, v in config.to_json_dict().items()
                                     if k not in train_config_lib.PER_PROCESS_FIELDS}),
      data=distributed.fingerprint([run_data.data_id['content_hash'],
                                    run_data.data_id['num_rows']]),
      start_epoch=start.epoch, start_step=int(start.host_state.step))
  if differ:
    raise TrainingError(
        f'the {jax.process_count()} processes disagree on {"; ".join(differ)}. Start '
        'every process with the same flags and data, and a --run_dir on a file system '
        'all of them see (they resume from the same checkpoint).')


def _train(config: TrainConfig, options: RunOptions, progress, where) -> TrainResult:
  """Sets the run up, then trains."""
  is_writer = jax.process_index() == 0
  run_data = train_data.load_data(config)
  plan = train_plan.make_plan(config, len(run_data.train_rows))
  checkpointer = checkpointer_lib.Checkpointer(config.run_dir, config.keep_checkpoints)
  start = resume_lib.start_or_resume(config, plan, run_data, checkpointer,
                                     resume=options.resume, overwrite=options.overwrite)
  where.epoch, where.step = start.epoch + 1, int(start.host_state.step)
  _check_processes_agree(config, run_data, start)
  num_params = model_lib.count_params(start.host_state.params)
  if is_writer:
    run_files.write_config_file(config, run_data, plan, num_params)
  train_state = training.replicate(start.host_state)
  started = time.perf_counter()
  run = train_loop.Run(
      config=config, data=run_data, plan=plan,
      steps=train_plan.build_steps(config, plan, train_state), is_writer=is_writer,
      checkpointer=checkpointer, history=start.history,
      save_clock=train_loop.SaveClock(options.save_every_minutes),
      tensorboard=summaries.ScalarWriter(config.run_dir) if is_writer else None,
      tensorboard_every_steps=options.tensorboard_every_steps, progress=progress,
      log_every_steps=0 if progress else options.log_every_steps, where=where)
  log.info('model: %s (window [%d:%d] of %d), %d device(s) x %d process(es), global '
           'batch %d, %d steps/epoch; compiled in %.1f s',
           run_files.describe_model(config, plan.model_config, num_params),
           config.window_start, config.window_start + config.input_length,
           config.row_length, jax.local_device_count(), jax.process_count(),
           config.batch_size, plan.steps_per_epoch, time.perf_counter() - started)
  try:
    return _run_epochs(run, train_state, start.epoch, start.progress)
  finally:
    checkpointer.close()
    if run.tensorboard is not None:
      run.tensorboard.close()


def run_epoch(run: train_loop.Run, train_state: training.TrainState, epoch: int,
              resumed: Optional[checkpointer_lib.EpochProgress] = None):
  """Trains (from where `resumed` left it, if given) and evaluates one epoch.

  Returns:
    (train_state, the epoch's metrics record, host TrainState, evaluated) where
    evaluated = (params, state) on the host, each None where it is the training one.
  """
  started = time.perf_counter()
  train_state, train_pred, train_target, train_seconds = train_loop.train_epoch(
      run, train_state, epoch, resumed)
  params, state = train_loop.eval_variables(run, train_state, epoch)
  holdout_pred, holdout_target, eval_seconds = evaluation.evaluate(
      run.steps.eval, params, state, run.data, run.config, run.plan.eval_batch_size)
  host = training.unreplicate(train_state)
  evaluated = (None if params is train_state.params else training.unreplicate(params),
               None if state is train_state.state else training.unreplicate(state))
  if not (np.all(np.isfinite(holdout_pred)) and train_loop.all_finite(host.params) and
          train_loop.all_finite(evaluated)):
    raise NonFiniteError(
        f'training stopped: non-finite parameters or held-out predictions after epoch '
        f'{epoch + 1} (step {int(host.step)}). Nothing of this epoch was saved; '
        + resume_lib.last_good(run.config.run_dir))
  schedule = recipe_lib.learning_rate_schedule(run.config.recipe, run.plan.total_steps)
  record = dict(
      epoch=epoch + 1, step=int(host.step),
      train=evaluation.summarise_targets(train_pred, train_target, run.config),
      holdout=evaluation.summarise_targets(holdout_pred, holdout_target, run.config),
      learning_rate=float(schedule(max(int(host.step) - 1, 0))),
      train_seq_per_s=len(train_pred) / train_seconds,
      eval_seq_per_s=len(holdout_pred) / eval_seconds,
      train_seconds=train_seconds, eval_seconds=eval_seconds,
      epoch_seconds=time.perf_counter() - started)
  return train_state, record, host, evaluated


def save_epoch(run: train_loop.Run, host: training.TrainState, evaluated, is_best: bool,
               best_epoch: int) -> None:
  """Writes the epoch's checkpoint, the best one, the metrics, the plot and the epoch's
  TensorBoard scalars (process 0)."""
  run.save_clock.reset()
  if not run.is_writer:
    return
  config, history = run.config, run.history
  params, state = evaluated
  fields = dict(
      params=host.params if params is None else params,
      state=host.state if state is None else state, model_config=run.plan.model_config,
      opt_state=host.opt_state, rng=host.rng, epoch=history[-1]['epoch'],
      step=int(host.step), metrics=history,
      extra=run_files.checkpoint_extra(config, run.data.data_id, best_epoch),
      train_params=None if params is None else host.params,
      train_state=None if state is None else host.state)
  # Ctrl-C waits for these files: it is checked between steps.
  if is_best:
    run.checkpointer.export_best(**fields)
  run.checkpointer.save(**fields)
  title = (f'{os.path.basename(os.path.normpath(config.run_dir))}: '
           f'{len(run.data.train_rows):,} train rows, batch {config.batch_size}')
  run_files.write_metrics_file(config.run_dir, history)
  run_files.plot_history(config.run_dir, history, run.data.noise_ceiling, title)
  if run.tensorboard is not None:
    run.tensorboard.scalars(int(host.step), summaries.flatten_scalars(history[-1]))
    run.tensorboard.flush()


def _holdout_pearsons(history) -> List[Optional[float]]:
  return [r['holdout']['pearson'] for r in history]


def _run_epochs(run: train_loop.Run, train_state: training.TrainState, start_epoch: int,
                resumed: Optional[checkpointer_lib.EpochProgress]) -> TrainResult:
  """Epochs from `start_epoch` (0-based; the first from `resumed`, if given) on."""
  config, history = run.config, run.history
  best_epoch, best_pearson = run_files.best_of(history)
  patience = config.early_stopping_patience
  stopped = recipe_lib.should_stop(_holdout_pearsons(history), patience)
  for epoch in range(start_epoch, config.num_epochs):
    if stopped:
      break
    run.where.epoch = epoch + 1
    run.where.check_stop()
    train_state, record, host, evaluated = run_epoch(run, train_state, epoch, resumed)
    resumed = None
    pearson = record['holdout']['pearson']
    is_best = math.isfinite(pearson) and pearson > best_pearson
    if is_best:
      best_epoch, best_pearson = epoch + 1, pearson
    record['best_epoch'] = best_epoch
    history.append(record)
    save_epoch(run, host, evaluated, is_best, best_epoch)
    if run.is_writer:
      log.info('%s', run_files.epoch_line(record, config.num_epochs, is_best))
    stopped = recipe_lib.should_stop(_holdout_pearsons(history), patience)
    if stopped and run.is_writer:
      log.info('early stop: %d epoch(s) without a better held-out Pearson', patience)
  if best_epoch == 0:
    raise TrainingError(
        f'no epoch gave a finite held-out Pearson (constant predictions or targets, or '
        f'a run that diverged), so no best model was written; the last checkpoint is '
        f'{run.checkpointer.latest()}. Check the targets, lower --learning_rate, or '
        f'train longer.')
  if run.is_writer:
    log.info('done: best epoch %d with held-out Pearson %.4f%s; %s', best_epoch,
             best_pearson, f' (noise ceiling {run.data.noise_ceiling:.4f})'
             if run.data.noise_ceiling else '',
             checkpoint_lib.best_checkpoint_path(config.run_dir))
  return TrainResult(train_state=training.unreplicate(train_state), history=history,
                     best_epoch=best_epoch, best_pearson=best_pearson,
                     noise_ceiling=run.data.noise_ceiling, run_dir=config.run_dir,
                     stopped_early=stopped)
