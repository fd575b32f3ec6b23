"""The pmapped train and eval steps (no TensorFlow here: runs where TF is absent).

As in Haiku's ImageNet example: a `TrainState` NamedTuple replicated over the local
devices, one `train_step` pmapped over them with gradients, metrics and BatchNorm
statistics averaged by `lax.pmean` (the seed's CrossReplicaBatchNorm), and optax momentum
SGD on the Poisson loss. Under `jax.distributed` the same pmapped step spans the devices
of every process.
"""

import collections
import dataclasses
import functools
import itertools
from typing import Any, Callable, Dict, Iterable, Iterator, NamedTuple, Optional, Sequence, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from enformer_small import recipe as recipe_lib
from enformer_small.config import EnformerConfig
from enformer_small import model as model_lib
from enformer_small.model import make_model, mixed_precision

AXIS_NAME = 'devices'
# Keras' Poisson loss adds this inside the log.
POISSON_EPSILON = 1e-7

Batch = Dict[str, jnp.ndarray]
Metrics = Dict[str, jnp.ndarray]


class TrainState(NamedTuple):
  params: hk.Params
  state: hk.State            # BatchNorm moving averages
  opt_state: optax.OptState
  rng: jax.Array             # one key, identical on every device
  step: jnp.ndarray          # int32 scalar


