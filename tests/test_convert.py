"""The TF/Sonnet -> Haiku converter reproduces the seed's own TensorFlow model.

Reference numbers come from `../shared/fixtures/seed_sonnet_85bp` (written by the seed's
TF 2 + Sonnet 2 code; see its README); the tests that need them skip without it. The
mapping itself is also checked without fixtures: round trips through
`convert.to_sonnet_variables` at another length, and the original preset's key set and
shapes with zero-stride arrays (its 251M parameters are never materialised).
"""

import functools
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enformer_small import checkpoint
from enformer_small import config as config_lib
from enformer_small import convert
from enformer_small import model

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'


# --------------------------------------------------------------------------------
# Helpers and fixtures.


def assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.asarray(x).dtype == np.asarray(y).dtype


def max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.fixture(scope='module')
def seed_config():
  return config_lib.seed_config(85)


@pytest.fixture(scope='module')
def cases(seed_fixtures_dir):
  with np.load(seed_fixtures_dir / 'cases.npz') as npz:
    return {k: npz[k] for k in npz.files}


@pytest.fixture(scope='module')
def converted(seed_fixtures_dir, seed_config):
  """(params, state) of checkpoint/ckpt, savedmodel_variables and after_train_step."""
  return {
      name: convert.convert_checkpoint(str(seed_fixtures_dir / path), seed_config)
      for name, path in (('checkpoint', 'checkpoint/ckpt'),
                         ('savedmodel', 'savedmodel_variables'),
                         ('after_train_step', 'after_train_step/ckpt'))}


@functools.lru_cache(maxsize=None)
def jitted_apply(config):
  return jax.jit(model.make_model(config).apply, static_argnums=4)


def run_model(config, params, state, x, is_training):
  """Outputs['yeast'] and new state, float32 with exact matmuls."""
  apply = jitted_apply(config)
  with jax.default_matmul_precision('highest'):
    outputs, new_state = apply(params, state, None, jnp.asarray(x, jnp.float32),
                               is_training)
  return np.asarray(outputs['yeast']), new_state


# --------------------------------------------------------------------------------
# Against the seed's TF/Sonnet outputs.


def test_eval_outputs_match_the_sonnet_model(converted, cases, seed_config):
  """Eval-mode predictions of the converted checkpoint equal TF's within 1e-5."""
  params, state = converted['checkpoint']
  out, new_state = run_model(seed_config, params, state, cases['x'], is_training=False)
  np.testing.assert_allclose(out, cases['eval_out'], rtol=0, atol=1e-5)
  assert_trees_equal(new_state, state)  # Eval mode leaves the moving averages alone.


def test_savedmodel_variables_hold_the_checkpoint_weights(converted, cases, seed_config):
  """The SavedModel's variables give the same trainable weights as the checkpoint.

  Its BatchNorm moving averages are those of `after_train_step` (counters 4, not 3):
  the fixture's SavedModel was written after the extra training-mode call. With the
  checkpoint's moving averages its weights reproduce `eval_out`.
  """
  params, state = converted['savedmodel']
  assert_trees_equal(params, converted['checkpoint'][0])
  assert_trees_equal(state, converted['after_train_step'][1])
  out, _ = run_model(seed_config, params, converted['checkpoint'][1], cases['x'],
                     is_training=False)
  np.testing.assert_allclose(out, cases['eval_out'], rtol=0, atol=1e-5)


@pytest.mark.parametrize('form', [
    'savedmodel_variables', 'savedmodel_variables/variables',
    'savedmodel_variables/variables.index', 'checkpoint', 'checkpoint/ckpt',
    'checkpoint/ckpt.index'])
def test_checkpoint_paths_in_every_accepted_form(seed_fixtures_dir, form):
  """A prefix, its .index file, or the directory holding it all designate it."""
  prefix = convert.resolve_checkpoint_prefix(str(seed_fixtures_dir / form))
  assert os.path.isfile(prefix + '.index')
  assert os.path.basename(prefix) in ('variables', 'ckpt')


def test_savedmodel_directory_resolves_to_its_variables(seed_fixtures_dir, tmp_path):
  """A tf.saved_model.save directory is read through variables/variables."""
  saved_model = tmp_path / 'saved_model'
  (saved_model / 'variables').mkdir(parents=True)
  (saved_model / 'saved_model.pb').write_bytes(b'')
  for name in ('variables.index', 'variables.data-00000-of-00001'):
    (saved_model / 'variables' / name).symlink_to(
        seed_fixtures_dir / 'savedmodel_variables' / name)
  assert convert.resolve_checkpoint_prefix(str(saved_model)) == str(
      saved_model / 'variables' / 'variables')


