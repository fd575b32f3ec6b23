r"""Predicts DREAM rows or a table with any checkpoint of this project.

  python -m experiments.predict --checkpoint runs/demo/checkpoint_best.npz \
      --input ../shared/data/dream/test_71103_measured.tsv --output_tsv preds.tsv
  # with the official DREAM scores (public and private split) of the 71,103 test rows:
  D=../shared/data/dream
  python -m experiments.predict --checkpoint ckpt.npz \
      --input $D/test_71103_measured.tsv --output_tsv preds.tsv \
      --subsets_dir $D/test_subsets --public_dir $D/public_leaderboard
  # the leaderboard JSON for the rows of the challenge's sample submission:
  python -m experiments.predict --checkpoint ckpt.npz --input test.tsv \
      --output_json leaderboard.json --indices_json $D/public_leaderboard/sample_submission.json

Checkpoints: those written by experiments.train and those converted from the seed's
TF/Sonnet model by experiments.convert. Predictions go through the one inference path
(`enformer_small.inference`): the checkpoint's layout (110 bp DREAM encoding with its
plasmid context, or its training table's length and pad policy), window, shifts and
strands, and a soft-bin head's expectation; --eval_shifts, --reverse_complement_average
and --heads override what it records.

Input: DREAM rows `sequence[<TAB>measured]` (no header; plain or gzip; values may be
negative) by the training reader (`dream_data.read_dream_table`), or for a checkpoint
trained on a table, a table in its layout (`tables.read_table`; target columns optional).
A bad line is a `path:line:` error before anything is predicted.

Several checkpoints (a comma list, or a file listing them) predict as an ensemble: the
mean of the members, each read as its checkpoint records; they must read the same
inputs and predict the same targets.

Outputs: --output_tsv (`sequence<TAB>prediction`, or the table's header and one column
per target), --output_json (the rows of --indices_json), --output_intervals (per row the
mean, the spread across members, each member, and a split-conformal interval at
--coverage, `enformer_small.conformal`: calibrated on the held-out rows the members
share, or on --calibration_table, or read from --calibration), and when the input holds
measured values, Pearson and Spearman on stdout (and --output_metrics_json), per target
for a model of several outputs; with --subsets_dir and --public_dir the official DREAM
scores (--output_markdown for the table). No MSE or MAE: measured values may be on
another scale than the training targets (MAUDE for the challenge's test set).
"""

import json
import os
import time
from typing import Dict, Optional, Sequence

from absl import flags
import numpy as np

from experiments import _flags
from experiments import _runtime

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import conformal
from enformer_small import dream_data
from enformer_small import ensemble
from enformer_small import files
from enformer_small import inference
from enformer_small import metrics as metrics_lib
from enformer_small import scoring
from enformer_small import submission

FLAGS = flags.FLAGS
CORRELATIONS = ('pearson', 'spearman')
SCALE_NOTE = ('(correlations only: the measured values may be on another scale than '
              'the training targets, e.g. MAUDE for the challenge test set)')


class PredictError(Exception):
  """Bad flags or input; the message names the flag or file."""


def define_flags() -> None:
  flags.DEFINE_string('checkpoint', None,
                      'Checkpoint(s) to predict with: a .npz, a run directory (its best '
                      'model), a comma list or a file listing them (an ensemble: the '
                      'mean of the members).')
  flags.DEFINE_string('input', None,
                      'DREAM-format file: `sequence[<TAB>measured]`; for a checkpoint '
                      'trained on a table, a table in its layout (target columns '
                      'optional: the measured values).')
  flags.DEFINE_string('output_tsv', None,
                      'Write `sequence<TAB>prediction` here; for a table run, its header '
                      'and one column per target.')
  flags.DEFINE_string('output_json', None,
                      'Write `{"row": prediction}` for the rows of --indices_json.')
  flags.DEFINE_string('indices_json', None,
                      'JSON naming the rows for --output_json (keys or list items; '
                      '"alt,ref" keys name both).')
  _flags.define(inference.InferenceOptions)
  flags.DEFINE_string('output_metrics_json', None,
                      'Write the metrics against the measured values here.')
  flags.DEFINE_string('subsets_dir', None,
                      'Official test subsets (e.g. ../shared/data/dream/test_subsets); '
                      'with --public_dir: the official DREAM scores.')
  flags.DEFINE_string('public_dir', None,
                      'Public leaderboard index files (e.g. '
                      '../shared/data/dream/public_leaderboard).')
  flags.DEFINE_string('output_markdown', None, 'Write the official score tables here.')
  flags.DEFINE_string('output_intervals', None,
                      'Write per row: the prediction (mean), the spread across members, '
                      'each member, and the calibrated interval (centre, lower, upper) '
                      'at --coverage.')
  flags.DEFINE_float('coverage', 0.9, 'Coverage of the intervals.')
  flags.DEFINE_enum('calibration_method', 'absolute', list(conformal.METHODS),
                    'Nonconformity score: absolute residual, or normalised by the '
                    "members' spread (several checkpoints).")
  flags.DEFINE_string('calibration_table', None,
                      'Calibrate on this file (the --input layout, with measured values '
                      'of rows no member trained on; another scale is mapped by least '
                      "squares) instead of the members' recorded held-out rows.")
  flags.DEFINE_string('calibration', None,
                      'A calibration file: reused if it exists (for these checkpoints), '
                      'else written there.')
  flags.DEFINE_bool('progress', True, 'Progress bar (only on a terminal).')


