"""The seed at 85 bp with the seed's optimizer, at its starting point: made once per test
process and shared by the default tier's step tests.

`training.init_train_state` compiles the model's initialisers (seconds on CPU) and each
`make_train_step` compiles per input shape and dtype; the tests of the default step
(test_train_recipes), its input dtype and mixed-precision policies (test_training)
start from the same state and share one step.
"""

import functools

import jax

from enformer_small import config as config_lib
from enformer_small import recipe as recipe_lib
from enformer_small import training


@functools.lru_cache(maxsize=None)
def seed_start():
  """(model_config, optimizer, host TrainState): the seed model at 85 bp (dropout on),
  `Recipe()`'s optimizer (optax.sgd(0.01, momentum=0.9), the seed's, as
  `training.make_optimizer()`), parameters from PRNGKey(0)."""
  model_config = config_lib.seed_config(85)
  optimizer = recipe_lib.make_optimizer(recipe_lib.Recipe())
  start = training.init_train_state(model_config, optimizer, jax.random.PRNGKey(0))
  return model_config, optimizer, jax.device_get(start)


@functools.lru_cache(maxsize=None)
def seed_train_step():
  """`make_train_step` of `seed_start`'s model and optimizer (donate=False, predictions
  returned): the default step, compiled once per input shape and dtype."""
  model_config, optimizer, _ = seed_start()
  return training.make_train_step(model_config, optimizer, donate=False,
                                  return_predictions=True)
