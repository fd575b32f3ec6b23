"""Checkpoints: everything comes back, writes are atomic, bad files fail clearly."""

import os

import jax
import numpy as np
import optax
import pytest

from enformer_small import checkpoint
from enformer_small import config as config_lib

# Haiku-style trees, with module names as Haiku writes them ('/~/' inside).
PARAMS = {
    'enformer/~/trunk/~/stem/~/conv1_d': {
        'w': np.arange(24, dtype=np.float32).reshape(2, 3, 4),
        'b': np.array([0.5, -1.5, 2.0, 0.25], np.float32)},
    'enformer/~/head_yeast/~/output': {
        'w': np.linspace(-1, 1, 6, dtype=np.float32).reshape(6, 1),
        'b': np.array([0.125], np.float32)},
}
STATE = {
    'enformer/~/trunk/~/stem/~/batch_norm/~/mean_ema': {
        'counter': np.array(3, np.int32),
        'hidden': np.array([[1.0, 2.0]], np.float32),
        'average': np.array([[0.5, 0.25]], np.float32)},
}


def _momentum_state(params):
  """An optax momentum state holding values that differ per leaf."""
  opt = optax.sgd(0.01, momentum=0.9)
  state = opt.init(params)
  grads = jax.tree_util.tree_map(lambda p: np.ones_like(p) * 0.5, params)
  _, state = opt.update(grads, state, params)
  return opt, state


def _save(path, **overrides):
  opt, opt_state = _momentum_state(PARAMS)
  kwargs = dict(params=PARAMS, state=STATE, model_config=config_lib.seed_config(85),
                opt_state=opt_state, rng=jax.random.PRNGKey(7), epoch=4, step=123,
                metrics=[{'epoch': 1, 'holdout': {'pearson': 0.5}},
                         {'epoch': 2, 'holdout': {'pearson': float('nan')}}],
                extra={'train_config': {'batch_size': 10000}, 'crop_start': 15})
  kwargs.update(overrides)
  checkpoint.save_checkpoint(path, **kwargs)
  return opt, kwargs


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert np.asarray(x).dtype == np.asarray(y).dtype


def test_roundtrip_restores_every_field(tmp_path):
  """params, state, opt_state, rng, epoch, step, metrics, extra, model_config."""
  path = tmp_path / 'ckpt.npz'
  opt, saved = _save(path)
  loaded = checkpoint.load_checkpoint(path, opt_state_template=opt.init(PARAMS))
  _assert_trees_equal(loaded.params, PARAMS)
  _assert_trees_equal(loaded.state, STATE)
  _assert_trees_equal(loaded.opt_state, saved['opt_state'])
  np.testing.assert_array_equal(loaded.rng, np.asarray(jax.random.PRNGKey(7)))
  assert (loaded.epoch, loaded.step) == (4, 123)
  assert loaded.metrics[0] == {'epoch': 1, 'holdout': {'pearson': 0.5}}
  assert np.isnan(loaded.metrics[1]['holdout']['pearson'])
  assert loaded.extra == saved['extra']
  assert loaded.model_config == config_lib.seed_config(85)
  assert loaded.crop_start == 15


def test_without_template_the_optimizer_state_is_its_leaves(tmp_path):
  path = tmp_path / 'ckpt.npz'
  _, saved = _save(path)
  loaded = checkpoint.load_checkpoint(path)
  expected = jax.tree_util.tree_leaves(saved['opt_state'])
  assert len(loaded.opt_state) == len(expected)
  for x, y in zip(loaded.opt_state, expected):
    np.testing.assert_array_equal(x, y)


def test_converter_style_checkpoint_holds_only_the_model(tmp_path):
  """save_checkpoint(path, params=, state=, model_config=) is enough (TF converter)."""
  path = tmp_path / 'converted.npz'
  checkpoint.save_checkpoint(path, params=PARAMS, state=STATE,
                             model_config=config_lib.seed_config(110))
  loaded = checkpoint.load_checkpoint(path)
  _assert_trees_equal(loaded.params, PARAMS)
  assert loaded.opt_state is None and loaded.rng is None
  assert (loaded.epoch, loaded.step, loaded.metrics) == (0, 0, ())
  assert loaded.crop_start == 0  # 110 bp: the whole encoding.


def test_file_is_a_plain_npz_readable_without_pickle(tmp_path):
  path = tmp_path / 'ckpt.npz'
  _save(path)
  with np.load(path, allow_pickle=False) as npz:
    for key in npz.files:
      assert npz[key].dtype != object


