r"""Predicts expression of DREAM rows or a table with any checkpoint of this project.

  python -m experiments.predict --checkpoint runs/demo/checkpoint_best.npz \
      --input ../shared/data/dream/test_71103_measured.tsv --output_tsv preds.tsv
  python -m experiments.predict --checkpoint seed.npz --input test.tsv \
      --output_tsv preds.tsv --output_json leaderboard.json \
      --indices_json ../shared/data/dream/public_leaderboard/sample_submission.json \
      --reverse_complement_average
  # with the official DREAM scores (public and private split) of the 71,103 test rows:
  D=../shared/data/dream
  python -m experiments.predict --checkpoint ckpt.npz \
      --input $D/test_71103_measured.tsv --output_tsv preds.tsv \
      --subsets_dir $D/test_subsets --public_dir $D/public_leaderboard
  # a model trained on your own table (train --table_file): a table in its layout
  python -m experiments.predict --checkpoint runs/own/checkpoint_best.npz \
      --input new_sequences.csv --output_tsv predictions.tsv

Checkpoints: those written by experiments.train and those converted from the seed's
TF/Sonnet model by experiments.convert (the same format, enformer_small.checkpoint).

Input: one row per line, `sequence<TAB>measured` or just `sequence` (no header; plain or
gzip), read by the training reader (`dream_data.read_dream_table`) with its policies,
except that values are optional and may be negative: a bad line (non-numeric, NaN or
infinite value, a line whose columns differ from line 1's, a character that is not a
letter, ...) is a `path:line:` error before anything is predicted or written. Sequences
are encoded as in training: A/C/G/T -> 0..3, other letters -> N (an all-zero column),
truncated or padded with N at the end to 110 bp.

A checkpoint trained on a table (train --table_file; its recorded flags name the
layout) reads --input as a table in that layout, by the training reader
(`tables.read_table`, for_prediction): a header naming the sequence column, tab or
comma, plain or gzip, the training's sequence length and pad / truncate policy. The
target columns are optional: all present, they are the measured values; none, the rows
are predicted only. Bad input is a `path:line:` error as in training.

The model sees the window it was trained on: positions [s, s + L) of the 110 bp encoding
(of a table row: its encoding at the training's sequence length), L = the checkpoint's
model_config.input_length and s = the start recorded at training (`crop_start`; for a
table, centred unless train's --crop_start said otherwise), else
`checkpoint.default_crop_start(L)` = (110 - L) * 3 // 5: 15 for 85 bp (the seed's
X[:, 15:100]), 0 for 110 bp. Rows go through in input order, in batches of
--batch_size (the last one padded and masked), eval mode (BatchNorm moving averages, no
dropout). --reverse_complement_average averages each prediction with that of the
reverse-complemented window; --eval_shifts=-10,-5,0,5,10 with those of the windows at
[s + shift, s + shift + L) (both strands of each with reverse-complement averaging), which
must lie within the rows (with the plasmid context: a 110 bp window needs a context of at
least |shift|). The same averaging as held-out evaluation in training
(`window_average.average`).

Inference settings recorded by training apply by default: reverse-complement averaging
when the checkpoint's recipe had --eval_reverse_complement (--reverse_complement_average
or --noreverse_complement_average overrides it), its --eval_shifts (--eval_shifts
overrides them; --eval_shifts=0: the unshifted window only), the plasmid context its
windows were cut with (`crop_start` then counts in the extended rows), and for a
soft-bin head the expectation over the bins (`training.make_eval_step`).

Outputs (each value the shortest text that reads back as the same float32):
  --output_tsv    the final-phase submission: `sequence<TAB>prediction`, input order, the
                  sequences exactly as read. For a table run: a header (the sequence
                  column, then the target columns) and one column per target, a table
                  the training reader reads back
  --output_json   the leaderboard submission `{"row": prediction}` for the rows named
                  by --indices_json (its keys, or its items if a list; "alt,ref" pair
                  keys give both rows), e.g. public_leaderboard/sample_submission.json
  metrics         when the input holds measured values: Pearson and Spearman on stdout
                  (and --output_metrics_json), per target for a model of several
                  outputs; with --subsets_dir and --public_dir, the official DREAM
                  scores (--output_markdown for the table). No MSE or
                  MAE: measured values may be on another scale than the training
                  targets (the challenge's test set is on the MAUDE scale), so only
                  scale-free measures mean something.

A model of several outputs (one per target column) writes --output_tsv only:
--output_json and the official scores hold one value per row, and asking for them is
an error that says so.

Single host (all local devices). Bad input ends with a one-line `error: ...` and exit
status 1.
"""

