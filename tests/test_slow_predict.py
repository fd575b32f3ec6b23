"""Slow tier: experiments.predict on the command line (a process of its own, as a user
runs it), with a checkpoint converted from the seed's TF/Sonnet model, and with a model
trained on a table. The same checks in this process are in test_predict.py."""

import gzip
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from enformer_small import checkpoint
from enformer_small import inference
from enformer_small import metrics
from test_predict import (FLANK_3, FLANK_5, TABLE_LENGTH, one_hot_window, read_tsv,
                          reference_predictions, setup)  # pylint: disable=unused-import

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def cli_env(compile_cache):
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), env.get('PYTHONPATH', '')])
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  env.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  env['JAX_COMPILATION_CACHE_DIR'] = str(compile_cache)
  env['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
  env['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
  return env


def run_module(module, *args, cache):
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO_ROOT,
                        env=cli_env(cache), capture_output=True, text=True, timeout=900)


def test_command_line_writes_tsv_and_json_in_input_order_with_model_values(setup):
  """37 rows in batches of 16 (the last padded): predictions equal a direct call."""
  tmp = setup['tmp']
  result = run_module(
      'experiments.predict', f'--checkpoint={setup["ckpt_path"]}',
      f'--input={setup["data"]}', f'--output_tsv={tmp / "cli.tsv"}',
      f'--output_json={tmp / "cli.json"}', f'--indices_json={setup["indices"]}',
      f'--output_metrics_json={tmp / "cli_metrics.json"}', '--batch_size=16',
      '--noprogress', cache=tmp / 'xla_cache')
  assert result.returncode == 0, result.stderr[-3000:]
  expected = reference_predictions(setup['ckpt'], setup['sequences'])
  assert np.std(expected) > 0.01  # the rows give different predictions

  sequences, predicted = read_tsv(tmp / 'cli.tsv')
  assert sequences == setup['sequences']  # input order, sequences as written
  np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-5)

  leaderboard = json.loads((tmp / 'cli.json').read_text())
  assert list(leaderboard) == ['5', '30', '2', '17']
  np.testing.assert_allclose([leaderboard[k] for k in leaderboard],
                             expected[[5, 30, 2, 17]], rtol=1e-5, atol=1e-5)

  found = json.loads((tmp / 'cli_metrics.json').read_text())
  assert found['pearson'] == pytest.approx(
      metrics.pearson_r(expected, setup['measured']), abs=1e-4)
  assert found['n'] == 37
  assert 'pearson' in result.stdout

  result = run_module(
      'experiments.predict', f'--checkpoint={setup["ckpt_path"]}',
      f'--input={setup["data"]}', f'--output_tsv={tmp / "never.tsv"}',
      '--eval_shifts=0,16', cache=tmp / 'xla_cache')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1] == (
      'error: eval shifts (16,) move the 85 bp window [15:100] outside the 110 bp rows '
      'it is cut from: use smaller shifts or, for DREAM rows, a larger plasmid context')
  assert not (tmp / 'never.tsv').exists()


