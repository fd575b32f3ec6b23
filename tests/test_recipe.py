"""Training recipes (enformer_small/recipe.py) against hand-computed expectations.

Each optimizer option, schedule, average and loss is checked against numbers worked out
by hand; the default recipe against a frozen copy of the seed's train step, bit for bit.
"""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from enformer_small import config as config_lib
from enformer_small import model as model_lib
from enformer_small import plasmid
from enformer_small import recipe as recipe_lib
from enformer_small import training
from enformer_small.recipe import Recipe


def _phi(x):
  """The standard normal CDF, by hand."""
  return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _updates(optimizer, params, grads_sequence):
  """Parameters after each update of `optimizer` from `params` with these gradients."""
  state = optimizer.init(params)
  out = []
  for grads in grads_sequence:
    updates, state = optimizer.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    out.append(params)
  return out, state


# ---------------------------------------------------------------------------
# Schedules.


def test_warmup_cosine_schedule_at_hand_computed_steps():
  """Peak 1 over 100 steps, 10% warmup: linear 0 -> 1 over steps 0..10, then
  end + (1 - end) * (1 + cos(pi * (t - 10) / 90)) / 2."""
  schedule = recipe_lib.learning_rate_schedule(
      Recipe(schedule='warmup_cosine', learning_rate=1.0, warmup_fraction=0.1), 100)
  for step, expected in ((0, 0.0), (5, 0.5), (10, 1.0), (55, 0.5), (100, 0.0),
                         (40, (1 + math.cos(math.pi * 30 / 90)) / 2)):
    assert float(schedule(step)) == pytest.approx(expected, abs=1e-6), step
  ending = recipe_lib.learning_rate_schedule(
      Recipe(schedule='warmup_cosine', learning_rate=2.0, warmup_fraction=0.1,
             end_lr_fraction=0.1), 100)
  assert float(ending(55)) == pytest.approx(0.2 + 1.8 * 0.5, rel=1e-6)
  assert float(ending(100)) == pytest.approx(0.2, rel=1e-6)


def test_one_cycle_schedule_at_hand_computed_steps():
  """PyTorch's OneCycleLR (cosine, two phases): 1/25 -> 1 over the first 30 of 100
  steps, then down to (1/25) / 1e4."""
  schedule = recipe_lib.learning_rate_schedule(Recipe(schedule='one_cycle',
                                                      learning_rate=1.0), 100)
  start, end = 1 / 25, 1 / 25 / 1e4
  for step, expected in ((0, start), (15, start + (1 - start) * 0.5), (30, 1.0),
                         (65, end + (1 - end) * 0.5), (100, end)):
    assert float(schedule(step)) == pytest.approx(expected, rel=1e-5), step


def test_constant_schedule_ignores_the_run_length():
  schedule = recipe_lib.learning_rate_schedule(Recipe(learning_rate=0.03), 0)
  assert float(schedule(0)) == float(schedule(10**6)) == pytest.approx(0.03)


def test_optimizer_follows_the_schedule_step_by_step():
  """SGD without momentum and gradient 1: each update is minus that step's rate, the
  step count living in the optimizer state (so a restored state resumes it)."""
  recipe = Recipe(schedule='warmup_cosine', learning_rate=1.0, momentum=0.0,
                  warmup_fraction=0.5)
  optimizer = recipe_lib.make_optimizer(recipe, total_steps=4)
  params = {'m': {'w': jnp.zeros(())}}
  after, _ = _updates(optimizer, params, [{'m': {'w': jnp.ones(())}}] * 4)
  # Rates at steps 0..3: 0, 0.5, 1, cos^2(pi/4) = 0.5 -> cumulative -0, -0.5, -1.5, -2.
  assert [float(p['m']['w']) for p in after] == pytest.approx([0.0, -0.5, -1.5, -2.0],
                                                              abs=1e-6)


# ---------------------------------------------------------------------------
# Optimizers.


def test_default_recipe_is_the_seeds_optimizer():
  """Recipe() -> optax.sgd(0.01, momentum=0.9): the same state and the same updates."""
  params = {'a': {'w': jnp.arange(6.0).reshape(2, 3), 'b': jnp.ones(3)}}
  grads = [jax.tree_util.tree_map(lambda p, k=k: jnp.sin(p + k), params) for k in range(3)]
  ours, ours_state = _updates(recipe_lib.make_optimizer(Recipe()), params, grads)
  seed, seed_state = _updates(optax.sgd(0.01, momentum=0.9), params, grads)
  assert (jax.tree_util.tree_structure(ours_state) ==
          jax.tree_util.tree_structure(seed_state))
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(seed)):
    np.testing.assert_array_equal(a, b)


