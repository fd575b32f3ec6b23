"""A head start: warm start from a trained model, new heads, frozen parts, head rates.

Steps with frozen parts and whole warm-started trainings are in
test_slow_warm_start.py.
"""

import dataclasses
import functools
import logging
import os

import jax
import numpy as np
import optax
import pytest

from enformer_small import checkpoint
from enformer_small import config as config_lib
from enformer_small import model as model_lib
from enformer_small import recipe as recipe_lib
from enformer_small import resume
from enformer_small import train_plan
from enformer_small import training
from enformer_small import warm_start
from enformer_small.train_config import TrainConfig

HEAD = 'enformer/~/head_yeast/~/output'


@functools.lru_cache(maxsize=None)
def _shapes(config):
  return model_lib.param_shapes(config)


def _init(config, seed):
  """(params, state) of `config`: random values of every array's shape and dtype,
  other for each seed. What warm starting copies is all these tests look at, and
  random values tell each array from any other (fresh initialisation leaves many
  zeros, and compiles for seconds)."""
  rng = np.random.default_rng(seed)

  def fill(shape):
    if np.issubdtype(shape.dtype, np.floating):
      return rng.standard_normal(shape.shape).astype(shape.dtype)
    return rng.integers(0, 1000, shape.shape).astype(shape.dtype)
  return jax.tree_util.tree_map(fill, _shapes(config))


def _is_trunk(module):
  return not module.startswith(recipe_lib.HEAD_PREFIX)


def test_params_per_configuration_grow_by_one_head_column_per_target():
  counts = {(length, n): model_lib.count_params(
      model_lib.param_shapes(config_lib.seed_config(length).with_outputs(n))[0])
      for length in (85, 110) for n in (1, 2, 3)}
  assert counts == {(85, 1): 1_995_617, (85, 2): 1_996_194, (85, 3): 1_996_771,
                    (110, 1): 1_995_809, (110, 2): 1_996_578, (110, 3): 1_997_347}


def test_every_trunk_array_is_loaded_bit_for_bit_and_a_misfit_head_reinitialised():
  source_params, source_state = _init(config_lib.seed_config(85), seed=1)
  fresh_params, fresh_state = _init(config_lib.seed_config(110).with_outputs(2), seed=2)
  params, state, report = warm_start.merge(fresh_params, fresh_state, source_params,
                                           source_state, source='pre.npz')
  for module in params:
    expected = source_params if _is_trunk(module) else fresh_params
    for name, value in params[module].items():
      assert value.dtype == expected[module][name].dtype
      np.testing.assert_array_equal(value, expected[module][name], strict=True)
  for module in state:  # The BatchNorm averages (and counters) of the trunk.
    for name, value in state[module].items():
      np.testing.assert_array_equal(value, source_state[module][name], strict=True)
  assert report.reinitialised == (
      (HEAD, 'b: source [1], model [2]; w: source [576, 1], model [768, 2]'),)
  assert report.lines()[1] == (f'warm start: head {HEAD} re-initialised (b: source [1], '
                               'model [2]; w: source [576, 1], model [768, 2])')
  assert len(report.loaded) == len(params) - 1


def test_a_head_that_fits_is_kept():
  source_params, source_state = _init(config_lib.seed_config(85), seed=1)
  fresh_params, fresh_state = _init(config_lib.seed_config(85), seed=2)
  params, _, report = warm_start.merge(fresh_params, fresh_state, source_params,
                                       source_state)
  assert report.reinitialised == () and HEAD in report.loaded
  np.testing.assert_array_equal(params[HEAD]['w'], source_params[HEAD]['w'])


def test_a_trunk_that_does_not_fit_is_an_error_naming_the_source():
  source = _init(dataclasses.replace(config_lib.seed_config(85), num_transformer_layers=3),
                 seed=1)
  fresh = _init(config_lib.seed_config(85), seed=2)
  with pytest.raises(warm_start.WarmStartError, match=r'^other\.npz: the trunk does not'):
    warm_start.merge(*fresh, *source, source='other.npz')


def test_read_source_takes_the_evaluated_arrays_of_a_checkpoint(tmp_path):
  params, state = _init(config_lib.seed_config(85), seed=1)
  path = checkpoint.save_checkpoint(str(tmp_path / 'c.npz'), params=params, state=state,
                                    model_config=config_lib.seed_config(85))
  loaded_params, loaded_state = warm_start.read_source(path, config_lib.seed_config(110))
  for tree, loaded in ((params, loaded_params), (state, loaded_state)):
    for module in tree:
      for name in tree[module]:
        np.testing.assert_array_equal(loaded[module][name], tree[module][name])


