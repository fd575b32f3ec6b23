"""experiments.predict: input order, both output formats, the model's own window.

Run in this process (`in_process`: the command's flags, `run` and `main`); the same
checks through the command line, a converted TF/Sonnet checkpoint and a trained table
run are in test_slow_predict.py.
"""

import gzip
import json

import jax
import numpy as np
import pytest

from enformer_small import checkpoint
from enformer_small import config as config_lib
from enformer_small import dream_data
from enformer_small import inference
from enformer_small import metrics
from enformer_small import model
from experiments import predict
import in_process
from random_model import random_variables

FLANK_5, FLANK_3 = 'TGCATTTTTTTCACATC', 'GGTTACGGCTGTT'


def random_rows(n, seed=0):
  """DREAM-like rows: flanks around 80 random bases; other lengths, Ns, lowercase."""
  rng = np.random.default_rng(seed)
  sequences = []
  for i in range(n):
    length = {3: 75, 7: 95}.get(i, 80)
    region = ''.join(rng.choice(list('ACGT'), length))
    if i == 5:
      region = region[:30] + 'NNNN' + region[34:]
    sequence = FLANK_5 + region + FLANK_3
    sequences.append(sequence.lower() if i == 11 else sequence)
  return sequences, np.round(rng.uniform(0, 17, n), 3)


def reference_predictions(ckpt, sequences, reverse=False, shift=0):
  """A direct eval-mode model call on the checkpoint's window of the 110 bp encoding
  (moved by `shift`)."""
  codes = dream_data.encode_sequences(sequences)
  start, length = ckpt.crop_start + shift, ckpt.model_config.input_length
  x = dream_data.one_hot(codes[:, start:start + length])
  if reverse:  # reverse complement: A,C,G,T channels reversed, positions reversed.
    x = x[:, ::-1, ::-1]
  predict = model.predict_fn(ckpt.model_config)
  # One row per call: the compilation test_attribution's brute-force ISM makes too.
  return np.array([np.asarray(predict(ckpt.params, ckpt.state, row[None]))[0, 0]
                   for row in x])


def run_main(capsys, module, *args):
  """The command's `main` in this process: (exit status, stdout, stderr)."""
  with in_process.command_flags(module, *args):
    try:
      module.main(['prog'])
      status = 0
    except SystemExit as e:
      status = e.code
  out, err = capsys.readouterr()
  return status, out, err


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('predict')
  model_config = config_lib.seed_config(85)
  params, state = random_variables(model_config, seed=42)
  path = tmp / 'model.npz'
  checkpoint.save_checkpoint(path, params=params, state=state, model_config=model_config)
  sequences, measured = random_rows(37)
  data = tmp / 'input.tsv'
  data.write_text(''.join(f'{s}\t{m}\n' for s, m in zip(sequences, measured)))
  indices = tmp / 'indices.json'
  indices.write_text(json.dumps({'5': 0.1, '30,2': [0.2, 0.3], '17': 0.0}))
  return dict(tmp=tmp, ckpt_path=path, ckpt=checkpoint.load_checkpoint(path),
              sequences=sequences, measured=measured, data=data, indices=indices)


def read_tsv(path):
  rows = [line.split('\t') for line in path.read_text().splitlines()]
  return [r[0] for r in rows], np.array([float(r[1]) for r in rows])


def read(path):
  """predict's reader of DREAM rows: (sequences as written, measured values or None)."""
  rows = inference.Layout().read(str(path))
  return list(rows.sequences), rows.measured


def test_read_input_takes_gzip_crlf_and_files_without_values(tmp_path):
  path = tmp_path / 'input.tsv'  # gzip whatever the name
  path.write_bytes(gzip.compress(b'ACGT\t1.5\r\nggcn\t-2\r\n\r\n'))
  sequences, measured = read(path)
  assert sequences == ['ACGT', 'ggcn']
  np.testing.assert_array_equal(measured, [1.5, -2.0])
  path.write_bytes(b'ACGT\r\nGGCC\n\n')
  assert read(path) == (['ACGT', 'GGCC'], None)
  path.write_bytes('\ufeffACGT\t1\n'.encode('utf-8'))  # byte-order mark of some editors
  assert read(path)[0] == ['ACGT']


@pytest.mark.parametrize('content, message', [
    (gzip.compress(b'ACGT\t1\n' * 50)[:20], ':1: corrupt gzip file'),
    (b'ACGT\t1\nGGCC\n', ':2: missing tab: '),
    (b'ACGT\nGGCC\t1\n', ':2: found 2 tab-separated columns '),
    (b'ACGT\t1\r\n\r\nGGCC\t2\n', ':2: blank line; '),
    (b'ACGT\t1\nGGCC\tnan\n', ":2: expression 'nan' is not finite"),
    (b'', ':1: empty file'),
])
def test_read_input_errors_name_the_file_and_line(tmp_path, content, message):
  path = tmp_path / 'input.tsv'
  path.write_bytes(content)
  with pytest.raises(dream_data.DreamDataError) as info:
    read(path)
  assert str(info.value).startswith(str(path) + message)


