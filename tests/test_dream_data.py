"""Specification of `enformer_small.dream_data`: reading DREAM files.

Expectations are written by hand (codes, one-hot rows, line numbers) or come
from an independent plain-Python reading of the file, and from the figures the
data README publishes for the real files.
"""

import dataclasses
import gzip
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from enformer_small import dream_data

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
FLANKED = dream_data.FLANK_5 + 'ACGT' * 20 + dream_data.FLANK_3  # 110 bp.


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
  """No test may write into the user's real cache."""
  monkeypatch.setenv(dream_data.CACHE_ENV_VAR, str(tmp_path / 'env_cache'))


def write(tmp_path, text, name='rows.txt'):
  path = tmp_path / name
  path.write_bytes(text.encode() if isinstance(text, str) else text)
  return path


def read(path, **kwargs):
  kwargs.setdefault('use_cache', False)
  return dream_data.read_dream_file(path, **kwargs)


def read_error(path, **kwargs) -> str:
  with pytest.raises(dream_data.DreamDataError) as info:
    read(path, **kwargs)
  return str(info.value)


def plain_python_codes(sequence: str) -> list[int]:
  """The rule, written out: ACGT any case -> 0..3, else 4; end pad/truncate."""
  codes = ['ACGT'.index(c) if c in 'ACGT' else 4 for c in sequence.upper()]
  return (codes + [4] * 110)[:110]


# ---------------------------------------------------------------------------
# Encoding.


def test_encode_sequences_maps_acgt_case_insensitively_to_0_to_3():
  np.testing.assert_array_equal(
      dream_data.encode_sequences(['ACGTacgt'], length=8), [[0, 1, 2, 3] * 2])


def test_encode_sequences_maps_n_and_other_letters_to_pad_code():
  np.testing.assert_array_equal(
      dream_data.encode_sequences(['ANnRy-T'], length=7),
      [[0, 4, 4, 4, 4, 4, 3]])


def test_encode_sequences_pads_the_end_and_truncates_the_end():
  codes = dream_data.encode_sequences(['ACG', b'TTGCA'], length=4)
  np.testing.assert_array_equal(codes, [[0, 1, 2, 4], [3, 3, 2, 1]])
  assert codes.dtype == np.uint8


def test_encode_sequences_defaults_to_110_columns():
  codes = dream_data.encode_sequences([FLANKED, 'A'])
  assert codes.shape == (2, dream_data.SEQUENCE_LENGTH) == (2, 110)
  assert codes[0].tolist() == plain_python_codes(FLANKED)
  assert codes[1].tolist() == [0] + [4] * 109


def test_one_hot_orders_bases_acgt_and_gives_zeros_for_pad_code():
  np.testing.assert_array_equal(
      dream_data.one_hot(np.array([0, 1, 2, 3, 4], np.uint8)),
      [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])


def test_one_hot_keeps_leading_axes_and_takes_a_dtype():
  out = dream_data.one_hot(np.zeros((2, 3, 5), np.uint8), dtype=np.float16)
  assert out.shape == (2, 3, 5, 4) and out.dtype == np.float16
  assert dream_data.one_hot(np.zeros((1, 2), np.uint8)).dtype == np.float32


def test_one_hot_rejects_codes_above_pad_code():
  with pytest.raises(ValueError, match='0..4'):
    dream_data.one_hot(np.array([5]))


# ---------------------------------------------------------------------------
# Reading good files.


def test_read_encodes_truncates_and_pads_rows_of_a_file(tmp_path):
  long_row = 'ACGT' * 30  # 120 bp: truncated to 110.
  path = write(tmp_path, f'{long_row}\t1.5\nacgtn\t12\n{FLANKED}\t0\n')
  data = read(path)
  assert len(data) == 3
  assert data.codes.dtype == np.uint8 and data.codes.shape == (3, 110)
  assert data.codes[0].tolist() == [0, 1, 2, 3] * 27 + [0, 1]
  assert data.codes[1].tolist() == [0, 1, 2, 3, 4] + [4] * 105
  assert data.codes[2].tolist() == plain_python_codes(FLANKED)
  assert data.lengths.dtype == np.int32
  assert data.lengths.tolist() == [120, 5, 110]
  assert data.expression.dtype == np.float32
  assert data.expression.tolist() == [1.5, 12.0, 0.0]
  assert data.source == str(path)


