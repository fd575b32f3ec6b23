"""Slow tier: `python -m experiments.train` as a subprocess. The missing-data message, a
tiny run then a NaN stop on --resume then a resume past a damaged save, the one-line
errors (an unwritable run directory, a file too small for the held-out rows, a bad
table), and the log lines off a terminal with Ctrl-C."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from enformer_small import checkpointer

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def cli_env(compile_cache=None):
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), env.get('PYTHONPATH', '')])
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  env.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  if compile_cache:  # Later runs of the same model skip XLA compilation.
    env['JAX_COMPILATION_CACHE_DIR'] = str(compile_cache)
    env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  return env


def run_train(*args, compile_cache=None, timeout=900, nan_at_step=None):
  """`python -m experiments.train ARGS`; with `nan_at_step`, through tests/nan_targets.py
  (NaN targets at that global step)."""
  command = (['-m', 'experiments.train'] if nan_at_step is None else
             [str(REPO_ROOT / 'tests' / 'nan_targets.py'), str(nan_at_step)])
  return subprocess.run([sys.executable, *command, *args],
                        cwd=REPO_ROOT, env=cli_env(compile_cache), capture_output=True,
                        text=True, timeout=timeout)


def test_missing_train_file_says_where_to_get_it_and_how_to_run_the_demo(tmp_path):
  missing = tmp_path / 'train_sequences.txt'
  result = run_train('--flagfile=small.flags', f'--train_file={missing}',
                     f'--run_dir={tmp_path / "run"}', timeout=300)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  for part in (str(missing), 'Zenodo', '10633252', 'train_sequences.txt',
               'python -m experiments.train --flagfile=demo.flags'):
    assert part in result.stderr, part
  assert not (tmp_path / 'run').exists()


def test_tiny_run_then_nan_stop_on_resume_then_resume_past_a_damaged_save(tmp_path):
  """A 1-epoch run writes its files; --resume, saving after every step, with NaN
  targets in epoch 2 exits 1 with the epoch and step, and leaves the epoch-1 checkpoint
  as it was; with the newest save truncated, --resume warns in one line naming it and
  goes on from the one before, without a traceback."""
  run_dir = tmp_path / 'run'
  common = [f'--run_dir={run_dir}', '--synthetic_rows=300', '--synthetic_seed=3',
            f'--synthetic_dir={tmp_path / "data"}', f'--data_cache_dir={tmp_path / "c"}',
            '--num_holdout=60', '--batch_size=48', '--eval_batch_size=64', '--seed=5',
            '--noprogress']
  cache = tmp_path / 'xla_cache'
  first = run_train(*common, '--num_epochs=1', compile_cache=cache)
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'orbax' not in first.stderr  # Its INFO records, a dozen per save, stay out.
  assert 'epoch 1/1' in first.stdout
  assert 'best epoch 1' in first.stdout
  lines = (run_dir / 'metrics.jsonl').read_text().splitlines()
  assert json.loads(lines[0])['epoch'] == 1
  assert (run_dir / 'pearson.png').exists()
  assert json.loads((run_dir / 'train_config.json').read_text())['batch_size'] == 48
  ckpt = run_dir / 'checkpoints' / '15'  # 240 rows x 3 shifts / 48 per step
  before = {p: p.read_bytes() for p in ckpt.rglob('*') if p.is_file()}

  again = run_train(*common, '--num_epochs=1', timeout=300)
  assert again.returncode == 1 and '--resume' in again.stderr
  assert 'Traceback' not in again.stderr

  nan = run_train(*common, '--num_epochs=2', '--resume', '--save_every_minutes=1e-9',
                  compile_cache=cache, nan_at_step=17)
  assert nan.returncode == 1, nan.stderr[-3000:]
  assert 'Traceback' not in nan.stderr
  assert 'the loss became nan in epoch 2, step 3 of 15' in nan.stderr
  assert {p: p.read_bytes() for p in ckpt.rglob('*') if p.is_file()} == before
  # Epoch 1's end stays; the save of step 17 supersedes that of step 16.
  assert checkpointer.Checkpointer(run_dir).steps() == [15, 17]

  newest = run_dir / 'checkpoints' / '17'
  victim = max((newest / 'arrays' / 'd').iterdir(), key=lambda p: p.stat().st_size)
  victim.write_bytes(victim.read_bytes()[:victim.stat().st_size // 2])
  resumed = run_train(*common, '--num_epochs=2', '--resume', compile_cache=cache)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Traceback' not in resumed.stderr, resumed.stderr[-3000:]
  warnings = [l for l in resumed.stderr.splitlines() if 'warning' in l.lower()]
  assert len(warnings) == 1, resumed.stderr[-3000:]
  assert warnings[0].startswith(f'warning: skipping a damaged checkpoint: {newest}: ')
  assert f'resuming from {run_dir / "checkpoints" / "15"}: epoch 1, step 15' in (
      resumed.stdout)
  assert 'epoch 2/2' in resumed.stdout


def test_a_run_directory_that_cannot_be_written_is_one_line_before_any_work(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory\n')
  result = run_train('--flagfile=demo.flags', f'--run_dir={blocker / "run"}',
                     f'--synthetic_dir={tmp_path / "data"}', timeout=300)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines() == [
      f'error: cannot write to the run directory {blocker / "run"}: Not a directory. '
      'Make it writable, or choose another --run_dir.']
  assert not (tmp_path / 'data').exists()  # Refused before the data was generated.


def test_a_file_too_small_for_the_holdout_names_the_file_and_the_fix(tmp_path):
  train_file = tmp_path / 'one_row.txt'
  train_file.write_text('A' * 110 + '\t5.0\n')
  result = run_train('--flagfile=demo.flags', '--synthetic_rows=0',
                     f'--train_file={train_file}', '--num_holdout=637',
                     f'--run_dir={tmp_path / "run"}',
                     f'--data_cache_dir={tmp_path / "cache"}', timeout=300)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert (f'error: {train_file} has 1 row(s): training needs at least 2 (one to train '
          'on, one held out).') in result.stderr


def test_train_reports_a_bad_table_in_one_line_and_exits_1(tmp_path):
  """(From test_tables.) A table's bad value: one `error:` line naming file and line."""
  path = tmp_path / 't.tsv'
  path.write_text('sequence,a\n' + 'A' * 110 + ',1\n' + 'A' * 110 + ',x\n')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3',
             PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]))
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.train', '--flagfile=small.flags',
       f'--run_dir={tmp_path / "run"}', f'--table_file={path}', '--target_columns=a',
       '--sequence_length=110', '--shifts=0', f'--data_cache_dir={tmp_path / "c"}'],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f"error: {path}:3: target 'a' is 'x'; expected a finite number")