def test_predict_with_a_checkpoint_converted_from_the_seed_tf_model(
    setup, seed_fixtures_dir):
  """The seed's TF/Sonnet checkpoint, converted, predicts the seed's own outputs when
  its 85 bp inputs sit at [15:100] of a 110 bp sequence."""
  tmp = setup['tmp']
  converted = tmp / 'seed_85bp.npz'
  result = run_module('experiments.convert',
                      f'--checkpoint={seed_fixtures_dir / "checkpoint" / "ckpt"}',
                      f'--output={converted}', cache=tmp / 'xla_cache')
  assert result.returncode == 0, result.stderr[-3000:]
  cases = np.load(seed_fixtures_dir / 'cases.npz')
  x = cases['x']  # [16, 85, 4], some all-zero (N) columns
  letters = np.array(list('ACGTN'))
  codes = np.where(x.sum(-1) > 0, x.argmax(-1), 4)
  windows = [''.join(letters[row]) for row in codes]
  sequences = [FLANK_5[:15] + w + FLANK_3[3:] for w in windows]
  assert all(len(s) == 110 for s in sequences)
  data = tmp / 'seed_cases.txt'
  data.write_text(''.join(s + '\n' for s in sequences))
  result = run_module('experiments.predict', f'--checkpoint={converted}',
                      f'--input={data}', f'--output_tsv={tmp / "seed.tsv"}',
                      '--batch_size=8', '--noprogress', cache=tmp / 'xla_cache')
  assert result.returncode == 0, result.stderr[-3000:]
  _, predicted = read_tsv(tmp / 'seed.tsv')
  np.testing.assert_allclose(predicted, cases['eval_out'][:, 0], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------
# A model trained on a table: its layout, its window, one column per target.


@pytest.fixture(scope='module')
def table_run(tmp_path_factory):
  """One epoch of a two-target model on a 95 bp comma table (lengths 90..100, padded
  and truncated), and a tab-separated gzip input of 24 new rows with measured values."""
  from enformer_small import synthetic
  from enformer_small import trainer
  from enformer_small.train_config import TrainConfig
  tmp = tmp_path_factory.mktemp('table_run')
  rows = synthetic.generate(synthetic.SyntheticConfig(num_rows=144, seed=5))
  sequences = [s[:TABLE_LENGTH + (i % 3 - 1) * 5] for i, s in enumerate(rows.sequences())]
  x, y = rows.expression, 17 - rows.expression ** 0.5
  train_table = tmp / 'own.csv'
  train_table.write_text('id,sequence,x,y\n' + ''.join(
      f'r{i},{s},{a},{b}\n' for i, (s, a, b) in enumerate(zip(sequences[:120], x, y))))
  run_dir = tmp / 'run'
  trainer.train(TrainConfig(
      run_dir=str(run_dir), table_file=str(train_table), target_columns=('x', 'y'),
      sequence_length=TABLE_LENGTH, pad_sequences=True, input_length=85, shifts=(0,),
      batch_size=32, eval_batch_size=64, num_holdout=24, num_epochs=1,
      keep_checkpoints=1, dropout=False, loss='mse', optimizer='adamw',
      learning_rate=0.001, data_cache_dir=str(tmp / 'cache')),
      trainer.RunOptions(log_every_steps=0))
  new = sequences[120:]
  new[3] = new[3].lower()
  new[7] = new[7][:40] + 'NNNN' + new[7][44:]
  measured = np.stack([x[120:], y[120:]], axis=1)
  data = tmp / 'new.tsv.gz'
  data.write_bytes(gzip.compress(('y\tsequence\tx\n' + ''.join(
      f'{b}\t{s}\t{a}\n' for s, (a, b) in zip(new, measured))).encode()))
  return dict(tmp=tmp, ckpt_path=run_dir / 'checkpoint_best.npz', sequences=new,
              measured=measured, data=data, cache=tmp / 'xla_cache')


def test_a_table_run_predicts_a_table_one_column_per_target_bit_for_bit(table_run):
  """The output is a table in the training's layout whose columns are, bit for bit,
  the evaluation train uses (`training.make_eval_step`, the run's step) on the centred
  window [5:90] of each row padded / truncated to 95 bp; correlations per target."""
  from enformer_small import training
  tmp, sequences = table_run['tmp'], table_run['sequences']
  ckpt = checkpoint.load_checkpoint(table_run['ckpt_path'])
  assert (ckpt.crop_start, ckpt.model_config.input_length) == (5, 85)
  result = run_module(
      'experiments.predict', f'--checkpoint={table_run["ckpt_path"]}',
      f'--input={table_run["data"]}', f'--output_tsv={tmp / "out.tsv"}',
      f'--output_metrics_json={tmp / "metrics.json"}', '--batch_size=24',
      '--noprogress', cache=table_run['cache'])
  assert result.returncode == 0, result.stderr[-3000:]
  devices = jax.local_device_count()
  x = np.stack([one_hot_window(s, 5, 85) for s in sequences])
  # The step the run trained with (`--fast_cpu` by default), as predict takes it.
  expected = np.asarray(training.make_eval_step(
      ckpt.model_config, fast_cpu=inference.trained_fast_cpu(ckpt))(
      training.replicate(ckpt.params), training.replicate(ckpt.state),
      training.shard_batch(x.reshape((devices, -1) + x.shape[1:])))).reshape(-1, 2)
  assert np.std(expected, axis=0).min() > 1e-4

  lines = (tmp / 'out.tsv').read_text().splitlines()
  assert lines[0] == 'sequence\tx\ty'
  rows = [line.split('\t') for line in lines[1:]]
  assert [r[0] for r in rows] == sequences  # input order, sequences as written
  predicted = np.array([[np.float32(v) for v in r[1:]] for r in rows], np.float32)
  np.testing.assert_array_equal(predicted, expected, strict=True)

  found = json.loads((tmp / 'metrics.json').read_text())
  assert set(found['per_target']) == {'x', 'y'} and found['n'] == 24
  for i, name in enumerate('xy'):
    assert found['per_target'][name]['pearson'] == pytest.approx(
        metrics.pearson_r(expected[:, i], table_run['measured'][:, i]), abs=1e-5)
    assert (f'against the measured values of {name}: pearson '
            f'{found["per_target"][name]["pearson"]:.4f}, spearman') in result.stdout


def test_a_model_of_several_outputs_refuses_a_dream_submission_on_the_command_line(
    table_run):
  tmp = table_run['tmp']
  result = run_module(
      'experiments.predict', f'--checkpoint={table_run["ckpt_path"]}',
      f'--input={table_run["data"]}', f'--output_tsv={tmp / "refused.tsv"}',
      f'--output_json={tmp / "x"}', f'--indices_json={tmp / "idx.json"}',
      cache=table_run['cache'])
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f'error: {table_run["ckpt_path"]}: the model has 2 outputs (x, y); --output_json is '
      'a DREAM submission of one value per row: use --output_tsv (one column per target)')
  assert 'Traceback' not in result.stderr and not (tmp / 'refused.tsv').exists()