def test_read_reports_lengths_n_and_expression_statistics(tmp_path):
  path = write(tmp_path, f'{FLANKED}\t2\nACNNT\t4.5\nNACGTN\t0\n')
  report = read(path).report
  assert report.num_rows == 3
  assert (report.length_min, report.length_median, report.length_max) == (
      5, 6, 110)
  assert report.length_counts == {5: 1, 6: 1, 110: 1}
  assert (report.num_full_length, report.num_padded,
          report.num_truncated) == (1, 2, 0)
  assert (report.rows_with_n, report.total_n) == (2, 4)
  assert (report.expression_min, report.expression_max) == (0.0, 4.5)
  assert report.expression_mean == pytest.approx(6.5 / 3)
  assert report.integer_share == pytest.approx(2 / 3)
  assert report.skipped_lines == {}


def test_letters_other_than_acgtn_are_encoded_as_pad_code_and_counted(tmp_path):
  path = write(tmp_path, 'ACGTRY\t1\nACGT\t2\n')
  data = read(path)
  assert data.codes[0, :6].tolist() == [0, 1, 2, 3, 4, 4]
  assert (data.report.rows_with_other_letters,
          data.report.total_other_letters) == (1, 2)


def test_crlf_line_endings_read_like_lf(tmp_path):
  rows = f'{FLANKED}\t3.25\nacgtn\t7\n'
  lf = read(write(tmp_path, rows, 'lf.txt'))
  crlf = read(write(tmp_path, rows.replace('\n', '\r\n'), 'crlf.txt'))
  np.testing.assert_array_equal(crlf.codes, lf.codes)
  np.testing.assert_array_equal(crlf.expression, lf.expression)
  np.testing.assert_array_equal(crlf.lengths, [110, 5])


def test_missing_final_newline_and_trailing_blank_lines_are_fine(tmp_path):
  no_newline = read(write(tmp_path, 'ACGT\t1\nGG\t2', 'a.txt'))
  assert no_newline.expression.tolist() == [1.0, 2.0]
  blank_tail = read(write(tmp_path, 'ACGT\t1\nGG\t2\n\n\r\n  \n', 'b.txt'))
  assert blank_tail.expression.tolist() == [1.0, 2.0]
  assert blank_tail.report.skipped_lines == {'trailing blank lines': 3}


def test_a_byte_order_mark_at_the_start_is_skipped(tmp_path):
  data = read(write(tmp_path, '\ufeffACGT\t1\nGG\t2\n'))
  assert data.codes[0, :5].tolist() == [0, 1, 2, 3, 4]
  assert data.lengths.tolist() == [4, 2]
  assert data.expression.tolist() == [1.0, 2.0]


@pytest.mark.parametrize('name', ['rows.txt.gz', 'rows_without_suffix.txt'])
def test_gzip_input_is_detected_by_magic_bytes(tmp_path, name):
  rows = f'{FLANKED}\t3.25\nacgtn\t7\n'
  data = read(write(tmp_path, gzip.compress(rows.encode()), name))
  plain = read(write(tmp_path, rows, 'plain.txt'))
  np.testing.assert_array_equal(data.codes, plain.codes)
  np.testing.assert_array_equal(data.expression, [3.25, 7.0])


def test_rows_in_later_chunks_are_encoded_and_numbered(tmp_path, monkeypatch):
  monkeypatch.setattr(dream_data, '_ROWS_PER_CHUNK', 2)
  rows = [f'{"ACGT"[i % 4] * (i + 1)}\t{i}' for i in range(7)]
  data = read(write(tmp_path, '\n'.join(rows)))
  assert data.lengths.tolist() == [1, 2, 3, 4, 5, 6, 7]
  assert data.codes[6, :8].tolist() == [2] * 7 + [4]
  bad = write(tmp_path, '\n'.join(rows[:5] + ['ACGT\tx'] + rows[6:]), 'bad.txt')
  assert read_error(bad).startswith(f'{bad}:6: ')


# ---------------------------------------------------------------------------
# Bad input: message `path:line: what is wrong; what was expected`.

