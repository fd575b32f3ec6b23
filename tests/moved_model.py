"""A model off its initial values, for tests whose answer must depend on every part."""

import jax
import numpy as np

from enformer_small import dream_data
from enformer_small import model


def moved_model(model_config, *, init_seed: int, batch: int, bn_updates: int):
  """(params, host state) of `model_config` moved off its initial values.

  At initialisation the attention's output is zero and BatchNorm is the identity, so
  those parts would not shape the output: each parameter is moved by 10% of its spread
  (0.02 where it has none), and the BatchNorm moving averages (zero at init) are filled
  by `bn_updates` training-mode calls on random `batch`-row batches.
  """
  params, state = jax.jit(lambda key: model.init(model_config, key))(
      jax.random.PRNGKey(init_seed))
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.default_rng(0)
  leaves = [np.asarray(p) + (0.1 * np.std(p) or 0.02) * rng.standard_normal(
      np.shape(p)).astype(np.float32) for p in leaves]
  params = jax.tree_util.tree_unflatten(treedef, leaves)
  forward = model.make_model(model_config.without_dropout())
  update = jax.jit(lambda p, s, x: forward.apply(p, s, None, x, is_training=True)[1])
  length = model_config.input_length
  for _ in range(bn_updates):
    state = update(params, state, dream_data.one_hot(rng.integers(0, 4, (batch, length))))
  return params, jax.device_get(state)