def _model_like_params():
  return {
      'conv': {'w': jnp.full((2, 3), 2.0), 'b': jnp.full((3,), 3.0)},
      'conv/~/batch_norm': {'scale': jnp.full((1, 1, 3), 4.0),
                            'offset': jnp.full((1, 1, 3), 5.0)},
      'mlp/~/layer_norm': {'scale': jnp.full((3,), 6.0), 'offset': jnp.full((3,), 7.0)},
      'attention_0': {'r_w_bias': jnp.full((1, 2, 1, 3), 8.0)},
  }


def test_adamw_decays_weight_matrices_only():
  """Zero gradients: Adam's step is 0, so AdamW moves each weight matrix by exactly
  -lr * wd * w per step (here w * 0.95) and leaves biases, BatchNorm and LayerNorm scales
  and offsets and the attention's position biases exactly as they were."""
  params = _model_like_params()
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  optimizer = recipe_lib.make_optimizer(
      Recipe(optimizer='adamw', learning_rate=0.1, weight_decay=0.5))
  after, _ = _updates(optimizer, params, [zeros] * 3)
  final = after[-1]
  np.testing.assert_allclose(final['conv']['w'], 2.0 * 0.95**3, rtol=1e-6)
  for module, values in params.items():
    for name, value in values.items():
      if name != 'w':
        np.testing.assert_array_equal(final[module][name], value, err_msg=module + name)
  assert recipe_lib.decay_mask(params)['conv'] == {'w': True, 'b': False}


def test_adamw_without_decay_equals_adam():
  params = _model_like_params()
  grads = [jax.tree_util.tree_map(lambda p, k=k: jnp.cos(p * k), params) for k in range(3)]
  adamw, _ = _updates(recipe_lib.make_optimizer(Recipe(optimizer='adamw')), params, grads)
  adam, _ = _updates(recipe_lib.make_optimizer(Recipe(optimizer='adam')), params, grads)
  for a, b in zip(jax.tree_util.tree_leaves(adamw), jax.tree_util.tree_leaves(adam)):
    np.testing.assert_array_equal(a, b)


def test_global_norm_clipping():
  """Gradient (3, 4) has norm 5; clipped to norm 1 it is (0.6, 0.8)."""
  optimizer = recipe_lib.make_optimizer(Recipe(learning_rate=1.0, momentum=0.0,
                                               clip_global_norm=1.0))
  params = {'m': {'w': jnp.zeros(2)}}
  after, _ = _updates(optimizer, params, [{'m': {'w': jnp.array([3.0, 4.0])}}])
  np.testing.assert_allclose(after[0]['m']['w'], [-0.6, -0.8], rtol=1e-6)


def test_weight_decay_needs_adamw():
  with pytest.raises(ValueError, match='adamw'):
    Recipe(weight_decay=0.01)
  with pytest.raises(ValueError, match='schedule'):
    Recipe(schedule='linear')


# ---------------------------------------------------------------------------
# Polyak averaging.


def test_ema_of_a_known_parameter_sequence():
  """Parameters 0 -> 1 -> 3 -> 7 (SGD, rate 1, gradients -1, -2, -4); decay 0.5 from
  the start value 0: 0.5, 1.75, 4.375."""
  optimizer = recipe_lib.make_optimizer(Recipe(learning_rate=1.0, momentum=0.0,
                                               ema_decay=0.5))
  params = {'m': {'w': jnp.zeros(())}}
  state = optimizer.init(params)
  averages = []
  for g in (-1.0, -2.0, -4.0):
    updates, state = optimizer.update({'m': {'w': jnp.asarray(g)}}, state, params)
    params = optax.apply_updates(params, updates)
    averages.append(float(recipe_lib.ema_params(state)['m']['w']))
  assert float(params['m']['w']) == 7.0
  assert averages == [0.5, 1.75, 4.375]
  assert recipe_lib.ema_params(recipe_lib.make_optimizer(Recipe()).init(params)) is None


# ---------------------------------------------------------------------------
# Soft-bin targets (LegNet).


def test_soft_bin_targets_by_hand():
  """N(y + 0.5, 0.5) over (-inf, 1], (1, 2], ..., (17, inf): for y = 4 bin 4 holds
  Phi(1) - Phi(-1), bins 3 and 5 Phi(-1) - Phi(-3); y = 0 puts Phi(1) in bin 0 and
  y = 17 puts 1 - Phi(-1) in bin 17."""
  p = np.asarray(recipe_lib.soft_bin_targets(jnp.array([4.0, 0.0, 17.0])), np.float64)
  assert p.shape == (3, 18)
  np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
  assert p[0, 4] == pytest.approx(_phi(1) - _phi(-1), abs=1e-6)
  assert p[0, 3] == pytest.approx(_phi(-1) - _phi(-3), abs=1e-6)
  assert p[0, 5] == pytest.approx(_phi(-1) - _phi(-3), abs=1e-6)
  assert p[1, 0] == pytest.approx(_phi(1), abs=1e-6)
  assert p[2, 17] == pytest.approx(1 - _phi(-1), abs=1e-6)
  wide = np.asarray(recipe_lib.soft_bin_targets(jnp.array([4.0]), sigma=1.0))
  assert wide[0, 4] == pytest.approx(_phi(0.5) - _phi(-0.5), abs=1e-6)


