"""One writer per run directory: an exclusive lock held for the whole run.

The first process of a run (process 0 of a multi-host job) takes an exclusive `fcntl`
lock on `<run_dir>/.lock` before it reads a checkpoint or writes a file, and keeps it
until the run ends. The kernel releases the lock when the process dies, however it dies,
so a killed run never leaves a stale lock: `--resume` right after a SIGKILL takes it at
once. A second start or `--resume` while the first runs is refused in one line naming
the other process (pid, host, start time). Readers (`predict`, TensorBoard) take no
lock and are never blocked.

The lock file's text (pid, host, time) is for that message only; the lock is the
kernel's. Locks on network file systems depend on their lock support (NFSv4 and Lustre
have it).
"""

import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Optional, TextIO

from enformer_small.train_errors import TrainingError

LOCK_NAME = '.lock'


class RunDirectoryInUse(TrainingError):
  """Another live process holds the run directory."""


class RunLock:
  """The lock on a run directory (a context manager); `acquire` refuses when held."""

  def __init__(self, run_dir: str):
    self.path = os.path.join(run_dir, LOCK_NAME)
    self._file: Optional[TextIO] = None

  def acquire(self) -> 'RunLock':
    os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
    handle = open(self.path, 'a+', encoding='utf-8')
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      handle.close()
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise RunDirectoryInUse(self._in_use_message()) from None
      raise
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(dict(
        pid=os.getpid(), host=socket.gethostname(),
        started=datetime.datetime.now().astimezone().isoformat(timespec='seconds'))))
    handle.flush()
    self._file = handle
    return self

  def _in_use_message(self) -> str:
    run_dir = os.path.dirname(self.path)
    try:
      with open(self.path, 'r', encoding='utf-8') as f:
        owner = json.loads(f.read())
      who = (f'process {owner["pid"]} on {owner["host"]}, started '
             f'{owner["started"]}')
    except (OSError, ValueError, KeyError):
      who = 'another process'
    return (f'{run_dir} is in use by {who}: one run writes a run directory at a time. '
            'Wait for it to end (or stop it), then --resume; or choose another '
            '--run_dir.')

  def release(self) -> None:
    if self._file is not None:
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self) -> 'RunLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
