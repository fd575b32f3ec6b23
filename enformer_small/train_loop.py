"""One epoch of a run: its batches, the steps, the save clock, Ctrl-C between steps.

Reproducibility: the data order, shifts and flips of epoch e depend only on (--seed, e)
(`dataset.epoch_plan`); the learning rate only on the step. A save within an epoch holds
the training predictions so far, so a resumed epoch scores as an uninterrupted one.
"""

import contextlib
import dataclasses
import itertools
import logging
import math
import signal
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import jax
import numpy as np

from enformer_small import checkpointer as checkpointer_lib
from enformer_small import distributed
from enformer_small import evaluation
from enformer_small import recipe as recipe_lib
from enformer_small import run_files
from enformer_small import summaries
from enformer_small import training
from enformer_small.resume import last_good
from enformer_small.train_config import TrainConfig
from enformer_small.train_data import RunData
from enformer_small.train_errors import NonFiniteError
from enformer_small.train_plan import Plan, Steps

log = logging.getLogger(__name__)
# Batches on their way to the devices while a step runs (training.prefetch_to_device).
DEVICE_PREFETCH = 2
# (total, description) -> a bar with update(n), set_postfix(**values), close().
ProgressFactory = Callable[[int, str], Any]


@dataclasses.dataclass
class Position:
  """Where the run is (1-based epoch in progress, global steps done), and whether Ctrl-C
  asked it to stop."""
  epoch: int = 0
  step: int = 0
  stop_requested: bool = False

  def check_stop(self) -> None:
    """Raises KeyboardInterrupt if Ctrl-C was pressed: called between steps."""
    if self.stop_requested:
      raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c_between_steps(where: Position):
  """Within: Ctrl-C asks the run to stop at the next step (`Position.check_stop`).

  A KeyboardInterrupt raised wherever the main thread happens to be (inside tf.data,
  a device transfer or a checkpoint write) could leave those half done or hang their
  teardown; a request checked between steps cannot. A second Ctrl-C stops at once.
  """
  global _stopping
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def request(*_):
    global _stopping
    if where.stop_requested:
      raise KeyboardInterrupt
    where.stop_requested = _stopping = True
    log.warning('Ctrl-C: stopping after the current step (Ctrl-C again stops at once)')

  previous = signal.signal(signal.SIGINT, request)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
    _stopping = False


# Whether a run of this process was asked to stop and is finishing its step: a watcher
# of Ctrl-C (experiments/_interrupt.py) then lets it finish instead of ending it.
_stopping = False


def stop_pending() -> bool:
  return _stopping


