"""Reading, validating, encoding and caching Random Promoter DREAM files.

The one reader of the project's `sequence<TAB>value` files: training rows
(`read_dream_file`, cached, float32, millions of rows), the measured test set
(`scoring.read_test_set`), a final-phase submission
(`scoring.read_tsv_predictions`), predict's input (`experiments/predict.py`)
and attribute's non-FASTA input (`variant_effects.read_sequences`), all but
the first through `read_dream_table`, which keeps the sequences as text. All of
them run the same parser with the same policies; what legitimately differs
between callers is an argument, never another parser:

* `allow_negative`: training targets are non-negative expression bins, so a
  negative value is an error by default; the test set's measurements (MAUDE
  scale, -1.40..1.66), submissions and the inputs of predict and attribute are
  read with `allow_negative=True`.
* `values_optional` (`read_dream_table` only): predict and attribute also take
  bare sequences, one per line. Line 1 decides whether the file has values,
  and every line must then have the same columns. Training and scoring require
  values.
* `allow_header` (`read_dream_table` only): submissions. A line 1 that looks
  like a header (the rule below) is skipped, not refused, and counted in
  `ReadReport.skipped_lines['header line']`. The challenge's own files have no
  header and our `predict --output_tsv` writes none, but a submission written
  by pandas (`to_csv(sep='\t', index=False)`) has one, and its sequences are
  checked row by row against the test set, so a header is no sign of the wrong
  file there.

File format (the challenge's `train_sequences.txt`, the test set's measured
values): one row per line, `sequence<TAB>expression`, no header. Plain text or
gzip (detected from the magic bytes, whatever the file is called). Windows line
endings (CRLF) are accepted, the last line may lack its newline, blank lines
at the very end of the file are ignored and a UTF-8 byte-order mark at the
start (some editors write one) is skipped.

Encoding (as the seed did with janggu): A, C, G, T (any case) -> codes 0..3,
every other letter -> `PAD_CODE` (4, an all-zero one-hot column). Every row is
brought to `SEQUENCE_LENGTH` (110) by truncating the end or padding the end
with `PAD_CODE`: any length is accepted (counted in the report), because the
encoding defines what a short or long row means. Codes are kept as compact
uint8 [N, 110]; `one_hot` expands them at the last moment. Sequences kept as
text (`read_dream_table`) are exactly as written: case kept.

The whole file is processed with vectorised numpy (byte buffer, newline and tab
positions, a 256-entry lookup table, chunked row gathers, bulk float parsing):
the 6,739,258-row training file takes seconds, not hours.

Policies for unusual input (each one is tested, for every caller):

* Bad rows are errors, never silently dropped. `DreamDataError` messages start
  with `path:line: ` (1-based line), say what is wrong and what was expected,
  and name the *first* offending line of the file. Errors: empty file, blank
  line before the end of the file, missing tab, extra columns, a line whose
  columns differ from line 1's (values optional), empty sequence, a character
  in the sequence that is not a letter (digits, spaces, ...), a sequence
  without any A/C/G/T (e.g. only N), a missing, non-numeric, NaN or infinite
  expression, and a negative expression unless `allow_negative=True`. Callers
  with their own error class (scoring, predict, variant_effects) pass the
  message on unchanged. Non-finite values are no exception, submissions
  included: the first one is named, not all of them counted (a NaN anywhere
  means the predictions must be made again; a count would need a second pass).
* Header lines are errors, not skipped (except with `allow_header`): DREAM
  files have no header and a file with one is probably not the file the user
  meant. Line 1 "looks like a
  header" when its last field is not a number and its first field holds
  characters other than A/C/G/T/N (e.g. `sequence<TAB>expression`), or, in a file
  without values, when it holds a letter that is no IUPAC nucleotide code
  (E, F, I, J, L, O, P, Q, X, Z: `sequence`); the message says so and asks to
  remove the line (`tail -n +2 FILE > NEW_FILE`).
* Letters other than A/C/G/T/N in a sequence that has bases (IUPAC codes such
  as R or Y): kept and encoded as `PAD_CODE` like N; counted in
  `ReadReport.rows_with_other_letters` / `total_other_letters`.
* Blank lines at the end of the file: ignored, counted in
  `ReadReport.skipped_lines['trailing blank lines']`. No row is ever dropped, so
  `ReadReport.num_rows` is the number of data lines and row i is line i + 1
  (i + 2 after a header skipped by `allow_header`: `DreamTable.first_line`).

Cache: `read_dream_file` caches the encoded arrays keyed by a blake2b hash of
the source file's bytes (so a renamed or copied file hits, an edited one
misses), in `cache_dir`, else `$ENFORMER_SMALL_CACHE`, else
`~/.cache/enformer_small`. An entry is a directory of `.npy` files plus
`report.json`, each written under a temporary name and moved into place with
`os.replace` (the report last, so it marks a complete entry). Cached arrays are
memory-mapped read-only (`np.load(mmap_mode='r', allow_pickle=False)`). A
truncated or corrupt cache file (wrong shape or dtype, unreadable header) is
reported with `logging.warning` naming the file, the entry is deleted and the
source is encoded again. A cache directory that cannot be written only costs a
warning. Bit flips that keep shapes intact are not detected (no checksum of the
arrays: it would cost as much as the read it saves).
"""