def test_nan_measured_value_is_a_file_line_error_before_anything_is_written(
    setup, capsys):
  """The row is named, nothing is predicted or written, and the status is 1."""
  tmp = setup['tmp']
  data = tmp / 'with_nan.tsv'
  rows = [f'{s}\t{m}' for s, m in zip(setup['sequences'], setup['measured'])]
  rows[3] = f'{setup["sequences"][3]}\tnan'
  data.write_text('\n'.join(rows) + '\n')
  outputs = [tmp / 'nan.tsv', tmp / 'nan.json', tmp / 'nan_metrics.json']
  status, out, err = run_main(
      capsys, predict, f'--checkpoint={setup["ckpt_path"]}', f'--input={data}',
      f'--output_tsv={outputs[0]}', f'--output_json={outputs[1]}',
      f'--indices_json={setup["indices"]}', f'--output_metrics_json={outputs[2]}',
      '--noprogress')
  assert status == 1
  assert 'Traceback' not in err
  assert err.strip().splitlines()[-1] == (
      f"error: {data}:4: expression 'nan' is not finite; expected a finite number")
  assert 'predicted' not in out
  assert not any(path.exists() for path in outputs)


def test_predict_writes_tsv_and_json_in_input_order_with_model_values(setup, capsys):
  """37 rows in batches of 8 (the last padded): predictions equal a direct call."""
  tmp = setup['tmp']
  status, out, err = run_main(
      capsys, predict, f'--checkpoint={setup["ckpt_path"]}',
      f'--input={setup["data"]}', f'--output_tsv={tmp / "out.tsv"}',
      f'--output_json={tmp / "out.json"}', f'--indices_json={setup["indices"]}',
      f'--output_metrics_json={tmp / "metrics.json"}', '--batch_size=8',
      '--noprogress')
  assert status == 0, err[-3000:]
  expected = reference_predictions(setup['ckpt'], setup['sequences'])
  assert np.std(expected) > 0.01  # the rows give different predictions

  sequences, predicted = read_tsv(tmp / 'out.tsv')
  assert sequences == setup['sequences']  # input order, sequences as written
  np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-5)

  leaderboard = json.loads((tmp / 'out.json').read_text())
  assert list(leaderboard) == ['5', '30', '2', '17']
  np.testing.assert_allclose([leaderboard[k] for k in leaderboard],
                             expected[[5, 30, 2, 17]], rtol=1e-5, atol=1e-5)

  found = json.loads((tmp / 'metrics.json').read_text())
  assert found['pearson'] == pytest.approx(
      metrics.pearson_r(expected, setup['measured']), abs=1e-4)
  assert found['n'] == 37
  assert 'pearson' in out


def test_metrics_are_correlations_only_because_scales_differ(setup, capsys):
  """Measured values on another scale (the test set's MAUDE scale): MSE and MAE would
  read like a bug, so only Pearson and Spearman are printed and written, with why."""
  tmp = setup['tmp']
  maude = setup['measured'] * 3.0 - 20.0  # another scale: correlations unchanged
  data = tmp / 'maude.tsv'
  data.write_text(''.join(f'{s}\t{m}\n' for s, m in zip(setup['sequences'], maude)))
  status, out, err = run_main(
      capsys, predict, f'--checkpoint={setup["ckpt_path"]}', f'--input={data}',
      f'--output_tsv={tmp / "maude_out.tsv"}',
      f'--output_metrics_json={tmp / "maude.json"}', '--batch_size=8', '--noprogress')
  assert status == 0, err[-3000:]
  expected = reference_predictions(setup['ckpt'], setup['sequences'])
  found = json.loads((tmp / 'maude.json').read_text())
  assert {k for k in found if k in ('pearson', 'spearman', 'mse', 'mae')} == {
      'pearson', 'spearman'}
  assert found['pearson'] == pytest.approx(metrics.pearson_r(expected, maude), abs=1e-4)
  assert found['spearman'] == pytest.approx(metrics.spearman_rho(expected, maude),
                                            abs=1e-4)
  lines = out.splitlines()
  metric_line = next(i for i, l in enumerate(lines)
                     if l.startswith('against the measured values: '))
  assert lines[metric_line] == (
      f'against the measured values: pearson {found["pearson"]:.4f}, '
      f'spearman {found["spearman"]:.4f}')
  assert lines[metric_line + 1] == predict.SCALE_NOTE
  assert 'MAUDE' in predict.SCALE_NOTE
  assert not any(w in out.lower() for w in ('mse', 'mae '))


