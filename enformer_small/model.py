"""Pure functions around `Enformer`: init, apply, parameter counts."""

from typing import Dict, Mapping, Optional, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from enformer_small import enformer
from enformer_small import recipe as recipe_lib
from enformer_small.config import EnformerConfig


def make_model(config: EnformerConfig,
               cross_replica_axis: Optional[str] = None) -> hk.TransformedWithState:
  """`init(rng, inputs, is_training)` / `apply(params, state, rng, inputs, is_training)`.

  Initialise with `is_training=True`: Haiku's BatchNorm creates its moving averages only
  on a training-mode call.
  """
  def forward(inputs, is_training):
    return enformer.Enformer(config, cross_replica_axis=cross_replica_axis)(
        inputs, is_training=is_training)
  return hk.transform_with_state(forward)


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


def predict_fn(config: EnformerConfig, head: str = 'yeast'):
  """jit-compiled eval-mode forward: (params, state, inputs [B, L, 4]) -> [B, ...].

  Predictions, not logits: a soft-bin head gives its expectation ([B, 1]).
  """
  model = make_model(config)

  @jax.jit
  def predict(params, state, inputs):
    outputs, _ = model.apply(params, state, None, inputs.astype(jnp.float32),
                             is_training=False)
    return head_predictions(config, outputs[head].astype(jnp.float32))
  return predict