import dataclasses
import json
import os
import pathlib
import re
from typing import Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from enformer_small import files
from enformer_small import textfiles

SEQUENCE_LENGTH = 110
PAD_CODE = 4
FLANK_5 = 'TGCATTTTTTTCACATC'
FLANK_3 = 'GGTTACGGCTGTT'

CACHE_ENV_VAR = 'ENFORMER_SMALL_CACHE'
# Bump whenever the encoding or the cached layout changes: old entries are then
# simply never looked up again.
_CACHE_FORMAT = 'dream-v1'

_NEWLINE, _CR, _TAB = 10, 13, 9
_ROWS_PER_CHUNK = 1 << 17  # ~16 MB of text; bounds the temporaries.
_SCAN_BYTES = 1 << 26  # bytes per chunk of the newline/tab scan.
_MAX_FAST_EXPRESSION_WIDTH = 64  # longer expression fields parse one by one.
_HEADER_SCAN = 1 << 16  # a line 1 longer than this is no header.

_BASE, _N, _OTHER_LETTER, _INVALID = 1, 2, 4, 8  # Byte classes (bits).


def _code_table() -> np.ndarray:
  """Byte -> sequence code: A/C/G/T any case -> 0..3, everything else -> 4."""
  table = np.full(256, PAD_CODE, np.uint8)
  for code, base in enumerate('ACGT'):
    table[ord(base)] = table[ord(base.lower())] = code
  return table


def _class_table() -> np.ndarray:
  """Byte -> class bit, OR-reduced per sequence to find rows needing a look."""
  table = np.full(256, _INVALID, np.uint8)
  letters = [b for b in range(256) if chr(b).isascii() and chr(b).isalpha()]
  table[letters] = _OTHER_LETTER
  table[list(b'ACGTacgt')] = _BASE
  table[list(b'Nn')] = _N
  return table


_CODE_TABLE = _code_table()
_CLASS_TABLE = _class_table()
_EXPECTED_LINE = "'sequence<TAB>expression'"
_BOM = b'\xef\xbb\xbf'  # UTF-8 byte-order mark, written by some editors.


class DreamDataError(ValueError):
  """A DREAM file that cannot be read; message starts with `path:line: `."""


class DreamFileNotFoundError(DreamDataError, FileNotFoundError):
  """The DREAM file does not exist; message starts with `path: `."""