# ---------------------------------------------------------------------------
# Log lines off a terminal, and Ctrl-C (from test_train_recipes).


def test_ctrl_c_prints_one_line_and_exits_130_at_once(tmp_path):
  """Off a terminal the run logs epoch, step, loss and seq/s every --log_every_steps;
  SIGINT in the middle of epoch 2 ends it within seconds, status 130, with one line
  naming the epoch, step and last checkpoint (epoch 1's, whole), and no traceback."""
  run_dir = tmp_path / 'run'
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', TF_ENABLE_ONEDNN_OPTS='0',
             PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get('PYTHONPATH', '')]))
  proc = subprocess.Popen(
      [sys.executable, '-m', 'experiments.train', f'--run_dir={run_dir}',
       '--synthetic_rows=300', '--synthetic_seed=3', f'--synthetic_dir={tmp_path / "d"}',
       f'--data_cache_dir={tmp_path / "c"}', '--num_holdout=60', '--batch_size=16',
       '--eval_batch_size=64', '--num_epochs=50', '--nodropout', '--log_every_steps=2'],
      cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    seen = []
    for line in proc.stdout:
      seen.append(line)
      if 'epoch 2/50 step 4/45' in line:
        break
    assert 'epoch 1/50 step 2/45 (global 2): poisson loss ' in ''.join(seen), ''.join(seen)
    assert 'epoch 2/50 step 4/45 (global 49): poisson loss ' in seen[-1]
    assert 'seq/s' in seen[-1]
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    seconds = time.monotonic() - sent
  finally:
    proc.kill()
  assert proc.returncode == 130, stderr[-2000:]
  assert seconds < 5
  assert 'Traceback' not in stderr
  lines = [l for l in stderr.splitlines() if 'interrupted' in l]
  assert len(lines) == 1
  last = run_dir / 'checkpoints' / '45'  # epoch 1's end
  assert lines[0].startswith('interrupted at epoch 2, step ')
  assert lines[0].endswith(f'the last checkpoint is {last}; --resume continues')
  saver = checkpointer.Checkpointer(run_dir)
  assert saver.steps() == [45]
  assert saver.restore_latest().checkpoint.step == 45
  assert not [p for p in os.listdir(run_dir) if p.endswith('.tmp')]
  assert not [p for p in os.listdir(run_dir / 'checkpoints') if 'tmp' in p]
  used = json.loads((run_dir / 'train_config.json').read_text())
  assert used['train_file'].endswith('synthetic_300rows_seed3.txt')
