"""Specification of enformer_small.textfiles: the one reader of plain/gzip text."""

import gzip

import pytest

from enformer_small import textfiles

ROWS = b'ACGT\t1.5\r\nGGCC\t2\n'


def test_plain_file_is_returned_as_written(tmp_path):
  path = tmp_path / 'rows.txt'
  path.write_bytes(ROWS)
  assert textfiles.read_bytes(path) == ROWS


@pytest.mark.parametrize('name', ['rows.txt.gz', 'rows.txt'])
def test_gzip_is_detected_by_magic_bytes_not_name(tmp_path, name):
  path = tmp_path / name
  path.write_bytes(gzip.compress(ROWS))
  assert textfiles.read_bytes(str(path)) == ROWS


@pytest.mark.parametrize('damage', [
    lambda data: data[:30],
    lambda data: data[:10] + b'\xff' * 8 + data[18:],
    lambda data: data[:2] + b'\x07' + data[3:],
], ids=['cut short', 'garbled deflate stream', 'unknown compression method'])
def test_corrupt_gzip_raises_corrupt_gzip_error(tmp_path, damage):
  path = tmp_path / 'cut.gz'
  path.write_bytes(damage(gzip.compress(ROWS * 100)))
  with pytest.raises(textfiles.CorruptGzipError) as info:
    textfiles.read_bytes(path)
  assert str(info.value)  # the decompressor's reason, for the caller's message


def test_missing_file_is_an_os_error(tmp_path):
  with pytest.raises(FileNotFoundError):
    textfiles.read_bytes(tmp_path / 'missing.txt')


def test_split_lines_drops_crlf_and_trailing_blank_lines_only():
  text = 'ACGT\t1\r\n\r\nGG\t2\r\nTT\t3\n\r\n  \n\n'
  assert textfiles.split_lines(text) == ['ACGT\t1', '', 'GG\t2', 'TT\t3']


def test_split_lines_last_line_without_newline_and_empty_text():
  assert textfiles.split_lines('ACGT\t1\nGG\t2') == ['ACGT\t1', 'GG\t2']
  assert textfiles.split_lines('') == []
  assert textfiles.split_lines('\r\n\n') == []
