"""What the settings and the data size make of a run, and its compiled steps."""

import dataclasses
from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from enformer_small import config as config_lib
from enformer_small import model as model_lib
from enformer_small import recipe as recipe_lib
from enformer_small import training
from enformer_small.train_config import TrainConfig
from enformer_small.train_errors import TrainingError

# The one-hot inputs travel as uint8: exact in any compute dtype (the step casts on the
# device) and a quarter of float32's host-to-device bytes.
INPUT_DTYPE = np.uint8


class PlanError(TrainingError):
  """Settings that make no run of this data; the message says which to change."""


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the flags and the data size make of a run."""
  model_config: config_lib.EnformerConfig
  optimizer: Any                # optax.GradientTransformation
  pipeline: Any                 # dataset.PipelineConfig
  eval_batch_size: int          # a multiple of the device count
  steps_per_epoch: int
  total_steps: int              # the schedule's length


def shard_count() -> int:
  return jax.process_count() * jax.local_device_count()


def make_plan(config: TrainConfig, num_train_rows: int) -> Plan:
  from enformer_small import dataset  # TensorFlow: only once training really starts.
  shards = shard_count()
  if config.batch_size % shards:
    raise PlanError(f'--batch_size={config.batch_size} must be divisible by the '
                    f'{shards} devices; e.g. {config.batch_size // shards * shards}')
  pipeline = dataset.PipelineConfig(
      crop_start=config.window_start, crop_length=config.input_length,
      shifts=config.shifts, shift_mode=config.shift_mode,
      reverse_complement=config.reverse_complement,
      one_hot_dtype=np.dtype(INPUT_DTYPE).name)
  steps_per_epoch = dataset.num_train_batches(num_train_rows, config.batch_size, pipeline)
  if steps_per_epoch == 0:
    raise PlanError(
        f'{num_train_rows:,} training rows x {pipeline.examples_per_row} shift(s) '
        f'hold no full batch of {config.batch_size}: lower --batch_size')
  total_steps = steps_per_epoch * config.num_epochs
  model_config = config.model_config()
  try:
    model_lib.check_parts(model_config, config.freeze)
  except ValueError as e:
    raise PlanError(f'--freeze: {e}') from None
  return Plan(model_config=model_config,
              optimizer=recipe_lib.make_optimizer(config.recipe, total_steps),
              pipeline=pipeline,
              eval_batch_size=-(-config.eval_batch_size // shards) * shards,
              steps_per_epoch=steps_per_epoch, total_steps=total_steps)


# Compiled steps, cached so that runs in one process (tests) compile once.
_COMPILED: Dict[Any, Any] = {}


def _compiled(kind: str, key: Tuple, build: Callable[[], Any], *args) -> Any:
  """The AOT-compiled `build()(*args)` for these shapes, made once per process.

  With several processes, the pmapped function itself, compiled by one call on copies
  of `args` (an AOT-compiled pmap takes global arrays, not each process's own).
  """
  shapes = tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(args))
  cache_key = (kind, key, shapes, jax.local_device_count(), jax.process_count())
  if cache_key not in _COMPILED:
    if jax.process_count() == 1:
      _COMPILED[cache_key] = build().lower(*args).compile()
    else:
      step = build()
      jax.block_until_ready(step(*jax.tree_util.tree_map(np.asarray, args)))
      _COMPILED[cache_key] = step
  return _COMPILED[cache_key]


@dataclasses.dataclass(frozen=True)
class Steps:
  """The compiled pmapped steps; batch_stats only with BatchNorm recalibration."""
  train: Any
  eval: Any
  batch_stats: Any = None


def build_steps(config: TrainConfig, plan: Plan, train_state: training.TrainState
                ) -> Steps:
  """Compiles the steps ahead of the loop, so that epoch timings exclude compiling."""
  devices = jax.local_device_count()
  per_device = config.batch_size // jax.process_count() // devices
  per_device_eval = plan.eval_batch_size // jax.process_count() // devices
  dtype = jnp.dtype(config.compute_dtype)
  example = training.shard_batch({
      'inputs': np.zeros((devices, per_device, config.input_length, 4), INPUT_DTYPE),
      'targets': np.zeros((devices, per_device, config.num_targets), np.float32)})
  eval_inputs = training.shard_batch(np.zeros(
      (devices, per_device_eval, config.input_length, 4), INPUT_DTYPE))
  key = (plan.model_config, dtype.name, config.fast_cpu)
  train_step = _compiled(
      'train', key + (config.recipe, plan.total_steps),
      lambda: training.make_train_step(
          plan.model_config, plan.optimizer, compute_dtype=dtype, return_predictions=True,
          loss=config.loss, soft_bin_sigma=config.soft_bin_sigma, frozen=config.freeze,
          fast_cpu=config.fast_cpu),
      train_state, example)
  eval_step = _compiled('eval', key, lambda: training.make_eval_step(
      plan.model_config, compute_dtype=dtype, fast_cpu=config.fast_cpu),
                        train_state.params, train_state.state, eval_inputs)
  batch_stats = None
  if config.bn_recalibration_batches:
    batch_stats = _compiled('batch_stats', key + (config.freeze,),
                            lambda: training.make_batch_stats_step(
        plan.model_config, compute_dtype=dtype, frozen=config.freeze,
        fast_cpu=config.fast_cpu), train_state.params,
                            train_state.state, example['inputs'])
  return Steps(train=train_step, eval=eval_step, batch_stats=batch_stats)
