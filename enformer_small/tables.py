"""Your own data: sequence-to-activity tables with a header, one or more targets.

Format: a header line naming the columns, then one row per line. Tab- or
comma-separated (the header decides: a tab in it means tabs, else commas; no
quoting, so fields hold no separators), plain or gzip (magic bytes, as
`dream_data`). Fields are stripped of surrounding spaces; CRLF line endings,
a missing final newline and blank lines at the very end are accepted. Other
columns than the named ones are ignored.

Sequences are encoded as DREAM sequences are (`dream_data.encode_sequences`:
A/C/G/T any case -> 0..3, N and other letters -> `PAD_CODE`) and validated the
same way (letters only, at least one A/C/G/T). Length policy
(`TableSpec.length`, `TableSpec.pad`): with `pad=False` every sequence must be
exactly `length` long and the first one that is not is an error (a fixed-length
library); with `pad=True` shorter sequences are padded at the 3' end with
`PAD_CODE` (all-zero one-hot columns) and longer ones truncated at the 3' end,
as `dream_data` brings rows to 110 bp; the report counts both.

Prediction input (`read_table(..., for_prediction=True)`, `experiments.predict`):
a table in the layout a model was trained on, whose target columns, when all
present, are the measured values; absent (all of them) the rows are predicted,
not scored. Its sequences are kept as written, for the output, so it is parsed
and not cached (read once, and the cache holds no text).

Errors are `TableError`s naming `path:line: ` (1-based, the header is line 1):
empty file, no data rows, a named column missing from the header, ragged rows
(another number of fields than the header), empty or invalid sequences, wrong
lengths, and missing, non-numeric, NaN or infinite targets.

Cache: as `dream_data`, keyed by a blake2b hash of the file's bytes and the
spec (so the same file read for other columns or lengths is another entry),
under `dream_data.default_cache_dir()`, written atomically, memory-mapped on a
hit, deleted with a warning when corrupt.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import List, Optional, Sequence, Tuple

import numpy as np

from enformer_small import dream_data
from enformer_small import files
from enformer_small import textfiles

_CACHE_FORMAT = 'table-v1'


class TableError(dream_data.DreamDataError):
  """A table that cannot be read; message starts with `path:line: `."""


@dataclasses.dataclass(frozen=True)
class TableSpec:
  """Which columns to read and how long the encoded rows are.

  Attributes:
    target_columns: the target columns, in the order of the model's outputs.
    sequence_column: the column holding the DNA sequences.
    length: codes per encoded row.
    pad: False: every sequence must be `length` long; True: 3' padding with
      `PAD_CODE` / 3' truncation to `length`.
  """
  target_columns: Tuple[str, ...]
  sequence_column: str = 'sequence'
  length: int = 110
  pad: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'target_columns', tuple(self.target_columns))
    if not self.target_columns:
      raise ValueError('a table needs at least one target column')
    if self.length < 1:
      raise ValueError(f'length must be >= 1, got {self.length}')
    named = (self.sequence_column,) + self.target_columns
    if len(set(named)) != len(named):
      raise ValueError(f'columns named twice: {named}')


@dataclasses.dataclass(frozen=True)
class TableData:
  """Encoded rows of a table.

  codes: uint8 [N, spec.length]; expression: float32 [N, T] targets in the order
  of `spec.target_columns` (named as the pipeline reads DREAM rows), None for a
  prediction input without them; lengths: int32 [N] sequence lengths before
  padding / truncation; sequences: a prediction input's sequences as written.
  """
  codes: np.ndarray
  expression: Optional[np.ndarray]
  lengths: np.ndarray
  spec: TableSpec
  source: str
  content_hash: str
  from_cache: bool = False
  sequences: Optional[Tuple[str, ...]] = None

  def __len__(self) -> int:
    return int(self.lengths.shape[0])

  @property
  def num_padded(self) -> int:
    return int(np.count_nonzero(self.lengths < self.spec.length))

  @property
  def num_truncated(self) -> int:
    return int(np.count_nonzero(self.lengths > self.spec.length))


def _fail(path: str, line: int, message: str) -> TableError:
  return TableError(f'{path}:{line}: {message}')


def _separator_name(separator: bytes) -> str:
  return 'tab' if separator == b'\t' else 'comma'


def _split_lines(path: str, data: bytes) -> List[bytes]:
  text = data.rstrip(b'\r\n \t')
  if not text:
    raise _fail(path, 1, 'empty file; expected a header line naming the columns, '
                'then one row per line')
  return [line[:-1] if line.endswith(b'\r') else line for line in text.split(b'\n')]


def _header(path: str, line: bytes, spec: TableSpec,
            targets_optional: bool) -> Tuple[bytes, int, List[int]]:
  """(separator, number of columns, [sequence column, target columns...] indices).

  targets_optional: a header with none of the target columns gives the sequence
  column's index alone.
  """
  separator = b'\t' if b'\t' in line else b','
  line = line.removeprefix(b'\xef\xbb\xbf')  # A UTF-8 byte order mark (Excel writes one).
  names = [f.strip().decode('latin-1') for f in line.split(separator)]
  wanted = (spec.sequence_column,) + spec.target_columns
  twice = sorted({name for name in names if names.count(name) > 1 and name in wanted})
  if twice:
    raise _fail(path, 1, f'column(s) {", ".join(map(repr, twice))} named twice in the '
                'header: which one is meant is ambiguous; rename one')
  if targets_optional and not set(spec.target_columns) & set(names):
    wanted = wanted[:1]
  missing = [name for name in wanted if name not in names]
  if missing:
    hint = (' (measured values are all the target columns or none of them)'
            if targets_optional and spec.sequence_column not in missing else '')
    raise _fail(path, 1, f'missing column(s) {", ".join(map(repr, missing))} in the '
                f'header; found columns {names} (separator '
                f'{_separator_name(separator)}){hint}')
  return separator, len(names), [names.index(name) for name in wanted]


def _fields(path: str, lines: Sequence[bytes], separator: bytes, num_columns: int,
            indices: Sequence[int]) -> List[List[bytes]]:
  """Per wanted column, its stripped field of every data line."""
  columns: List[List[bytes]] = [[] for _ in indices]
  for number, line in enumerate(lines, start=2):
    fields = line.split(separator)
    if len(fields) != num_columns:
      what = 'blank line' if not line.strip() else f'{len(fields)} field(s)'
      raise _fail(path, number, f'{what}; expected {num_columns} '
                  f'{_separator_name(separator)}-separated fields as '
                  'in the header (blank lines are only allowed at the end)')
    for column, index in zip(columns, indices):
      column.append(fields[index].strip())
  return columns


# The DREAM reader's byte classes: the same validation of sequences.
# pylint: disable=protected-access
_CLASS_TABLE, _INVALID, _BASE = (dream_data._CLASS_TABLE, dream_data._INVALID,
                                 dream_data._BASE)
_parse_number = dream_data._parse_number
# pylint: enable=protected-access


def _check_sequences(path: str, sequences: Sequence[bytes], spec: TableSpec) -> None:
  for number, sequence in enumerate(sequences, start=2):
    classes = _CLASS_TABLE[np.frombuffer(sequence, np.uint8)]
    bad = np.flatnonzero(classes == _INVALID)
    if not sequence:
      raise _fail(path, number, f'empty sequence in column {spec.sequence_column!r}')
    if bad.size:
      raise _fail(path, number, f'invalid character {sequence[bad[0]:bad[0] + 1]!r} at '
                  f'position {bad[0] + 1} of the sequence; expected letters (A, C, G, '
                  'T, N)')
    if not (classes == _BASE).any():
      raise _fail(path, number, 'sequence has no A, C, G or T; expected a DNA sequence')
    if not spec.pad and len(sequence) != spec.length:
      raise _fail(path, number, f'sequence of {len(sequence)} bp; expected '
                  f'{spec.length} bp (every sequence of a fixed-length table has the '
                  'same length: set the length, or pad / truncate to it)')


def _parse_targets(path: str, column: Sequence[bytes], name: str) -> np.ndarray:
  try:
    values = np.array(column, dtype=object).astype(np.float64)
  except ValueError:
    values = np.array([_parse_number(t) if t else None for t in column],
                      dtype=np.float64)
  # Targets are kept in float32: a value beyond its range is refused here.
  bad = np.flatnonzero(~(np.abs(values) <= np.finfo(np.float32).max))
  if bad.size:
    row = int(bad[0])
    shown = column[row].decode('latin-1')
    if not shown:
      raise _fail(path, row + 2, f'missing target {name!r}; expected a number')
    if np.isfinite(values[row]):
      raise _fail(path, row + 2, f'target {name!r} is {shown!r}, which overflows float32 '
                  '(the type targets are kept in); expected a number below 3.4e+38 in '
                  'magnitude')
    raise _fail(path, row + 2, f'target {name!r} is {shown!r}; expected a finite number')
  return values


def parse_table(path: str, data: bytes, spec: TableSpec, *,
                for_prediction: bool = False) -> TableData:
  """Validates and encodes a table's bytes (no cache); `read_table`'s arguments."""
  lines = _split_lines(path, data)
  separator, num_columns, indices = _header(path, lines[0], spec, for_prediction)
  if len(lines) == 1:
    raise _fail(path, 2, 'no data rows after the header')
  sequences, *targets = _fields(path, lines[1:], separator, num_columns, indices)
  _check_sequences(path, sequences, spec)
  expression = None
  if targets:
    expression = np.stack([_parse_targets(path, column, name) for column, name
                           in zip(targets, spec.target_columns)], axis=1)
    expression = expression.astype(np.float32)
  return TableData(
      codes=dream_data.encode_sequences(sequences, spec.length), expression=expression,
      lengths=np.array([len(s) for s in sequences], np.int32),
      spec=spec, source=path, content_hash='',
      sequences=(tuple(s.decode('latin-1') for s in sequences) if for_prediction
                 else None))


def _cache_key(path: str, spec: TableSpec) -> str:
  digest = hashlib.blake2b(digest_size=20)
  digest.update(files.hash_file(path).encode())
  digest.update(json.dumps(dataclasses.asdict(spec), sort_keys=True).encode())
  return digest.hexdigest()


_ARRAYS = ('codes', 'expression', 'lengths')


def _load_cache(entry: pathlib.Path, spec: TableSpec):
  def check(arrays, _):
    n = arrays['lengths'].shape[0]
    if (arrays['codes'].shape != (n, spec.length) or
        arrays['expression'].shape != (n, len(spec.target_columns))):
      raise ValueError('array shapes do not fit the spec')

  loaded = files.load_cache_entry(entry, _ARRAYS, 'done', check)
  return None if loaded is None else loaded[0]


def _write_cache(entry: pathlib.Path, table: TableData) -> None:
  files.write_cache_entry(entry, {name: getattr(table, name) for name in _ARRAYS},
                          'done', b'ok\n')


def read_table(path: str | os.PathLike, spec: TableSpec, *, cache_dir=None,
               use_cache: bool = True, for_prediction: bool = False) -> TableData:
  """Reads, validates and encodes a table, through the content-keyed cache.

  for_prediction: a prediction input (module docstring): target columns optional,
  `sequences` kept, no cache.

  Raises:
    TableError: a missing, unreadable or malformed file (`path:line: ...`).
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise TableError(f'{path}: no such file; expected a table with a header naming '
                     f'the columns {(spec.sequence_column,) + spec.target_columns}')
  try:
    entry = None
    if use_cache and not for_prediction:
      root = pathlib.Path(cache_dir) if cache_dir else dream_data.default_cache_dir()
      entry = root / f'{_CACHE_FORMAT}-{_cache_key(path, spec)}'
      cached = _load_cache(entry, spec)
      if cached is not None:
        return TableData(spec=spec, source=path, content_hash=entry.name,
                         from_cache=True, **cached)
    data = textfiles.read_bytes(path)
  except textfiles.CorruptGzipError as e:
    raise TableError(f'{path}:1: corrupt gzip file ({e})') from None
  except OSError as e:
    raise TableError(f'{path}: cannot read the file ({e.strerror or e})') from None
  table = parse_table(path, data, spec, for_prediction=for_prediction)
  if entry is not None:
    _write_cache(entry, table)
    table = dataclasses.replace(table, content_hash=entry.name)
  for array in (table.codes, table.expression, table.lengths):
    if array is not None:
      array.setflags(write=False)
  return table