class SaveClock:
  """When to save within an epoch: every `minutes` (<= 0: never), by process 0's clock.

  Every process takes part in a save (orbax's barriers, the gathered predictions), so
  with several they all follow process 0's decision. Its broadcast waits for every
  process and so stops a step from overlapping the next: it is asked at most every
  `MAX_STEPS_BETWEEN_ASKS` steps and at most ~50 times an epoch (a short epoch is
  asked at every step), the same steps on every process. A save is that much late.
  """
  MAX_STEPS_BETWEEN_ASKS = 20

  def __init__(self, minutes: float = 0.0):
    self.seconds = minutes * 60
    self.reset()

  def reset(self) -> None:
    self.last = time.monotonic()

  def due(self, step: int, steps_per_epoch: int) -> bool:
    """Whether to save after `step` (0-based, within the epoch); called by every
    process after each step."""
    if self.seconds <= 0:
      return False
    if jax.process_count() == 1:
      return time.monotonic() - self.last >= self.seconds
    between = max(1, min(self.MAX_STEPS_BETWEEN_ASKS, steps_per_epoch // 50))
    if (step + 1) % between:
      return False
    return distributed.broadcast_flag(time.monotonic() - self.last >= self.seconds)


@dataclasses.dataclass
class Run:
  """What every per-epoch function needs.

  history: the records of the completed epochs (the list the trainer appends to).
  tensorboard: process 0's event file writer, else None.
  progress: makes process 0's progress bar of an epoch; None: none.
  """
  config: TrainConfig
  data: RunData
  plan: Plan
  steps: Steps
  is_writer: bool
  checkpointer: checkpointer_lib.Checkpointer
  history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
  save_clock: SaveClock = dataclasses.field(default_factory=SaveClock)
  tensorboard: Optional[summaries.ScalarWriter] = None
  tensorboard_every_steps: int = 0
  progress: Optional[ProgressFactory] = None
  log_every_steps: int = 0
  where: Position = dataclasses.field(default_factory=Position)


def epoch_batches(run: Run, epoch: int, start_step: int = 0
                  ) -> Iterator[Dict[str, np.ndarray]]:
  from enformer_small import dataset
  return dataset.train_batches(
      run.data.rows, run.data.train_rows, global_batch_size=run.config.batch_size,
      local_device_count=jax.local_device_count(), process_index=jax.process_index(),
      process_count=jax.process_count(), config=run.plan.pipeline, seed=run.config.seed,
      epoch=epoch, start_step=start_step)


class StepTracker:
  """Takes each step's metrics: stops on a non-finite loss, keeps the predictions,
  moves the progress bar or logs a line every `log_every_steps`."""

  def __init__(self, run: Run, epoch: int,
               resumed: Optional[checkpointer_lib.EpochProgress] = None):
    self.run, self.epoch = run, epoch
    self.preds: List[np.ndarray] = []
    self.targets: List[np.ndarray] = []
    self.seconds_before = 0.0
    if resumed is not None:  # The steps done before the epoch was saved.
      self.preds = distributed.local_part(resumed.predictions, resumed.steps)
      self.targets = distributed.local_part(resumed.targets, resumed.steps)
      self.seconds_before = resumed.seconds
    self.first = len(self.preds)
    self.started = time.perf_counter()
    self.mark = (self.started, run.where.step)  # TensorBoard's seq/s: since the last
    config = run.config
    self.schedule = recipe_lib.learning_rate_schedule(config.recipe, run.plan.total_steps)
    self.bar = None
    if run.progress is not None and run.is_writer:
      self.bar = run.progress(run.plan.steps_per_epoch * config.batch_size,
                              f'epoch {epoch + 1}/{config.num_epochs}')
      self.bar.update(self.first * config.batch_size)

  def seconds(self) -> float:
    """Training time of the epoch so far, before a resume included."""
    return self.seconds_before + time.perf_counter() - self.started

  def add(self, metrics: Any, step_in_epoch: int) -> None:
    run, config, steps = self.run, self.run.config, self.run.plan.steps_per_epoch
    metrics = jax.device_get(metrics)
    loss = float(np.asarray(metrics['loss'])[0])
    done = step_in_epoch + 1
    if not math.isfinite(loss):
      raise NonFiniteError(
          f'training stopped: the loss became {loss} in epoch {self.epoch + 1}, step '
          f'{done} of {steps} (global step {self.epoch * steps + done}). Nothing since '
          f'the last checkpoint was saved; ' + last_good(config.run_dir))
    run.where.step = self.epoch * steps + done
    self.preds.append(evaluation.per_row(metrics['predictions'], config))
    self.targets.append(evaluation.per_row(metrics['targets'], config))
    if self.bar is not None:
      self.bar.update(config.batch_size)
      self.bar.set_postfix(loss=f'{loss:.4f}', refresh=False)
    elif run.is_writer and run.log_every_steps > 0 and done % run.log_every_steps == 0:
      rate = ((done - self.first) * config.batch_size /
              (time.perf_counter() - self.started))
      log.info('epoch %d/%d step %d/%d (global %d): %s loss %.4f, %.0f seq/s',
               self.epoch + 1, config.num_epochs, done, steps, run.where.step,
               config.loss, loss, rate)
    every = run.tensorboard_every_steps
    if run.tensorboard is not None and every > 0 and run.where.step % every == 0:
      self._summarise(loss)

  def _summarise(self, loss: float) -> None:
    """TensorBoard: the step's loss, learning rate, and seq/s since the last values."""
    now, step = time.perf_counter(), self.run.where.step
    (then, before), self.mark = self.mark, (now, step)
    self.run.tensorboard.scalars(step, {
        'step/loss': loss,
        'step/learning_rate': float(self.schedule(max(step - 1, 0))),
        'step/seq_per_s': (step - before) * self.run.config.batch_size / (now - then)})

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()

  def gathered(self) -> Tuple[np.ndarray, np.ndarray]:
    multi = self.run.config.num_targets > 1
    return (distributed.gather_batches(np.stack(self.preds), multi),
            distributed.gather_batches(np.stack(self.targets), multi))


def all_finite(tree: Any) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x))))
             for x in jax.tree_util.tree_leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def train_epoch(run: Run, train_state: training.TrainState, epoch: int,
                resumed: Optional[checkpointer_lib.EpochProgress] = None):
  """Trains epoch `epoch` (0-based), from where `resumed` left it if given; saves
  within it when `run.save_clock` says so.

  Returns:
    (train_state, training-mode predictions [n], their targets [n], seconds).
  """
  steps = run.plan.steps_per_epoch
  first = resumed.steps if resumed else 0
  batches = epoch_batches(run, epoch, first)
  tracker = StepTracker(run, epoch, resumed)
  pending = None
  try:
    for i, device_batch in enumerate(
        training.prefetch_to_device(batches, DEVICE_PREFETCH), first):
      run.where.check_stop()
      train_state, metrics = run.steps.train(train_state, device_batch)
      if pending is not None:
        tracker.add(*pending)  # The previous step's, while this one runs.
      pending = (metrics, i)
      if i + 1 < steps and run.save_clock.due(i, steps):
        tracker.add(*pending)  # A save holds whole steps: this one's metrics too.
        pending = None
        save_within_epoch(run, train_state, epoch, tracker)
    if pending is not None:
      tracker.add(*pending)
  finally:
    tracker.close()
  jax.block_until_ready(train_state)
  return (train_state,) + tracker.gathered() + (tracker.seconds(),)


