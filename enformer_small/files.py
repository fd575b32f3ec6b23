"""Files written whole or not at all, and the content-keyed cache of encoded arrays.

`atomic_write` is how every file of this project is written: checkpoints, result
tables, figures, configs and cache entries. A cache entry (`write_cache_entry`,
`load_cache_entry`) is a directory of `.npy` arrays plus one index file written last,
so an entry without its index is incomplete and never read; the readers of both file
layouts (`dream_data`, `tables`) keep their encoded arrays this way.
"""

import hashlib
import logging
import os
import pathlib
import tempfile
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import numpy as np

_HASH_BLOCK = 1 << 23


def _fsync_directory(directory: str) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return  # Not every platform can open directories.
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], Any]) -> None:
  """Calls `write(file)` on a temporary file beside `path`, then moves it onto `path`.

  The temporary file ('.<name>.<random>.tmp') is fsynced before `os.replace`, so after
  a crash `path` holds either its old content or the complete new one. On any error
  the temporary file is removed and `path` is untouched.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.',
                             suffix='.tmp')
  try:
    # mkstemp creates the file 0600; give it the permissions open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    with os.fdopen(fd, 'wb') as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except OSError:
      pass
    raise
  _fsync_directory(directory)


def hash_file(path: str | os.PathLike) -> str:
  """Hex BLAKE2b (20 bytes) of a file's content: the key of its cache entries."""
  digest = hashlib.blake2b(digest_size=20)
  block = bytearray(_HASH_BLOCK)
  view = memoryview(block)
  with open(path, 'rb', buffering=0) as f:
    while size := f.readinto(block):
      digest.update(view[:size])
  return digest.hexdigest()


def write_cache_entry(entry: pathlib.Path, arrays: Mapping[str, np.ndarray],
                      index_name: str, index: bytes) -> bool:
  """Writes `<name>.npy` for each array, then the index file that completes the entry.

  A cache is an optimisation: a failure to write is logged and reported as False,
  never raised.
  """
  try:
    entry.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
      atomic_write(entry / f'{name}.npy',
                   lambda f, a=array: np.save(f, a, allow_pickle=False))
    atomic_write(entry / index_name, lambda f: f.write(index))
    return True
  except OSError as e:
    logging.warning('could not write the cache entry %s (%s); continuing without '
                    'the cache.', entry, e)
    return False


def delete_cache_entry(entry: pathlib.Path) -> None:
  for item in entry.glob('*'):
    try:
      item.unlink()
    except OSError:
      pass
  try:
    entry.rmdir()
  except OSError:
    pass


def load_cache_entry(
    entry: pathlib.Path, names: Sequence[str], index_name: str,
    check: Callable[[Mapping[str, np.ndarray], bytes], Any],
) -> Optional[Tuple[dict, Any]]:
  """The arrays of a complete entry (memory-mapped) and `check(arrays, index)`.

  None on a miss: no index file, or a damaged entry (an unreadable array, or `check`
  raising ValueError, TypeError or KeyError), which is deleted with a warning naming
  the file so that the source is encoded again.
  """
  index_path = entry / index_name
  if not index_path.exists():
    return None
  bad_file = index_path
  try:
    index = index_path.read_bytes()
    arrays = {}
    for name in names:
      bad_file = entry / f'{name}.npy'
      arrays[name] = np.load(bad_file, mmap_mode='r', allow_pickle=False)
    bad_file = entry
    return arrays, check(arrays, index)
  except (OSError, EOFError, ValueError, TypeError, KeyError) as e:
    reason = f'{type(e).__name__}: {e}'
  logging.warning('cache file %s is truncated or corrupt (%s); deleting the cache '
                  'entry and encoding the source again.', bad_file, reason)
  delete_cache_entry(entry)
  return None