def check_flags() -> None:
  if not FLAGS.checkpoint or not FLAGS.input:
    raise PredictError('--checkpoint and --input are required')
  if not (FLAGS.output_tsv or FLAGS.output_json or FLAGS.output_intervals):
    raise PredictError('nothing to write: give --output_tsv, --output_json and/or '
                       '--output_intervals')
  if bool(FLAGS.output_json) != bool(FLAGS.indices_json):
    raise PredictError('--output_json and --indices_json go together')
  if bool(FLAGS.subsets_dir) != bool(FLAGS.public_dir):
    raise PredictError('--subsets_dir and --public_dir go together')
  inputs = (FLAGS.input, FLAGS.indices_json, FLAGS.checkpoint)
  for flag in ('output_tsv', 'output_json', 'output_metrics_json', 'output_markdown',
               'output_intervals', 'calibration'):
    if FLAGS[flag].value and not (flag == 'calibration' and
                                  os.path.exists(FLAGS.calibration)):
      files.check_output(FLAGS[flag].value, inputs=inputs, flag=f'--{flag}')


def check_outputs(model: ensemble.Ensemble) -> None:
  """A model of several outputs writes one column per target, not the DREAM
  submissions of one value per row."""
  if len(model.targets) == 1:
    return
  dream_only = [flag for flag, given in (('--output_json', FLAGS.output_json),
                                         ('--subsets_dir', FLAGS.subsets_dir)) if given]
  if dream_only:
    raise PredictError(f'{FLAGS.checkpoint}: the model has {len(model.targets)} '
                       f'outputs ({", ".join(model.targets)}); {dream_only[0]} is a '
                       'DREAM submission of one value per row: use --output_tsv (one '
                       'column per target)')


def correlations(predictions: np.ndarray, measured: np.ndarray,
                 names: Sequence[str]) -> Dict[str, object]:
  """Pearson and Spearman; for several outputs, their means and each target's under
  'per_target'."""
  def of(pred, true):
    found = metrics_lib.regression_metrics(pred, true)
    return {k: v for k, v in found.items() if k in CORRELATIONS}
  return metrics_lib.by_target(predictions, measured.reshape(predictions.shape), names, of)


def report_metrics(found: Dict[str, object], n: int,
                   windows) -> None:
  """Prints the correlations (a line per target) and writes --output_metrics_json."""
  per_target = found.get('per_target', {'': found})
  for name, values in per_target.items():
    print(f'against the measured values{" of " + name if name else ""}: ' + ', '.join(
        f'{k} {v:.4f}' for k, v in values.items()))
  print(SCALE_NOTE)
  if FLAGS.output_metrics_json:
    text = json.dumps(dict(found, n=n, checkpoint=FLAGS.checkpoint, input=FLAGS.input,
                           reverse_complement_average=windows.reverse_complement,
                           eval_shifts=list(windows.shifts)))
    files.atomic_write(FLAGS.output_metrics_json, lambda f: f.write(text.encode('utf-8')))


def report_official_scores(predictions: np.ndarray, measured: np.ndarray):
  splits = scoring.load_official_splits(FLAGS.subsets_dir, FLAGS.public_dir,
                                        num_rows=len(predictions))
  score = scoring.score_predictions(predictions.astype(np.float64),
                                    measured.reshape(len(predictions)), splits)
  table = scoring.format_markdown(score)
  print(table)
  if FLAGS.output_markdown:
    files.atomic_write(FLAGS.output_markdown, lambda f: f.write(table.encode('utf-8')))
  return score


def write_outputs(model: ensemble.Ensemble, rows: inference.Rows,
                  predictions: np.ndarray, indices: Optional[Sequence[int]]) -> None:
  if FLAGS.output_tsv:  # A table run: a table the training reader reads back.
    spec = model.layout.table
    header = (spec.sequence_column,) + spec.target_columns if spec else ()
    submission.write_tsv(FLAGS.output_tsv, rows.sequences, predictions, header)
    print(f'wrote {FLAGS.output_tsv}')
  if FLAGS.output_json:
    submission.write_json(FLAGS.output_json, indices, predictions[:, 0])
    print(f'wrote {FLAGS.output_json} ({len(indices):,} rows)')


