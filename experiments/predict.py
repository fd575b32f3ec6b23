r"""Predicts expression for a DREAM-format file with any checkpoint of this project.

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

Checkpoints: those written by experiments.train and those converted from the seed's
TF/Sonnet model by experiments.convert (the same format, enformer_small.checkpoint).

Input: one row per line, `sequence<TAB>measured` or just `sequence` (no header; plain or
gzip), read by the training reader (`dream_data.read_dream_table`) with its policies,
except that values are optional and may be negative: a bad line (non-numeric, NaN or
infinite value, a line whose columns differ from line 1's, a character that is not a
letter, ...) is a `path:line:` error before anything is predicted or written. Sequences
are encoded as in training: A/C/G/T -> 0..3, other letters -> N (an all-zero column),
truncated or padded with N at the end to 110 bp.

The model sees the window it was trained on: positions [s, s + L) of the 110 bp encoding,
L = the checkpoint's model_config.input_length and s = the start recorded at training
(`crop_start`), else `checkpoint.default_crop_start(L)` = (110 - L) * 3 // 5: 15 for 85 bp
(the seed's X[:, 15:100]), 0 for 110 bp. Rows go through in input order, in batches of
--batch_size (the last one padded and masked), eval mode (BatchNorm moving averages, no
dropout). --reverse_complement_average averages each prediction with that of the
reverse-complemented window.

Inference settings recorded by training apply by default: reverse-complement averaging
when the checkpoint's recipe had --eval_reverse_complement (--reverse_complement_average
or --noreverse_complement_average overrides it), the plasmid context its windows were
cut with (`crop_start` then counts in the extended rows), and for a soft-bin head the
expectation over the bins (`training.make_eval_step`).

Outputs:
  --output_tsv    the final-phase submission: `sequence<TAB>prediction`, input order, the
                  sequences exactly as read
  --output_json   the leaderboard submission `{"row": prediction}` for the rows named
                  by --indices_json (its keys, or its items if a list; "alt,ref" pair
                  keys give both rows), e.g. public_leaderboard/sample_submission.json
  metrics         when the input holds measured values: Pearson and Spearman on stdout
                  (and --output_metrics_json); with --subsets_dir and --public_dir, the
                  official DREAM scores (--output_markdown for the table). No MSE or
                  MAE: measured values may be on another scale than the training
                  targets (the challenge's test set is on the MAUDE scale), so only
                  scale-free measures mean something.

Single host (all local devices). Bad input ends with a one-line `error: ...` and exit
status 1.
"""

import json
import logging
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import jax
import numpy as np

from experiments import _runtime

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import dream_data
from enformer_small import metrics as metrics_lib
from enformer_small import model as model_lib
from enformer_small import training

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


def reverse_complement_default(ckpt: checkpoint_lib.Checkpoint) -> bool:
  """Whether the checkpoint's training evaluated with reverse-complement averaging."""
  return bool(ckpt.recipe.get('eval_reverse_complement', False))