BAD_FILES = {
    # name: (file text, bad line, words the message must contain)
    'missing tab': ('ACGT\t1\nACGT\t2\nACGT 3\n', 3, ['missing tab', '2 ']),
    'comma separated': ('ACGT,1\n', 1, ['missing tab', 'comma']),
    'extra columns': ('ACGT\t1\nACGT\t2\tx\n', 2, ['extra columns', '3']),
    'empty sequence': ('ACGT\t1\n\t2\n', 2, ['empty sequence']),
    'tab-only line': ('ACGT\t1\n\t\n', 2, ['empty sequence']),
    'non-ASCII byte in sequence': ('ACéGT\t1\n', 1, [r"'\xc3' at position 3"]),
    'only N': ('ACGT\t1\nNNNN\t2\n', 2, ['no A, C, G or T']),
    'non-letter in sequence': ('ACGT\t1\nAC GT\t2\n', 2,
                               ['invalid character', 'position 3']),
    'digit in sequence': ('AC1GT\t1\n', 1, ['invalid character', "'1'"]),
    'non-numeric expression': ('ACGT\t1\nACGT\thigh\n', 2, ['not a number']),
    'missing expression': ('ACGT\t1\nACGT\t\n', 2, ['missing expression']),
    'NaN expression': ('ACGT\t1\nACGT\tnan\n', 2, ['not finite']),
    'infinite expression': ('ACGT\t1\nACGT\t-inf\n', 2, ['not finite']),
    'negative expression': ('ACGT\t1\nACGT\t-0.5\n', 2,
                            ['negative', 'allow_negative']),
    'blank line inside': ('ACGT\t1\n\nACGT\t2\n', 2, ['blank line']),
    'spaces-only line inside': ('ACGT\t1\n  \r\nACGT\t2\n', 2, ['blank line']),
    'header': ('sequence\texpression\nACGT\t1\n', 1,
               ['looks like a header', 'remove']),
    'header of a CSV export': ('seq\tmeasured\nACGT\t1\n', 1,
                               ['looks like a header']),
    'empty file': ('', 1, ['empty file']),
    'blank file': ('\n\n', 1, ['empty file']),
}


@pytest.mark.parametrize('case', sorted(BAD_FILES))
def test_bad_input_names_file_and_first_bad_line(tmp_path, case):
  text, line, words = BAD_FILES[case]
  path = write(tmp_path, text)
  message = read_error(path)
  assert message.startswith(f'{path}:{line}: '), message
  for word in words:
    assert word in message, message
  assert 'expected' in message, message


def test_bad_input_is_an_error_even_with_cache_on(tmp_path):
  path = write(tmp_path, 'ACGT\tx\n')
  assert read_error(path, use_cache=True).startswith(f'{path}:1: ')
  assert not list((tmp_path / 'env_cache').glob('*/report.json'))


def test_error_names_the_earliest_bad_line_whatever_the_check(tmp_path):
  # Line 2's bad expression comes before line 3's missing tab.
  path = write(tmp_path, 'ACGT\t1\nACGT\tx\nACGT\n')
  assert read_error(path).startswith(f'{path}:2: ')
  path = write(tmp_path, 'ACGT\t1\nACGT\n\tx\n', 'b.txt')
  assert read_error(path).startswith(f'{path}:2: missing tab')


def test_header_like_text_after_line_1_is_just_a_bad_expression(tmp_path):
  path = write(tmp_path, 'ACGT\t1\nsequence\texpression\n')
  message = read_error(path)
  assert message.startswith(f'{path}:2: expression ')
  assert 'looks like a header' not in message


def test_negative_expression_is_accepted_with_allow_negative(tmp_path):
  path = write(tmp_path, 'ACGT\t-1.25\nACGT\t0.5\n')
  data = read(path, allow_negative=True)
  assert data.expression.tolist() == [-1.25, 0.5]
  assert data.report.num_negative == 1


def test_missing_file_is_a_file_not_found_error_naming_the_path(tmp_path):
  path = tmp_path / 'no_such_file.txt'
  with pytest.raises(FileNotFoundError) as info:
    read(path)
  assert isinstance(info.value, dream_data.DreamDataError)
  assert str(info.value).startswith(f'{path}: ')


def test_corrupt_gzip_is_a_clear_error(tmp_path):
  path = write(tmp_path, gzip.compress(b'ACGT\t1\n' * 100)[:30], 'cut.gz')
  assert 'corrupt gzip' in read_error(path)


# ---------------------------------------------------------------------------
# Cache.