def poisson_loss(predictions: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """Keras' Poisson loss: mean(pred - y * log(pred + 1e-7))."""
  return jnp.mean(predictions - targets * jnp.log(predictions + POISSON_EPSILON))


def make_optimizer(learning_rate: float = 0.01,
                   momentum: float = 0.9) -> optax.GradientTransformation:
  """The seed's optimizer: SGD with momentum, no weight decay or clipping."""
  return optax.sgd(learning_rate, momentum=momentum)


def init_train_state(model_config: EnformerConfig,
                     optimizer: optax.GradientTransformation,
                     rng: jax.Array) -> TrainState:
  """An unreplicated TrainState with fresh parameters."""
  params, state, train_rng = _initializer(model_config)(rng)
  return TrainState(params=params, state=state, opt_state=optimizer.init(params),
                    rng=train_rng, step=jnp.zeros((), jnp.int32))


@functools.lru_cache(maxsize=8)
def _initializer(model_config: EnformerConfig):
  """`rng -> (params, state, train_rng)`, jitted once per model configuration.

  Jitted because op-by-op initialisation of the ~70 modules takes tens of seconds on
  CPU; cached because every run (and every test) that builds a state would otherwise
  compile the same initialisers again.
  """
  @jax.jit
  def init(rng):
    init_rng, train_rng = jax.random.split(rng)
    dummy = jnp.zeros((1, model_config.input_length, 4), jnp.float32)
    params, state = make_model(model_config).init(init_rng, dummy, is_training=True)
    return params, state, train_rng
  return init


def _regression_metrics(predictions, targets, loss):
  err = predictions - targets
  return {'loss': loss, 'mse': jnp.mean(err**2), 'mae': jnp.mean(jnp.abs(err))}


def make_train_step(model_config: EnformerConfig,
                    optimizer: optax.GradientTransformation,
                    *,
                    head: str = 'yeast',
                    axis_name: str = AXIS_NAME,
                    compute_dtype: Any = jnp.float32,
                    donate: bool = True,
                    return_predictions: bool = False,
                    loss: str = 'poisson',
                    soft_bin_sigma: float = 0.5,
                    frozen: Tuple[str, ...] = (),
                    fast_cpu: bool = False
                    ) -> Callable[[TrainState, Batch], Tuple[TrainState, Metrics]]:
  """A pmapped `train_step(train_state, batch) -> (train_state, metrics)`.

  batch: {'inputs': [D, B, L, 4] one-hot (any dtype), 'targets': [D, B, 1]} with D the
  local device count; train_state replicated (`replicate`). Metrics are averaged over
  all devices and are replicated on return. With `return_predictions`, metrics also
  hold 'predictions' and 'targets' [D, B]: each device's training-mode predictions
  (not averaged) and the targets they were scored against, for train correlations
  over an epoch as Keras reports them (the host batch may be gone by then, see
  `prefetch_to_device`).

  loss: 'poisson' (the seed's), 'mse', or 'soft_bin' (KL against LegNet's soft-bin
  targets of width `soft_bin_sigma`; needs a soft-bin head). Predictions are the
  head's output, or for a soft-bin head the expectation over its bins. With several
  outputs (`model.num_outputs`), targets are [D, B, T] and the returned predictions
  and targets [D, B, T].

  frozen: parts whose BatchNorms run in eval mode (`model.make_model`); the optimizer
  is what keeps their parameters (`recipe.make_optimizer`).

  fast_cpu: the step arranged for XLA:CPU (`fast_cpu`): the same function, faster on a
  CPU, but not bit-identical to the default.
  """
  model = make_model(model_config, cross_replica_axis=axis_name, frozen=frozen,
                     fast_cpu=fast_cpu)
  single = model_lib.num_outputs(model_config, head) == 1
  objective = _objective(model_config, loss, soft_bin_sigma)

  def loss_fn(params, state, rng, inputs, targets):
    with mixed_precision(compute_dtype):
      outputs, new_state = model.apply(params, state, rng, inputs, is_training=True)
    output = outputs[head].astype(jnp.float32)
    predictions = model_lib.head_predictions(model_config, output)
    return objective(output, predictions, targets), (new_state, output, predictions)

  def train_step(train_state: TrainState, batch: Batch):
    rng, step_rng = jax.random.split(train_state.rng)
    # Each device draws its own dropout masks; the carried key stays identical.
    step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
    inputs = batch['inputs'].astype(compute_dtype)
    targets = batch['targets'].astype(jnp.float32)
    grads, (new_state, output, predictions) = jax.grad(loss_fn, has_aux=True)(
        train_state.params, train_state.state, step_rng, inputs, targets)
    grads = jax.lax.pmean(grads, axis_name)
    updates, opt_state = optimizer.update(grads, train_state.opt_state,
                                          train_state.params)
    params = optax.apply_updates(train_state.params, updates)
    loss = objective(output, predictions, targets)
    metrics = jax.lax.pmean(_regression_metrics(predictions, targets, loss),
                            axis_name)
    if return_predictions:
      metrics['predictions'] = predictions[..., 0] if single else predictions
      metrics['targets'] = targets[..., 0] if single else targets
    new_train_state = TrainState(params=params, state=new_state, opt_state=opt_state,
                                 rng=rng, step=train_state.step + 1)
    return new_train_state, metrics

  return jax.pmap(train_step, axis_name=axis_name,
                  donate_argnums=(0,) if donate else ())


def _objective(model_config: EnformerConfig, loss: str, soft_bin_sigma: float):
  """`objective(output, predictions, targets) -> scalar loss` for a loss name."""
  soft = model_config.head_kind == 'soft_bins'
  if (loss == 'soft_bin') != soft:
    raise ValueError(f'loss {loss!r} does not fit head_kind {model_config.head_kind!r}: '
                     "the soft_bin loss needs a soft-bin head and the other losses need "
                     'a scalar one')
  if loss == 'poisson':
    return lambda output, predictions, targets: poisson_loss(predictions, targets)
  if loss == 'mse':
    return lambda output, predictions, targets: jnp.mean((predictions - targets)**2)
  if loss == 'soft_bin':
    return lambda output, predictions, targets: recipe_lib.soft_bin_loss(
        output, targets, soft_bin_sigma)
  raise ValueError(f'unknown loss {loss!r}; expected one of {recipe_lib.LOSSES}')


def make_eval_step(model_config: EnformerConfig,
                   *,
                   heads: Optional[Sequence[str]] = None,
                   axis_name: str = AXIS_NAME,
                   compute_dtype: Any = jnp.float32,
                   fast_cpu: bool = False
                   ) -> Callable[[hk.Params, hk.State, jnp.ndarray], jnp.ndarray]:
  """A pmapped `eval_step(params, state, inputs [D, B, L, 4]) -> predictions [D, B, T]`.

  Eval mode (BatchNorm moving averages, no dropout): `model.predictions_fn` of the
  `heads` (default: all), over the local devices. fast_cpu: as in `make_train_step`.
  """
  predictions = model_lib.predictions_fn(
      model_config, model_lib.head_names(model_config, heads),
      jnp.dtype(compute_dtype).name, bool(fast_cpu))
  return jax.pmap(predictions, axis_name=axis_name)


def make_batch_stats_step(model_config: EnformerConfig,
                          *,
                          axis_name: str = AXIS_NAME,
                          compute_dtype: Any = jnp.float32,
                          frozen: Tuple[str, ...] = (),
                          fast_cpu: bool = False
                          ) -> Callable[[hk.Params, hk.State, jnp.ndarray], hk.State]:
  """A pmapped `stats_step(params, state, inputs [D, B, L, 4]) -> state`.

  A training-mode forward pass without dropout whose returned BatchNorm state holds
  the batch's own statistics as its averages (moving-average decay 0: Haiku's
  zero-debiased average of one value is that value), averaged over devices as in
  training. For `recalibrate_batch_norm`. BatchNorms of `frozen` parts run in eval mode
  and return their state as it was (`recalibrate_batch_norm(frozen=...)` keeps it).
  fast_cpu: as in `make_train_step`.
  """
  stats_config = dataclasses.replace(model_config.without_dropout(),
                                     batch_norm_decay=0.0)
  model = make_model(stats_config, cross_replica_axis=axis_name, frozen=frozen,
                     fast_cpu=fast_cpu)

  def stats_step(params, state, inputs):
    with mixed_precision(compute_dtype):
      _, new_state = model.apply(params, state, None, inputs.astype(compute_dtype),
                                 is_training=True)
    return new_state

  return jax.pmap(stats_step, axis_name=axis_name)


def recalibrate_batch_norm(stats_step, params: hk.Params, state: hk.State,
                           batches: Iterable[jax.Array],
                           frozen: Tuple[str, ...] = ()) -> hk.State:
  """BatchNorm averages re-estimated as the mean of batch statistics.

  Args:
    stats_step: from `make_batch_stats_step`.
    params, state: replicated (the state supplies the structure and anything that is
      not an average).
    batches: device inputs [D, B, L, 4], e.g. training batches.
  Returns:
    The replicated state with each 'average' (BatchNorm mean and variance) replaced
    by the mean over the batches of that batch's training-mode statistic; counters and
    hidden values as they were (eval mode reads only the averages), and so is all of
    the state of `frozen` parts (`model.is_frozen`).
  """
  total, count = None, 0
  for inputs in batches:
    stats = stats_step(params, state, inputs)
    total = stats if total is None else jax.tree_util.tree_map(jnp.add, total, stats)
    count += 1
  if count == 0:
    raise ValueError('recalibrate_batch_norm needs at least one batch')
  return {module: {name: (total[module][name] / count
                          if name == 'average' and not model_lib.is_frozen(module, frozen)
                          else value)
                   for name, value in values.items()}
          for module, values in state.items()}


def local_mesh_sharding() -> jax.sharding.NamedSharding:
  """Shards a leading axis of size local_device_count over this process's devices."""
  mesh = jax.sharding.Mesh(np.array(jax.local_devices()), (AXIS_NAME,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS_NAME))


def replicate(tree: Any) -> Any:
  """Copies a pytree onto every local device: leaves gain a leading device axis.

  (`jax.device_put_replicated` is gone in jax 0.10; a NamedSharding does the job.)
  """
  n = jax.local_device_count()
  sharding = local_mesh_sharding()
  return jax.tree_util.tree_map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)),
                               sharding), tree)