def predict_codes(ckpt: checkpoint_lib.Checkpoint, codes: np.ndarray, *,
                  batch_size: int = 1000,
                  reverse_complement_average: Optional[bool] = None,
                  progress: bool = False) -> np.ndarray:
  """float32 [N] eval-mode predictions for codes uint8 [N, 110], in row order."""
  from enformer_small import dataset  # TensorFlow: imported only when needed.
  config = ckpt.model_config
  devices = jax.local_device_count()
  batch_size = -(-batch_size // devices) * devices
  if reverse_complement_average is None:
    reverse_complement_average = reverse_complement_default(ckpt)
  from enformer_small import plasmid
  codes = plasmid.add_context(codes, ckpt.plasmid_context)
  pipeline = dataset.PipelineConfig(crop_start=ckpt.crop_start,
                                    crop_length=config.input_length, shifts=(0,))
  eval_step = training.make_eval_step(config)
  params = training.replicate(ckpt.params)
  state = training.replicate(ckpt.state)
  passes = [False, True] if reverse_complement_average else [False]
  total = np.zeros(codes.shape[0], np.float64)
  bar = None
  if progress:
    import tqdm
    bar = tqdm.tqdm(total=codes.shape[0] * len(passes), unit='seq', unit_scale=True,
                    dynamic_ncols=True, leave=False, file=sys.stderr)
  for reverse in passes:
    seen = np.zeros(codes.shape[0], bool)
    for batch in dataset.predict_batches(
        codes, global_batch_size=batch_size, local_device_count=devices,
        config=pipeline, reverse_complement=reverse):
      out = np.asarray(eval_step(params, state, training.shard_batch(batch['inputs'])))
      mask = batch['mask']
      index = batch['index'][mask]
      total[index] += out[mask]
      seen[index] = True
      if bar is not None:
        bar.update(int(mask.sum()))
    assert seen.all(), 'every row is predicted exactly once per pass'
  if bar is not None:
    bar.close()
  return (total / len(passes)).astype(np.float32)


def write_tsv(path: str, sequences: Sequence[str], predictions: np.ndarray) -> None:
  text = ''.join(f'{s}\t{float(p):.8g}\n' for s, p in zip(sequences, predictions))
  checkpoint_lib.atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def write_json(path: str, indices: Sequence[int], predictions: np.ndarray) -> None:
  payload = {str(i): float(predictions[i]) for i in indices}
  text = json.dumps(payload)
  checkpoint_lib.atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def official_scores(predictions: np.ndarray, measured: np.ndarray, subsets_dir: str,
                    public_dir: str):
  from enformer_small import scoring
  splits = scoring.load_official_splits(subsets_dir, public_dir,
                                        num_rows=len(predictions))
  return scoring.score_predictions(predictions.astype(np.float64), measured, splits)


# ---------------------------------------------------------------------------
# Command line.


def define_flags() -> None:
  flags.DEFINE_string('checkpoint', None, 'Checkpoint (.npz) to predict with.')
  flags.DEFINE_string('input', None, 'DREAM-format file: `sequence[<TAB>measured]`.')
  flags.DEFINE_string('output_tsv', None, 'Write `sequence<TAB>prediction` here.')
  flags.DEFINE_string('output_json', None,
                      'Write `{"row": prediction}` for the rows of --indices_json.')
  flags.DEFINE_string('indices_json', None,
                      'JSON naming the rows for --output_json (keys or list items; '
                      '"alt,ref" keys name both).')
  flags.DEFINE_bool('reverse_complement_average', None,
                    'Average with the prediction for the reverse complement (default: '
                    "as the checkpoint's training evaluated, --eval_reverse_complement).")
  flags.DEFINE_integer('batch_size', 1000, 'Rows per batch (all local devices).')
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


def run(argv_unused=None) -> Dict[str, object]:
  if not FLAGS.checkpoint or not FLAGS.input:
    raise PredictError('--checkpoint and --input are required')
  if not (FLAGS.output_tsv or FLAGS.output_json):
    raise PredictError('nothing to write: give --output_tsv and/or --output_json')
  if bool(FLAGS.output_json) != bool(FLAGS.indices_json):
    raise PredictError('--output_json and --indices_json go together')
  if bool(FLAGS.subsets_dir) != bool(FLAGS.public_dir):
    raise PredictError('--subsets_dir and --public_dir go together')
  ckpt = checkpoint_lib.load_checkpoint(FLAGS.checkpoint)
  outputs = model_lib.num_outputs(ckpt.model_config)
  if outputs > 1:  # One value per sequence is what every output file here holds.
    raise PredictError(f'{FLAGS.checkpoint}: the model has {outputs} outputs (several '
                       'target columns); predict writes one value per sequence')
  table = read_table(FLAGS.input)
  sequences, measured, codes = table.sequences, table.values, table.codes
  indices = (read_indices(FLAGS.indices_json, len(sequences)) if FLAGS.indices_json
             else None)
  rc_average = (reverse_complement_default(ckpt)
                if FLAGS.reverse_complement_average is None
                else FLAGS.reverse_complement_average)
  L, start = ckpt.model_config.input_length, ckpt.crop_start
  print(f'{FLAGS.checkpoint}: {L} bp model (window [{start}:{start + L}] of '
        f'{110 + 2 * ckpt.plasmid_context}), '
        f'epoch {ckpt.epoch}; {len(sequences):,} rows from {FLAGS.input}')
  t = time.perf_counter()
  predictions = predict_codes(
      ckpt, codes, batch_size=FLAGS.batch_size,
      reverse_complement_average=rc_average,
      progress=FLAGS.progress and sys.stderr.isatty())
  seconds = time.perf_counter() - t
  print(f'predicted {len(sequences):,} rows in {seconds:.1f} s '
        f'({len(sequences) / seconds:,.0f} seq/s)'
        + (' with reverse-complement averaging' if rc_average
           else ''))
  if FLAGS.output_tsv:
    write_tsv(FLAGS.output_tsv, sequences, predictions)
    print(f'wrote {FLAGS.output_tsv}')
  if FLAGS.output_json:
    write_json(FLAGS.output_json, indices, predictions)
    print(f'wrote {FLAGS.output_json} ({len(indices):,} rows)')
  result = {'predictions': predictions}
  if measured is not None:
    found = metrics_lib.regression_metrics(predictions, measured)
    found = {k: v for k, v in found.items() if k in CORRELATIONS}
    result['metrics'] = found
    print('against the measured values: ' + ', '.join(
        f'{k} {v:.4f}' for k, v in found.items()))
    print(SCALE_NOTE)
    if FLAGS.output_metrics_json:
      text = json.dumps(dict(found, n=len(predictions), checkpoint=FLAGS.checkpoint,
                             input=FLAGS.input,
                             reverse_complement_average=rc_average))
      checkpoint_lib.atomic_write(FLAGS.output_metrics_json,
                                  lambda f: f.write(text.encode('utf-8')))
    if FLAGS.subsets_dir:
      score = official_scores(predictions, measured, FLAGS.subsets_dir,
                              FLAGS.public_dir)
      from enformer_small import scoring
      table = scoring.format_markdown(score)
      print(table)
      if FLAGS.output_markdown:
        checkpoint_lib.atomic_write(FLAGS.output_markdown,
                                    lambda f: f.write(table.encode('utf-8')))
      result['score'] = score
  elif FLAGS.subsets_dir:
    raise PredictError(f'{FLAGS.input}: no measured values to score against')
  return result


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  from enformer_small import scoring
  _runtime.report_errors(run, (PredictError, checkpoint_lib.CheckpointError,
                               scoring.ScoringError, ValueError))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  _runtime.run(main)