def test_second_read_loads_the_cache_without_encoding(tmp_path, monkeypatch):
  path = write(tmp_path, f'{FLANKED}\t3.25\nacgtn\t7\n')
  first = read(path, use_cache=True, cache_dir=tmp_path / 'cache')
  assert not first.report.from_cache
  assert first.report.cache_path.startswith(str(tmp_path / 'cache'))

  def no_encoding(*args):
    raise AssertionError('encoded again despite the cache')

  monkeypatch.setattr(dream_data, '_parse_buffer', no_encoding)
  second = read(path, use_cache=True, cache_dir=tmp_path / 'cache')
  assert second.report.from_cache
  for name in ('codes', 'expression', 'lengths'):
    np.testing.assert_array_equal(getattr(second, name), getattr(first, name))
    assert getattr(second, name).dtype == getattr(first, name).dtype
  assert second.report.total_n == first.report.total_n == 1


def test_cache_is_keyed_by_content_not_name(tmp_path):
  cache = tmp_path / 'cache'
  path = write(tmp_path, 'ACGT\t1\n')
  read(path, use_cache=True, cache_dir=cache)
  copy = tmp_path / 'copy.txt'
  shutil.copy(path, copy)
  hit = read(copy, use_cache=True, cache_dir=cache)
  assert hit.report.from_cache and hit.source == str(copy)
  path.write_text('ACGT\t2\n')
  edited = read(path, use_cache=True, cache_dir=cache)
  assert not edited.report.from_cache and edited.expression.tolist() == [2.0]


def test_default_cache_dir_comes_from_the_environment(tmp_path):
  data = read(write(tmp_path, 'ACGT\t1\n'), use_cache=True)
  assert data.report.cache_path.startswith(str(tmp_path / 'env_cache'))


def test_use_cache_false_writes_nothing(tmp_path):
  read(write(tmp_path, 'ACGT\t1\n'), use_cache=False, cache_dir=tmp_path / 'c')
  assert not (tmp_path / 'c').exists()


def test_truncated_cache_array_is_deleted_and_encoded_again(tmp_path, caplog):
  cache = tmp_path / 'cache'
  path = write(tmp_path, 'ACGT\t1\n' * 50)
  first = read(path, use_cache=True, cache_dir=cache)
  codes_file = pathlib.Path(first.report.cache_path) / 'codes.npy'
  codes_file.write_bytes(codes_file.read_bytes()[:-100])
  with caplog.at_level(logging.WARNING):
    again = read(path, use_cache=True, cache_dir=cache)
  assert not again.report.from_cache
  assert str(codes_file) in caplog.text and 'encoding the source again' in (
      caplog.text)
  np.testing.assert_array_equal(again.codes, first.codes)
  assert read(path, use_cache=True, cache_dir=cache).report.from_cache


def test_garbage_cache_header_is_deleted_and_encoded_again(tmp_path, caplog):
  cache = tmp_path / 'cache'
  path = write(tmp_path, 'ACGT\t1\n')
  first = read(path, use_cache=True, cache_dir=cache)
  (pathlib.Path(first.report.cache_path) / 'expression.npy').write_bytes(b'x')
  with caplog.at_level(logging.WARNING):
    again = read(path, use_cache=True, cache_dir=cache)
  assert 'expression.npy' in caplog.text
  assert again.expression.tolist() == [1.0]


def test_cached_negative_file_is_still_rejected_without_allow_negative(
    tmp_path):
  cache = tmp_path / 'cache'
  path = write(tmp_path, 'ACGT\t1\nACGT\t-2\n')
  read(path, use_cache=True, cache_dir=cache, allow_negative=True)
  message = read_error(path, use_cache=True, cache_dir=cache)
  assert message.startswith(f'{path}:2: negative expression')


def test_arrays_are_read_only(tmp_path):
  data = read(write(tmp_path, 'ACGT\t1\n'))
  with pytest.raises(ValueError):
    data.codes[0, 0] = 1


# ---------------------------------------------------------------------------
# read_dream_table: the same parser, keeping the text.


def test_read_dream_table_keeps_sequences_as_written_and_values_as_float64(
    tmp_path):
  path = write(tmp_path, f'acgTN\t0.1\r\n{FLANKED}\t-2\n\n')
  table = dream_data.read_dream_table(path, allow_negative=True)
  assert table.sequences == ('acgTN', FLANKED)
  assert table.values.dtype == np.float64
  assert table.values.tolist() == [0.1, -2.0]  # 0.1 exactly as float64 parses it
  assert table.codes[0, :6].tolist() == [0, 1, 2, 3, 4, 4]
  assert table.codes[1].tolist() == plain_python_codes(FLANKED)
  assert table.lengths.tolist() == [5, 110] and len(table) == 2
  assert table.source == str(path)
  assert table.report.skipped_lines == {'trailing blank lines': 1}
  with pytest.raises(ValueError):
    table.codes[0, 0] = 1


