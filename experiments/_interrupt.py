"""Ctrl-C ends a command within seconds wherever it is: imports, reading, compiling.

Python runs a signal handler only between bytecodes, so a Ctrl-C pressed while the main
thread is inside a long native call (XLA compiling, TensorFlow importing, numpy parsing
a file) would wait for that call to return, tens of seconds. `install` (run by
`experiments/__init__.py` when a command starts, before its first import) handles
Ctrl-C with one line and exit status 130 at once, and watches for the signal in a
thread: if the process is still running GRACE_SECONDS later, the main thread is stuck
in native code and the watcher ends the process itself. A training run that asked to
stop after its current step (`train_loop.stop_pending`) is left to finish it and write
its own line. Every file is written whole or not at all (temporary files moved into
place), so ending the process mid-call loses only unsaved work.
"""

import os
import signal
import sys
import threading
import time

GRACE_SECONDS = 2.0
EXIT_STATUS = 130  # 128 + SIGINT


def _exit(line: str = 'interrupted') -> None:
  try:
    sys.stdout.flush()
  except (OSError, ValueError):
    pass
  os.write(2, (line + '\n').encode())
  os._exit(EXIT_STATUS)


def _on_ctrl_c(signum, frame) -> None:
  _exit()


def _stop_pending() -> bool:
  train_loop = sys.modules.get('enformer_small.train_loop')
  return bool(train_loop is not None and train_loop.stop_pending())


def _watch(read_fd: int) -> None:
  while True:
    try:
      signals = os.read(read_fd, 64)
    except OSError:
      return
    if signal.SIGINT not in signals:
      continue
    time.sleep(GRACE_SECONDS)
    if not _stop_pending():
      _exit()


def install() -> None:
  """Ctrl-C: one line and exit 130, within GRACE_SECONDS wherever the program is."""
  if threading.current_thread() is not threading.main_thread():
    return
  signal.signal(signal.SIGINT, _on_ctrl_c)
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  threading.Thread(target=_watch, args=(read_fd,), daemon=True,
                   name='ctrl-c watcher').start()