import dataclasses
import json
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from absl import flags
import jax
import numpy as np

from experiments import _runtime

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import dream_data
from enformer_small import files
from enformer_small import metrics as metrics_lib
from enformer_small import model as model_lib
from enformer_small import scoring
from enformer_small import tables
from enformer_small import training
from enformer_small import window_average

FLAGS = flags.FLAGS

# Measured values may be on another scale than the training targets (the challenge's
# test set is on the MAUDE scale, training on expression bins): errors would be
# meaningless, correlations are not.
CORRELATIONS = ('pearson', 'spearman')
SCALE_NOTE = ('(correlations only: the measured values may be on another scale than '
              'the training targets, e.g. MAUDE for the challenge test set)')


class PredictError(Exception):
  """Bad input; the message names the file (and line)."""


# ---------------------------------------------------------------------------
# Input.


def read_table(path: str) -> dream_data.DreamTable:
  """The input rows, read by `dream_data.read_dream_table` with its policies.

  Values optional (a file of bare sequences is predicted, not scored) and may be
  negative (measurements on another scale); NaN, inf or text where a value
  should be is a `path:line:` error, raised before anything is predicted.
  """
  try:
    return dream_data.read_dream_table(path, values_optional=True,
                                       allow_negative=True)
  except dream_data.DreamDataError as e:
    raise PredictError(str(e)) from None


def read_input(path: str) -> Tuple[List[str], Optional[np.ndarray]]:
  """Sequences (as written) and measured values (float64; None if the file has none)."""
  table = read_table(path)
  return list(table.sequences), table.values


def trained_table(ckpt: checkpoint_lib.Checkpoint) -> Optional[tables.TableSpec]:
  """The layout of the table the checkpoint was trained on; None for DREAM rows.

  Read from the recorded flags (`train_config`), which every checkpoint of a table
  run holds.
  """
  flags_used = ckpt.extra.get('train_config') or {}
  if not flags_used.get('table_file'):
    return None
  return tables.TableSpec(target_columns=flags_used['target_columns'],
                          sequence_column=flags_used['sequence_column'],
                          length=flags_used['sequence_length'],
                          pad=flags_used['pad_sequences'])


@dataclasses.dataclass(frozen=True)
class Rows:
  """What is predicted: sequences as written, the rows the windows are cut from
  (`predict_codes`'s codes) and measured values ([N], or [N, T] from a table; None
  when the input has none)."""
  sequences: Sequence[str]
  codes: np.ndarray
  measured: Optional[np.ndarray]


def read_rows(path: str, spec: Optional[tables.TableSpec]) -> Rows:
  """A table in the training's layout (`spec`), else DREAM rows (`read_table`)."""
  if spec is None:
    table = read_table(path)
    return Rows(table.sequences, table.codes, table.values)
  try:
    data = tables.read_table(path, spec, for_prediction=True)
  except tables.TableError as e:
    raise PredictError(str(e)) from None
  return Rows(data.sequences, data.codes, data.expression)


def read_indices(path: str, num_rows: int) -> List[int]:
  """Row indices named by a JSON file: a dict's keys or a list's items.

  Keys "alt,ref" (pair subsets of the public leaderboard) name both rows. Duplicates are
  dropped, first occurrence kept.
  """
  try:
    with open(path, 'r', encoding='utf-8') as f:
      payload = json.load(f)
  except FileNotFoundError:
    raise PredictError(f'{path}: no such indices file') from None
  except (OSError, ValueError) as e:
    raise PredictError(f'{path}: not valid JSON: {e}') from e
  items = list(payload.keys()) if isinstance(payload, dict) else payload
  if not isinstance(items, list):
    raise PredictError(f'{path}: expected a JSON object or list of row indices')
  indices, seen = [], set()
  for item in items:
    for part in str(item).split(','):
      try:
        index = int(part)
      except ValueError:
        raise PredictError(f'{path}: {item!r} is not a row index') from None
      if not 0 <= index < num_rows:
        raise PredictError(f'{path}: row {index} outside the {num_rows} input rows')
      if index not in seen:
        seen.add(index)
        indices.append(index)
  return indices