def test_read_dream_table_encodes_like_read_dream_file(tmp_path):
  path = write(tmp_path, 'ACGTRY\t1\nacnnt\t2.5\n' + 'GATTACA' * 20 + '\t3\n')
  table = dream_data.read_dream_table(path)
  data = read(path)
  np.testing.assert_array_equal(table.codes, data.codes)
  np.testing.assert_array_equal(table.lengths, data.lengths)
  np.testing.assert_array_equal(table.values.astype(np.float32), data.expression)
  assert table.report == dataclasses.replace(data.report, content_hash='')


def test_read_dream_table_values_optional_takes_bare_sequences(tmp_path):
  path = write(tmp_path, 'ACGT\nggNN\n')
  table = dream_data.read_dream_table(path, values_optional=True)
  assert table.sequences == ('ACGT', 'ggNN') and table.values is None
  assert table.codes[1, :4].tolist() == [2, 2, 4, 4]
  assert np.isnan(table.report.expression_mean)
  assert read_error(path).startswith(f'{path}:1: missing tab')


def test_read_dream_table_values_are_required_by_default(tmp_path):
  path = write(tmp_path, 'ACGT\nGGCC\n')
  with pytest.raises(dream_data.DreamDataError) as info:
    dream_data.read_dream_table(path)
  assert str(info.value).startswith(f'{path}:1: missing tab')


def table_error(path, **options) -> str:
  with pytest.raises(dream_data.DreamDataError) as info:
    dream_data.read_dream_table(path, **options)
  return str(info.value)


def test_read_dream_table_allow_header_skips_a_header_line_and_counts_it(
    tmp_path):
  path = write(tmp_path, '\ufeffseq\tprediction\r\nACGT\t1\nGGCC\t2\n\n')
  table = dream_data.read_dream_table(path, allow_header=True)
  assert table.sequences == ('ACGT', 'GGCC')
  assert table.values.tolist() == [1.0, 2.0]
  assert table.first_line == 2
  assert table.report.skipped_lines == {'header line': 1,
                                        'trailing blank lines': 1}
  assert table.report.num_rows == 2
  path = write(tmp_path, 'sequence\nACGT\n')
  table = dream_data.read_dream_table(path, allow_header=True,
                                      values_optional=True)
  assert (table.sequences, table.values, table.first_line) == (
      ('ACGT',), None, 2)


def test_read_dream_table_allow_header_reads_a_data_line_1_as_data(tmp_path):
  """Only a line the header rule names is skipped; nothing else changes."""
  path = write(tmp_path, 'ACGT\t1\nGGCC\t2\n')
  table = dream_data.read_dream_table(path, allow_header=True)
  assert (table.sequences, table.first_line) == (('ACGT', 'GGCC'), 1)
  assert table.report.skipped_lines == {}
  path = write(tmp_path, 'ACGT\tx\n')  # DNA first field: data, not a header
  assert table_error(path, allow_header=True) == (
      f"{path}:1: expression 'x' is not a number; expected a decimal number "
      'such as 12 or 15.18')


def test_read_dream_table_allow_header_counts_lines_from_the_file_top(
    tmp_path):
  path = write(tmp_path, 'seq\tvalue\nACGT\t1\nsequence\tvalue\n')
  assert table_error(path, allow_header=True) == (  # a header only on line 1
      f"{path}:3: expression 'value' is not a number; expected a decimal "
      'number such as 12 or 15.18')
  path = write(tmp_path, 'seq\tvalue\n\n\n')
  assert table_error(path, allow_header=True) == (
      f"{path}:2: no rows after the header line; expected lines "
      "'sequence<TAB>expression'")
  assert table_error(path) == (
      f"{path}:1: line looks like a header ('seq\\tvalue'); DREAM files have "
      'no header: remove the line (e.g. tail -n +2 FILE > NEW_FILE); expected '
      "'sequence<TAB>expression' from line 1 on")


# ---------------------------------------------------------------------------
# Hold-out split.