def test_training_mode_without_dropout_matches_the_sonnet_model(converted, cases,
                                                                 seed_config):
  """Training-mode predictions (batch statistics, dropout off) equal TF's within 1e-5."""
  params, state = converted['checkpoint']
  out, _ = run_model(seed_config.without_dropout(), params, state, cases['x'],
                     is_training=True)
  np.testing.assert_allclose(out, cases['train_out_no_dropout'], rtol=0, atol=1e-5)


def test_batch_norm_moving_averages_move_as_in_sonnet(converted, cases, seed_config):
  """One training-mode call moves the moving averages exactly as Sonnet's did.

  Sonnet's ExponentialMovingAverage and Haiku's share the update rule: counter += 1;
  hidden = decay * hidden + (1 - decay) * value; average = hidden / (1 - decay^counter)
  (zero-debiased). So the Haiku state after the call equals the converted
  `after_train_step` state, counters included (3 -> 4).
  """
  params, state = converted['checkpoint']
  _, new_state = run_model(seed_config.without_dropout(), params, state, cases['x'],
                           is_training=True)
  expected_params, expected_state = converted['after_train_step']
  assert_trees_equal(expected_params, params)  # Only the moving averages moved.
  assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(
      expected_state)
  for module, entries in expected_state.items():
    assert int(state[module]['counter']) == 3
    assert int(new_state[module]['counter']) == int(entries['counter']) == 4
    for name in ('hidden', 'average'):
      np.testing.assert_allclose(new_state[module][name], entries[name],
                                 rtol=1e-5, atol=2e-6, err_msg=f'{module}/{name}')
  assert max_abs_diff(new_state, expected_state) < 5e-6


def test_any_input_length_with_the_same_head_size_converts(seed_fixtures_dir):
  """Only the head depends on the length: 90 bp also gives 3 tokens x 192 = 576."""
  params, _ = convert.convert_checkpoint(
      str(seed_fixtures_dir / 'checkpoint' / 'ckpt'), config_lib.seed_config(90))
  assert params['enformer/~/head_yeast/~/output']['w'].shape == (576, 1)


def test_shape_mismatch_names_the_lengths_that_fit(seed_fixtures_dir):
  """An 85 bp checkpoint read as 110 bp: the head is 576 = 3 tokens x 192, not 768.

  3 tokens come from ceil(L / 16) = 6 or 8 or 10 ... tower tokens (an even number, cropped
  to 6, pooled to 3): L in 81-96, 113-128, ...
  """
  with pytest.raises(convert.ConversionError) as error:
    convert.convert_checkpoint(str(seed_fixtures_dir / 'checkpoint' / 'ckpt'),
                               config_lib.seed_config(110))
  message = str(error.value)
  assert message.startswith(f'{seed_fixtures_dir / "checkpoint" / "ckpt"}: ')
  assert 'module/_heads/yeast/_layers/1/w' in message
  assert '[576, 1]' in message and '[768, 1]' in message
  assert 'input_length 110 gives 4 tokens' in message
  assert '81-96, 113-128' in message


def test_missing_path_is_a_clear_error(tmp_path):
  missing = tmp_path / 'no_such_ckpt'
  with pytest.raises(convert.ConversionError, match=f'{missing}: no such checkpoint'):
    convert.convert_checkpoint(str(missing), config_lib.seed_config())


def test_directory_without_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(convert.ConversionError, match=f'{tmp_path}: no TF checkpoint'):
    convert.convert_checkpoint(str(tmp_path), config_lib.seed_config())


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
  prefix = tmp_path / 'ckpt'
  (tmp_path / 'ckpt.index').write_bytes(b'not an sstable')
  (tmp_path / 'ckpt.data-00000-of-00001').write_bytes(b'garbage')
  with pytest.raises(convert.ConversionError,
                     match=f'{prefix}: cannot read the TF checkpoint'):
    convert.convert_checkpoint(str(prefix), config_lib.seed_config())


def test_importing_the_converter_does_not_import_tensorflow():
  """TensorFlow is imported only inside convert_checkpoint."""
  code = ('import sys, enformer_small.convert; '
          'assert "tensorflow" not in sys.modules, "tensorflow imported"')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO_ROOT)


def test_command_line_writes_a_project_checkpoint(seed_fixtures_dir, tmp_path,
                                                  converted):
  """`python -m experiments.convert` writes what enformer_small.checkpoint reads."""
  output = tmp_path / 'seed.npz'
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.convert',
       f'--checkpoint={seed_fixtures_dir / "checkpoint"}', f'--output={output}'],
      cwd=REPO_ROOT, capture_output=True, text=True, check=False)
  assert result.returncode == 0, result.stderr
  assert '1,995,617' in result.stdout and 'BatchNorm layers  10' in result.stdout
  loaded = checkpoint.load_checkpoint(str(output))
  assert loaded.model_config == config_lib.seed_config(85)
  params, state = converted['checkpoint']
  assert_trees_equal(loaded.params, params)
  assert_trees_equal(loaded.state, state)


