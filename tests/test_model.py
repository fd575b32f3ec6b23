"""Specification of the model: shapes, sizes, and the pieces of Enformer's attention.

The seed's Enformer (channels 192, 4 transformer layers, max pooling) on 85 bp:

  stem      Conv1D(48, 5) -> Residual(conv_block) -> MaxPool(2, stride 1)  85 x 48
  tower     4 x [conv_block(4) -> Residual(conv_block(1)) -> MaxPool(2)]    43, 22, 11, 6
  transformer 4 x [Residual(LN -> MHA -> Dropout), Residual(MLP)]          6 x 192
  crop      TargetLengthCrop1D(6): trims (T - 6) // 2 from each side        6
  final     conv_block(192, 1) -> MaxPool(2) -> Dropout -> GELU             3 x 192
  head      Flatten (576) -> Linear(1) 'output' -> softplus                 [B, 1]
"""

import math

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enformer_small import attention_module
from enformer_small import config as config_lib
from enformer_small import enformer
from enformer_small import model


# --------------------------------------------------------------------------------
# Shapes and sizes (jax.eval_shape: nothing is computed or allocated).


def stage_shapes(config, batch_size=2):
  """Output shape of each stage, applying the trunk's layers one by one."""
  shapes = {}

  def forward(x):
    net = enformer.Enformer(config)
    stem, tower, transformer, crop, final_pointwise = net.trunk.layers
    x = stem(x, is_training=True)
    shapes['stem'] = x.shape
    for i, block in enumerate(tower.layers):
      x = block(x, is_training=True)
      shapes[f'tower_{i}'] = x.shape
    x = transformer(x, is_training=True)
    shapes['transformer'] = x.shape
    x = crop(x, is_training=True)
    shapes['crop'] = x.shape
    x = final_pointwise(x, is_training=True)
    shapes['final_pointwise'] = x.shape
    head = net.heads['yeast']
    shapes['head_input'] = head.layers[0](x).shape  # flatten
    shapes['output'] = head(x, is_training=True).shape

  init = hk.transform_with_state(forward).init
  jax.eval_shape(lambda rng: init(rng, jnp.zeros((batch_size, config.input_length, 4))),
                 jax.random.PRNGKey(0))
  return shapes


def test_stage_shapes_at_85_bp():
  assert stage_shapes(config_lib.seed_config(85)) == {
      'stem': (2, 85, 48),  # pool stride 1 keeps the length
      'tower_0': (2, 43, 64), 'tower_1': (2, 22, 64),
      'tower_2': (2, 11, 128), 'tower_3': (2, 6, 192),  # ceil(T / 2) each
      'transformer': (2, 6, 192),
      'crop': (2, 6, 192),
      'final_pointwise': (2, 3, 192),
      'head_input': (2, 576),  # 3 tokens x 192
      'output': (2, 1),
  }


def test_stage_shapes_at_110_bp():
  assert stage_shapes(config_lib.seed_config(110)) == {
      'stem': (2, 110, 48),
      'tower_0': (2, 55, 64), 'tower_1': (2, 28, 64),
      'tower_2': (2, 14, 128), 'tower_3': (2, 7, 192),
      'transformer': (2, 7, 192),
      'crop': (2, 7, 192),  # (7 - 6) // 2 = 0: nothing trimmed
      'final_pointwise': (2, 4, 192),
      'head_input': (2, 768),  # 4 tokens x 192
      'output': (2, 1),
  }


@pytest.mark.parametrize('input_length, expected', [(85, 1_995_617), (110, 1_995_809)])
def test_trainable_parameter_count_of_the_seed(input_length, expected):
  """1,995,617 as the seed reported at 85 bp; one more token adds 192 head weights."""
  params, _ = model.param_shapes(config_lib.seed_config(input_length))
  assert model.count_params(params) == expected


def test_trainable_parameter_count_of_the_original():
  """DeepMind's Enformer, counted from shapes only."""
  params, _ = model.param_shapes(config_lib.original_config())
  assert model.count_params(params) == 251_221_292


def test_conv_tower_filters():
  """exponential_linspace_int rounds a geometric series to multiples of divisible_by."""
  # 48 * 4^(i/3) = 48, 76.2, 121.0, 192 -> nearest multiples of 32.
  assert enformer.exponential_linspace_int(48, 192, 4, divisible_by=32) == [
      64, 64, 128, 192]
  # The original: 768 * 2^(i/5) to multiples of 128.
  assert enformer.exponential_linspace_int(768, 1536, 6, divisible_by=128) == [
      768, 896, 1024, 1152, 1280, 1536]