def test_soft_bin_loss_and_expectation_by_hand():
  """KL is 0 when the logits are the targets' logs and sum p log p + log 18 for
  uniform logits; uniform probabilities over 0..17 have expectation 8.5."""
  y = jnp.array([[4.0], [11.5]])
  p = recipe_lib.soft_bin_targets(y[:, 0])
  assert float(recipe_lib.soft_bin_loss(jnp.log(p + 1e-30), y)) == pytest.approx(
      0.0, abs=1e-5)
  p64 = np.asarray(p, np.float64)
  entropy_term = np.mean(np.sum(np.where(p64 > 0, p64 * np.log(np.maximum(p64, 1e-300)),
                                         0.0), axis=1))
  assert float(recipe_lib.soft_bin_loss(jnp.zeros((2, 18)), y)) == pytest.approx(
      entropy_term + math.log(18), rel=1e-5)
  assert float(model_lib.soft_bin_expectation(jnp.zeros((1, 18)))[0, 0]) == 8.5
  peaked = jnp.full((1, 18), -1e4).at[0, 6].set(0.0)
  assert float(model_lib.soft_bin_expectation(peaked)[0, 0]) == 6.0


def test_soft_bin_head_parameter_counts():
  """The seed's head Linear(576 -> 1) becomes Linear(576 -> 18): 17 x 577 more."""
  for length, seed, soft in ((85, 1_995_617, 2_005_426), (110, 1_995_809, 2_008_882)):
    base = config_lib.seed_config(length)
    assert model_lib.count_params(model_lib.param_shapes(base)[0]) == seed
    head = base.with_soft_bin_head()
    assert head.head_kind == 'soft_bins' and head.heads == (('yeast', 18),)
    assert model_lib.count_params(model_lib.param_shapes(head)[0]) == soft
  with pytest.raises(ValueError, match='head_kind'):
    dataclasses.replace(config_lib.seed_config(85), head_kind='sigmoid')


# ---------------------------------------------------------------------------
# Early stopping.


def _stopping_epoch(pearsons, patience):
  for epoch in range(1, len(pearsons) + 1):
    if recipe_lib.should_stop(pearsons[:epoch], patience):
      return epoch
  return None


def test_early_stopping_stops_at_the_right_epoch():
  """Best at epoch 2; patience 2 stops after epochs 3 and 4 fail to beat it (at 4);
  a later improvement (epoch 4 of the second series) restarts the count; patience 0
  never stops."""
  assert _stopping_epoch([0.1, 0.3, 0.2, 0.25, 0.5, 0.6], 2) == 4
  assert _stopping_epoch([0.1, 0.3, 0.2, 0.4, 0.35, 0.38], 2) == 6
  assert _stopping_epoch([0.1, 0.3, 0.2, 0.25], 0) is None
  # A non-finite Pearson is never an improvement; before any finite one, every epoch
  # counts against the patience.
  nan = float('nan')
  assert _stopping_epoch([nan, 0.1, nan, nan], 2) == 4
  assert _stopping_epoch([nan, nan], 2) == 2
  assert recipe_lib.epochs_since_best([0.3, 0.3]) == 1  # a tie is no improvement


# ---------------------------------------------------------------------------
# Plasmid context.


def test_plasmid_flanks_match_plasmid_json(shared_dir):
  sequence = json.loads((shared_dir / 'plasmid.json').read_text())
  assert len(sequence) == 8294
  start, end = plasmid.INSERT_OFFSET, plasmid.INSERT_OFFSET + plasmid.INSERT_LENGTH
  assert sequence[start:end] == 'N' * 80
  five, three = len(plasmid.FLANK_5P), len(plasmid.FLANK_3P)
  assert sequence[start - five:start] == plasmid.FLANK_5P
  assert sequence[end:end + three] == plasmid.FLANK_3P
  assert sequence[start - five - plasmid.MAX_CONTEXT:start - five] == plasmid.UPSTREAM
  assert sequence[end + three:end + three + plasmid.MAX_CONTEXT] == plasmid.DOWNSTREAM


