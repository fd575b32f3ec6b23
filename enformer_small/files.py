"""Files written whole or not at all, and the content-keyed cache of encoded arrays.

`atomic_write` is how every file of this project is written: checkpoints, result
tables, figures, configs and cache entries. A cache entry (`write_cache_entry`,
`load_cache_entry`) is a directory of `.npy` arrays plus one index file written last,
so an entry without its index is incomplete and never read; the readers of both file
layouts (`dream_data`, `tables`) keep their encoded arrays this way.
"""

import hashlib
import json
import logging
import os
import pathlib
import tempfile
import zlib
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

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


class OutputPathError(ValueError):
  """An output path that cannot be written; the message names it and why."""


def check_output(path: str | os.PathLike, *, inputs: Sequence[str] = (),
                 directory: bool = False, flag: str = '') -> None:
  """Raises OutputPathError unless `path` can be written (a file, or a directory if
  `directory`): not an existing directory (file) or file (directory), its first
  existing ancestor a writable directory, and not one of `inputs` (so nothing is
  computed for an output that will fail, and no input is written over).

  flag: how the user named it (e.g. '--output_tsv'), for the message.
  """
  path = os.path.abspath(os.fspath(path))
  named = f'{flag}={path}' if flag else path
  if directory and os.path.exists(path) and not os.path.isdir(path):
    raise OutputPathError(f'{named} is a file; expected a directory to write into')
  if not directory and os.path.isdir(path):
    raise OutputPathError(f'{named} is a directory; expected the path of a file to '
                          'write')
  for given in inputs:
    if given and os.path.exists(given) and os.path.exists(path) and os.path.samefile(
        given, path):
      raise OutputPathError(f'{named} is an input of this command ({given}): writing '
                            'there would replace it; choose another path')
  if os.path.exists(path):
    if not os.access(path, os.W_OK):
      raise OutputPathError(f'{named} is not writable')
    return
  ancestor = os.path.dirname(path)
  while not os.path.exists(ancestor):
    ancestor = os.path.dirname(ancestor)
  if not os.path.isdir(ancestor):
    raise OutputPathError(f'{named}: {ancestor} is a file, not a directory')
  if not os.access(ancestor, os.W_OK | os.X_OK):
    raise OutputPathError(f'{named}: cannot create it, {ancestor} is not writable')


def hash_file(path: str | os.PathLike) -> str:
  """Hex BLAKE2b (20 bytes) of a file's content: the key of its cache entries."""
  digest = hashlib.blake2b(digest_size=20)
  block = bytearray(_HASH_BLOCK)
  view = memoryview(block)
  with open(path, 'rb', buffering=0) as f:
    while size := f.readinto(block):
      digest.update(view[:size])
  return digest.hexdigest()


CHECKSUMS = 'checksums.json'


def array_checksum(array: np.ndarray) -> int:
  """CRC-32 of an array's bytes (4 GB/s: small against reading them)."""
  return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast('B'))


def write_cache_entry(entry: pathlib.Path, arrays: Mapping[str, np.ndarray],
                      index_name: str, index: bytes) -> bool:
  """Writes `<name>.npy` for each array and their checksums, then the index file that
  completes the entry.

  A cache is an optimisation: a failure to write is logged and reported as False,
  never raised.
  """
  try:
    entry.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
      atomic_write(entry / f'{name}.npy',
                   lambda f, a=array: np.save(f, a, allow_pickle=False))
    sums = json.dumps({name: array_checksum(a) for name, a in arrays.items()})
    atomic_write(entry / CHECKSUMS, lambda f: f.write(sums.encode()))
    atomic_write(entry / index_name, lambda f: f.write(index))
    return True
  except OSError as e:
    log.warning('could not write the cache entry %s (%s); continuing without '
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

  None on a miss: no index file, or a damaged entry (an unreadable array, contents
  that do not match the recorded checksums, or `check` raising ValueError, TypeError
  or KeyError), which is deleted with a warning naming the file so that the source is
  encoded again: a damaged entry is never used.
  """
  index_path = entry / index_name
  if not index_path.exists():
    return None
  if not (entry / CHECKSUMS).exists():
    log.info('cache entry %s was written without checksums (by an earlier version); '
             'encoding the source again.', entry)
    delete_cache_entry(entry)
    return None
  bad_file = index_path
  try:
    index = index_path.read_bytes()
    bad_file = entry / CHECKSUMS
    sums = json.loads((entry / CHECKSUMS).read_bytes())
    arrays = {}
    for name in names:
      bad_file = entry / f'{name}.npy'
      arrays[name] = np.load(bad_file, mmap_mode='r', allow_pickle=False)
      if array_checksum(arrays[name]) != sums[name]:
        raise ValueError('its contents do not match the checksum written with it')
    bad_file = entry
    return arrays, check(arrays, index)
  except (OSError, EOFError, ValueError, TypeError, KeyError) as e:
    reason = f'{type(e).__name__}: {e}'
  log.warning('cache file %s is truncated or corrupt (%s); deleting the cache '
                  'entry and encoding the source again.', bad_file, reason)
  delete_cache_entry(entry)
  return None