def test_ten_batch_norm_layers_and_no_state_outside_them():
  """stem 1 + tower 4 x 2 + final_pointwise 1 BatchNorms, each with two EMAs."""
  _, state = model.param_shapes(config_lib.seed_config())
  assert len(state) == 20
  assert all(name.endswith(('/batch_norm/~/mean_ema', '/batch_norm/~/var_ema'))
             for name in state)


# --------------------------------------------------------------------------------
# Attention pieces against hand-computed values.


def test_relative_shift_three_tokens():
  """out[i, j] = x[i, (T - 1) + (j - i)]: column T - 1 of x is distance 0."""
  x = jnp.array([[10 * i + m for m in range(5)] for i in range(3)],
                jnp.float32)[None, None]  # [1, 1, T=3, 2T-1=5]
  out = attention_module.relative_shift(x)
  np.testing.assert_array_equal(out[0, 0], [[2, 3, 4],
                                            [11, 12, 13],
                                            [20, 21, 22]])


def test_relative_shift_two_tokens_with_batch_and_heads():
  x = jnp.array([[0, 1, 2], [10, 11, 12]], jnp.float32)
  x = jnp.stack([x, x + 100])[:, None]  # [B=2, H=1, 2, 3]
  out = attention_module.relative_shift(x)
  np.testing.assert_array_equal(out[:, 0], [[[1, 2], [10, 11]],
                                            [[101, 102], [110, 111]]])


POSITIONS = jnp.arange(-16, 17, dtype=jnp.float32)[None]  # [1, 33]


def test_central_mask_windows_of_width_1_3_7_15():
  """Feature k is 1 where |p| < 2^(k+1) - 1."""
  features = attention_module.positional_features_central_mask(POSITIONS, 4)
  assert features.shape == (1, 33, 4)
  ones_at = [{0}, {0, 1, 2}, set(range(7)), set(range(15))]
  for k, distances in enumerate(ones_at):
    expected = [1.0 if abs(p) in distances else 0.0 for p in range(-16, 17)]
    np.testing.assert_array_equal(features[0, :, k], expected)


def test_exponential_half_life_from_sequence_length():
  """seq_length 8: half-lives 2^linspace(3, log2 8 = 3) = 8, so exp(-ln2 |p| / 8)."""
  features = attention_module.positional_features_exponential(
      POSITIONS, 2, seq_length=8)
  def at(p):
    return features[0, p + 16]
  np.testing.assert_allclose(at(0), [1.0, 1.0], rtol=1e-6)
  np.testing.assert_allclose(at(8), [0.5, 0.5], rtol=1e-6)
  np.testing.assert_allclose(at(-16), [0.25, 0.25], rtol=1e-6)
  np.testing.assert_allclose(at(4), [2**-0.5] * 2, rtol=1e-6)


def test_gamma_features_peak_at_one_near_their_modes():
  """Each feature is a gamma density scaled to max 1 over the positions.

  seq_length 17, 4 features: means 4.25, 8.5, 12.75, 17; stddev 17 / 8; mode
  mean - stddev^2 / mean = 3.19, 7.97, 12.40, 16.73.
  """
  features = attention_module.positional_features_gamma(POSITIONS, 4, seq_length=17)
  np.testing.assert_allclose(jnp.max(features, axis=1), np.ones((1, 4)), rtol=1e-6)
  assert bool(jnp.all(features > 0))
  peak_distance = np.abs(np.arange(-16, 17)[np.argmax(features[0], axis=0)])
  np.testing.assert_allclose(peak_distance, [3.19, 7.97, 12.40, 16.73], atol=1.0)


def test_sign_weighted_second_half():
  """Asymmetric features: [f(|p|), sign(p) f(|p|)], zero at p = 0 in the second half."""
  features = attention_module.positional_features_all(
      POSITIONS, feature_size=12, seq_length=17)
  assert features.shape == (1, 33, 12)
  first, second = features[..., :6], features[..., 6:]
  np.testing.assert_array_equal(second, jnp.sign(POSITIONS)[..., None] * first)
  np.testing.assert_array_equal(second[0, 16], np.zeros(6))
  # Symmetric features are the first half alone.
  symmetric = attention_module.positional_features_all(
      POSITIONS, feature_size=6, seq_length=17, symmetric=True)
  np.testing.assert_array_equal(symmetric, first)