def test_context_rows_read_plasmid_construct_plasmid():
  from enformer_small import dream_data
  construct = plasmid.FLANK_5P + 'ACGT' * 20 + plasmid.FLANK_3P
  codes = dream_data.encode_sequences([construct, 'ACG'])
  rows = plasmid.add_context(codes, 7)
  assert rows.shape == (2, 124)
  expected = dream_data.encode_sequences(
      [plasmid.UPSTREAM[-7:] + construct + plasmid.DOWNSTREAM[:7]], length=124)[0]
  np.testing.assert_array_equal(rows[0], expected)
  np.testing.assert_array_equal(rows[1, 7:117], codes[1])  # padding stays in place
  assert plasmid.add_context(codes, 0) is codes
  assert plasmid.default_window_start(85, 0) == 15
  assert plasmid.default_window_start(85, 20) == 35
  assert plasmid.default_window_start(150, 40) == 16  # 40 + (110 - 150) * 3 // 5
  with pytest.raises(ValueError, match='does not fit'):
    plasmid.default_window_start(150, 10)


# ---------------------------------------------------------------------------
# Augmentation.


def test_reverse_complement_augmentation_flips_exactly_the_planned_examples():
  """The same epoch with and without --reverse_complement: the same rows and shifts;
  where the plan says flip, the example is the plain one read backwards with A<->T and
  C<->G (one-hot: length and channel axes reversed), elsewhere the plain one."""
  from enformer_small import dataset, dream_data
  from enformer_small.train_data import ContextRows
  rng = np.random.default_rng(0)
  data = ContextRows(codes=rng.integers(0, 5, (64, 110)).astype(np.uint8),
                     expression=rng.uniform(0, 17, 64).astype(np.float32))
  rows = np.arange(64)
  plain_config = dataset.PipelineConfig(shifts=(-1, 0, 1), shift_mode='random')
  rc_config = dataclasses.replace(plain_config, reverse_complement=True)
  kwargs = dict(global_batch_size=16, local_device_count=1, seed=3, epoch=2)
  plain = list(dataset.train_batches(data, rows, config=plain_config, **kwargs))
  flipped = list(dataset.train_batches(data, rows, config=rc_config, **kwargs))
  plan = dataset.epoch_plan(rows, global_batch_size=16, config=rc_config, seed=3, epoch=2)
  assert 0 < plan.reverse.mean() < 1
  for b, (p, f) in enumerate(zip(plain, flipped)):
    np.testing.assert_array_equal(p['targets'], f['targets'])
    for i in range(16):
      x = p['inputs'][0, i]
      expected = x[::-1, ::-1] if plan.reverse[b, i] else x
      np.testing.assert_array_equal(f['inputs'][0, i], expected)
  assert dream_data.PAD_CODE == 4  # N stays N: an all-zero column reversed is all zero


# ---------------------------------------------------------------------------
# BatchNorm recalibration.


def test_batch_norm_recalibration_averages_training_mode_batch_statistics():
  """Two batches through the seed model (with its dropout, which recalibration turns
  off): the stem's BatchNorm, which sees the stem convolution's output, gets as its
  averages the mean over the batches of that output's per-channel mean and variance
  (computed here in numpy); counters and hidden values are left as they were."""
  from random_model import random_variables  # (no init to compile)
  model_config = config_lib.seed_config(85)
  params, state = random_variables(model_config, seed=1)
  rng = np.random.default_rng(0)
  batches = [np.eye(4, dtype=np.float32)[rng.integers(0, 4, (1, 6, 85))] for _ in range(2)]
  stats_step = training.make_batch_stats_step(model_config)
  new = training.recalibrate_batch_norm(
      stats_step, training.replicate(params), training.replicate(state),
      [training.shard_batch(b) for b in batches])
  new = training.unreplicate(new)

  conv = params['enformer/~/trunk/~/stem/~/conv1_d']
  w, b = np.asarray(conv['w'], np.float64), np.asarray(conv['b'], np.float64)
  means, variances = [], []
  for batch in batches:
    x = np.pad(batch[0].astype(np.float64), ((0, 0), (2, 2), (0, 0)))  # SAME, width 5
    y = sum(np.einsum('blc,co->blo', x[:, k:k + 85], w[k]) for k in range(5)) + b
    means.append(y.mean(axis=(0, 1)))
    variances.append((y**2).mean(axis=(0, 1)) - y.mean(axis=(0, 1))**2)
  bn = 'enformer/~/trunk/~/stem/~/pointwise_conv_block/~/batch_norm/~/'
  np.testing.assert_allclose(new[bn + 'mean_ema']['average'][0, 0],
                             np.mean(means, axis=0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new[bn + 'var_ema']['average'][0, 0],
                             np.mean(variances, axis=0), rtol=1e-4, atol=1e-6)
  for module in state:
    for name in ('counter', 'hidden'):
      np.testing.assert_array_equal(new[module][name], state[module][name])
