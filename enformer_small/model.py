"""Pure functions around `Enformer`: init, apply, parameter counts."""

from typing import Optional, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from enformer_small import enformer
from enformer_small import fast_cpu as fast_cpu_lib
from enformer_small import recipe as recipe_lib
from enformer_small.config import EnformerConfig


ROOT = 'enformer/~/'


def make_model(config: EnformerConfig,
               cross_replica_axis: Optional[str] = None,
               frozen: Tuple[str, ...] = (),
               fast_cpu: bool = False) -> hk.TransformedWithState:
  """`init(rng, inputs, is_training)` / `apply(params, state, rng, inputs, is_training)`.

  Initialise with `is_training=True`: Haiku's BatchNorm creates its moving averages only
  on a training-mode call. `frozen`: module paths (`is_frozen`) whose BatchNorms run in
  eval mode even in training: a frozen part normalises with the averages it was trained
  with, and never moves them. `fast_cpu`: the model arranged for XLA:CPU
  (`fast_cpu.py`), the same function rounded otherwise.
  """
  def forward(inputs, is_training):
    module = enformer.Enformer(config, cross_replica_axis=cross_replica_axis)
    # The scope is read while `init` / `apply` trace the modules.
    with fast_cpu_lib.scope(fast_cpu):
      if not frozen:
        return module(inputs, is_training=is_training)
      with hk.intercept_methods(_frozen_batch_norm_interceptor(frozen)):
        return module(inputs, is_training=is_training)
  return hk.transform_with_state(forward)


def is_frozen(module_name: str, frozen: Tuple[str, ...]) -> bool:
  """Whether a Haiku module lies in one of the `frozen` parts.

  Parts are paths below the root, as the parameters name them without `enformer/~/`:
  'trunk' (all of it), 'trunk/~/stem', 'trunk/~/conv_tower', 'trunk/~/transformer', ...
  """
  if not module_name.startswith(ROOT):
    return False
  path = module_name[len(ROOT):]
  return any(path == part or path.startswith(part + '/') for part in frozen)


def _frozen_batch_norm_interceptor(frozen: Tuple[str, ...]):
  def interceptor(method, args, kwargs, context):
    if (isinstance(context.module, hk.BatchNorm) and context.method_name == '__call__'
        and is_frozen(context.module.module_name, frozen)):
      kwargs = dict(kwargs, is_training=False)
    return method(*args, **kwargs)
  return interceptor


def init(config: EnformerConfig, rng: jax.Array, batch_size: int = 1
         ) -> Tuple[hk.Params, hk.State]:
  """Fresh parameters and BatchNorm state for inputs [batch_size, input_length, 4]."""
  dummy = jnp.zeros((batch_size, config.input_length, 4), jnp.float32)
  # Jitted: op-by-op initialisation of the ~70 modules takes tens of seconds on CPU.
  return jax.jit(lambda rng: make_model(config).init(rng, dummy, is_training=True))(rng)


def param_shapes(config: EnformerConfig) -> Tuple[hk.Params, hk.State]:
  """Shapes of params and state without allocating them (jax.eval_shape)."""
  return jax.eval_shape(lambda rng: init(config, rng), jax.random.PRNGKey(0))


def count_params(params: hk.Params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


def head_predictions(config: EnformerConfig, output: jnp.ndarray) -> jnp.ndarray:
  """A head's output [B, C] -> predictions [B, C] (soft-bin heads: [B, 1], the expectation)."""
  if config.head_kind == 'soft_bins':
    return recipe_lib.soft_bin_expectation(output)
  return output


def num_outputs(config: EnformerConfig, head: str = 'yeast') -> int:
  """Predictions per sequence: one of a soft-bin head, else one per channel."""
  return 1 if config.head_kind == 'soft_bins' else config.head_channels[head]


def predict_fn(config: EnformerConfig, head: str = 'yeast', fast_cpu: bool = False):
  """jit-compiled eval-mode forward: (params, state, inputs [B, L, 4]) -> [B, ...].

  Predictions, not logits: a soft-bin head gives its expectation ([B, 1]). fast_cpu:
  arranged for XLA:CPU (`fast_cpu.py`), the same function rounded otherwise.
  """
  model = make_model(config, fast_cpu=fast_cpu)

  @jax.jit
  def predict(params, state, inputs):
    outputs, _ = model.apply(params, state, None, inputs.astype(jnp.float32),
                             is_training=False)
    return head_predictions(config, outputs[head].astype(jnp.float32))
  return predict
