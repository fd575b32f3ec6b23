"""The callers of the `sequence<TAB>value` reader agree.

Training (`dream_data.read_dream_file`), the measured test set
(`scoring.read_test_set`), a submission (`scoring.read_tsv_predictions`),
predict (`inference.Layout.read`, as experiments.predict reads DREAM rows) and attribute
(`variant_effects.read_sequences`, for anything but FASTA) run the same parser
with the same policies. Each file below goes through all of them; they read the
same rows or refuse the file with the same `path:line: ` message. Where they
differ, the difference is an argument of the reader (negative values: training
refuses them; values optional: predict and attribute; a header line:
submissions skip it), and the cases say so.
"""

import gzip

import numpy as np
import pytest

from enformer_small import dream_data
from enformer_small import inference
from enformer_small import scoring
from enformer_small import variant_effects

LONG = 'ACGT' * 30  # 120 bp: truncated to 110 by the encoding.

# name: (file bytes, sequences as written, values)
SAME_ROWS = {
    'gzip': (gzip.compress(b'ACGT\t1.5\nGGCC\t2\n'), ['ACGT', 'GGCC'], [1.5, 2]),
    'CRLF': (b'ACGT\t1.5\r\nGGCC\t2\r\n', ['ACGT', 'GGCC'], [1.5, 2]),
    'trailing blank lines': (b'ACGT\t1.5\nGGCC\t2\n\n\r\n  \n', ['ACGT', 'GGCC'],
                             [1.5, 2]),
    'no final newline': (b'ACGT\t1.5\nGGCC\t2', ['ACGT', 'GGCC'], [1.5, 2]),
    'byte-order mark': (b'\xef\xbb\xbfACGT\t1.5\n', ['ACGT'], [1.5]),
    'lowercase letters': (b'acgT\t1\nggcc\t2\n', ['acgT', 'ggcc'], [1, 2]),
    'N and IUPAC letters': (b'ACNNT\t3\nACRYT\t4\n', ['ACNNT', 'ACRYT'], [3, 4]),
    'wrong lengths': (f'{LONG}\t1\nA\t2\n'.encode(), [LONG, 'A'], [1, 2]),
    'spaces around the value': (b'ACGT\t 1.5 \n', ['ACGT'], [1.5]),
}

# name: (file bytes, line, message after `path:line: `)
SAME_ERROR = {
    'header line': (
        b'sequence\texpression\nACGT\t1\n', 1,
        "line looks like a header ('sequence\\texpression'); DREAM files have "
        'no header: remove the line (e.g. tail -n +2 FILE > NEW_FILE); '
        "expected 'sequence<TAB>expression' from line 1 on"),
    'non-numeric value': (
        b'ACGT\t1\nACGT\thigh\n', 2,
        "expression 'high' is not a number; expected a decimal number such as "
        '12 or 15.18'),
    'NaN value': (b'ACGT\t1\nACGT\tnan\n', 2,
                  "expression 'nan' is not finite; expected a finite number"),
    'infinite value': (b'ACGT\t1\nACGT\tinf\n', 2,
                       "expression 'inf' is not finite; expected a finite "
                       'number'),
    'missing value': (b'ACGT\t1\nACGT\t\n', 2,
                      'missing expression after the tab; expected a number'),
    'blank line inside': (
        b'ACGT\t1\n\nACGT\t2\n', 2,
        "blank line; expected 'sequence<TAB>expression' (blank lines are only "
        'allowed at the end of the file)'),
    'digit in sequence': (
        b'AC1GT\t1\n', 1,
        "invalid character '1' at position 3 of the sequence; expected letters "
        '(A, C, G, T, N)'),
    'space in sequence': (
        b'ACGT \t1\n', 1,
        "invalid character ' ' at position 5 of the sequence; expected letters "
        '(A, C, G, T, N)'),
    'only N': (b'ACGT\t1\nNNNN\t2\n', 2,
               "sequence 'NNNN' has no A, C, G or T (only N or other letters); "
               'expected a DNA sequence'),
    'extra columns': (
        b'ACGT\t1\tx\n', 1,
        "extra columns: expected 2 tab-separated columns "
        "'sequence<TAB>expression', found 3 columns 'ACGT\\t1\\tx'"),
    'empty sequence': (b'ACGT\t1\n\t2\n', 2,
                       'empty sequence; expected a DNA sequence before the tab'),
}

