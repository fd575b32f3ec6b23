"""A head start: warm start from a trained model, new heads, frozen parts, head rates."""

import dataclasses
import json

import jax
import numpy as np
import optax
import pytest

from enformer_small import checkpoint
from enformer_small import config as config_lib
from enformer_small import model as model_lib
from enformer_small import recipe as recipe_lib
from enformer_small import training
from enformer_small import warm_start

HEAD = 'enformer/~/head_yeast/~/output'


def _init(config, seed):
  return jax.device_get(model_lib.init(config, jax.random.PRNGKey(seed)))


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


@pytest.mark.parametrize('frozen', [('trunk',), ('trunk/~/stem', 'trunk/~/conv_tower')])
def test_frozen_parameters_and_batch_norm_averages_are_unchanged_after_steps(frozen):
  config = config_lib.seed_config(85)  # Dropout on: training mode everywhere else.
  recipe = recipe_lib.Recipe(optimizer='adamw', learning_rate=0.01, weight_decay=0.1,
                             freeze=frozen, ema_decay=0.9)
  optimizer = recipe_lib.make_optimizer(recipe, total_steps=3)
  start = jax.device_get(training.init_train_state(config, optimizer,
                                                   jax.random.PRNGKey(0)))
  step = training.make_train_step(config, optimizer, donate=False, frozen=frozen)
  d = jax.local_device_count()
  rng = np.random.default_rng(0)
  train_state = training.replicate(start)
  for _ in range(3):
    train_state, _ = step(train_state, training.shard_batch({
        'inputs': np.eye(4, dtype=np.uint8)[rng.integers(0, 4, (d, 8, 85))],
        'targets': rng.uniform(0, 17, (d, 8, 1)).astype(np.float32)}))
  end = training.unreplicate(train_state)
  changed = set()
  for tree in ('params', 'state', 'ema'):  # The parameter average too.
    before = start.params if tree == 'ema' else getattr(start, tree)
    after = (recipe_lib.ema_params(end.opt_state) if tree == 'ema' else
             getattr(end, tree))
    for module in before:
      if not all(np.array_equal(after[module][n], before[module][n], equal_nan=True)
                 for n in before[module]):
        changed.add(module)
  assert not any(model_lib.is_frozen(module, frozen) for module in changed)
  assert HEAD in changed
  mlp = 'enformer/~/trunk/~/transformer/~/transformer_block_0/~/mlp/~/linear'
  final_norm = ('enformer/~/trunk/~/final_pointwise/~/conv_block/~/batch_norm/~/'
                'mean_ema')
  assert (mlp in changed and final_norm in changed) == (frozen != ('trunk',))


def test_train_warm_starts_a_two_target_table_at_another_length_with_a_frozen_trunk(
    tmp_path, capsys):
  from enformer_small import synthetic
  from experiments import train as train_lib
  rows = synthetic.generate(synthetic.SyntheticConfig(num_rows=240, seed=3))
  table = tmp_path / 'own.csv'
  table.write_text('sequence,x,y\n' + ''.join(
      f'{s},{v},{17 - v}\n' for s, v in zip(rows.sequences(), rows.expression)))
  common = dict(batch_size=32, eval_batch_size=64, num_holdout=48, num_epochs=1,
                keep_checkpoints=1, dropout=False, shifts=(0,),
                data_cache_dir=str(tmp_path / 'cache'))
  train_lib.train(train_lib.TrainConfig(
      run_dir=str(tmp_path / 'pre'), synthetic_rows=240,
      synthetic_dir=str(tmp_path / 'syn'), **common))
  source = checkpoint.load_checkpoint(str(tmp_path / 'pre' / 'checkpoint_best.npz'))
  result = train_lib.train(train_lib.TrainConfig(
      run_dir=str(tmp_path / 'fine'), table_file=str(table), target_columns=('x', 'y'),
      sequence_length=110, pad_sequences=True, input_length=110,
      init_checkpoint=source.path, freeze=('trunk',), optimizer='adamw',
      head_learning_rate=0.01, learning_rate=0.001, **common))
  out = capsys.readouterr().out
  assert f'warm start: head {HEAD} re-initialised (b: source [1], model [2]; w: source ' \
         '[576, 1], model [768, 2])' in out
  assert '2 outputs (x, y), frozen: trunk, 1,996,578 parameters' in out
  params, state = result.train_state.params, result.train_state.state
  for tree, trained in ((source.params, params), (source.state, state)):
    for module in filter(_is_trunk, tree):
      for name in tree[module]:
        np.testing.assert_array_equal(trained[module][name], tree[module][name])
  holdout = result.history[-1]['holdout']
  assert set(holdout['per_target']) == {'x', 'y'}
  assert holdout['pearson'] == pytest.approx(np.mean(
      [holdout['per_target'][t]['pearson'] for t in 'xy']))
  saved = json.loads((tmp_path / 'fine' / 'train_config.json').read_text())
  assert saved['resolved']['parameters'] == 1_996_578


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

