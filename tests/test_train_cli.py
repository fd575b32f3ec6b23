"""The training command line: the flagfiles, the missing-data message, a tiny run."""

import dataclasses
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

from absl import flags
import pytest

from enformer_small import checkpointer
from experiments import train as train_lib

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


def parse_flags(*args):
  """The TrainConfig of command-line flags, read as `experiments.train` reads them."""
  values = flags.FlagValues()
  train_lib.define_flags(values)
  cwd = os.getcwd()
  os.chdir(REPO_ROOT)  # Nested --flagfile paths are relative to the repository root.
  try:
    values(['train', *args])
  finally:
    os.chdir(cwd)
  return train_lib.config_from_flags(values)


def parse_flagfile(name):
  """The TrainConfig of a flagfile."""
  return parse_flags(f'--flagfile={name}')


def test_small_flags_is_the_seed_recipe():
  """85 bp window [15:100], SGD 0.01 / 0.9, batch 10,000, 10,000 held out, shifts
  -1/0/+1 expanded, up to 300 epochs, on the challenge's train_sequences.txt."""
  config = parse_flagfile('small.flags')
  assert config.train_file == 'data/train_sequences.txt'
  assert config.synthetic_rows == 0
  assert (config.input_length, config.window_start) == (85, 15)
  assert (config.learning_rate, config.momentum) == (0.01, 0.9)
  assert config.batch_size == 10_000 and config.num_holdout == 10_000
  assert config.shifts == (-1, 0, 1) and config.shift_mode == 'expand'
  assert config.num_epochs == 300
  assert config.compute_dtype == 'float32' and not config.fast_cpu
  assert parse_flags('--flagfile=small.flags', '--fast_cpu').fast_cpu



@pytest.mark.parametrize('name, learning_rate, eval_shifts, input_length, num_epochs', [
    ('real_6370.flags', 0.0025, (-10, -5, 0, 5, 10), 110, 30),
    # The warm-start pair keeps the recipe its BUILD_NOTES scores were measured with.
    ('real_6370_85bp.flags', 0.005, (), 85, 10),
    ('real_6370_warm110.flags', 0.001, (), 110, 10),
])
def test_real_row_flagfiles_hold_the_recipes_measured(name, learning_rate, eval_shifts,
                                                      input_length, num_epochs):
  config = parse_flagfile(name)
  assert config.train_file == '../shared/data/dream/train_6370.txt'
  assert (config.num_holdout, config.batch_size) == (637, 128)
  assert (config.optimizer, config.schedule, config.loss) == ('adamw', 'one_cycle',
                                                              'soft_bin')
  assert config.learning_rate == learning_rate
  assert config.eval_shifts == eval_shifts
  assert (config.input_length, config.plasmid_context) == (input_length, 10)
  assert config.num_epochs == num_epochs


def test_the_ablation_steps_end_in_real_6370_flags(monkeypatch):
  """BUILD_NOTES' ablation table leads to the recipe users run: its row before the last
  plus the last step (30 epochs) trains exactly as real_6370.flags (bookkeeping aside)."""
  monkeypatch.syspath_prepend(str(REPO_ROOT / 'benchmarks'))  # As a script sees its folder.
  spec = importlib.util.spec_from_file_location(
      'ablation', REPO_ROOT / 'benchmarks' / 'real_6370_ablation.py')
  ablation = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(ablation)
  assert list(ablation.RECIPES)[-2:] == ['eval_shifts', 'epochs_30']
  assert ablation.RECIPES['epochs_30'] == ['--flagfile=real_6370.flags']
  chained = parse_flags(*ablation.COMMON, *ablation.RECIPES['eval_shifts'],
                        '--num_epochs=30', *ablation.BOOKKEEPING)
  users = parse_flagfile('real_6370.flags')
  same_file = [os.path.realpath(REPO_ROOT / c.train_file) for c in (chained, users)]
  assert same_file[0] == same_file[1]
  bookkeeping = {'train_file', 'run_dir', 'keep_checkpoints', 'log_every_steps'}
  differ = {f.name for f in dataclasses.fields(chained)
            if getattr(chained, f.name) != getattr(users, f.name)}
  assert differ <= bookkeeping, differ


def test_demo_flags_keep_the_recipe_on_synthetic_data():
  config = parse_flagfile('demo.flags')
  seed = parse_flagfile('small.flags')
  assert config.synthetic_rows > 0 and config.synthetic_dir == 'runs/demo_data'
  for same in ('input_length', 'crop_start', 'shifts', 'shift_mode', 'momentum',
               'compute_dtype', 'fast_cpu'):
    assert getattr(config, same) == getattr(seed, same), same
  assert config.run_dir != seed.run_dir
  # Documented deviations: smaller data, batch and run; dropout off (see demo.flags).
  assert seed.dropout and not config.dropout
  assert config.batch_size < seed.batch_size and config.num_epochs < seed.num_epochs


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


@pytest.mark.parametrize('num_rows, num_holdout, words', [
    (1, 1, 'has 1 row(s): training needs at least 2'),
    (5, 5, 'has 5 row(s): --num_holdout=5 leaves none to train on. Hold out fewer rows '
           '(at least 1 and fewer than 5)'),
    (5, 0, '--num_holdout must be positive')])
def test_splits_without_train_or_held_out_rows_are_refused(num_rows, num_holdout, words):
  with pytest.raises(train_lib.TrainingError, match=re.escape(words)):
    train_lib.check_holdout('f.txt', num_rows, num_holdout)
  train_lib.check_holdout('f.txt', 6, 5)



def _asked_at(monkeypatch, steps_per_epoch):
  from jax.experimental import multihost_utils
  asked = []
  monkeypatch.setattr(train_lib.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'broadcast_one_to_all',
                      lambda x: asked.append(int(x)) or x)
  clock = train_lib.SaveClock(minutes=1e-9)
  due = [step for step in range(45) if clock.due(step, steps_per_epoch)]
  assert len(asked) == len(due)
  return due


def test_save_clock_of_several_processes_asks_process_0_every_20_steps_at_most(
    monkeypatch):
  assert _asked_at(monkeypatch, steps_per_epoch=5000) == [19, 39]
  assert _asked_at(monkeypatch, steps_per_epoch=500) == list(range(9, 45, 10))
  assert _asked_at(monkeypatch, steps_per_epoch=11) == list(range(45))


def test_save_clock_of_one_process_reads_its_own_clock_each_step(monkeypatch):
  monkeypatch.setattr(train_lib.jax, 'process_count', lambda: 1)
  assert train_lib.SaveClock(minutes=1e-9).due(0, 5000)
  assert not train_lib.SaveClock(minutes=60).due(0, 5000)
  assert not train_lib.SaveClock(minutes=0).due(0, 5000)
