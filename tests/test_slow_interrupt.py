"""Ctrl-C ends a command within seconds wherever it is: importing, reading, compiling.

Each case starts a real command, sends SIGINT at a moment where the main thread is
inside a long native call (TensorFlow or JAX importing, XLA compiling), and checks that
the process ends within a few seconds with status 130 and one line.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
LIMIT = 6.0  # seconds from SIGINT to exit: the watcher's grace (2 s) and the teardown


def _interrupt_after(args, wait_for, delay=0.0):
  """Runs `python -m args`, sends SIGINT once `wait_for` shows on stdout (or after
  `delay` s when None), returns (status, seconds to exit, stderr)."""
  env = dict(os.environ, ENFORMER_SMALL_NO_JEMALLOC='1', PYTHONUNBUFFERED='1')
  proc = subprocess.Popen([sys.executable, '-m'] + args, cwd=REPO_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  if wait_for is None:
    time.sleep(delay)
  else:
    for line in proc.stdout:
      if wait_for in line:
        break
    time.sleep(delay)
  sent = time.perf_counter()
  proc.send_signal(signal.SIGINT)
  try:
    _, err = proc.communicate(timeout=60)
  finally:
    proc.kill()
  return proc.returncode, time.perf_counter() - sent, err


def _rows(tmp_path):
  rows = tmp_path / 'rows.txt'
  rows.write_text('TGCATTTTTTTCACATC' + 'ACGT' * 20 + 'GGTTACGGCTGTT\n')
  return rows


def test_ctrl_c_while_importing_ends_at_once(tiny_run, tmp_path):
  """Valid arguments, so that the command goes on to import JAX and TensorFlow (bad
  ones end it before those imports, too soon to interrupt)."""
  config, _ = tiny_run
  status, seconds, err = _interrupt_after(
      ['experiments.predict', f'--checkpoint={config.run_dir}', f'--input={_rows(tmp_path)}',
       f'--output_tsv={tmp_path / "out.tsv"}', '--noprogress'], None, delay=0.5)
  assert status == 130 and seconds < LIMIT, (status, seconds, err)
  assert err.strip().splitlines()[-1] == 'interrupted'
  assert 'Traceback' not in err
  assert not (tmp_path / 'out.tsv').exists()


def test_ctrl_c_while_compiling_ends_within_seconds(tiny_run, tmp_path):
  config, _ = tiny_run
  status, seconds, err = _interrupt_after(
      ['experiments.predict', f'--checkpoint={config.run_dir}', f'--input={_rows(tmp_path)}',
       f'--output_tsv={tmp_path / "out.tsv"}', '--noprogress'],
      'rows from', delay=0.5)  # The line before the model is compiled.
  assert status == 130 and seconds < LIMIT, (status, seconds, err)
  assert err.strip().splitlines()[-1] == 'interrupted'
  assert not (tmp_path / 'out.tsv').exists()
