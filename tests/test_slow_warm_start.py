"""Slow tier: steps with frozen parts, and a whole warm-started training."""

import json
import logging

import jax
import numpy as np
import pytest

from enformer_small import checkpoint
from enformer_small import config as config_lib
from enformer_small import model as model_lib
from enformer_small import recipe as recipe_lib
from enformer_small import trainer
from enformer_small import training
from enformer_small.train_config import TrainConfig

HEAD = 'enformer/~/head_yeast/~/output'


def _is_trunk(module):
  return not module.startswith(recipe_lib.HEAD_PREFIX)


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
    tmp_path, caplog):
  from enformer_small import synthetic
  rows = synthetic.generate(synthetic.SyntheticConfig(num_rows=240, seed=3))
  table = tmp_path / 'own.csv'
  table.write_text('sequence,x,y\n' + ''.join(
      f'{s},{v},{17 - v}\n' for s, v in zip(rows.sequences(), rows.expression)))
  common = dict(batch_size=32, eval_batch_size=64, num_holdout=48, num_epochs=1,
                keep_checkpoints=1, dropout=False, shifts=(0,),
                data_cache_dir=str(tmp_path / 'cache'))
  trainer.train(TrainConfig(
      run_dir=str(tmp_path / 'pre'), synthetic_rows=240,
      synthetic_dir=str(tmp_path / 'syn'), **common))
  source = checkpoint.load_checkpoint(str(tmp_path / 'pre' / 'checkpoint_best.npz'))
  with caplog.at_level(logging.INFO, logger='enformer_small'):
    result = trainer.train(TrainConfig(
        run_dir=str(tmp_path / 'fine'), table_file=str(table), target_columns=('x', 'y'),
        sequence_length=110, pad_sequences=True, input_length=110,
        init_checkpoint=source.path, freeze=('trunk',), optimizer='adamw',
        head_learning_rate=0.01, learning_rate=0.001, **common))
  out = '\n'.join(caplog.messages)  # The library's log lines (the command prints them).
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
