"""Files written whole or not at all, and the content-keyed cache (enformer_small.files)."""

import logging
import os

import numpy as np
import pytest

from enformer_small import files


def test_atomic_write_replaces_the_content_and_leaves_no_temporary(tmp_path):
  path = tmp_path / 'out' / 'result.tsv'
  files.atomic_write(path, lambda f: f.write(b'old\n'))
  files.atomic_write(path, lambda f: f.write(b'new\n'))
  assert path.read_bytes() == b'new\n'
  assert os.listdir(path.parent) == ['result.tsv']


def test_a_failed_write_keeps_the_old_content_and_removes_its_temporary(tmp_path):
  path = tmp_path / 'result.tsv'
  files.atomic_write(path, lambda f: f.write(b'old\n'))

  def half_then_fail(f):
    f.write(b'ne')
    raise RuntimeError('disk full')

  with pytest.raises(RuntimeError, match='disk full'):
    files.atomic_write(path, half_then_fail)
  assert path.read_bytes() == b'old\n'
  assert os.listdir(tmp_path) == ['result.tsv']


def test_atomic_write_gives_the_permissions_open_would(tmp_path):
  path = tmp_path / 'result.tsv'
  files.atomic_write(path, lambda f: f.write(b'x'))
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask


def test_hash_file_is_the_blake2b_of_the_content(tmp_path):
  import hashlib
  path = tmp_path / 'a.txt'
  path.write_bytes(b'ACGT\t1.5\n' * 1000)
  assert files.hash_file(path) == hashlib.blake2b(path.read_bytes(),
                                                  digest_size=20).hexdigest()


def _arrays():
  return {'codes': np.arange(12, dtype=np.uint8).reshape(3, 4),
          'expression': np.array([1.5, 2.0, -3.0], np.float32)}


def _check(arrays, index):
  if index != b'ok\n':
    raise ValueError('unexpected index')
  return int(arrays['codes'].shape[0])


def test_a_cache_entry_comes_back_as_written(tmp_path):
  entry = tmp_path / 'entry'
  assert files.write_cache_entry(entry, _arrays(), 'done', b'ok\n')
  arrays, checked = files.load_cache_entry(entry, ('codes', 'expression'), 'done', _check)
  assert checked == 3
  for name, array in _arrays().items():
    np.testing.assert_array_equal(arrays[name], array)
    assert arrays[name].dtype == array.dtype


def test_an_entry_without_its_index_is_a_miss_and_is_kept(tmp_path):
  entry = tmp_path / 'entry'
  files.write_cache_entry(entry, _arrays(), 'done', b'ok\n')
  (entry / 'done').unlink()
  assert files.load_cache_entry(entry, ('codes', 'expression'), 'done', _check) is None
  assert (entry / 'codes.npy').exists()


def test_a_truncated_array_deletes_the_entry_with_a_warning_naming_it(tmp_path, caplog):
  entry = tmp_path / 'entry'
  files.write_cache_entry(entry, _arrays(), 'done', b'ok\n')
  codes = entry / 'codes.npy'
  codes.write_bytes(codes.read_bytes()[:-5])
  with caplog.at_level(logging.WARNING):
    assert files.load_cache_entry(entry, ('codes', 'expression'), 'done', _check) is None
  assert str(codes) in caplog.text and 'encoding the source again' in caplog.text
  assert not entry.exists()


def test_an_entry_its_check_refuses_is_deleted(tmp_path, caplog):
  entry = tmp_path / 'entry'
  files.write_cache_entry(entry, _arrays(), 'done', b'other\n')
  with caplog.at_level(logging.WARNING):
    assert files.load_cache_entry(entry, ('codes', 'expression'), 'done', _check) is None
  assert 'unexpected index' in caplog.text
  assert not entry.exists()


def test_a_cache_that_cannot_be_written_is_reported_not_raised(tmp_path, caplog):
  blocker = tmp_path / 'not_a_directory'
  blocker.write_bytes(b'')
  with caplog.at_level(logging.WARNING):
    assert not files.write_cache_entry(blocker / 'entry', _arrays(), 'done', b'ok\n')
  assert 'could not write the cache entry' in caplog.text
