# Copyright 2024 The enformer_small Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
r"""Official DREAM 2022 scores of test-set predictions (public, private split).

  python -m experiments.score --predictions preds.tsv
  python -m experiments.score --predictions sub.json            # public only
  D=../shared/data/dream/reference_predictions
  python -m experiments.score \
      --predictions $D/camformer_test_predictions.csv.gz \
      --column orig_model_expr --output_markdown /tmp/camformer.md

Formats (--format auto picks by file name: *.json -> json, *.csv[.gz] -> csv,
anything else -> tsv):
  tsv   final-phase submission, `sequence<TAB>prediction` in test-file order,
        with or without a header line; read by the one `sequence<TAB>value`
        reader (dream_data) with its policies, e.g. the first NaN is an error
        naming its line (sequences are checked against --test_file unless
        --nocheck_sequences)
  json  leaderboard-phase submission `{"test_row": prediction}`: only the splits
        whose rows are all present are scored (public, for a leaderboard file)
  csv   a CSV with a header; --column names the prediction column (a `seq`
        column, if present, is checked against --test_file)

Bad input ends with a one-line `error: ...` on stderr and exit status 1.
"""

import os

from absl import flags

from enformer_small import scoring
from experiments import _runtime

_DATA = os.path.join('..', 'shared', 'data', 'dream')

_PREDICTIONS = flags.DEFINE_string(
    'predictions', None, 'Predictions file (tsv, json or csv; gzip accepted).')
_FORMAT = flags.DEFINE_enum('format', 'auto', ['auto', 'tsv', 'json', 'csv'],
                            'Format of --predictions.')
_COLUMN = flags.DEFINE_string('column', None,
                              'Prediction column of a csv file.')
_TEST_FILE = flags.DEFINE_string(
    'test_file', os.path.join(_DATA, 'test_71103_measured.tsv'),
    'Measured test set, `sequence<TAB>measured`.')
_SUBSETS_DIR = flags.DEFINE_string(
    'subsets_dir', os.path.join(_DATA, 'test_subsets'),
    'Folder with the official subset files.')
_PUBLIC_DIR = flags.DEFINE_string(
    'public_dir', os.path.join(_DATA, 'public_leaderboard'),
    'Folder with the public leaderboard *_exp_indices.json files.')
_CHECK_SEQUENCES = flags.DEFINE_bool(
    'check_sequences', True,
    'Check that the sequences of a tsv/csv match --test_file row by row.')
_OUTPUT_MARKDOWN = flags.DEFINE_string(
    'output_markdown', None, 'Also write the tables to this markdown file.')


def _format_of(path: str) -> str:
  if _FORMAT.value != 'auto':
    return _FORMAT.value
  name = path.lower()
  if name.endswith('.gz'):
    name = name[:-3]
  if name.endswith('.json'):
    return 'json'
  if name.endswith('.csv'):
    return 'csv'
  return 'tsv'


def _read_predictions(path: str, test_set: scoring.TestSet):
  file_format = _format_of(path)
  if _COLUMN.value is not None and file_format != 'csv':
    raise scoring.ScoringError(f'--column applies to csv files only; {path} is '
                               f'read as {file_format}')
  check = test_set if _CHECK_SEQUENCES.value else None
  if file_format == 'tsv':
    return scoring.read_tsv_predictions(path, test_set=check,
                                        num_rows=len(test_set))
  if file_format == 'json':
    return scoring.read_json_predictions(path, num_rows=len(test_set))
  if _COLUMN.value is None:
    raise scoring.ScoringError(f'{path}: a csv file needs --column '
                               '(the name of its prediction column)')
  return scoring.read_csv_predictions(path, _COLUMN.value, test_set=check)


def _missing_data_hint(error: BaseException) -> str:
  if isinstance(error, FileNotFoundError) and _DATA in str(error):
    return (' (the default paths point at ../shared/data/dream, which exists '
            'beside the repository (not distributed with it); run from the '
            'repository root or pass --test_file/--subsets_dir/--public_dir)')
  return ''


def run() -> str:
  """Reads everything, scores, returns the report text."""
  if not _PREDICTIONS.value:
    raise scoring.ScoringError('--predictions is required')
  test_set = scoring.read_test_set(_TEST_FILE.value)
  splits = scoring.load_official_splits(_SUBSETS_DIR.value, _PUBLIC_DIR.value,
                                        num_rows=len(test_set))
  predictions = _read_predictions(_PREDICTIONS.value, test_set)
  score = scoring.score_predictions(predictions, test_set, splits)
  table = scoring.format_markdown(score)
  if _OUTPUT_MARKDOWN.value:
    with open(_OUTPUT_MARKDOWN.value, 'w') as f:
      f.write(f'Predictions: `{_PREDICTIONS.value}`\n\n{table}')
  lines = [f'Predictions: {_PREDICTIONS.value}', '', table]
  for name in scoring.SPLIT_NAMES:
    split_score = score.split(name)
    if split_score is None:
      lines.append(f'{name}: not scored (predictions do not cover its rows)')
      continue
    figures = ', '.join(f'{k} = {v:.4f}' for k, v in split_score.scores.items())
    lines.append(f'{name}: {figures}')
    if split_score.undefined_subsets:
      undefined = ', '.join(split_score.undefined_subsets)
      lines.append(f'  undefined (constant predictions or differences): '
                   f'{undefined}; scores are NaN')
  return '\n'.join(lines)


def _run_and_print():
  print(run())


main = _runtime.command(_run_and_print, (scoring.ScoringError, OSError),
                        hint=_missing_data_hint)


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  _runtime.run(main)