def test_optimizer_state_of_another_optimizer_is_refused(tmp_path):
  path = tmp_path / 'ckpt.npz'
  _save(path)
  adam_state = optax.adam(1e-3).init(PARAMS)
  with pytest.raises(checkpoint.CheckpointError, match='optimizer'):
    checkpoint.load_checkpoint(path, opt_state_template=adam_state)


def test_failed_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
  """Writing goes to a temporary file first: a crash mid-write changes nothing."""
  path = tmp_path / 'ckpt.npz'
  _save(path, epoch=1)
  before = path.read_bytes()

  def failing_savez(file, **arrays):
    file.write(b'PK\x03\x04 partial bytes of a zip')
    raise OSError('disk full (simulated)')

  monkeypatch.setattr(np, 'savez', failing_savez)
  with pytest.raises(checkpoint.CheckpointError, match='disk full'):
    _save(path, epoch=2)
  monkeypatch.undo()
  assert path.read_bytes() == before
  assert checkpoint.load_checkpoint(path).epoch == 1
  assert sorted(os.listdir(tmp_path)) == ['ckpt.npz']  # no temporary file left


def test_write_is_not_visible_under_the_final_name_before_it_is_complete(
    tmp_path, monkeypatch):
  path = tmp_path / 'new.npz'
  seen = []
  real_savez = np.savez

  def watching_savez(file, **arrays):
    seen.append(path.exists())
    real_savez(file, **arrays)
    seen.append(path.exists())

  monkeypatch.setattr(np, 'savez', watching_savez)
  _save(path)
  assert seen == [False, False] and path.exists()


def test_missing_file_error_names_it(tmp_path):
  path = tmp_path / 'nope.npz'
  with pytest.raises(checkpoint.CheckpointError, match='nope.npz'):
    checkpoint.load_checkpoint(path)


@pytest.mark.parametrize('damage', ['truncate', 'flip_bytes', 'empty'])
def test_damaged_file_raises_checkpoint_error_naming_it(tmp_path, damage):
  path = tmp_path / 'ckpt.npz'
  _save(path)
  data = bytearray(path.read_bytes())
  if damage == 'truncate':
    data = data[:len(data) // 2]
  elif damage == 'flip_bytes':  # inside the array data: only the zip CRC can tell
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
  else:
    data = bytearray()
  path.write_bytes(bytes(data))
  with pytest.raises(checkpoint.CheckpointError) as info:
    checkpoint.load_checkpoint(path)
  assert str(path) in str(info.value)


def test_a_text_file_is_reported_as_not_a_zip_archive(tmp_path):
  path = tmp_path / 'notes.npz'
  path.write_text('epoch 3 looked best\n')
  with pytest.raises(checkpoint.CheckpointError, match='notes.npz.*not a zip archive'):
    checkpoint.load_checkpoint(path)


def test_npz_without_metadata_is_not_a_checkpoint(tmp_path):
  path = tmp_path / 'other.npz'
  np.savez(path, x=np.zeros(3))
  with pytest.raises(checkpoint.CheckpointError,
                     match='other.npz.*not an enformer_small'):
    checkpoint.load_checkpoint(path)


def test_keep_last_k_epoch_checkpoints_and_never_the_best(tmp_path):
  for epoch in range(1, 6):
    _save(checkpoint.epoch_checkpoint_path(tmp_path, epoch), epoch=epoch)
  _save(checkpoint.best_checkpoint_path(tmp_path), epoch=2)
  deleted = checkpoint.prune_checkpoints(tmp_path, keep=2)
  assert [os.path.basename(p) for p in deleted] == [
      'checkpoint_epoch_0001.npz', 'checkpoint_epoch_0002.npz',
      'checkpoint_epoch_0003.npz']
  assert [e for e, _ in checkpoint.epoch_checkpoints(tmp_path)] == [4, 5]
  assert checkpoint.latest_checkpoint(tmp_path).endswith('checkpoint_epoch_0005.npz')
  assert checkpoint.load_checkpoint(checkpoint.best_checkpoint_path(tmp_path)).epoch == 2


def test_latest_checkpoint_of_an_empty_or_missing_directory_is_none(tmp_path):
  assert checkpoint.latest_checkpoint(tmp_path) is None
  assert checkpoint.latest_checkpoint(tmp_path / 'absent') is None


def test_default_crop_start_keeps_the_seed_window():
  """85 bp -> X[:, 15:100] (the seed's), 110 -> whole, else the seed's 3:2 split."""
  assert checkpoint.default_crop_start(85) == 15
  assert checkpoint.default_crop_start(110) == 0
  assert checkpoint.default_crop_start(100) == 6
  with pytest.raises(ValueError):
    checkpoint.default_crop_start(111)