def test_command_line_error_is_one_line_and_exit_1(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.convert',
       f'--checkpoint={tmp_path / "missing"}', f'--output={tmp_path / "out.npz"}'],
      cwd=REPO_ROOT, capture_output=True, text=True, check=False)
  assert result.returncode == 1
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert errors == [f'error: {tmp_path / "missing"}: no such checkpoint (neither a '
                    'file, a directory, nor a prefix with missing.index)']
  assert not (tmp_path / 'out.npz').exists()


# --------------------------------------------------------------------------------
# The mapping without fixtures.


def random_params_and_state(config, seed=0):
  """Random values everywhere (the zero-initialised attention output would hide bugs)."""
  params, state = model.param_shapes(config)
  rng = np.random.default_rng(seed)
  def randomise(x):
    return (rng.integers(1, 100, x.shape).astype(x.dtype)
            if np.issubdtype(x.dtype, np.integer)
            else rng.normal(size=x.shape).astype(x.dtype))
  return (jax.tree_util.tree_map(randomise, params),
          jax.tree_util.tree_map(randomise, state))


@pytest.fixture(scope='module')
def seed_110():
  config = config_lib.seed_config(110)
  params, state = random_params_and_state(config)
  return config, params, state


def test_round_trip_at_110_bp(seed_110):
  """Haiku -> Sonnet keys -> Haiku gives back every array, dtypes included."""
  config, params, state = seed_110
  variables = convert.to_sonnet_variables(params, state, config)
  back_params, back_state = convert.convert_variables(variables, config)
  assert_trees_equal(back_params, params)
  assert_trees_equal(back_state, state)


def test_sonnet_names_and_shapes_of_the_seed_at_110_bp(seed_110):
  """The seed's Sonnet keys, as the seed's checkpoints list them (168 variables)."""
  config, params, state = seed_110
  variables = convert.to_sonnet_variables(params, state, config)
  assert len(variables) == 168
  shapes = {k[:-len(SUFFIX)]: v.shape for k, v in variables.items()}
  bn = 'module/_trunk/_layers/0/_layers/1/_module/_layers/0'
  attention = 'module/_trunk/_layers/2/_layers/3/_layers/0/_module/_layers/1'
  assert shapes['module/_trunk/_layers/0/_layers/0/w'] == (5, 4, 48)  # stem conv
  assert shapes[f'{bn}/scale'] == (48,)
  assert shapes[f'{bn}/moving_variance/_hidden'] == (1, 1, 48)
  assert shapes[f'{bn}/moving_mean/_counter'] == ()
  assert variables[f'{bn}/moving_mean/_counter{SUFFIX}'].dtype == np.int64
  assert shapes['module/_trunk/_layers/1/_layers/3/_layers/0/_layers/2/w'] == (
      4, 128, 192)  # last tower conv_block's Conv1D
  assert shapes[f'{attention}/_r_k_layer/w'] == (24, 512)
  assert shapes[f'{attention}/_r_w_bias'] == (1, 8, 1, 64)
  assert shapes['module/_trunk/_layers/2/_layers/3/_layers/1/_module/_layers/4/w'] == (
      384, 192)  # mlp: LayerNorm, Linear, Dropout, relu, Linear(4)
  assert shapes['module/_trunk/_layers/4/_layers/0/_layers/2/w'] == (1, 192, 192)
  assert shapes['module/_heads/yeast/_layers/1/w'] == (768, 1)  # 4 tokens x 192


def test_savedmodel_style_keys_and_bookkeeping_entries(seed_110):
  """Keys without root or suffix are read; counters, slots and graphs are ignored."""
  config, params, state = seed_110
  variables = {k[len('module/'):-len(SUFFIX)]: v for k, v in
               convert.to_sonnet_variables(params, state, config).items()}
  variables['_CHECKPOINTABLE_OBJECT_GRAPH'] = np.array(b'graph')
  variables['save_counter'] = np.array(7)
  variables['_trunk/_layers/0/_layers/0/w/.OPTIMIZER_SLOT/optimizer/m'] = np.zeros(3)
  back_params, _ = convert.convert_variables(variables, config)
  assert_trees_equal(back_params, params)