def test_reverse_complement_average_is_the_mean_of_both_strands(setup, capsys):
  tmp = setup['tmp']
  status, _, err = run_main(
      capsys, predict, f'--checkpoint={setup["ckpt_path"]}',
      f'--input={setup["data"]}', f'--output_tsv={tmp / "rc.tsv"}',
      '--reverse_complement_average', '--batch_size=8', '--noprogress')
  assert status == 0, err[-3000:]
  forward = reference_predictions(setup['ckpt'], setup['sequences'])
  reverse = reference_predictions(setup['ckpt'], setup['sequences'], reverse=True)
  _, predicted = read_tsv(tmp / 'rc.tsv')
  np.testing.assert_allclose(predicted, (forward + reverse) / 2, rtol=1e-5, atol=1e-5)
  assert not np.allclose(forward, reverse, atol=1e-3)


def test_eval_shifts_average_the_shifted_windows_and_are_recorded(setup, capsys):
  """--eval_shifts=-15,4 on one strand: the mean of the windows [0:85] and [19:104];
  the metrics file names the windows averaged; a window beyond the rows is one line."""
  tmp = setup['tmp']
  status, out, err = run_main(
      capsys, predict, f'--checkpoint={setup["ckpt_path"]}',
      f'--input={setup["data"]}', f'--output_tsv={tmp / "shifted.tsv"}',
      f'--output_metrics_json={tmp / "shifted.json"}', '--eval_shifts=-15,4',
      '--batch_size=8', '--noprogress')
  assert status == 0, err[-3000:]
  assert 'with shift (-15,4) averaging' in out
  windows = [reference_predictions(setup['ckpt'], setup['sequences'], shift=s)
             for s in (-15, 4)]
  _, predicted = read_tsv(tmp / 'shifted.tsv')
  np.testing.assert_allclose(predicted, (windows[0] + windows[1]) / 2, rtol=1e-5,
                             atol=1e-5)
  assert not np.allclose(windows[0], windows[1], atol=1e-3)
  found = json.loads((tmp / 'shifted.json').read_text())
  assert (found['eval_shifts'], found['reverse_complement_average']) == ([-15, 4], False)

  status, _, err = run_main(
      capsys, predict, f'--checkpoint={setup["ckpt_path"]}',
      f'--input={setup["data"]}', f'--output_tsv={tmp / "never.tsv"}',
      '--eval_shifts=0,16')
  assert status == 1 and 'Traceback' not in err
  assert err.strip().splitlines()[-1] == (
      'error: eval shifts (16,) move the 85 bp window [15:100] outside the 110 bp rows '
      'it is cut from: use smaller shifts or, for DREAM rows, a larger plasmid context')
  assert not (tmp / 'never.tsv').exists()


def test_bad_checkpoint_is_one_error_line(setup, capsys):
  tmp = setup['tmp']
  bad = tmp / 'bad.npz'
  bad.write_bytes(setup['ckpt_path'].read_bytes()[:1000])
  status, _, err = run_main(capsys, predict, f'--checkpoint={bad}',
                            f'--input={setup["data"]}', f'--output_tsv={tmp / "x.tsv"}')
  assert status == 1
  assert 'Traceback' not in err
  assert err.strip().splitlines()[-1].startswith(f'error: {bad}')
  assert not (tmp / 'x.tsv').exists()


# ---------------------------------------------------------------------------
# A model of a table: its layout, its window, one column per target. Here untrained
# (random weights, saved as a table run saves them); a trained one in
# test_slow_predict.py.

TABLE_LENGTH = 95  # Not DREAM's 110: a DREAM reading would misplace the window.


def one_hot_window(sequence, start, length):
  """The training's window of a table row, by hand: 3' padding with N / truncation to
  TABLE_LENGTH, A/C/G/T (any case) one-hot, anything else all zeros."""
  row = (sequence.upper() + 'N' * TABLE_LENGTH)[:TABLE_LENGTH][start:start + length]
  return np.array([[float(base == b) for b in 'ACGT'] for base in row], np.float32)


def table_rows(n, seed):
  """n rows of 90, 95 and 100 bp (padded and truncated to 95), one lowercase, one
  with Ns; measured values of the two targets x and y."""
  rng = np.random.default_rng(seed)
  sequences = [''.join(rng.choice(list('ACGT'), TABLE_LENGTH + (i % 3 - 1) * 5))
               for i in range(n)]
  sequences[3] = sequences[3].lower()
  sequences[7] = sequences[7][:40] + 'NNNN' + sequences[7][44:]
  return sequences, np.round(rng.uniform(0, 17, (n, 2)), 3)