def test_parameter_groups_zero_the_frozen_give_the_head_its_rate_and_wait_for_phase_two():
  params = {'enformer/~/trunk/~/stem/~/conv1_d': {'w': np.ones(3, np.float32)},
            'enformer/~/trunk/~/conv_tower': {'w': np.ones(3, np.float32)},
            HEAD: {'w': np.ones(3, np.float32)}}
  grads = jax.tree_util.tree_map(np.ones_like, params)
  recipe = recipe_lib.Recipe(optimizer='sgd', momentum=0.0, learning_rate=0.1,
                             head_learning_rate=0.5, freeze=('trunk/~/stem',),
                             head_only_fraction=0.5)
  optimizer = recipe_lib.make_optimizer(recipe, total_steps=4)
  opt_state = optimizer.init(params)
  moved = []
  for _ in range(4):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    moved.append({m: float(u['w'][0]) for m, u in updates.items()})
  assert [m['enformer/~/trunk/~/stem/~/conv1_d'] for m in moved] == [0.0] * 4
  assert [m[HEAD] for m in moved] == [-0.5] * 4
  assert [m['enformer/~/trunk/~/conv_tower'] for m in moved] == pytest.approx(
      [0.0, 0.0, -0.1, -0.1])


def test_the_seeds_recipe_builds_no_parameter_groups():
  assert not recipe_lib.Recipe().uses_parameter_groups
  assert not isinstance(recipe_lib.make_optimizer(recipe_lib.Recipe()).init(
      {'m': {'w': np.ones(2)}})[0], optax.MultiTransformState)


def test_a_converted_tf_checkpoint_warm_starts_a_model_of_another_length(seed_fixtures_dir):
  """The seed's own TF/Sonnet checkpoint (85 bp, one output) into 110 bp, two outputs."""
  from enformer_small import convert
  path = str(seed_fixtures_dir / 'checkpoint' / 'ckpt')
  expected_params, expected_state = convert.convert_checkpoint(
      path, config_lib.seed_config(85))
  target = config_lib.seed_config(110).with_outputs(2)
  source_params, source_state = warm_start.read_source(path, target)
  params, state, report = warm_start.merge(*_init(target, seed=0), source_params,
                                           source_state, source=path)
  for tree, expected in ((params, expected_params), (state, expected_state)):
    for module in filter(_is_trunk, tree):
      for name in tree[module]:
        np.testing.assert_array_equal(tree[module][name], expected[module][name],
                                      strict=True)
  assert [m for m, _ in report.reinitialised] == [HEAD]



def test_a_new_run_takes_the_trunk_of_a_trained_run_and_a_new_head(tiny_run, tmp_path,
                                                                    caplog):
  """`resume.warm_start` (a run's --init_checkpoint): tiny_run's evaluated trunk (the
  parameter average, the recalibrated BatchNorm averages) into a two-target table
  model at the same length, bit for bit; its 18-bin head does not fit two outputs and
  is re-initialised (logged); the optimizer state is new, for the merged parameters."""
  trained, _ = tiny_run
  source = checkpoint.load_checkpoint(os.path.join(trained.run_dir,
                                                   checkpoint.BEST_NAME))
  config = TrainConfig(
      run_dir=str(tmp_path / 'fine'), table_file=str(tmp_path / 'own.csv'),
      target_columns=('x', 'y'), sequence_length=110, pad_sequences=True,
      input_length=110, shifts=(0,), dropout=False, batch_size=32,
      init_checkpoint=source.path, freeze=('trunk',), optimizer='adamw',
      head_learning_rate=0.01, learning_rate=0.001)
  plan = train_plan.make_plan(config, num_train_rows=192)
  fresh_params, fresh_state = _init(plan.model_config, seed=2)
  fresh = training.TrainState(
      params=fresh_params, state=fresh_state,
      opt_state=plan.optimizer.init(fresh_params), rng=np.zeros(2, np.uint32),
      step=np.zeros((), np.int32))
  with caplog.at_level(logging.INFO, logger='enformer_small'):
    started = resume.warm_start(config, plan, fresh)
  assert (f'warm start: head {HEAD} re-initialised (b: source [18], model [2]; w: '
          'source [768, 18], model [768, 2])') in caplog.messages
  for tree, merged in ((source.params, started.params), (source.state, started.state)):
    for module in filter(_is_trunk, tree):
      for name in tree[module]:
        np.testing.assert_array_equal(merged[module][name], tree[module][name],
                                      strict=True)
  for name, value in fresh_params[HEAD].items():
    np.testing.assert_array_equal(started.params[HEAD][name], value, strict=True)
  assert (jax.tree_util.tree_structure(started.opt_state) ==
          jax.tree_util.tree_structure(plan.optimizer.init(started.params)))
  for a, b in zip(jax.tree_util.tree_leaves(started.opt_state),
                  jax.tree_util.tree_leaves(plan.optimizer.init(started.params))):
    np.testing.assert_array_equal(a, b)