def save_within_epoch(run: Run, train_state: training.TrainState, epoch: int,
                      tracker: StepTracker) -> None:
  """Saves the run in the middle of epoch `epoch` after the steps `tracker` holds, with
  their predictions, so that a resumed epoch scores as an uninterrupted one."""
  host = training.unreplicate(train_state)
  if not all_finite(host.params):
    raise NonFiniteError(
        f'training stopped: non-finite parameters in epoch {epoch + 1} after step '
        f'{len(tracker.preds)} (global step {int(host.step)}). Nothing since the last '
        'checkpoint was saved; ' + last_good(run.config.run_dir))
  preds, targets = tracker.gathered()  # A collective: every process takes part.
  run.save_clock.reset()
  if not run.is_writer:
    return
  progress = checkpointer_lib.EpochProgress(
      steps=len(tracker.preds), predictions=preds, targets=targets,
      seconds=tracker.seconds())
  path = run.checkpointer.save(
      progress=progress, params=host.params, state=host.state,
      model_config=run.plan.model_config, opt_state=host.opt_state, rng=host.rng,
      epoch=epoch, step=int(host.step), metrics=run.history,
      extra=run_files.checkpoint_extra(run.config, run.data.data_id,
                                       run_files.best_of(run.history)[0]))
  log.info('saved %s (step %d of %d of epoch %d)', path, progress.steps,
           run.plan.steps_per_epoch, epoch + 1)


def eval_variables(run: Run, train_state: training.TrainState, epoch: int):
  """The replicated (params, state) to evaluate and keep: the Polyak average of the
  parameters with --ema_decay, BatchNorm averages re-estimated on the epoch's first
  --bn_recalibration_batches training batches (training mode, no dropout)."""
  params = recipe_lib.ema_params(train_state.opt_state)
  if params is None:
    params = train_state.params
  state = train_state.state
  if run.config.bn_recalibration_batches:
    batches = itertools.islice(epoch_batches(run, epoch),
                               run.config.bn_recalibration_batches)
    state = training.recalibrate_batch_norm(
        run.steps.batch_stats, params, state,
        (training.shard_batch(b['inputs']) for b in batches), frozen=run.config.freeze)
  return params, state