@pytest.fixture(scope='module')
def table_checkpoint(tmp_path_factory):
  """A two-target 85 bp model of a 95 bp table with padding, window [5:90], saved with
  the training flags a table run records; a tab-separated gzip input of 24 rows (columns
  in another order than the training table's) with measured values."""
  tmp = tmp_path_factory.mktemp('table_checkpoint')
  config = config_lib.seed_config(85).without_dropout().with_outputs(2)
  params, state = random_variables(config, seed=5)
  path = tmp / 'table.npz'
  checkpoint.save_checkpoint(path, params=params, state=state, model_config=config,
                             extra=dict(crop_start=5, train_config=dict(
                                 table_file='own.csv', target_columns=['x', 'y'],
                                 sequence_column='sequence',
                                 sequence_length=TABLE_LENGTH, pad_sequences=True)))
  sequences, measured = table_rows(24, seed=6)
  data = tmp / 'new.tsv.gz'
  data.write_bytes(gzip.compress(('y\tsequence\tx\n' + ''.join(
      f'{b}\t{s}\t{a}\n' for s, (a, b) in zip(sequences, measured))).encode()))
  return dict(tmp=tmp, ckpt_path=path, sequences=sequences, measured=measured, data=data)


def test_a_table_model_predicts_a_table_one_column_per_target_bit_for_bit(
    table_checkpoint, capsys):
  """The output is a table in the training's layout whose columns are, bit for bit,
  the evaluation train uses (`training.make_eval_step`) on the centred window
  [5:90] of each row padded / truncated to 95 bp; correlations per target."""
  from enformer_small import training
  tmp, sequences = table_checkpoint['tmp'], table_checkpoint['sequences']
  ckpt = checkpoint.load_checkpoint(table_checkpoint['ckpt_path'])
  assert (ckpt.crop_start, ckpt.model_config.input_length) == (5, 85)
  status, out, err = run_main(
      capsys, predict, f'--checkpoint={table_checkpoint["ckpt_path"]}',
      f'--input={table_checkpoint["data"]}', f'--output_tsv={tmp / "out.tsv"}',
      f'--output_metrics_json={tmp / "metrics.json"}', '--batch_size=24',
      '--noprogress')
  assert status == 0, err[-3000:]
  devices = jax.local_device_count()
  x = np.stack([one_hot_window(s, 5, 85) for s in sequences])
  expected = np.asarray(training.make_eval_step(ckpt.model_config)(
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
        metrics.pearson_r(expected[:, i], table_checkpoint['measured'][:, i]), abs=1e-5)
    assert (f'against the measured values of {name}: pearson '
            f'{found["per_target"][name]["pearson"]:.4f}, spearman') in out


@pytest.mark.parametrize('flag', ['--output_json', '--subsets_dir'])
def test_a_model_of_several_outputs_refuses_a_dream_submission_in_one_line(
    table_checkpoint, flag, capsys):
  tmp = table_checkpoint['tmp']
  paired = {'--output_json': ('--indices_json', 'idx.json'),
            '--subsets_dir': ('--public_dir', 'public')}[flag]
  status, _, err = run_main(
      capsys, predict, f'--checkpoint={table_checkpoint["ckpt_path"]}',
      f'--input={table_checkpoint["data"]}', f'--output_tsv={tmp / "refused.tsv"}',
      f'{flag}={tmp / "x"}', f'{paired[0]}={tmp / paired[1]}')
  assert status == 1
  assert err.strip().splitlines()[-1] == (
      f'error: {table_checkpoint["ckpt_path"]}: the model has 2 outputs (x, y); {flag} '
      'is a DREAM submission of one value per row: use --output_tsv (one column per '
      'target)')
  assert 'Traceback' not in err and not (tmp / 'refused.tsv').exists()


def test_a_table_without_the_sequence_column_is_a_file_line_error(table_checkpoint,
                                                                  capsys):
  tmp = table_checkpoint['tmp']
  data = tmp / 'no_sequence.csv'
  data.write_text('seq,x,y\nACGT,1,2\n')
  status, _, err = run_main(
      capsys, predict, f'--checkpoint={table_checkpoint["ckpt_path"]}',
      f'--input={data}', f'--output_tsv={tmp / "never.tsv"}')
  assert status == 1
  assert err.strip().splitlines()[-1] == (
      f"error: {data}:1: missing column(s) 'sequence' in the header; found columns "
      "['seq', 'x', 'y'] (separator comma)")
  assert 'Traceback' not in err and not (tmp / 'never.tsv').exists()
