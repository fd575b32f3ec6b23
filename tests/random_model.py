"""Variables of test models: random and non-trivial (no init call: nothing to compile),
and the seed's TF/Sonnet fixture model converted (once per test process)."""

import functools

import jax
import numpy as np

from enformer_small import model as model_lib


@functools.lru_cache(maxsize=None)
def _shapes(config):
  return model_lib.param_shapes(config)  # Traces the model: ~1 s, once per config.


def random_variables(config, seed):
  """Random params and BatchNorm moving averages of the model's shapes (no init call:
  nothing to compile). Every weight is non-zero, unlike the init's zero attention output."""
  params, state = _shapes(config)
  rng = np.random.default_rng(seed)

  def param(path, leaf):
    if len(leaf.shape) >= 2:  # weights: variance-preserving scale
      return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
    if 'scale' in jax.tree_util.keystr(path):
      return rng.uniform(0.5, 1.5, leaf.shape)
    return rng.normal(0, 0.1, leaf.shape)

  def moving_average(path, leaf):
    if not leaf.shape:  # counters
      return np.zeros((), leaf.dtype)
    if 'var_ema' in jax.tree_util.keystr(path):
      return rng.uniform(0.5, 1.5, leaf.shape)
    return rng.normal(0, 0.3, leaf.shape)

  def cast(f):
    return lambda path, leaf: np.asarray(f(path, leaf), leaf.dtype)
  return (jax.tree_util.tree_map_with_path(cast(param), params),
          jax.tree_util.tree_map_with_path(cast(moving_average), state))


@functools.lru_cache(maxsize=None)
def converted_seed_model(checkpoint_prefix: str):
  """(config, params, state): the seed's TF/Sonnet checkpoint at `checkpoint_prefix`
  (e.g. ../shared/fixtures/seed_sonnet_85bp/checkpoint/ckpt) converted to the 85 bp
  seed model. Cached: tests that share it convert it once."""
  from enformer_small import config as config_lib
  from enformer_small import convert
  config = config_lib.seed_config(85)
  params, state = convert.convert_checkpoint(checkpoint_prefix, config)
  return config, params, state