MISSING_TAB = ("missing tab: expected 2 tab-separated columns "
               "'sequence<TAB>expression', found 1 column 'GGCC'")
EMPTY = "empty file; expected lines 'sequence<TAB>expression'"


def training(path):
  return dream_data.read_dream_file(path, use_cache=False)


def predict(path):
  """experiments.predict's reading of DREAM rows: (sequences as written, values)."""
  rows = inference.Layout().read(path)
  return list(rows.sequences), rows.measured


CALLERS = {
    'training': (training, dream_data.DreamDataError),
    'scoring': (scoring.read_test_set, scoring.ScoringError),
    'submission': (scoring.read_tsv_predictions, scoring.ScoringError),
    'predict': (predict, dream_data.DreamDataError),
    'attribute': (variant_effects.read_sequences,
                  variant_effects.VariantInputError),
}


def rows_read(caller, path, sequences=()):
  """(sequences, codes, values) as the caller read them; None for what it drops.

  A submission keeps neither sequences nor codes: its sequences are matched to
  `sequences` as scoring matches them to the test set (any case).
  """
  read, _ = CALLERS[caller]
  if caller == 'submission':
    expected = scoring.TestSet(tuple(sequences), np.zeros(len(sequences)), 'x')
    return None, None, read(str(path), test_set=expected).values
  result = read(str(path))
  if caller == 'training':
    return None, result.codes, result.expression
  if caller == 'scoring':
    got, values = list(result.sequences), result.measured
  elif caller == 'attribute':
    names, got = result
    assert names == [str(line) for line in range(1, len(got) + 1)]
    values = None
  else:
    got, values = result
  return got, dream_data.encode_sequences(got), values


def error_of(caller, path) -> str:
  read, error = CALLERS[caller]
  with pytest.raises(error) as info:
    read(str(path))
  return str(info.value)


def write(tmp_path, content):
  path = tmp_path / 'rows.tsv'
  path.write_bytes(content)
  return path


@pytest.mark.parametrize('case', sorted(SAME_ROWS))
@pytest.mark.parametrize('caller', sorted(CALLERS))
def test_every_caller_reads_the_same_rows(tmp_path, caller, case):
  content, sequences, values = SAME_ROWS[case]
  got_sequences, codes, got_values = rows_read(
      caller, write(tmp_path, content), sequences)
  if got_sequences is not None:
    assert got_sequences == sequences  # exactly as written
  if codes is not None:
    np.testing.assert_array_equal(codes, dream_data.encode_sequences(sequences))
  if got_values is not None:
    np.testing.assert_array_equal(got_values,
                                  np.asarray(values, got_values.dtype))


# Documented differences, each tested on its own below.
REFUSED_BY_OTHERS = {('submission', 'header line')}


@pytest.mark.parametrize('caller, case', [
    (caller, case) for caller in sorted(CALLERS) for case in sorted(SAME_ERROR)
    if (caller, case) not in REFUSED_BY_OTHERS])
def test_every_caller_refuses_with_the_same_file_line_message(
    tmp_path, caller, case):
  content, line, message = SAME_ERROR[case]
  path = write(tmp_path, content)
  assert error_of(caller, path) == f'{path}:{line}: {message}'


def test_a_header_line_is_skipped_in_submissions_only(tmp_path):
  """allow_header: pandas writes one; every other caller refuses the file."""
  content, line, message = SAME_ERROR['header line']
  path = write(tmp_path, content)
  _, _, values = rows_read('submission', path, ['ACGT'])
  assert values.tolist() == [1.0]
  for caller in sorted(set(CALLERS) - {'submission'}):
    assert error_of(caller, path) == f'{path}:{line}: {message}'


def test_a_submission_counts_lines_from_its_header(tmp_path):
  path = write(tmp_path, b'seq\tpred\nACGT\t1\nGGCC\tnan\n')
  assert error_of('submission', path) == (
      f"{path}:3: expression 'nan' is not finite; expected a finite number")
  path = write(tmp_path, b'seq\tpred\r\n\n')
  assert error_of('submission', path) == (
      f"{path}:2: no rows after the header line; expected lines "
      "'sequence<TAB>expression'")


