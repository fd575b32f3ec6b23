"""Checkpoints: everything comes back, writes are atomic, bad files fail clearly."""

import json
import os
import pathlib

import jax
import numpy as np
import optax
import pytest

from enformer_small import checkpoint
from enformer_small import config as config_lib
from enformer_small import plasmid

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


def test_the_default_window_start_keeps_the_seed_window():
  """85 bp -> X[:, 15:100] (the seed's), 110 -> whole, else the seed's 3:2 split."""
  assert plasmid.default_window_start(85) == 15
  assert plasmid.default_window_start(110) == 0
  assert plasmid.default_window_start(100) == 6
  with pytest.raises(ValueError):
    plasmid.default_window_start(111)


# ---------------------------------------------------------------------------
# The run directory's checkpointer (orbax saves, the best one as .npz).

from enformer_small import checkpointer as checkpointer_lib  # noqa: E402


def _progress(steps=2, batch=3):
  values = np.arange(steps * batch, dtype=np.float32)
  return checkpointer_lib.EpochProgress(steps=steps, predictions=values / 7,
                                        targets=values + 0.5, seconds=12.25)


def _fields(step=123, epoch=4):
  opt, opt_state = _momentum_state(PARAMS)
  return opt, dict(params=PARAMS, state=STATE, model_config=config_lib.seed_config(85),
                   opt_state=opt_state, rng=jax.random.PRNGKey(7), epoch=epoch,
                   step=step, metrics=[{'epoch': 1, 'holdout': {'pearson': 0.5}}],
                   extra={'train_config': {'batch_size': 10000}, 'crop_start': 15},
                   train_params=PARAMS, train_state=STATE)


def test_checkpointer_restores_every_field_and_the_position_in_the_epoch(tmp_path):
  saver = checkpointer_lib.Checkpointer(tmp_path, keep=3)
  opt, fields = _fields()
  path = saver.save(progress=_progress(), **fields)
  saver.close()
  assert path == os.path.join(tmp_path, 'checkpoints', '123')
  restored = checkpointer_lib.Checkpointer(tmp_path).restore_latest(opt.init(PARAMS))
  loaded = restored.checkpoint
  _assert_trees_equal(loaded.params, PARAMS)
  _assert_trees_equal(loaded.state, STATE)
  _assert_trees_equal(loaded.train_params, PARAMS)
  _assert_trees_equal(loaded.train_state, STATE)
  _assert_trees_equal(loaded.opt_state, fields['opt_state'])
  np.testing.assert_array_equal(loaded.rng, np.asarray(jax.random.PRNGKey(7)))
  assert loaded.rng.dtype == np.uint32
  assert (loaded.epoch, loaded.step, loaded.path) == (4, 123, path)
  assert loaded.metrics == ({'epoch': 1, 'holdout': {'pearson': 0.5}},)
  assert loaded.extra == fields['extra']
  assert loaded.model_config == config_lib.seed_config(85)
  expected = _progress()
  assert (restored.progress.steps, restored.progress.seconds) == (2, 12.25)
  _assert_trees_equal([restored.progress.predictions, restored.progress.targets],
                      [expected.predictions, expected.targets])


def test_checkpointer_at_an_epoch_end_has_no_progress(tmp_path):
  saver = checkpointer_lib.Checkpointer(tmp_path)
  saver.save(**_fields()[1])
  assert saver.restore_latest().progress is None


def test_checkpointer_keeps_the_last_k_saves(tmp_path):
  saver = checkpointer_lib.Checkpointer(tmp_path, keep=2)
  for step in (5, 10, 15, 20):
    saver.save(**_fields(step=step)[1])
  assert saver.steps() == [15, 20]
  assert saver.latest() == os.path.join(tmp_path, 'checkpoints', '20')