def test_missing_and_unused_variables_are_listed(seed_110):
  config, params, state = seed_110
  variables = convert.to_sonnet_variables(params, state, config)
  del variables[f'module/_trunk/_layers/2/_layers/0/_layers/0/_module/_layers/1/'
                f'_r_w_bias{SUFFIX}']
  variables[f'module/_trunk/_layers/2/_layers/4/_layers/0/_module/_layers/0/scale'
            f'{SUFFIX}'] = np.ones(192, np.float32)
  with pytest.raises(convert.ConversionError) as error:
    convert.convert_variables(variables, config)
  message = str(error.value)
  assert ('1 model variable(s) missing from the checkpoint:\n  '
          'module/_trunk/_layers/2/_layers/0/_layers/0/_module/_layers/1/_r_w_bias '
          '[1, 8, 1, 64]') in message
  assert ('1 checkpoint variable(s) the model does not use:\n  '
          'module/_trunk/_layers/2/_layers/4/_layers/0/_module/_layers/0/scale [192]'
          ) in message


def test_original_preset_maps_every_variable_to_a_distinct_key():
  """DeepMind's Enformer: 11 layers, attention pooling, heads human and mouse.

  Checked with shapes only (jax.eval_shape) and zero-stride arrays, so none of its
  251M parameters is allocated.
  """
  config = config_lib.original_config()
  params, state = model.param_shapes(config)
  mapping = convert.variable_mapping(config)
  keys = [m.sonnet_key for m in mapping]
  assert len(set(keys)) == len(keys)
  num_entries = sum(len(e) for tree in (params, state) for e in tree.values())
  assert len(mapping) == num_entries

  expected = {
      '_trunk/_layers/0/_layers/0/w': (15, 4, 768),  # stem Conv1D
      '_trunk/_layers/0/_layers/2/_logit_linear/w': (768, 768),  # stem pooling
      '_trunk/_layers/1/_layers/5/_layers/0/_layers/2/w': (5, 1280, 1536),
      '_trunk/_layers/1/_layers/5/_layers/2/_logit_linear/w': (1536, 1536),
      '_trunk/_layers/2/_layers/10/_layers/0/_module/_layers/1/_q_layer/w': (1536, 512),
      '_trunk/_layers/2/_layers/10/_layers/0/_module/_layers/1/_r_k_layer/w': (192, 512),
      '_trunk/_layers/4/_layers/0/_layers/0/scale': (1536,),
      '_trunk/_layers/4/_layers/0/_layers/2/w': (1, 1536, 3072),  # final_pointwise
      '_heads/human/_layers/0/w': (3072, 5313),
      '_heads/mouse/_layers/0/b': (1643,),
  }
  trees = {'params': params, 'state': state}
  shapes = {m.sonnet_key: m.sonnet_shape(trees[m.collection][m.module][m.name].shape)
            for m in mapping}
  for key, shape in expected.items():
    assert shapes[key] == shape, key

  # The whole conversion, on read-only zero-stride arrays of the right shapes.
  variables = {f'module/{key}{SUFFIX}': np.broadcast_to(np.zeros((), np.float32), shape)
               for key, shape in shapes.items()}
  for key in variables:
    if key.endswith(f'_counter{SUFFIX}'):
      variables[key] = np.int64(5)
  out_params, out_state = convert.convert_variables(variables, config)
  assert jax.tree_util.tree_structure(out_params) == jax.tree_util.tree_structure(
      params)
  assert jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), out_params) == (
      jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), params))
  assert model.count_params(out_params) == 251_221_292
  assert {int(s['counter']) for s in out_state.values()} == {5}


def test_token_arithmetic_of_the_seed():
  """stem keeps L, 4 pools ceil(L/2), crop to 6 (or 7), final pool ceil(T/2)."""
  config = config_lib.seed_config()
  assert convert.output_tokens(config, 85) == 3   # 85 43 22 11 6 -> 6 -> 3
  assert convert.output_tokens(config, 110) == 4  # 110 55 28 14 7 -> 7 -> 4
  assert convert.output_tokens(config, 80) is None  # 5 tower tokens: cannot crop to 6
  assert convert.lengths_with_tokens(config, 4, max_length=150) == [(97, 112),
                                                                    (129, 144)]
  assert convert.min_input_length(config) == 81  # ceil(81 / 16) = 6 tower tokens
  # The original: 896 output tokens of 128 bp.
  assert convert.min_input_length(config_lib.original_config()) == 896 * 128


def test_too_short_input_length_is_a_clear_error():
  config = config_lib.seed_config(80)
  with pytest.raises(convert.ConversionError,
                     match='input_length 80 is too short .* at least 81 bp'):
    convert.convert_variables({}, config)