@pytest.mark.parametrize('caller', sorted(CALLERS))
def test_corrupt_gzip_is_the_same_error_for_every_caller(tmp_path, caller):
  path = write(tmp_path, gzip.compress(b'ACGT\t1\n' * 100)[:30])
  message = error_of(caller, path)
  assert message.startswith(f'{path}:1: corrupt gzip file (')
  assert message == error_of('training', path)


@pytest.mark.parametrize('caller', sorted(CALLERS))
def test_missing_file_is_the_same_error_for_every_caller(tmp_path, caller):
  path = tmp_path / 'missing.tsv'
  assert error_of(caller, path) == (
      f"{path}: no such file; expected a DREAM file 'sequence<TAB>expression'")


def test_negative_values_are_refused_by_training_only(tmp_path):
  """allow_negative: training targets are >= 0; the test set's MAUDE scale and
  predict's inputs may be negative."""
  path = write(tmp_path, b'ACGT\t1\nGGCC\t-0.5\n')
  assert error_of('training', path) == (
      f'{path}:2: negative expression -0.5; expected a value >= 0 (training '
      'files); pass allow_negative=True for files on another scale, such as '
      "the test set's measured values")
  for caller in ('scoring', 'submission', 'predict'):
    _, _, values = rows_read(caller, path, ['ACGT', 'GGCC'])
    assert values.tolist() == [1.0, -0.5]
    assert values.dtype == np.float64
  assert variant_effects.read_sequences(str(path)) == (['1', '2'],
                                                       ['ACGT', 'GGCC'])


def test_a_file_without_values_is_predicted_but_neither_trained_nor_scored(
    tmp_path):
  """values_optional: predict and attribute only."""
  path = write(tmp_path, b'ACGT\nGGCC\n')
  assert predict(str(path)) == (['ACGT', 'GGCC'], None)
  assert variant_effects.read_sequences(str(path)) == (['1', '2'],
                                                       ['ACGT', 'GGCC'])
  expected = (f"{path}:1: missing tab: expected 2 tab-separated columns "
              "'sequence<TAB>expression', found 1 column 'ACGT'")
  for caller in ('training', 'scoring', 'submission'):
    assert error_of(caller, path) == expected


def test_ragged_lines_are_refused_by_every_caller(tmp_path):
  """Predict and attribute, which take files with or without values, add that
  line 1 decides."""
  path = write(tmp_path, b'ACGT\t1\nGGCC\n')
  for caller in ('training', 'scoring', 'submission'):
    assert error_of(caller, path) == f'{path}:2: {MISSING_TAB}'
  for caller in ('predict', 'attribute'):
    assert error_of(caller, path) == (
        f'{path}:2: {MISSING_TAB} (line 1 has 2; every line must have the same '
        'columns)')
  path = write(tmp_path, b'ACGT\nGGCC\t1\n')
  for caller in ('predict', 'attribute'):
    assert error_of(caller, path) == (
        f"{path}:2: found 2 tab-separated columns 'GGCC\\t1' where line 1 has "
        "1 (sequence only); expected 'sequence' on every line, as on line 1")


def test_empty_file_is_refused_by_every_caller(tmp_path):
  for content in (b'', b'\n\r\n'):
    path = write(tmp_path, content)
    for caller in ('training', 'scoring', 'submission'):
      assert error_of(caller, path) == f'{path}:1: {EMPTY}'
    for caller in ('predict', 'attribute'):
      assert error_of(caller, path) == f"{path}:1: {EMPTY} or 'sequence'"


def test_header_of_a_file_without_values_is_refused(tmp_path):
  """`sequence` holds letters no DNA sequence has (e, q, u)."""
  path = write(tmp_path, b'sequence\nACGT\n')
  for caller in ('predict', 'attribute'):
    assert error_of(caller, path) == (
        f"{path}:1: line looks like a header ('sequence'); DREAM files have no "
        'header: remove the line (e.g. tail -n +2 FILE > NEW_FILE); expected '
        "'sequence' from line 1 on")
