"""Where a run starts: afresh, warm-started from another model, or resumed from its save."""

import dataclasses
import logging
import os
from typing import Any, Dict, List, Optional

import jax
import numpy as np

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import checkpointer as checkpointer_lib
from enformer_small import summaries
from enformer_small import train_config as train_config_lib
from enformer_small import training
from enformer_small.train_config import TrainConfig
from enformer_small.train_data import RunData
from enformer_small.train_errors import TrainingError
from enformer_small.train_plan import Plan

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Start:
  """Where the run starts: the host TrainState, the history so far, the epochs done,
  and how far the next epoch had got (None: from its first step)."""
  host_state: training.TrainState
  history: List[Dict[str, Any]]
  epoch: int
  progress: Optional[checkpointer_lib.EpochProgress]


def check_resume_config(saved: Dict[str, Any], config: TrainConfig, path: str) -> None:
  """Raises TrainingError unless `config` may continue the run that saved `saved`.

  Fields a checkpoint predates count as what its run used: their defaults then
  (`train_config.PREDATED`).
  """
  now = config.to_json_dict()
  defaults = dict(TrainConfig().to_json_dict(), **train_config_lib.PREDATED)
  diffs = [f'--{k}: checkpoint {saved.get(k, defaults[k])!r}, now {now[k]!r}'
           for k in now if k not in train_config_lib.RESUMABLE_CHANGES
           and saved.get(k, defaults[k]) != now[k]]
  if config.recipe.uses_schedule_length and saved.get('num_epochs') != now['num_epochs']:
    diffs.append(f'--num_epochs: checkpoint {saved.get("num_epochs")!r}, now '
                 f'{now["num_epochs"]!r} (the --schedule={config.schedule} learning '
                 'rate spans the whole run)')
  if diffs:
    raise TrainingError(
        f'cannot resume from {path}: the flags differ from the run that wrote it '
        f'({"; ".join(diffs)}). Use the same flags, or start a new --run_dir.')


def _load_latest(checkpointer: checkpointer_lib.Checkpointer, config: TrainConfig,
                 template: Any) -> Optional[checkpointer_lib.Restored]:
  """The newest whole checkpoint with its optimizer state, after checking the flags
  match; damaged ones are skipped with a warning."""
  try:
    restored = checkpointer.restore_latest(
        template, on_damaged=lambda why: log.warning('skipping a damaged checkpoint: %s',
                                                     why))
  except checkpoint_lib.OptimizerMismatchError as e:
    # Another recipe makes another optimizer state: name the flags, not the leaves.
    saved = checkpointer.read(e.path).checkpoint.extra.get('train_config', {})
    check_resume_config(saved, config, e.path)
    raise
  if restored is not None:
    ckpt = restored.checkpoint
    check_resume_config(ckpt.extra.get('train_config', {}), config, ckpt.path)
  return restored


def fresh(config: TrainConfig, plan: Plan) -> Start:
  """A new run: parameters from --seed, with what fits of --init_checkpoint."""
  host_state = jax.device_get(training.init_train_state(
      plan.model_config, plan.optimizer, jax.random.PRNGKey(config.seed)))
  if config.init_checkpoint:
    host_state = warm_start(config, plan, host_state)
  return Start(host_state, [], 0, None)


def warm_start(config: TrainConfig, plan: Plan,
               host_state: training.TrainState) -> training.TrainState:
  """The fresh state with what fits of --init_checkpoint, its optimizer state new."""
  from enformer_small import warm_start as warm_start_lib
  source_params, source_state = warm_start_lib.read_source(config.init_checkpoint,
                                                           plan.model_config)
  params, state, report = warm_start_lib.merge(
      host_state.params, host_state.state, source_params, source_state,
      source=config.init_checkpoint)
  for line in report.lines():
    log.info(line)
  return host_state._replace(params=params, state=state,
                             opt_state=jax.device_get(plan.optimizer.init(params)))


def clear(config: TrainConfig, checkpointer: checkpointer_lib.Checkpointer) -> None:
  """--overwrite: the old run's checkpoints and TensorBoard curves go (process 0)."""
  if jax.process_index() != 0:
    return
  checkpointer.delete_all()
  for name in os.listdir(config.run_dir):
    if name.startswith(summaries.EVENT_FILE_PREFIX):
      os.remove(os.path.join(config.run_dir, name))


def start_or_resume(config: TrainConfig, plan: Plan, run_data: RunData,
                    checkpointer: checkpointer_lib.Checkpointer, *, resume: bool,
                    overwrite: bool) -> Start:
  """Where the run starts (`Start`): resumed from the newest whole save with --resume,
  else afresh (deleting an old run's saves with --overwrite)."""
  if jax.process_index() == 0:
    for path in checkpointer_lib.remove_temporaries(config.run_dir):
      log.info('removed %s, left by a write that was killed', path)
  latest = checkpointer.latest()
  if not (resume and latest):
    if resume:
      log.info('no checkpoint in %s: starting a new run', config.run_dir)
    if latest and overwrite:
      clear(config, checkpointer)
    return fresh(config, plan)
  template = jax.eval_shape(lambda: training.init_train_state(
      plan.model_config, plan.optimizer, jax.random.PRNGKey(0)).opt_state)
  restored = _load_latest(checkpointer, config, template)
  if restored is None:
    raise TrainingError(
        f'cannot resume: no checkpoint in {config.run_dir} reads back whole (see the '
        'warnings above). Start afresh with --overwrite, or choose another --run_dir.')
  return _resumed(restored, run_data, plan)


def _resumed(restored: checkpointer_lib.Restored, run_data: RunData, plan: Plan) -> Start:
  ckpt = restored.checkpoint
  saved_data, data_id = ckpt.extra.get('data', {}), run_data.data_id
  if (saved_data.get('content_hash') and data_id['content_hash'] and
      saved_data['content_hash'] != data_id['content_hash']):
    raise TrainingError(
        f'cannot resume from {ckpt.path}: it was trained on another file '
        f'({saved_data.get("source")}, {saved_data.get("num_rows")} rows) than '
        f'{run_data.path}')
  host_state = training.TrainState(
      params=ckpt.params if ckpt.train_params is None else ckpt.train_params,
      state=ckpt.state if ckpt.train_state is None else ckpt.train_state,
      opt_state=ckpt.opt_state, rng=np.asarray(ckpt.rng),
      step=np.asarray(ckpt.step, np.int32))
  within = (f' ({restored.progress.steps} of the {plan.steps_per_epoch} steps of epoch '
            f'{ckpt.epoch + 1} done)' if restored.progress else '')
  log.info('resuming from %s: epoch %d, step %d%s', ckpt.path, ckpt.epoch, ckpt.step,
           within)
  return Start(host_state, [dict(r) for r in ckpt.metrics], ckpt.epoch,
               restored.progress)


def last_good(run_dir: str) -> str:
  """What to tell a user whose run stopped: the last checkpoint to go back to."""
  latest = checkpointer_lib.Checkpointer(run_dir).latest()
  if latest is None:
    return 'no checkpoint had been written yet.'
  return (f'the last good checkpoint is {latest}; lower --learning_rate or check the '
          'data, then start a new --run_dir or --resume.')

