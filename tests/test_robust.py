"""Nothing lost, nothing silently wrong.

- A run directory has one writer: a second start beside a live run is refused naming
  the other process; after that process is killed the lock is free at once; only
  process 0 of a multi-host job takes it.
- Output paths are checked before any work: a directory where a file goes, a file
  where a directory goes, a parent that is a file, an input written over.
- Targets that overflow float32 are a `file:line` error of the readers.
- `--checkpoint` takes a run directory (its best model) or an orbax step directory,
  and says which path to give otherwise.
- A run with no finite held-out Pearson says so and fails; names of parts and columns
  are checked against what exists; batch sizes must be positive.
- The data cache verifies a checksum of every array and rebuilds a damaged entry.
- A full disk during a save is one line naming the fix.
- Sequences a layout pads, truncates or reads N in are counted; an edit's alt must be
  bases; a UTF-8 BOM and a duplicated column in a table header are handled.
"""

import dataclasses
import errno
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from enformer_small import checkpoint
from enformer_small import checkpointer
from enformer_small import dream_data
from enformer_small import files
from enformer_small import inference
from enformer_small import run_lock
from enformer_small import tables
from enformer_small import train_plan
from enformer_small import trainer
from enformer_small import variant_effects
from enformer_small.train_config import TrainConfig
from enformer_small.train_errors import TrainingError

_HOLD = """
import sys, time
from enformer_small import run_lock
lock = run_lock.RunLock(sys.argv[1]).acquire()  # kept: a dropped lock closes its file
print('held', flush=True)
time.sleep(600)
"""