# ---------------------------------------------------------------------------
# Prediction.


def windows_for(ckpt: checkpoint_lib.Checkpoint, row_length: int, *,
                reverse_complement_average: Optional[bool] = None,
                eval_shifts: Optional[Sequence[int]] = None
                ) -> window_average.Windows:
  """The windows averaged per row: the checkpoint's recorded ones unless overridden.

  row_length: codes per row before the plasmid context is added. Raises ValueError
  when a shift moves the window outside the (extended) rows.
  """
  recorded = window_average.of_recipe(ckpt.recipe)
  windows = window_average.Windows(
      shifts=recorded.shifts if eval_shifts is None else tuple(eval_shifts),
      reverse_complement=(recorded.reverse_complement
                          if reverse_complement_average is None
                          else reverse_complement_average))
  window_average.check_shifts(windows.shifts, ckpt.crop_start,
                              ckpt.model_config.input_length,
                              row_length + 2 * ckpt.plasmid_context)
  return windows


def predict_codes(ckpt: checkpoint_lib.Checkpoint, codes: np.ndarray, *,
                  batch_size: int = 1000,
                  reverse_complement_average: Optional[bool] = None,
                  eval_shifts: Optional[Sequence[int]] = None,
                  progress: bool = False, fast_cpu: bool = False) -> np.ndarray:
  """float32 eval-mode predictions in row order: [N], or [N, T] for T outputs.

  codes: uint8 [N, W], the rows the training cut its windows from: 110 bp DREAM
  encodings (the plasmid context is added here), or a table's at its length.
  reverse_complement_average, eval_shifts: the windows averaged
  (`window_average.average`); None: as the checkpoint's training evaluated.
  fast_cpu: the forward pass arranged for XLA:CPU (`training.make_eval_step`).
  """
  windows = windows_for(ckpt, codes.shape[1], eval_shifts=eval_shifts,
                        reverse_complement_average=reverse_complement_average)
  if ckpt.plasmid_context:
    from enformer_small import plasmid
    codes = plasmid.add_context(codes, ckpt.plasmid_context)
  bar = None
  if progress:
    import tqdm
    bar = tqdm.tqdm(total=codes.shape[0] * len(windows.passes), unit='seq',
                    unit_scale=True, dynamic_ncols=True, leave=False, file=sys.stderr)
  predict_pass = _pass_predictor(ckpt, codes, batch_size, bar, fast_cpu)
  predictions = window_average.average(predict_pass, windows)
  if bar is not None:
    bar.close()
  return predictions


