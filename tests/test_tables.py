"""The table reader (`enformer_small.tables`): own data with a header and named targets."""

import gzip

import numpy as np
import pytest

from enformer_small import dream_data
from enformer_small import tables

SPEC = tables.TableSpec(target_columns=('a', 'b'), length=6)


def _write(tmp_path, text, name='t.tsv', compress=False):
  path = tmp_path / name
  data = text.encode()
  path.write_bytes(gzip.compress(data) if compress else data)
  return str(path)


def test_reads_named_columns_in_the_flags_order_tab_or_comma_plain_or_gzip(tmp_path):
  tsv = _write(tmp_path, 'id\tb\tsequence\ta\nr1\t2.5\tACGTAC\t1\nr2\t-3\tttttgg\t0.5\n')
  csv = _write(tmp_path, 'id, b, sequence, a\r\nr1, 2.5, ACGTAC, 1\r\nr2,-3,ttttgg,0.5\n\n',
               'c.csv.gz', compress=True)
  for path in (tsv, csv):
    table = tables.read_table(path, SPEC, use_cache=False)
    np.testing.assert_array_equal(table.expression,
                                  np.array([[1, 2.5], [0.5, -3]], np.float32))
    np.testing.assert_array_equal(table.codes, dream_data.encode_sequences(
        ['ACGTAC', 'TTTTGG'], 6))
    assert len(table) == 2 and table.expression.dtype == np.float32


def test_padding_policy_pads_and_truncates_the_3_prime_end(tmp_path):
  path = _write(tmp_path, 'sequence,a,b\nACG,1,2\nACGTACGT,3,4\n')
  table = tables.read_table(path, tables.TableSpec(('a', 'b'), length=6, pad=True),
                            use_cache=False)
  np.testing.assert_array_equal(table.codes, [[0, 1, 2, 4, 4, 4], [0, 1, 2, 3, 0, 1]])
  assert (table.num_padded, table.num_truncated) == (1, 1)
  np.testing.assert_array_equal(table.lengths, [3, 8])


@pytest.mark.parametrize('text, line, words', [
    ('', 1, 'empty file'),
    ('\n\n', 1, 'empty file'),
    ('sequence\ta\tb\n', 2, 'no data rows'),
    ('sequence\ta\nACGTAC\t1\n', 1, "missing column(s) 'b'"),
    ('seq\ta\tb\nACGTAC\t1\t2\n', 1, "missing column(s) 'sequence'"),
    ('sequence\ta\tb\nACGTAC\t1\t2\nACGTAC\t1\n', 3, '2 field(s); expected 3'),
    ('sequence\ta\tb\nACGTAC\t1\t2\t9\n', 2, '4 field(s); expected 3'),
    ('sequence\ta\tb\nACGTAC\t1\t2\n\nACGTAC\t1\t2\n', 3, 'blank line'),
    ('sequence\ta\tb\nACGTAC\t1\t2\nACGTAC\t1\thigh\n', 3, "target 'b' is 'high'"),
    ('sequence\ta\tb\nACGTAC\tnan\t2\n', 2, "target 'a' is 'nan'"),
    ('sequence\ta\tb\nACGTAC\t\t2\n', 2, "missing target 'a'"),
    ('sequence\ta\tb\nACGTAC\t1\t2\nACG1AC\t1\t2\n', 3, "invalid character b'1'"),
    ('sequence\ta\tb\nNNNNNN\t1\t2\n', 2, 'no A, C, G or T'),
    ('sequence\ta\tb\n\t1\t2\n', 2, 'empty sequence'),
    ('sequence\ta\tb\nACGTAC\t1\t2\nACGTA\t1\t2\n', 3, 'sequence of 5 bp; expected 6'),
])
def test_bad_input_is_an_error_naming_file_and_line(tmp_path, text, line, words):
  path = _write(tmp_path, text)
  with pytest.raises(tables.TableError) as error:
    tables.read_table(path, SPEC, use_cache=False)
  message = str(error.value)
  assert message.startswith(f'{path}:{line}: '), message
  assert words in message, message


def test_missing_file_is_an_error_naming_it(tmp_path):
  with pytest.raises(tables.TableError, match='no such file'):
    tables.read_table(str(tmp_path / 'absent.tsv'), SPEC)


def test_cache_is_keyed_by_content_and_spec(tmp_path):
  text = 'sequence\ta\tb\nACGTAC\t1\t2\nTTTTTT\t3\t4\n'
  first = tables.read_table(_write(tmp_path, text, 'one.tsv'), SPEC, cache_dir=tmp_path / 'c')
  copy = tables.read_table(_write(tmp_path, text, 'two.tsv'), SPEC, cache_dir=tmp_path / 'c')
  other = tables.read_table(_write(tmp_path, text, 'two.tsv'),
                            tables.TableSpec(('b',), length=6), cache_dir=tmp_path / 'c')
  assert (first.from_cache, copy.from_cache, other.from_cache) == (False, True, False)
  np.testing.assert_array_equal(copy.codes, first.codes)
  np.testing.assert_array_equal(copy.expression, first.expression)
  np.testing.assert_array_equal(other.expression, [[2], [4]])


def test_training_reads_a_table_and_reports_a_bad_value_naming_file_and_line(tmp_path):
  """A run's data (`train_data.load_data`) from --table_file: the error the command
  prints in one line (test_slow_train_cli runs the command)."""
  from enformer_small import train_data
  from enformer_small.train_config import TrainConfig
  path = _write(tmp_path, 'sequence,a\n' + 'A' * 110 + ',1\n' + 'A' * 110 + ',x\n')
  config = TrainConfig(run_dir=str(tmp_path / 'run'), table_file=path,
                       target_columns=('a',), sequence_length=110, shifts=(0,),
                       data_cache_dir=str(tmp_path / 'c'))
  with pytest.raises(tables.TableError) as info:
    train_data.load_data(config)
  assert str(info.value) == f"{path}:3: target 'a' is 'x'; expected a finite number"


def test_a_prediction_input_keeps_its_sequences_and_takes_all_targets_or_none(tmp_path):
  spec = tables.TableSpec(('a', 'b'), length=6, pad=True)
  measured = _write(tmp_path, 'b,sequence,a\n2,acgN,1\n4,ACGTACGT,3\n', 'm.csv')
  bare = _write(tmp_path, 'id\tsequence\nr1\tacgN\nr2\tACGTACGT\n', 'bare.tsv')
  partial = _write(tmp_path, 'sequence,a\nACG,1\n', 'p.csv')
  table = tables.read_table(measured, spec, for_prediction=True)
  assert table.sequences == ('acgN', 'ACGTACGT') and not table.from_cache
  np.testing.assert_array_equal(table.expression, np.array([[1, 2], [3, 4]], np.float32))
  table = tables.read_table(bare, spec, for_prediction=True)
  assert table.sequences == ('acgN', 'ACGTACGT') and table.expression is None
  np.testing.assert_array_equal(table.codes, [[0, 1, 2, 4, 4, 4], [0, 1, 2, 3, 0, 1]])
  with pytest.raises(tables.TableError) as info:
    tables.read_table(partial, spec, for_prediction=True)
  assert str(info.value) == (
      f"{partial}:1: missing column(s) 'b' in the header; found columns ['sequence', "
      "'a'] (separator comma) (measured values are all the target columns or none of "
      'them)')
  with pytest.raises(tables.TableError, match=r"^.*bare\.tsv:1: missing column\(s\) 'a'"):
    tables.read_table(bare, spec)  # Training needs its targets.