def test_a_second_writer_is_refused_and_a_killed_one_frees_the_directory(tmp_path):
  run_dir = str(tmp_path / 'run')
  holder = subprocess.Popen([sys.executable, '-c', _HOLD, run_dir], stdout=subprocess.PIPE,
                            text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(run_lock.RunDirectoryInUse,
                       match=f'in use by process {holder.pid} on .*, started .*--resume'):
      run_lock.RunLock(run_dir).acquire()
    config = TrainConfig(run_dir=run_dir, synthetic_rows=10,
                         synthetic_dir=str(tmp_path / 'data'))
    with pytest.raises(run_lock.RunDirectoryInUse):
      trainer.train(config)  # Refused before any data is read.
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  started = time.perf_counter()
  with run_lock.RunLock(run_dir):
    assert time.perf_counter() - started < 1.0


def test_only_process_zero_takes_the_lock(tmp_path, monkeypatch):
  run_dir = str(tmp_path / 'run')
  with run_lock.RunLock(run_dir):  # Held, as process 0 of a job would hold it.
    monkeypatch.setattr(trainer.jax, 'process_index', lambda: 1)
    config = TrainConfig(run_dir=run_dir, synthetic_rows=10, num_holdout=11,
                         synthetic_dir=str(tmp_path / 'data'),
                         data_cache_dir=str(tmp_path / 'cache'))
    with pytest.raises(TrainingError, match='has 10 row'):  # Past the lock: the data.
      trainer.train(config, trainer.RunOptions(log_every_steps=0))


def test_output_paths_are_checked_before_any_work(tmp_path):
  (tmp_path / 'a_dir').mkdir()
  (tmp_path / 'a_file').write_text('x')
  with pytest.raises(files.OutputPathError, match='--output_tsv=.*a_dir is a directory'):
    files.check_output(tmp_path / 'a_dir', flag='--output_tsv')
  with pytest.raises(files.OutputPathError, match='a_file is a file; expected a directory'):
    files.check_output(tmp_path / 'a_file', directory=True)
  with pytest.raises(files.OutputPathError, match='a_file is a file, not a directory'):
    files.check_output(tmp_path / 'a_file' / 'out.tsv')
  with pytest.raises(files.OutputPathError, match='is an input of this command'):
    files.check_output(tmp_path / 'a_file', inputs=[str(tmp_path / 'a_file')])
  files.check_output(tmp_path / 'new' / 'deeper' / 'out.tsv')  # Parents are made.
  files.check_output(tmp_path / 'a_file')  # An output written over: allowed.


@pytest.mark.skipif(os.geteuid() == 0, reason='root writes anywhere: no unwritable dir')
def test_an_unwritable_directory_is_refused(tmp_path):
  locked = tmp_path / 'locked'
  locked.mkdir(mode=0o500)
  with pytest.raises(files.OutputPathError, match='not writable'):
    files.check_output(locked / 'out.tsv')


def test_a_target_beyond_float32_is_a_file_line_error(tmp_path):
  path = tmp_path / 'train.txt'
  path.write_text('ACGTACGTAC\t5\nACGTACGTAA\t1e39\n')
  with pytest.raises(dream_data.DreamDataError,
                     match=r'train.txt:2: expression .1e39. overflows float32'):
    dream_data.read_dream_file(path, use_cache=False)
  assert dream_data.read_dream_table(path).values[1] == 1e39  # float64 readers keep it
  table = tmp_path / 'table.tsv'
  table.write_text('sequence\tactivity\nACGTACGT\t1\nACGTAAAA\t-1e40\n')
  with pytest.raises(tables.TableError, match=r'table.tsv:3: .* overflows float32'):
    tables.read_table(table, tables.TableSpec(('activity',), length=8), use_cache=False)


def test_a_checkpoint_is_a_file_a_run_directory_or_a_step_directory(tiny_run, caplog):
  config, _ = tiny_run
  best = checkpoint.best_checkpoint_path(config.run_dir)
  with caplog.at_level(logging.INFO):
    from_dir = checkpointer.load_any(config.run_dir)
  assert from_dir.path == best
  assert 'is a run directory: using its best model' in caplog.text
  steps = checkpointer.Checkpointer(config.run_dir).steps()
  step_dir = os.path.join(config.run_dir, 'checkpoints', str(steps[-1]))
  from_step = checkpointer.load_any(step_dir)
  for module, values in from_dir.params.items():
    for name, value in values.items():
      np.testing.assert_array_equal(from_step.params[module][name], value)
  with pytest.raises(checkpoint.CheckpointError,
                     match='without checkpoint_best.npz .*give one of them'):
    checkpointer.load_any(os.path.join(config.run_dir, 'checkpoints'))


def test_a_run_without_a_finite_held_out_score_fails_saying_so(tiny_run, tmp_path):
  """All-equal targets: every held-out Pearson is NaN, no best model is written, and
  the error says so (the compiled steps of tiny_run serve: same shapes)."""
  config, _ = tiny_run
  flat = tmp_path / 'flat.txt'
  rows = dream_data.read_dream_file(
      os.path.join(config.synthetic_dir, os.listdir(config.synthetic_dir)[0]))
  letters = np.array(list('ACGTN'))
  flat.write_text(''.join(''.join(letters[c]) + '\t5\n' for c in rows.codes[:200]))
  run = dataclasses.replace(config, synthetic_rows=0, train_file=str(flat),
                            run_dir=str(tmp_path / 'run'))
  with pytest.raises(TrainingError, match='no epoch gave a finite held-out Pearson'):
    trainer.train(run, trainer.RunOptions(log_every_steps=0))
  assert not os.path.exists(checkpoint.best_checkpoint_path(run.run_dir))


def test_names_and_sizes_in_the_settings_are_checked(tiny_run):
  config, _ = tiny_run
  with pytest.raises(train_plan.PlanError,
                     match='--freeze: no such part of the model: trnk; parts are .*trunk/'):
    train_plan.make_plan(dataclasses.replace(config, freeze=('trnk',)), 500)
  with pytest.raises(ValueError, match='named twice'):
    TrainConfig(table_file='t.tsv', target_columns=('a', 'a'), sequence_length=10)
  with pytest.raises(ValueError, match='named twice'):
    TrainConfig(table_file='t.tsv', target_columns=('sequence',), sequence_length=10)
  with pytest.raises(ValueError, match='must be at least 1: batch_size=0'):
    TrainConfig(batch_size=0)
  with pytest.raises(ValueError, match='num_epochs=0'):
    TrainConfig(num_epochs=0)


def test_a_damaged_cache_entry_is_rebuilt_never_used(tmp_path, caplog):
  path = tmp_path / 'rows.txt'
  path.write_text(''.join(f'{"ACGT" * 5}{"ACGT"[i % 4]}\t{i}\n' for i in range(50)))
  cache = tmp_path / 'cache'
  first = dream_data.read_dream_file(path, cache_dir=cache)
  assert first.report.num_rows == 50
  entry = next(cache.iterdir())
  array = entry / 'expression.npy'
  data = bytearray(array.read_bytes())
  data[-8:] = np.array([np.nan, np.nan], np.float32).tobytes()  # Structure intact.
  array.write_bytes(bytes(data))
  with caplog.at_level(logging.WARNING):
    again = dream_data.read_dream_file(path, cache_dir=cache)
  assert 'do not match the checksum' in caplog.text
  np.testing.assert_array_equal(again.expression, np.arange(50, dtype=np.float32))


def test_a_full_disk_during_a_save_names_the_fix(tmp_path, monkeypatch, tiny_run):
  config, _ = tiny_run
  ckpt = checkpoint.load_checkpoint(checkpoint.best_checkpoint_path(config.run_dir))
  saver = checkpointer.Checkpointer(str(tmp_path / 'run'))
  import orbax.checkpoint as ocp

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(ocp.CheckpointManager, 'save', full)
  with pytest.raises(checkpoint.CheckpointError,
                     match='the disk is full; free space, then --resume continues'):
    saver.save(params=ckpt.params, state=ckpt.state, model_config=ckpt.model_config,
               step=1)
  saver.close()


def test_what_a_layout_pads_truncates_or_reads_as_n_is_counted():
  layout = inference.Layout(length=10)
  note = layout.fit_note(['ACGTACGTAC', 'ACGT', 'ACGTACGTACGTAA', 'ACGNACGTAC'])
  assert note == ("1 sequence(s) padded at the 3' end with N to 10 bp; 1 sequence(s) "
                  "truncated at the 3' end to 10 bp; 1 sequence(s) holding N or other "
                  'letters (read as N)')
  assert layout.fit_note(['ACGTACGTAC']) == ''


def test_an_edit_writes_bases_only(tmp_path):
  with pytest.raises(variant_effects.VariantInputError,
                     match=r":1: alt 'X' is not bases \(A, C, G, T, N\)"):
    variant_effects.parse_edit('e.tsv', 1, ['ACGTACGT', '3', 'G', 'X'])
  edit = variant_effects.parse_edit('e.tsv', 1, ['ACGTACGT', '3', 'G', 'n'])
  assert edit.apply() == 'ACnTACGT'


def test_a_table_header_with_a_bom_or_a_duplicated_column(tmp_path):
  spec = tables.TableSpec(('act',), length=8)
  bom = tmp_path / 'bom.tsv'
  bom.write_bytes(b'\xef\xbb\xbfsequence\tact\nACGTACGT\t1\nACGTAAAA\t2\n')
  np.testing.assert_array_equal(
      tables.read_table(bom, spec, use_cache=False).expression[:, 0], [1, 2])
  twice = tmp_path / 'twice.tsv'
  twice.write_text('sequence\tact\tact\nACGTACGT\t1\t3\n')
  with pytest.raises(tables.TableError, match=r"twice.tsv:1: column\(s\) 'act' named twice"):
    tables.read_table(twice, spec, use_cache=False)