@pytest.mark.parametrize('feature_size, symmetric', [(10, False), (8, True)])
def test_feature_size_must_split_evenly(feature_size, symmetric):
  with pytest.raises(ValueError, match='divisible'):
    attention_module.positional_features_all(
        POSITIONS, feature_size=feature_size, seq_length=17, symmetric=symmetric)


def test_gelu_is_the_sigmoid_approximation():
  """Enformer's GELU is sigmoid(1.702 x) x, not jax.nn.gelu."""
  xs = [-2.0, -0.5, 0.0, 1.0, 3.0]
  expected = [x / (1 + math.exp(-1.702 * x)) for x in xs]
  got = enformer.gelu(jnp.array(xs))
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
  assert abs(float(enformer.gelu(1.0)) - 0.845790) < 1e-5
  assert abs(float(enformer.gelu(1.0) - jax.nn.gelu(1.0))) > 4e-3


# --------------------------------------------------------------------------------
# Modes: eval is deterministic, training uses dropout and moves BatchNorm statistics.


@pytest.fixture(scope='module')
def seed_model():
  """Random weights (the attention output starts at zero otherwise), unit statistics."""
  config = config_lib.seed_config(85)
  param_shapes, state_shapes = model.param_shapes(config)
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: (0.1 * rng.normal(size=s.shape)).astype(s.dtype), param_shapes)
  state = {name: {'counter': np.ones((), np.int32),
                  'hidden': np.full(s['hidden'].shape, 0.1 * name.endswith('var_ema'),
                                    np.float32),
                  'average': np.full(s['average'].shape, 1.0 * name.endswith('var_ema'),
                                     np.float32)}
           for name, s in state_shapes.items()}
  x = jax.nn.one_hot(jax.random.randint(jax.random.PRNGKey(1), (4, 85), 0, 4), 4)
  apply = jax.jit(model.make_model(config).apply, static_argnums=4)
  return apply, params, state, x


def test_eval_mode_is_deterministic_and_ignores_the_rng(seed_model):
  apply, params, state, x = seed_model
  a, _ = apply(params, state, jax.random.PRNGKey(1), x, False)
  b, _ = apply(params, state, jax.random.PRNGKey(2), x, False)
  c, _ = apply(params, state, None, x, False)
  np.testing.assert_array_equal(a['yeast'], b['yeast'])
  np.testing.assert_array_equal(a['yeast'], c['yeast'])
  assert a['yeast'].shape == (4, 1)


def test_training_mode_dropout_depends_on_the_rng(seed_model):
  apply, params, state, x = seed_model
  a, _ = apply(params, state, jax.random.PRNGKey(1), x, True)
  b, _ = apply(params, state, jax.random.PRNGKey(2), x, True)
  again, _ = apply(params, state, jax.random.PRNGKey(1), x, True)
  assert not np.allclose(a['yeast'], b['yeast'])
  np.testing.assert_array_equal(a['yeast'], again['yeast'])


def test_batch_norm_state_moves_only_in_training(seed_model):
  apply, params, state, x = seed_model
  _, eval_state = apply(params, state, None, x, False)
  jax.tree_util.tree_map(np.testing.assert_array_equal, eval_state, state)

  _, train_state = apply(params, state, jax.random.PRNGKey(1), x, True)
  for name, entries in train_state.items():
    assert int(entries['counter']) == int(state[name]['counter']) + 1
    assert not np.allclose(entries['hidden'], state[name]['hidden']), name


def test_predict_fn_of_a_soft_bin_head_is_the_expectation_over_its_bins():
  from random_model import random_variables  # (no init to compile)
  config = config_lib.seed_config(85).with_soft_bin_head(18)
  x = jax.nn.one_hot(np.random.default_rng(0).integers(0, 4, (3, 85)), 4)
  params, state = random_variables(config, seed=0)
  apply = jax.jit(model.make_model(config).apply, static_argnames='is_training')
  logits, _ = apply(params, state, None, x, is_training=False)
  logits = np.asarray(logits['yeast'], np.float64)  # [3, 18]
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  expected = (p * np.arange(18)).sum(-1, keepdims=True)  # bins valued 0..17
  got = model.predict_fn(config)(params, state, x)
  assert got.shape == (3, 1)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5)