def unreplicate(tree: Any) -> Any:
  """The first device's copy of a replicated pytree, as numpy arrays on the host."""
  return jax.tree_util.tree_map(lambda x: np.asarray(x.addressable_data(0))[0]
                                if hasattr(x, 'addressable_data') else np.asarray(x)[0],
                                tree)


def shard_batch(batch: Dict[str, np.ndarray]) -> Dict[str, jax.Array]:
  """Places a host batch [D, B, ...] on the local devices, one slice per device."""
  sharding = local_mesh_sharding()
  return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), batch)


def prefetch_to_device(batches: Iterable[Dict[str, np.ndarray]],
                       size: int = 2) -> Iterator[Dict[str, jax.Array]]:
  """Yields `shard_batch(batch)` for each host batch, `size` batches ahead.

  `jax.device_put` returns before the copy is done, so the batches after the one
  being stepped on are already on their way while the step runs: on a GPU the step
  does not wait for its inputs to cross PCIe. `size` batches sit in device memory
  besides the one in use.
  """
  if size < 1:
    raise ValueError(f'size must be >= 1, got {size}')
  batches = iter(batches)
  queue = collections.deque(shard_batch(b) for b in itertools.islice(batches, size))
  while queue:
    yield queue.popleft()
    # Only now, after the caller has dispatched its step on the batch just yielded.
    queue.extend(shard_batch(b) for b in itertools.islice(batches, 1))