def test_checkpointer_keeps_the_last_k_epoch_ends_and_the_newest_save(tmp_path):
  """Saves within an epoch do not push epoch ends out; each supersedes the older ones."""
  saver = checkpointer_lib.Checkpointer(tmp_path, keep=2)
  for step in (5, 10, 12, 15, 20, 25, 30, 33, 36):  # Epoch ends: 10, 20, 30.
    saver.save(progress=None if step % 10 == 0 else _progress(), **_fields(step=step)[1])
  assert saver.steps() == [20, 30, 36]
  # A resumed run's Checkpointer reads which saves are epoch ends from their metadata.
  resumed = checkpointer_lib.Checkpointer(tmp_path, keep=2)
  resumed.save(progress=_progress(), **_fields(step=38)[1])
  assert resumed.steps() == [20, 30, 38]
  resumed.save(**_fields(step=40)[1])
  assert resumed.steps() == [30, 40]


def test_checkpointer_writes_json_and_tensorstore_files_only(tmp_path):
  """No pickle anywhere: every file is JSON, orbax's text markers or tensorstore's
  OCDBT data, none starting like a pickle (protocol 2-5)."""
  saver = checkpointer_lib.Checkpointer(tmp_path)
  saver.save(progress=_progress(), **_fields()[1])
  kinds = set()
  for root, _, files in os.walk(tmp_path / 'checkpoints'):
    for name in files:
      data = (pathlib.Path(root) / name).read_bytes()
      assert not (data[:1] == b'\x80' and data[1:2] in (b'\x02', b'\x03', b'\x04',
                                                        b'\x05')), name
      if name in ('_CHECKPOINT_METADATA', '_METADATA', 'metadata'):
        json.loads(data)
        kinds.add('json')
      elif name == 'commit_success.txt':
        kinds.add('marker')
      else:
        assert name == 'manifest.ocdbt' or os.path.basename(root) == 'd', (root, name)
        kinds.add('ocdbt')
  assert kinds == {'json', 'marker', 'ocdbt'}