def calibration(model: ensemble.Ensemble) -> conformal.Calibration:
  """--calibration when it exists, else made from --calibration_table or the members'
  shared held-out rows (and saved to --calibration when given)."""
  if FLAGS.calibration and os.path.exists(FLAGS.calibration):
    print(f'calibration: {FLAGS.calibration}')
    return conformal.load(FLAGS.calibration, model)
  if FLAGS.calibration_table:
    rows = model.layout.read(FLAGS.calibration_table)
    if rows.measured is None:
      raise PredictError(f'{FLAGS.calibration_table}: no measured values to calibrate on')
    codes, measured = rows.codes, rows.measured
    source = f'the {len(codes):,} rows of {FLAGS.calibration_table}'
  else:
    codes, measured, source = conformal.holdout_rows(model, conformal.shared_holdout(model))
  found = conformal.calibrate(
      model.predict_codes(codes), measured, method=FLAGS.calibration_method,
      fit_scale=bool(FLAGS.calibration_table), source=source,
      members=conformal.member_ids(model))
  print(f'calibrated ({FLAGS.calibration_method}) on {source}')
  if FLAGS.calibration:
    conformal.save(found, FLAGS.calibration)
    print(f'wrote {FLAGS.calibration}')
  return found


def write_intervals(model: ensemble.Ensemble, rows: inference.Rows,
                    found: ensemble.Predictions) -> None:
  """--output_intervals: per row and target the mean, spread, members and interval."""
  centre, lower, upper = calibration(model).intervals(found, FLAGS.coverage)
  columns, header = [], []
  for t, name in enumerate(model.targets):
    suffix = '' if len(model.targets) == 1 else f'_{name}'
    parts = [('prediction', found.mean[:, t]), ('spread', found.spread[:, t])]
    parts += [(f'member_{k}', found.members[k, :, t]) for k in range(model.size)]
    parts += [('centre', centre[:, t]), ('lower', lower[:, t]), ('upper', upper[:, t])]
    header += [name + suffix for name, _ in parts]
    columns += [values for _, values in parts]
  text = submission.tsv_text(rows.sequences, np.stack(columns, axis=1),
                             ('sequence',) + tuple(header))
  files.atomic_write(FLAGS.output_intervals, lambda f: f.write(text.encode('utf-8')))
  print(f'wrote {FLAGS.output_intervals} ({FLAGS.coverage:.0%} intervals)')


def run() -> Dict[str, object]:
  check_flags()
  model = ensemble.load(FLAGS.checkpoint, _flags.parse(inference.InferenceOptions))
  check_outputs(model)
  rows = model.layout.read(FLAGS.input)
  n = len(rows.sequences)
  indices = (submission.read_indices(FLAGS.indices_json, n) if FLAGS.indices_json
             else None)
  print(f'{FLAGS.checkpoint}: {ensemble.describe(model)}; {n:,} rows from {FLAGS.input}')
  note = model.layout.fit_note(rows.sequences)
  if note:
    print(f'{FLAGS.input}: {note}')
  bars = _runtime.progress_bars(FLAGS.progress)
  bar = bars(n * model.passes) if bars else None
  started = time.perf_counter()
  found = model.predict_codes(rows.codes, progress=bar.update if bar else None)
  seconds = time.perf_counter() - started
  if bar is not None:
    bar.close()
  print(f'predicted {n:,} rows in {seconds:.1f} s ({n / seconds:,.0f} seq/s)')
  predictions = found.mean
  write_outputs(model, rows, predictions, indices)
  if FLAGS.output_intervals:
    write_intervals(model, rows, found)
  result = {'predictions': predictions[:, 0] if predictions.shape[1] == 1 else predictions,
            'members': found}
  if rows.measured is None:
    if FLAGS.subsets_dir:
      raise PredictError(f'{FLAGS.input}: no measured values to score against')
    return result
  result['metrics'] = correlations(predictions, rows.measured, model.targets)
  report_metrics(result['metrics'], n, model.members[0].windows)
  if FLAGS.subsets_dir:
    result['score'] = report_official_scores(predictions[:, 0], rows.measured)
  return result


main = _runtime.command(run, (PredictError, checkpoint_lib.CheckpointError,
                              ensemble.EnsembleError, conformal.CalibrationError,
                              dream_data.DreamDataError, scoring.ScoringError,
                              submission.IndicesError, files.OutputPathError,
                              ValueError))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  _runtime.run(main)
