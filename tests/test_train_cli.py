"""The training command line: the flagfiles, the errors it reports, the save clock.

The command run as a subprocess (the missing-data message, a tiny run, Ctrl-C, the
one-line errors) is in test_slow_train_cli.py; here the same messages come from the
library calls the command makes.
"""

import dataclasses
import importlib.util
import os
import pathlib
import re

from absl import flags
import pytest

from enformer_small import train_data
from enformer_small import train_loop
from enformer_small import trainer
from enformer_small.train_errors import TrainingError
from experiments import train as train_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


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


# ---------------------------------------------------------------------------
# The errors the command reports in one line, as the library raises them.


def test_missing_train_file_says_where_to_get_it_and_how_to_run_the_demo(tmp_path):
  missing = tmp_path / 'train_sequences.txt'
  config = dataclasses.replace(parse_flagfile('small.flags'), train_file=str(missing),
                               run_dir=str(tmp_path / 'run'))
  with pytest.raises(train_data.DataError) as info:
    train_data.load_data(config)
  assert str(info.value) == train_data.missing_train_file_message(str(missing))
  for part in (str(missing), 'Zenodo', '10633252', 'train_sequences.txt',
               'python -m experiments.train --flagfile=demo.flags'):
    assert part in str(info.value), part
  assert not (tmp_path / 'run').exists()


def test_a_run_directory_that_cannot_be_written_is_refused_before_any_work(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory\n')
  config = dataclasses.replace(parse_flagfile('demo.flags'),
                               run_dir=str(blocker / 'run'),
                               synthetic_dir=str(tmp_path / 'data'))
  with pytest.raises(TrainingError) as info:
    trainer.train(config)
  assert str(info.value) == (
      f'cannot write to the run directory {blocker / "run"}: Not a directory. '
      'Make it writable, or choose another --run_dir.')
  assert not (tmp_path / 'data').exists()  # Refused before the data was generated.


def test_a_file_too_small_for_the_holdout_names_the_file_and_the_fix(tmp_path):
  train_file = tmp_path / 'one_row.txt'
  train_file.write_text('A' * 110 + '\t5.0\n')
  config = dataclasses.replace(
      parse_flagfile('demo.flags'), synthetic_rows=0, train_file=str(train_file),
      num_holdout=637, run_dir=str(tmp_path / 'run'),
      data_cache_dir=str(tmp_path / 'cache'))
  with pytest.raises(TrainingError) as info:
    train_data.load_data(config)
  assert str(info.value) == (f'{train_file} has 1 row(s): training needs at least 2 '
                             '(one to train on, one held out).')


@pytest.mark.parametrize('num_rows, num_holdout, words', [
    (1, 1, 'has 1 row(s): training needs at least 2'),
    (5, 5, 'has 5 row(s): --num_holdout=5 leaves none to train on. Hold out fewer rows '
           '(at least 1 and fewer than 5)'),
    (5, 0, '--num_holdout must be positive')])
def test_splits_without_train_or_held_out_rows_are_refused(num_rows, num_holdout, words):
  with pytest.raises(TrainingError, match=re.escape(words)):
    train_data.check_holdout('f.txt', num_rows, num_holdout)
  train_data.check_holdout('f.txt', 6, 5)



def _asked_at(monkeypatch, steps_per_epoch):
  from jax.experimental import multihost_utils
  asked = []
  monkeypatch.setattr(train_loop.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(multihost_utils, 'broadcast_one_to_all',
                      lambda x: asked.append(int(x)) or x)
  clock = train_loop.SaveClock(minutes=1e-9)
  due = [step for step in range(45) if clock.due(step, steps_per_epoch)]
  assert len(asked) == len(due)
  return due


def test_save_clock_of_several_processes_asks_process_0_every_20_steps_at_most(
    monkeypatch):
  assert _asked_at(monkeypatch, steps_per_epoch=5000) == [19, 39]
  assert _asked_at(monkeypatch, steps_per_epoch=500) == list(range(9, 45, 10))
  assert _asked_at(monkeypatch, steps_per_epoch=11) == list(range(45))


def test_save_clock_of_one_process_reads_its_own_clock_each_step(monkeypatch):
  monkeypatch.setattr(train_loop.jax, 'process_count', lambda: 1)
  assert train_loop.SaveClock(minutes=1e-9).due(0, 5000)
  assert not train_loop.SaveClock(minutes=60).due(0, 5000)
  assert not train_loop.SaveClock(minutes=0).due(0, 5000)