@dataclasses.dataclass(frozen=True)
class ReadReport:
  """What the reader found in a file (everything counted, nothing hidden).

  Lengths are the original sequence lengths, before padding / truncation to
  `SEQUENCE_LENGTH` (`length_counts`: length -> rows). `total_n` counts N bases
  over whole sequences, including any part cut off by truncation.
  `integer_share` is the fraction of rows whose expression is a whole number;
  the expression figures are NaN for a file without values (`read_dream_table`).
  `skipped_lines` maps a policy's reason to the number of lines it set aside;
  no policy drops data rows. `content_hash` is the blake2b hex digest of the
  file's bytes ('' when read with use_cache=False); `cache_path` is the cache
  entry (None when no cache was read or written).
  """
  source: str
  content_hash: str
  num_rows: int
  length_min: int
  length_max: int
  length_median: float
  length_counts: Mapping[int, int]
  num_full_length: int
  num_padded: int
  num_truncated: int
  rows_with_n: int
  total_n: int
  rows_with_other_letters: int
  total_other_letters: int
  expression_min: float
  expression_max: float
  expression_mean: float
  integer_share: float
  num_negative: int
  skipped_lines: Mapping[str, int]
  cache_path: str | None = None
  from_cache: bool = False

  def to_json(self) -> str:
    fields = dataclasses.asdict(self)
    fields['length_counts'] = {str(k): v for k, v in self.length_counts.items()}
    return json.dumps(fields, indent=1, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> 'ReadReport':
    fields = json.loads(text)
    fields['length_counts'] = {
        int(k): int(v) for k, v in fields['length_counts'].items()}
    return cls(**fields)


@dataclasses.dataclass(frozen=True)
class DreamData:
  """Encoded rows of a DREAM file.

  Attributes:
    codes: uint8 [N, SEQUENCE_LENGTH], A=0 C=1 G=2 T=3, other/padding 4.
    expression: float32 [N].
    lengths: int32 [N], sequence length before padding / truncation.
    source: path the rows were read from.
    report: statistics and policy counts (`ReadReport`), None if built by hand.
  Arrays read by `read_dream_file` are read-only (memory-mapped from the cache
  when it was hit).
  """
  codes: np.ndarray
  expression: np.ndarray
  lengths: np.ndarray
  source: str
  report: ReadReport | None = None

  def __len__(self) -> int:
    return int(self.expression.shape[0])


# ---------------------------------------------------------------------------
# Encoding helpers.


def encode_sequences(seqs: Sequence[str | bytes],
                     length: int = SEQUENCE_LENGTH) -> np.ndarray:
  """Encodes sequences to codes, truncating / padding the end to `length`.

  No validation: any character other than A/C/G/T (any case) becomes PAD_CODE.

  Args:
    seqs: N sequences, str or bytes.
    length: output length L.
  Returns:
    uint8 [N, L].
  """
  raw = [s.encode('latin-1', errors='replace') if isinstance(s, str) else
         bytes(s) for s in seqs]
  lengths = np.fromiter((len(s) for s in raw), np.int64, len(raw))
  joined = np.frombuffer(b''.join(raw), np.uint8)
  starts = np.zeros(len(raw), np.int64)
  np.cumsum(lengths[:-1], out=starts[1:])
  return _encode_rows(joined, starts, lengths, length)


def one_hot(codes: np.ndarray, dtype=np.float32) -> np.ndarray:
  """One-hot encodes codes: [..., L] -> [..., L, 4], bases A, C, G, T.

  PAD_CODE (4) gives an all-zero column. Codes above 4 are a ValueError.
  """
  codes = np.asarray(codes)
  if not np.issubdtype(codes.dtype, np.integer):
    raise ValueError(f'codes must be integers, got dtype {codes.dtype}')
  if codes.size and (codes.min() < 0 or codes.max() > PAD_CODE):
    raise ValueError(f'codes must lie in 0..{PAD_CODE}, got '
                     f'{codes.min()}..{codes.max()}')
  table = np.eye(PAD_CODE + 1, 4, dtype=dtype)
  return table[codes]


def holdout_split(num_rows: int, num_holdout: int,
                  seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits row indices into (train, holdout), reproducibly for a seed.

  Returns:
    (train_idx, holdout_idx): sorted int64 arrays, disjoint, covering
    0..num_rows-1, with len(holdout_idx) == num_holdout.
  """
  num_rows, num_holdout = int(num_rows), int(num_holdout)
  if num_rows < 0 or num_holdout < 0:
    raise ValueError(f'num_rows ({num_rows}) and num_holdout ({num_holdout}) '
                     'must be >= 0')
  if num_holdout > num_rows:
    raise ValueError(f'num_holdout ({num_holdout}) is larger than num_rows '
                     f'({num_rows}): cannot hold out more rows than there are')
  rng = np.random.default_rng(seed)
  holdout = np.sort(rng.permutation(num_rows)[:num_holdout]).astype(np.int64)
  in_train = np.ones(num_rows, bool)
  in_train[holdout] = False
  return np.flatnonzero(in_train).astype(np.int64), holdout


def _gather_rows(buf: np.ndarray, starts: np.ndarray, width: int,
                 fill: int = 0) -> np.ndarray:
  """buf[s:s + width] for each start s (sorted), `fill` past the end of buf.

  Returns uint8 [len(starts), width]. Uses a strided window view so the only
  index array is `starts` itself (an [N, width] int64 index would be 8x the
  output).
  """
  out = np.empty((starts.shape[0], width), np.uint8)
  size = buf.shape[0]
  num_inside = int(np.searchsorted(starts, size - width, side='right'))
  if num_inside:
    out[:num_inside] = sliding_window_view(buf, width)[starts[:num_inside]]
  if num_inside < starts.shape[0]:
    base = int(starts[num_inside])
    tail = np.full(size - base + width, fill, np.uint8)
    tail[:size - base] = buf[base:]
    out[num_inside:] = sliding_window_view(tail, width)[
        starts[num_inside:] - base]
  return out


def _encode_rows(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                 length: int, out: np.ndarray | None = None) -> np.ndarray:
  """Codes [N, length] of sequences buf[start:start + len], end-padded.

  Written into `out` (uint8 [N, length]) when given: saves a temporary the
  size of the output per chunk.
  """
  codes = np.empty((starts.shape[0], length), np.uint8) if out is None else out
  np.take(_CODE_TABLE, _gather_rows(buf, starts, length), out=codes,
          mode='clip')  # 'clip': no buffering; uint8 indices never exceed 255.
  short = np.flatnonzero(lengths < length)
  if short.size:
    rows = codes[short]
    rows[np.arange(length) >= lengths[short, None]] = PAD_CODE
    codes[short] = rows
  return codes


def _segment_bytes(buf: np.ndarray, starts: np.ndarray,
                   lengths: np.ndarray) -> np.ndarray:
  """Concatenation of buf[start:start + len] over rows (vectorised)."""
  total = int(lengths.sum())
  offsets = np.zeros(lengths.shape[0], np.int64)
  np.cumsum(lengths[:-1], out=offsets[1:])
  index = np.repeat(starts - offsets, lengths) + np.arange(total)
  return buf[index]


# ---------------------------------------------------------------------------
# Validation messages (per line, plain Python: only called on the first bad
# line found by the vectorised checks).


def _parse_number(text: bytes) -> float | None:
  """The expression parser used everywhere (numpy's bytes -> float64)."""
  try:
    return float(np.array([text]).astype(np.float64)[0])
  except ValueError:
    return None


def _snippet(text: bytes, limit: int = 60) -> str:
  """Quoted, escaped (tabs, non-ASCII bytes) and shortened text."""
  shown = repr(text[:limit])[1:]  # Drop the b of the bytes literal.
  return shown[:-1] + '...' + shown[-1] if len(text) > limit else shown


@dataclasses.dataclass(frozen=True)
class _Layout:
  """What a caller accepts. With optional values, line 1 settles `columns`."""
  allow_negative: bool = False
  values_optional: bool = False
  allow_header: bool = False
  columns: int = 2
  # Values are kept in this dtype: one that overflows it (1e39 in float32) is refused.
  value_dtype: type = np.float32

  def expected(self) -> str:
    return _EXPECTED_LINE if self.columns == 2 else "'sequence'"


# Letters that are no IUPAC nucleotide code: no sequence holds them, headers do.
_NOT_IUPAC = re.compile(rb'[EFIJLOPQXZefijlopqxz]')


def _looks_like_header(fields: list[bytes], layout: _Layout) -> bool:
  if len(fields) == 1:
    return layout.columns == 1 and bool(_NOT_IUPAC.search(fields[0]))
  if _parse_number(fields[-1].strip()) is not None:
    return False
  return bool(re.search(rb'[^ACGTNacgtn]', fields[0]))


def _header_end(buf: np.ndarray, layout: _Layout) -> int:
  """Bytes of a line 1 that looks like a header, newline included; else 0."""
  head = buf[:_HEADER_SCAN].tobytes()
  newline = head.find(b'\n')
  if newline < 0 and buf.shape[0] > len(head):
    return 0  # A line this long is data, whatever it holds.
  fields = (head if newline < 0 else head[:newline]).rstrip(b'\r').split(b'\t')
  if layout.values_optional:
    layout = dataclasses.replace(layout, columns=min(len(fields), 2))
  if not _looks_like_header(fields, layout):
    return 0
  return buf.shape[0] if newline < 0 else newline + 1


def _describe_columns(line: bytes, fields: list[bytes], layout: _Layout) -> str:
  """Why a line's column count is wrong ('' when it is right)."""
  same = (' (line 1 has %d; every line must have the same columns)' %
          layout.columns if layout.values_optional else '')
  if layout.columns == 1:
    return '' if len(fields) == 1 else (
        f'found {len(fields)} tab-separated columns {_snippet(line)} where '
        "line 1 has 1 (sequence only); expected 'sequence' on every line, as "
        'on line 1')
  if len(fields) == 1:
    hint = ' (comma-separated? DREAM files are tab-separated)' if (
        b',' in line) else ''
    return (f'missing tab: expected 2 tab-separated columns {_EXPECTED_LINE}, '
            f'found 1 column {_snippet(line)}{hint}{same}')
  if len(fields) > 2:
    return (f'extra columns: expected 2 tab-separated columns {_EXPECTED_LINE},'
            f' found {len(fields)} columns {_snippet(line)}')
  return ''


def _describe_bad_line(line: bytes, line_number: int, layout: _Layout) -> str:
  """What is wrong with one line, and what was expected."""
  if line.endswith(b'\r'):
    line = line[:-1]
  if not line.strip(b' '):
    return ('blank line; expected ' + layout.expected() +
            ' (blank lines are only allowed at the end of the file)')
  fields = line.split(b'\t')
  if line_number == 1 and _looks_like_header(fields, layout):
    return (f'line looks like a header ({_snippet(line)}); DREAM files have no '
            'header: remove the line (e.g. tail -n +2 FILE > NEW_FILE); '
            f'expected {layout.expected()} from line 1 on')
  if columns := _describe_columns(line, fields, layout):
    return columns
  sequence = fields[0]
  if not sequence:
    return 'empty sequence; expected a DNA sequence before the tab'
  classes = _CLASS_TABLE[np.frombuffer(sequence, np.uint8)]
  invalid = np.flatnonzero(classes == _INVALID)
  if invalid.size:
    column = int(invalid[0])
    return (f'invalid character {_snippet(sequence[column:column + 1])} at '
            f'position {column + 1} of the sequence; expected letters '
            '(A, C, G, T, N)')
  if not (classes == _BASE).any():
    return (f'sequence {_snippet(sequence)} has no A, C, G or T (only N or '
            'other letters); expected a DNA sequence')
  if layout.columns == 2:
    return _describe_expression(fields[1], layout) or (
        f'malformed line {_snippet(line)}; expected {layout.expected()}')
  return f'malformed line {_snippet(line)}; expected {layout.expected()}'


def _describe_expression(expression: bytes, layout: _Layout) -> str:
  """Why an expression field is refused ('' when it is fine)."""
  if not expression.strip():
    return 'missing expression after the tab; expected a number'
  value = _parse_number(expression)
  if value is None:
    return (f'expression {_snippet(expression)} is not a number; expected a '
            'decimal number such as 12 or 15.18')
  if not np.isfinite(value):
    return (f'expression {_snippet(expression)} is not finite; expected a '
            'finite number')
  if abs(value) > np.finfo(layout.value_dtype).max:
    return (f'expression {_snippet(expression)} overflows '
            f'{np.dtype(layout.value_dtype).name}, the type values are kept in; expected '
            f'a number below {np.finfo(layout.value_dtype).max:.3g} in magnitude')
  if value < 0 and not layout.allow_negative:
    return _negative_message(expression.decode('latin-1'))
  return ''


def _negative_message(shown: str) -> str:
  return (f'negative expression {shown}; expected a value >= 0 (training '
          'files); pass allow_negative=True for files on another scale, such as '
          "the test set's measured values")


def _line_error(path: str, buf: np.ndarray, line_start: int, line_end: int,
                line_number: int, layout: _Layout) -> DreamDataError:
  line = buf[line_start:line_end].tobytes()
  message = _describe_bad_line(line, line_number, layout)
  return DreamDataError(f'{path}:{line_number}: {message}')


# ---------------------------------------------------------------------------
# Parsing a whole buffer.


def _find_bytes(buf: np.ndarray, value: int) -> np.ndarray:
  """Sorted int64 positions of `value` in buf, scanned in chunks."""
  parts = [np.flatnonzero(buf[i:i + _SCAN_BYTES] == value) + i
           for i in range(0, buf.shape[0], _SCAN_BYTES)]
  return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def _strip_trailing_blank(buf: np.ndarray) -> tuple[np.ndarray, int]:
  """Drops trailing newlines/CR/spaces; returns (buf, blank lines dropped)."""
  end = buf.shape[0]
  tail_start = max(0, end - 4096)
  while True:
    tail = buf[tail_start:end]
    keep = np.flatnonzero((tail != _NEWLINE) & (tail != _CR) & (tail != 32))
    if keep.size or tail_start == 0:
      break
    tail_start = max(0, tail_start - (end - tail_start))
  stop = tail_start + int(keep[-1]) + 1 if keep.size else 0
  newlines = int(np.count_nonzero(buf[stop:end] == _NEWLINE))
  # The first newline after the data ends the last line; the rest were blank.
  return buf[:stop], max(0, newlines - 1)


@dataclasses.dataclass
class _Counts:
  rows_with_n: int = 0
  total_n: int = 0
  rows_with_other_letters: int = 0
  total_other_letters: int = 0


def _parse_expressions(buf, starts, lengths):
  """float64 [N] of fields buf[start:start+len]; NaN where not a number."""
  values = np.full(starts.shape[0], np.nan)
  fast = np.flatnonzero(lengths <= _MAX_FAST_EXPRESSION_WIDTH)
  slow = np.flatnonzero(lengths > _MAX_FAST_EXPRESSION_WIDTH)
  if fast.size:
    width = int(lengths[fast].max())
    text = _gather_rows(buf, starts[fast], width)
    text[np.arange(width) >= lengths[fast, None]] = 0
    text = text.view(f'S{width}')[:, 0]
    try:
      values[fast] = text.astype(np.float64)
    except ValueError:  # Some field is not a number: parse one by one.
      values[fast] = [np.nan if (v := _parse_number(t)) is None else v
                      for t in text.tolist()]
  for row in slow:
    value = _parse_number(buf[starts[row]:starts[row] + lengths[row]].tobytes())
    values[row] = np.nan if value is None else value
  return values


def _count_class(buf, starts, lengths, byte_class) -> int:
  """Number of bytes of class `byte_class` in the given sequences."""
  if not starts.size:
    return 0
  text = _segment_bytes(buf, starts, lengths)
  return int(np.count_nonzero(_CLASS_TABLE[text] == byte_class))


def _parse_row_chunk(path, buf, line_starts, tabs, line_ends, first_line,
                     layout, counts, codes_out):
  """Validates and encodes one chunk of n lines.

  `tabs` ends each sequence: the line's one tab, or its end when the file has
  no values. Writes codes into `codes_out` (uint8 [n, 110]); returns
  (expression float64 [n] or None without values, lengths int32 [n]); raises
  DreamDataError naming the first bad line.
  """
  lengths = tabs - line_starts
  bad = lengths == 0

  # Which byte classes each sequence holds: one OR-reduction over the chunk.
  # Segments alternate sequence / rest of line; empty sequences are flagged
  # above (reduceat would report their first byte instead of nothing).
  lo = int(line_starts[0])
  bounds = np.empty(2 * lengths.shape[0], np.int64)
  bounds[0::2] = line_starts - lo
  bounds[1::2] = tabs - lo
  classes = _CLASS_TABLE[buf[lo:int(line_ends[-1]) + 1]]
  if classes.shape[0] <= bounds[-1]:  # No values and no newline at the end.
    classes = np.append(classes, 0)
  seen = np.bitwise_or.reduceat(classes, bounds)[0::2]
  del classes
  bad |= (seen & _INVALID).astype(bool) | ~(seen & _BASE).astype(bool)

  expression = None
  if layout.columns == 2:
    expression_lengths = line_ends - tabs - 1
    expression = _parse_expressions(buf, tabs + 1, expression_lengths)
    bad |= (expression_lengths == 0) | ~np.isfinite(expression)
    bad |= np.abs(expression) > np.finfo(layout.value_dtype).max
    if not layout.allow_negative:
      bad |= expression < 0
  bad_rows = np.flatnonzero(bad)
  if bad_rows.size:
    row = int(bad_rows[0])
    raise _line_error(path, buf, int(line_starts[row]), int(line_ends[row]),
                      first_line + row, layout)

  # Counting N and other letters only looks at the (few) rows holding them.
  rows = np.flatnonzero(seen & _N)
  counts.rows_with_n += rows.size
  counts.total_n += _count_class(buf, line_starts[rows], lengths[rows], _N)
  rows = np.flatnonzero(seen & _OTHER_LETTER)
  counts.rows_with_other_letters += rows.size
  counts.total_other_letters += _count_class(
      buf, line_starts[rows], lengths[rows], _OTHER_LETTER)

  _encode_rows(buf, line_starts, lengths, SEQUENCE_LENGTH, out=codes_out)
  return expression, lengths.astype(np.int32)


def _line_bounds(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(starts, ends) int64 of every line, ends before the LF or CRLF."""
  newlines = _find_bytes(buf, _NEWLINE)
  line_starts = np.empty(newlines.shape[0] + 1, np.int64)
  line_starts[0] = 0
  line_starts[1:] = newlines + 1
  line_ends = np.append(newlines, buf.shape[0])
  del newlines
  has_cr = buf[np.maximum(line_ends - 1, 0)] == _CR
  has_cr &= line_ends > line_starts
  line_ends -= has_cr
  return line_starts, line_ends


@dataclasses.dataclass(frozen=True)
class _Parsed:
  """`_parse_buffer`'s rows; `buf` and `sequence_starts` locate their text."""
  codes: np.ndarray
  expression: np.ndarray | None
  lengths: np.ndarray
  extra: dict
  buf: np.ndarray  # The rows' text: no BOM, allowed header, trailing blanks.
  sequence_starts: np.ndarray
  first_line: int  # Line number of row 0 (2 after an allowed header).


def _data_text(path: str, buf: np.ndarray,
               layout: _Layout) -> tuple[np.ndarray, int, dict[str, int]]:
  """(bytes of the data lines, line number of the first, lines set aside)."""
  if buf[:3].tobytes() == _BOM:
    buf = buf[3:]
  buf, trailing_blank = _strip_trailing_blank(buf)
  skipped = {'trailing blank lines': trailing_blank} if trailing_blank else {}
  expected = _EXPECTED_LINE + (" or 'sequence'" if layout.values_optional
                               else '')
  if buf.shape[0] == 0:
    raise DreamDataError(f'{path}:1: empty file; expected lines {expected}')
  header = _header_end(buf, layout) if layout.allow_header else 0
  if not header:
    return buf, 1, skipped
  if header == buf.shape[0]:
    raise DreamDataError(f'{path}:2: no rows after the header line; expected '
                         f'lines {expected}')
  return buf[header:], 2, {'header line': 1, **skipped}


def _parse_buffer(path: str, buf: np.ndarray, layout: _Layout,
                  value_dtype=np.float32) -> _Parsed:
  """Parses a whole file's bytes (the one parser of every caller)."""
  layout = dataclasses.replace(layout, value_dtype=value_dtype)
  buf, first_line, skipped = _data_text(path, buf, layout)
  line_starts, line_ends = _line_bounds(buf)
  num_lines = line_starts.shape[0]
  tabs = _find_bytes(buf, _TAB)
  tab_counts = np.diff(np.searchsorted(tabs, line_starts), append=tabs.shape[0])
  if layout.values_optional:
    layout = dataclasses.replace(layout, columns=min(int(tab_counts[0]), 1) + 1)
  first_bad = num_lines
  bad_lines = np.flatnonzero((tab_counts != layout.columns - 1) |
                             (line_ends == line_starts))
  if bad_lines.size:
    # Lines before the first one with a wrong tab count still get every check,
    # so the error always names the first bad line of the file.
    first_bad = int(bad_lines[0])
  if layout.columns == 1:
    tabs = line_ends[:first_bad]
    if first_line == 1:
      _check_header(path, buf, int(line_ends[0]), layout)
  elif first_bad < num_lines:
    tabs = tabs[np.searchsorted(tabs, line_starts[:first_bad])]
  del tab_counts

  codes = np.empty((first_bad, SEQUENCE_LENGTH), np.uint8)
  expression = (np.empty(first_bad, value_dtype) if layout.columns == 2
                else None)
  lengths = np.empty(first_bad, np.int32)
  counts = _Counts()
  for lo in range(0, first_bad, _ROWS_PER_CHUNK):
    hi = min(lo + _ROWS_PER_CHUNK, first_bad)
    values, lengths[lo:hi] = _parse_row_chunk(
        path, buf, line_starts[lo:hi], tabs[lo:hi], line_ends[lo:hi],
        lo + first_line, layout, counts, codes[lo:hi])
    if expression is not None:
      expression[lo:hi] = values
  if first_bad < num_lines:
    raise _line_error(path, buf, int(line_starts[first_bad]),
                      int(line_ends[first_bad]), first_bad + first_line, layout)
  extra = dict(dataclasses.asdict(counts), skipped_lines=skipped)
  return _Parsed(codes, expression, lengths, extra, buf,
                 line_starts[:first_bad], first_line)


def _check_header(path: str, buf: np.ndarray, line_end: int,
                  layout: _Layout) -> None:
  """A one-column line 1 holding letters no sequence has is a header."""
  if _looks_like_header([buf[:line_end].tobytes()], layout):
    raise _line_error(path, buf, 0, line_end, 1, layout)


def _summarise(path, content_hash, expression, lengths, extra) -> ReadReport:
  counts = np.bincount(lengths)
  # A file without values has no expression figures: NaN, not made-up zeros.
  values = (np.full(1, np.nan) if expression is None
            else expression.astype(np.float64))
  return ReadReport(
      source=path,
      content_hash=content_hash,
      num_rows=int(lengths.shape[0]),
      length_min=int(lengths.min()),
      length_max=int(lengths.max()),
      length_median=float(np.median(lengths)),
      length_counts={int(k): int(counts[k]) for k in np.flatnonzero(counts)},
      num_full_length=int(np.count_nonzero(lengths == SEQUENCE_LENGTH)),
      num_padded=int(np.count_nonzero(lengths < SEQUENCE_LENGTH)),
      num_truncated=int(np.count_nonzero(lengths > SEQUENCE_LENGTH)),
      expression_min=float(values.min()),
      expression_max=float(values.max()),
      expression_mean=float(values.mean()),
      integer_share=float(np.mean(values == np.round(values))),
      num_negative=int(np.count_nonzero(values < 0)),
      **extra)


# ---------------------------------------------------------------------------
# Files and cache.


def _read_source(path: str) -> np.ndarray:
  try:
    data = textfiles.read_bytes(path)
  except textfiles.CorruptGzipError as e:
    raise DreamDataError(f'{path}:1: corrupt gzip file ({e}); expected a '
                         'complete gzip of a DREAM file') from None
  return np.frombuffer(data, np.uint8)


def default_cache_dir() -> pathlib.Path:
  """$ENFORMER_SMALL_CACHE, else ~/.cache/enformer_small."""
  env = os.environ.get(CACHE_ENV_VAR)
  if env:
    return pathlib.Path(env).expanduser()
  return pathlib.Path('~/.cache/enformer_small').expanduser()


def cache_entry_dir(cache_dir: str | os.PathLike[str] | None,
                    content_hash: str) -> pathlib.Path:
  """Directory holding the cached arrays of a file with this content hash."""
  root = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  return root / f'{_CACHE_FORMAT}-{content_hash}'


_ARRAYS = {  # name -> (dtype, trailing shape)
    'codes': (np.uint8, (SEQUENCE_LENGTH,)),
    'expression': (np.float32, ()),
    'lengths': (np.int32, ()),
}


def _write_cache(entry: pathlib.Path, arrays: Mapping[str, np.ndarray],
                 report: ReadReport) -> bool:
  return files.write_cache_entry(entry, arrays, 'report.json',
                                 report.to_json().encode())


def _check_cache(arrays: Mapping[str, np.ndarray], index: bytes) -> ReadReport:
  report = ReadReport.from_json(index.decode())
  for name, (dtype, shape) in _ARRAYS.items():
    expected = (report.num_rows,) + shape
    if arrays[name].dtype != dtype or arrays[name].shape != expected:
      raise ValueError(f'{name}.npy: found {arrays[name].dtype} {arrays[name].shape}, '
                       f'expected {np.dtype(dtype)} {expected}')
  return report


def _load_cache(entry: pathlib.Path) -> tuple[dict[str, np.ndarray],
                                              ReadReport] | None:
  """The cached arrays and report, or None on a miss or a corrupt entry."""
  return files.load_cache_entry(entry, tuple(_ARRAYS), 'report.json', _check_cache)


def _check_negative(path: str, expression: np.ndarray) -> None:
  """Raises for the first negative value (cached files read again strictly)."""
  negative = np.flatnonzero(expression < 0)
  if negative.size:
    row = int(negative[0])
    raise DreamDataError(
        f'{path}:{row + 1}: ' + _negative_message(repr(float(expression[row]))))


def _check_path(path: str) -> None:
  if not os.path.exists(path):
    raise DreamFileNotFoundError(
        f'{path}: no such file; expected a DREAM file {_EXPECTED_LINE}')
  if os.path.isdir(path):
    raise DreamDataError(f'{path}: is a directory; expected a DREAM file '
                         f'{_EXPECTED_LINE}')


def _read_error(path: str, error: OSError) -> DreamDataError:
  reason = error.strerror or error
  return DreamDataError(f'{path}: cannot read the file ({reason}); expected a '
                        'readable DREAM file')


def read_dream_file(path: str | os.PathLike[str], *,
                    cache_dir: str | os.PathLike[str] | None = None,
                    use_cache: bool = True,
                    allow_negative: bool = False) -> DreamData:
  """Reads, validates and encodes a DREAM file, using the cache if possible.

  The reader for training (millions of rows): values required, float32, no
  sequence text. `read_dream_table` is the same parser for commands that need
  the sequences as written or accept a file without values.

  Args:
    path: `sequence<TAB>expression` file, plain or gzip.
    cache_dir: cache root; default `$ENFORMER_SMALL_CACHE` or
      `~/.cache/enformer_small`.
    use_cache: False reads the source without looking up or writing the cache.
    allow_negative: accept negative expression (test-set measurements on the
      MAUDE scale); False for training files.
  Returns:
    DreamData with codes [N, 110] uint8, expression [N] float32, lengths [N]
    int32 and a ReadReport.
  Raises:
    DreamFileNotFoundError: no such file.
    DreamDataError: the file is malformed (message `path:line: ...`).
  """
  path = os.fspath(path)
  _check_path(path)
  try:
    content_hash, entry = '', None
    if use_cache:
      content_hash = files.hash_file(path)
      entry = cache_entry_dir(cache_dir, content_hash)
      cached = _load_cache(entry)
      if cached is not None:
        arrays, report = cached
        if not allow_negative:
          _check_negative(path, arrays['expression'])
        report = dataclasses.replace(report, source=path,
                                     cache_path=str(entry), from_cache=True)
        return DreamData(source=path, report=report, **arrays)
    source = _read_source(path)
  except OSError as e:
    raise _read_error(path, e) from None

  parsed = _parse_buffer(path, source, _Layout(allow_negative=allow_negative))
  del source
  report = _summarise(path, content_hash, parsed.expression, parsed.lengths,
                      parsed.extra)
  arrays = dict(codes=parsed.codes, expression=parsed.expression,
                lengths=parsed.lengths)
  del parsed
  if entry is not None and _write_cache(entry, arrays, report):
    report = dataclasses.replace(report, cache_path=str(entry))
  for array in arrays.values():
    array.setflags(write=False)
  return DreamData(source=path, report=report, **arrays)


@dataclasses.dataclass(frozen=True)
class DreamTable:
  """Rows of a `sequence<TAB>value` file with their text (`read_dream_table`).

  Attributes:
    sequences: N sequences exactly as written (case kept, line ends removed).
    values: float64 [N], or None for a file without a value column.
    codes: uint8 [N, SEQUENCE_LENGTH], encoded as `read_dream_file` does.
    lengths: int32 [N], sequence lengths before padding / truncation.
    source: path the rows were read from.
    report: what the reader found (expression figures NaN without values).
    first_line: line number of row 0: row i is line i + first_line (2 after a
      header skipped by `allow_header`, else 1).
  """
  sequences: tuple[str, ...]
  values: np.ndarray | None
  codes: np.ndarray
  lengths: np.ndarray
  source: str
  report: ReadReport
  first_line: int = 1

  def __len__(self) -> int:
    return len(self.sequences)


def read_dream_table(path: str | os.PathLike[str], *,
                     values_optional: bool = False,
                     allow_negative: bool = False,
                     allow_header: bool = False) -> DreamTable:
  """Reads a `sequence<TAB>value` file keeping the text: test sets, inputs,
  submissions.

  The parser and policies of `read_dream_file` (module docstring), without the
  cache, with values kept as float64 (scores are computed in float64).

  Args:
    path: plain or gzip file.
    values_optional: also accept a file of bare sequences, one per line (line
      1 decides; every line must have the same columns). False: values
      required, as for training and the measured test set.
    allow_negative: accept negative values (measurements on another scale).
    allow_header: skip a line 1 that looks like a header instead of refusing
      it (submissions: pandas writes one); the rows then start on line 2.
  Raises:
    DreamFileNotFoundError, DreamDataError (`path:line: ...`).
  """
  path = os.fspath(path)
  _check_path(path)
  try:
    source = _read_source(path)
  except OSError as e:
    raise _read_error(path, e) from None
  layout = _Layout(allow_negative=allow_negative,
                   values_optional=values_optional, allow_header=allow_header)
  parsed = _parse_buffer(path, source, layout, value_dtype=np.float64)
  text = parsed.buf.tobytes()
  # Validated sequences hold ASCII letters only, so ASCII decoding is safe.
  sequences = tuple(
      text[start:start + length].decode('ascii') for start, length in zip(
          parsed.sequence_starts.tolist(), parsed.lengths.tolist()))
  report = _summarise(path, '', parsed.expression, parsed.lengths,
                      parsed.extra)
  for array in (parsed.codes, parsed.lengths, parsed.expression):
    if array is not None:
      array.setflags(write=False)
  return DreamTable(sequences, parsed.expression, parsed.codes, parsed.lengths,
                    path, report, parsed.first_line)


def report_lines(report: ReadReport) -> list[str]:
  """Human-readable summary of a ReadReport, one fact per line."""
  lines = [
      f'rows: {report.num_rows:,}',
      f'sequence lengths: min {report.length_min}, median '
      f'{report.length_median:g}, max {report.length_max}; '
      f'{report.num_full_length:,} of length {SEQUENCE_LENGTH}, '
      f'{report.num_padded:,} padded, {report.num_truncated:,} truncated',
      f'rows with N: {report.rows_with_n:,} ({report.total_n:,} N bases)',
      f'rows with other letters (encoded as N): '
      f'{report.rows_with_other_letters:,} '
      f'({report.total_other_letters:,} letters)',
      f'expression: min {report.expression_min:.6g}, max '
      f'{report.expression_max:.6g}, mean {report.expression_mean:.6g}; '
      f'{100 * report.integer_share:.1f}% integers, {report.num_negative:,} '
      'negative',
  ]
  if report.skipped_lines:
    lines.append('set aside by policy: ' + ', '.join(
        f'{v:,} {k}' for k, v in report.skipped_lines.items()) +
                 ' (no data rows dropped)')
  else:
    lines.append('set aside by policy: nothing (no data rows dropped)')
  return lines