def _pass_predictor(ckpt: checkpoint_lib.Checkpoint, codes: np.ndarray,
                    batch_size: int, bar, fast_cpu: bool
                    ) -> Callable[[int, bool], np.ndarray]:
  """(shift, reverse) -> every row's prediction for that window, in row order."""
  from enformer_small import dataset  # TensorFlow: imported only when needed.
  config = ckpt.model_config
  devices = jax.local_device_count()
  batch_size = -(-batch_size // devices) * devices
  pipeline = dataset.PipelineConfig(crop_start=ckpt.crop_start,
                                    crop_length=config.input_length, shifts=(0,))
  eval_step = training.make_eval_step(config, fast_cpu=fast_cpu)
  params = training.replicate(ckpt.params)
  state = training.replicate(ckpt.state)
  outputs = model_lib.num_outputs(config)
  shape = (codes.shape[0],) + ((outputs,) if outputs > 1 else ())

  def predict_pass(shift: int, reverse: bool) -> np.ndarray:
    predictions = np.zeros(shape, np.float32)
    seen = np.zeros(codes.shape[0], bool)
    for batch in dataset.predict_batches(
        codes, global_batch_size=batch_size, local_device_count=devices,
        config=pipeline, shift=shift, reverse_complement=reverse):
      out = np.asarray(eval_step(params, state, training.shard_batch(batch['inputs'])))
      mask = batch['mask']
      index = batch['index'][mask]
      predictions[index] = out[mask]
      seen[index] = True
      if bar is not None:
        bar.update(int(mask.sum()))
    assert seen.all(), 'every row is predicted exactly once per pass'
    return predictions

  return predict_pass


def write_tsv(path: str, sequences: Sequence[str], predictions: np.ndarray,
              header: Sequence[str] = ()) -> None:
  """Rows `sequence<TAB>prediction[<TAB>...]` after the `header` names, if any.

  Each value is the shortest text that reads back as the same float32 (numpy's str).
  """
  columns = np.asarray(predictions, np.float32).reshape(len(sequences), -1)
  lines = ['\t'.join(header)] if header else []
  lines += ['\t'.join([s] + [str(v) for v in row]) for s, row in zip(sequences, columns)]
  text = ''.join(line + '\n' for line in lines)
  files.atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def write_json(path: str, indices: Sequence[int], predictions: np.ndarray) -> None:
  # float(str(float32)): JSON then holds the float32's shortest text.
  payload = {str(i): float(str(np.float32(predictions[i]))) for i in indices}
  text = json.dumps(payload)
  files.atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def official_scores(predictions: np.ndarray, measured: np.ndarray, subsets_dir: str,
                    public_dir: str):
  splits = scoring.load_official_splits(subsets_dir, public_dir,
                                        num_rows=len(predictions))
  return scoring.score_predictions(predictions.astype(np.float64), measured, splits)


# ---------------------------------------------------------------------------
# Command line.


def define_flags() -> None:
  flags.DEFINE_string('checkpoint', None, 'Checkpoint (.npz) to predict with.')
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
  flags.DEFINE_bool('reverse_complement_average', None,
                    'Average with the prediction for the reverse complement (default: '
                    "as the checkpoint's training evaluated, --eval_reverse_complement).")
  flags.DEFINE_list('eval_shifts', None,
                    'Average the predictions of the window shifted by each of these bp '
                    '(e.g. -10,-5,0,5,10; with reverse-complement averaging both '
                    "strands of each); default: as the checkpoint's training evaluated, "
                    '--eval_shifts (none: the unshifted window).')
  flags.DEFINE_integer('batch_size', 1000, 'Rows per batch (all local devices).')
  flags.DEFINE_bool('fast_cpu', False,
                    'CPU speed: the forward pass arranged for XLA:CPU (~14% faster at '
                    'batch 1,024 on 2 cores); the same function, rounded otherwise, so '
                    'not bit-identical to the default.')
  flags.DEFINE_string('output_metrics_json', None,
                      'Write the metrics against the measured values here.')
  flags.DEFINE_string('subsets_dir', None,
                      'Official test subsets (e.g. ../shared/data/dream/test_subsets); '
                      'with --public_dir: the official DREAM scores.')
  flags.DEFINE_string('public_dir', None,
                      'Public leaderboard index files (e.g. '
                      '../shared/data/dream/public_leaderboard).')
  flags.DEFINE_string('output_markdown', None, 'Write the official score tables here.')
  flags.DEFINE_bool('progress', True, 'Progress bar (only on a terminal).')


def check_flags() -> None:
  if not FLAGS.checkpoint or not FLAGS.input:
    raise PredictError('--checkpoint and --input are required')
  if not (FLAGS.output_tsv or FLAGS.output_json):
    raise PredictError('nothing to write: give --output_tsv and/or --output_json')
  if bool(FLAGS.output_json) != bool(FLAGS.indices_json):
    raise PredictError('--output_json and --indices_json go together')
  if bool(FLAGS.subsets_dir) != bool(FLAGS.public_dir):
    raise PredictError('--subsets_dir and --public_dir go together')


def check_outputs(ckpt: checkpoint_lib.Checkpoint,
                  spec: Optional[tables.TableSpec]) -> None:
  """A model of several outputs needs their names (a table run's target columns) and
  output files of one column per target, not the DREAM submissions."""
  outputs = model_lib.num_outputs(ckpt.model_config)
  if outputs == 1:
    return
  if spec is None or len(spec.target_columns) != outputs:
    raise PredictError(f'{FLAGS.checkpoint}: the model has {outputs} outputs but the '
                       'checkpoint records no target columns to name them (a table run '
                       'of experiments.train records its --target_columns)')
  dream_only = [flag for flag, given in (('--output_json', FLAGS.output_json),
                                         ('--subsets_dir', FLAGS.subsets_dir)) if given]
  if dream_only:
    raise PredictError(f'{FLAGS.checkpoint}: the model has {outputs} outputs '
                       f'({", ".join(spec.target_columns)}); {dream_only[0]} is a DREAM '
                       'submission of one value per row: use --output_tsv (one column '
                       'per target)')


def correlations(predictions: np.ndarray, measured: np.ndarray,
                 names: Sequence[str]) -> Dict[str, object]:
  """Pearson and Spearman; for several outputs, per target under 'per_target'."""
  def of(pred, true):
    found = metrics_lib.regression_metrics(pred, true)
    return {k: v for k, v in found.items() if k in CORRELATIONS}
  if predictions.ndim == 1:
    return of(predictions, measured.reshape(len(predictions)))
  return dict(per_target={name: of(predictions[:, i], measured[:, i])
                          for i, name in enumerate(names)})


def averaging_note(windows: window_average.Windows) -> str:
  parts = ((['reverse-complement'] if windows.reverse_complement else []) +
           ([f'shift ({",".join(str(s) for s in windows.shifts)})']
            if windows.shifts else []))
  return f' with {" and ".join(parts)} averaging' if parts else ''


def report_metrics(found: Dict[str, object], n: int,
                   windows: window_average.Windows) -> None:
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
  score = official_scores(predictions, measured.reshape(len(predictions)),
                          FLAGS.subsets_dir, FLAGS.public_dir)
  table = scoring.format_markdown(score)
  print(table)
  if FLAGS.output_markdown:
    files.atomic_write(FLAGS.output_markdown, lambda f: f.write(table.encode('utf-8')))
  return score


def run(argv_unused=None) -> Dict[str, object]:
  check_flags()
  ckpt = checkpoint_lib.load_checkpoint(FLAGS.checkpoint)
  spec = trained_table(ckpt)
  check_outputs(ckpt, spec)
  rows = read_rows(FLAGS.input, spec)
  n = len(rows.sequences)
  indices = read_indices(FLAGS.indices_json, n) if FLAGS.indices_json else None
  try:
    shifts = (None if FLAGS.eval_shifts is None
              else tuple(int(s) for s in FLAGS.eval_shifts))
  except ValueError:
    raise PredictError(f'--eval_shifts must be integers, got '
                       f'{",".join(FLAGS.eval_shifts)}') from None
  windows = windows_for(ckpt, rows.codes.shape[1], eval_shifts=shifts,
                        reverse_complement_average=FLAGS.reverse_complement_average)
  L, start, width = ckpt.model_config.input_length, ckpt.crop_start, rows.codes.shape[1]
  print(f'{FLAGS.checkpoint}: {L} bp model (window [{start}:{start + L}] of '
        f'{width + 2 * ckpt.plasmid_context}), epoch {ckpt.epoch}; {n:,} rows from '
        f'{FLAGS.input}' + (' (a table: ' + ', '.join(spec.target_columns) + ')'
                            if spec else ''))
  t = time.perf_counter()
  predictions = predict_codes(
      ckpt, rows.codes, batch_size=FLAGS.batch_size,
      reverse_complement_average=windows.reverse_complement,
      eval_shifts=windows.shifts, progress=FLAGS.progress and sys.stderr.isatty(),
      fast_cpu=FLAGS.fast_cpu)
  seconds = time.perf_counter() - t
  print(f'predicted {n:,} rows in {seconds:.1f} s ({n / seconds:,.0f} seq/s)'
        + averaging_note(windows))
  if FLAGS.output_tsv:  # A table run: a table the training reader reads back.
    header = (spec.sequence_column,) + spec.target_columns if spec else ()
    write_tsv(FLAGS.output_tsv, rows.sequences, predictions, header)
    print(f'wrote {FLAGS.output_tsv}')
  if FLAGS.output_json:
    write_json(FLAGS.output_json, indices, predictions)
    print(f'wrote {FLAGS.output_json} ({len(indices):,} rows)')
  result = {'predictions': predictions}
  if rows.measured is None:
    if FLAGS.subsets_dir:
      raise PredictError(f'{FLAGS.input}: no measured values to score against')
    return result
  result['metrics'] = correlations(predictions, rows.measured,
                                   spec.target_columns if spec else ())
  report_metrics(result['metrics'], n, windows)
  if FLAGS.subsets_dir:
    result['score'] = report_official_scores(predictions, rows.measured)
  return result


main = _runtime.command(run, (PredictError, checkpoint_lib.CheckpointError,
                              scoring.ScoringError, ValueError))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  _runtime.run(main)