def test_holdout_split_is_reproducible_disjoint_and_complete():
  train, holdout = dream_data.holdout_split(1000, 100, seed=7)
  again_train, again_holdout = dream_data.holdout_split(1000, 100, seed=7)
  np.testing.assert_array_equal(train, again_train)
  np.testing.assert_array_equal(holdout, again_holdout)
  assert (train.size, holdout.size) == (900, 100)
  assert train.dtype == holdout.dtype == np.int64
  assert np.all(np.diff(train) > 0) and np.all(np.diff(holdout) > 0)
  assert not np.intersect1d(train, holdout).size
  np.testing.assert_array_equal(np.union1d(train, holdout), np.arange(1000))


def test_holdout_split_depends_on_the_seed():
  assert not np.array_equal(dream_data.holdout_split(1000, 100, seed=0)[1],
                            dream_data.holdout_split(1000, 100, seed=1)[1])


def test_holdout_split_edges_and_too_large_holdout():
  assert dream_data.holdout_split(5, 0, seed=0)[1].size == 0
  assert dream_data.holdout_split(5, 5, seed=0)[0].size == 0
  with pytest.raises(ValueError, match='larger than num_rows'):
    dream_data.holdout_split(5, 6, seed=0)


# ---------------------------------------------------------------------------
# Real data (../shared/data/dream, kept beside the repository, not distributed with it).


def plain_python_read(path):
  """Independent reference: line by line, no numpy tricks."""
  sequences, values = [], []
  with open(path) as f:
    for line in f:
      sequence, value = line.rstrip('\n').split('\t')
      sequences.append(sequence)
      values.append(float(value))
  return sequences, values


def test_real_training_rows_match_the_readme(shared_dir):
  path = shared_dir / 'train_6370.txt'
  data = read(path)
  report = data.report
  assert len(data) == report.num_rows == 6370
  assert report.total_n == 387
  assert (report.length_min, report.length_max) == (87, 135)
  assert report.length_counts[110] == report.num_full_length
  assert 0 <= report.expression_min and report.expression_max <= 17
  assert report.expression_mean == pytest.approx(11.15, abs=0.005)
  assert report.integer_share == pytest.approx(0.58, abs=0.005)
  sequences, values = plain_python_read(path)
  np.testing.assert_array_equal(
      data.codes, [plain_python_codes(s) for s in sequences])
  np.testing.assert_array_equal(data.expression, np.float32(values))
  np.testing.assert_array_equal(data.lengths, [len(s) for s in sequences])


def test_real_test_set_is_110_bp_and_needs_allow_negative(shared_dir):
  path = shared_dir / 'test_71103_measured.tsv'
  data = read(path, allow_negative=True)
  assert len(data) == 71103
  assert (data.lengths == 110).all()
  assert data.report.expression_min == pytest.approx(-1.40, abs=0.005)
  assert data.report.expression_max == pytest.approx(1.66, abs=0.005)
  assert read_error(path).startswith(f'{path}:4: negative expression')


# ---------------------------------------------------------------------------
# experiments/prepare_data.py


def run_prepare_data(tmp_path, *args):
  env = dict(os.environ, ENFORMER_SMALL_NO_JEMALLOC='1',
             PYTHONPATH=str(REPO_ROOT))
  return subprocess.run(
      [sys.executable, '-m', 'experiments.prepare_data', *args,
       f'--cache_dir={tmp_path / "cache"}'],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False,
      timeout=120)


def test_prepare_data_prints_what_it_found_and_caches(tmp_path):
  path = write(tmp_path, f'{FLANKED}\t3\nACNT\t4.5\n')
  run = run_prepare_data(tmp_path, f'--input={path}')
  assert run.returncode == 0, run.stderr
  for text in ('rows: 2', 'min 4, median 57, max 110', '1 of length 110',
               'rows with N: 1 (1 N bases)', 'min 3, max 4.5',
               '50.0% integers', 'no data rows dropped', 'cache: written',
               'seconds:'):
    assert text in run.stdout, run.stdout


def test_prepare_data_bad_file_prints_one_line_and_exits_1(tmp_path):
  path = write(tmp_path, 'ACGT\t1\nACGT\n')
  run = run_prepare_data(tmp_path, f'--input={path}')
  assert run.returncode == 1
  assert 'Traceback' not in run.stderr
  assert run.stderr.strip() == f'error: {path}:2: ' + (
      "missing tab: expected 2 tab-separated columns 'sequence<TAB>expression'"
      ", found 1 column 'ACGT'")