def damage_save(step_dir, how):
  """Truncates ('truncate') or flips 8 bytes in the middle of ('flip_bytes') the largest
  file of array data orbax reads: the merged OCDBT database's (arrays/d/), not the
  per-process ones it was merged from."""
  victim = max((step_dir / 'arrays' / 'd').iterdir(), key=lambda p: p.stat().st_size)
  data = bytearray(victim.read_bytes())
  if how == 'truncate':
    data = data[:len(data) // 2]
  else:
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
  victim.write_bytes(bytes(data))


@pytest.mark.parametrize('damage', ['truncate', 'flip_bytes'])
def test_damaged_newest_save_is_reported_and_the_older_one_restored(tmp_path, damage):
  saver = checkpointer_lib.Checkpointer(tmp_path, keep=3)
  saver.save(**_fields(step=10, epoch=1)[1])
  saver.save(**_fields(step=20, epoch=2)[1])
  saver.close()
  damage_save(tmp_path / 'checkpoints' / '20', damage)
  warnings = []
  restored = checkpointer_lib.Checkpointer(tmp_path).restore_latest(
      on_damaged=warnings.append)
  assert (restored.checkpoint.epoch, restored.checkpoint.step) == (1, 10)
  assert len(warnings) == 1
  assert warnings[0].startswith(os.path.join(str(tmp_path), 'checkpoints', '20') + ':')
  assert 'moved to' in warnings[0]
  # Out of the way: the next save of step 20 and the retention count do not meet it.
  assert checkpointer_lib.Checkpointer(tmp_path).steps() == [10]
  assert os.listdir(tmp_path / 'damaged_checkpoints')[0].startswith('20.')


def test_a_checkpoint_of_another_optimizer_is_refused_not_skipped(tmp_path):
  saver = checkpointer_lib.Checkpointer(tmp_path)
  saver.save(**_fields(step=10)[1])
  with pytest.raises(checkpoint.OptimizerMismatchError, match='optimizer'):
    saver.restore_latest(optax.adam(1e-3).init(PARAMS))
  assert saver.steps() == [10]


def test_leftovers_of_killed_writes_are_removed(tmp_path):
  saver = checkpointer_lib.Checkpointer(tmp_path)
  saver.save(**_fields(step=10)[1])
  saver.close()
  npz_tmp = tmp_path / '.checkpoint_best.npz.k3j2h1.tmp'
  npz_tmp.write_bytes(b'PK\x03\x04 partial')
  orbax_tmp = tmp_path / 'checkpoints' / '20.orbax-checkpoint-tmp-1764140000'
  (orbax_tmp / 'arrays').mkdir(parents=True)
  assert saver.steps() == [10]  # ignored while there
  removed = checkpointer_lib.remove_temporaries(tmp_path)
  assert sorted(removed) == sorted([str(npz_tmp), str(orbax_tmp)])
  assert not npz_tmp.exists() and not orbax_tmp.exists()
  assert saver.restore_latest().checkpoint.step == 10


def test_old_npz_epoch_checkpoints_still_resume(tmp_path):
  """A run directory of the earlier format: its newest epoch file is the latest."""
  _save(checkpoint.epoch_checkpoint_path(tmp_path, 1), epoch=1)
  _save(checkpoint.epoch_checkpoint_path(tmp_path, 2), epoch=2)
  saver = checkpointer_lib.Checkpointer(tmp_path)
  assert saver.latest() == checkpoint.epoch_checkpoint_path(tmp_path, 2)
  assert saver.restore_latest().checkpoint.epoch == 2


def test_delete_all_removes_every_checkpoint_whatever_its_format(tmp_path):
  saver = checkpointer_lib.Checkpointer(tmp_path)
  saver.save(**_fields(step=10)[1])
  saver.export_best(**_fields(step=10)[1])
  _save(checkpoint.epoch_checkpoint_path(tmp_path, 1), epoch=1)
  (tmp_path / 'damaged_checkpoints' / '20.1').mkdir(parents=True)
  (tmp_path / 'metrics.jsonl').write_text('{}\n')
  saver.delete_all()
  assert sorted(os.listdir(tmp_path)) == ['metrics.jsonl']
  assert saver.latest() is None


def test_orbax_alone_reads_a_flipped_byte_as_wrong_numbers_the_crc_catches_it(tmp_path):
  """Why the metadata holds a CRC-32 of every array: tensorstore checksums its b-tree
  nodes, but a large array's data chunks are read back without a check. Flipped bytes
  there come back from orbax as wrong numbers and no error; the checkpointer notices
  and falls back to the older save."""
  import orbax.checkpoint as ocp
  big = {'enformer/~/trunk/~/conv': {
      'w': np.random.RandomState(0).randn(1_000_000).astype(np.float32)}}
  saver = checkpointer_lib.Checkpointer(tmp_path, keep=3)
  fields = dict(_fields()[1], params=big, train_params=None, opt_state=None)
  saver.save(**dict(fields, step=10, epoch=1))
  saver.save(**dict(fields, step=20, epoch=2))
  saver.close()
  newest = tmp_path / 'checkpoints' / '20'
  victim = max((p for p in (newest / 'arrays').rglob('*') if p.is_file()),
               key=lambda p: p.stat().st_size)
  data = bytearray(victim.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
  victim.write_bytes(bytes(data))

  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as reader:
    plain = reader.restore(newest, args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore()))['arrays']['params']['0']
  assert plain.shape == (1_000_000,)
  assert not np.array_equal(plain, big['enformer/~/trunk/~/conv']['w'])

  warnings = []
  restored = checkpointer_lib.Checkpointer(tmp_path).restore_latest(
      on_damaged=warnings.append)
  assert restored.checkpoint.step == 10
  assert len(warnings) == 1 and 'CRC-32 mismatch in params/0' in warnings[0]
  np.testing.assert_array_equal(
      restored.checkpoint.params['enformer/~/trunk/~/conv']['w'],
      big['enformer/~/trunk/~/conv']['w'])


def test_a_save_orbax_declines_is_an_error_not_silence(tmp_path):
  """Orbax skips, without an error, a step not after its newest save."""
  saver = checkpointer_lib.Checkpointer(tmp_path, keep=0)
  fields = dict(params={'m': {'w': np.ones(2, np.float32)}}, state={},
                model_config=config_lib.seed_config(85))
  saver.save(step=5, **fields)
  with pytest.raises(checkpoint.CheckpointError,
                     match=f'{tmp_path}/checkpoints/4: not saved: '
                           f'{tmp_path}/checkpoints/5 is of a later step'):
    saver.save(step=4, **fields)
  assert saver.steps() == [5]
