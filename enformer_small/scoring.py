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
"""Official scoring of the Random Promoter DREAM Challenge 2022 (numpy only).

The test set has 71,103 rows (`test_71103_measured.tsv`, row index = test row).
Nine subsets are scored, each with a weight:

  subset              weight  rows
  all                 1       every test row
  high, low, yeast,   0.3     single test rows (`pos` column of the subset CSV)
  random
  challenging         0.5     single test rows
  SNVs                1.25    pairs (alt, ref): correlation of alt - ref
  motif_perturbation  0.3     pairs (alt, ref)
  motif_tiling        0.4     pairs (alt, ref)

Per subset, Pearson r and Spearman rho between predictions and measurements
(pair subsets: between predicted and measured differences alt - ref). Then

  Score PearsonR^2 = sum(w * r^2) / 4.65   (the leaderboards' score)
  weighted mean r  = sum(w * r)   / 4.65
  Score Spearman   = sum(w * rho) / 4.65

Splits (the definition the challenge's evaluation code uses; it reproduces the
published reference figures, see tests/test_scoring.py):

* public: exactly the entries of `public_leaderboard/<subset>_exp_indices.json`
  (pair subsets keyed "alt,ref"), kept as listed. Public `all` is the union of
  every public row: the single subsets' rows and both rows of every public
  pair (9,045 rows, the keys of `ground.json`).
* private (final): single subsets: the subset's distinct rows that are not
  public rows, i.e. not in that union (a row public in any subset, or as a
  member of a public pair, is private nowhere). `all`: every test row not in
  the union (62,058 rows). Pair subsets: the subset's distinct (alt, ref)
  pairs that are not a public pair of any pair subset. Pairs are compared
  unordered, because the reconstructed SNV pairs list the lower row first
  while the public file keeps the official alt,ref order; for the motif
  subsets both files use the same orientation and ordered and unordered
  comparison agree. Rows of a private pair may themselves be public rows.

Subset definitions are inputs: `load_official_splits(subsets_dir, public_dir)`
reads the files named in `SUBSET_FILES`; `build_splits` builds the same from
arrays (tests, other layouts).

Policies (each one is tested):

* Non-finite predictions (NaN, inf) are an error (`ScoringError`) naming where
  the first one is (file and line, or key). The json and csv readers also say
  how many there are; a tsv submission is a `sequence<TAB>value` file, read by
  the one reader of that layout (`dream_data.read_dream_table`), which stops at
  the first bad line like it does for every other file.
* A constant prediction (or constant predicted differences within a pair
  subset) has no correlation: that subset's r, r^2 and rho are NaN and so are
  the split's three scores, explicitly, never a silent number. A subset with
  fewer than 2 rows/pairs in a split is NaN the same way.
* Predictions that do not cover every row a split needs (a leaderboard JSON has
  only the public rows) cannot be scored on that split: `score_predictions`
  scores the splits that are covered and reports the others as None; asking
  for an uncovered split is an error naming how many rows are missing.
"""

import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import types
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from enformer_small import dream_data
from enformer_small import metrics
from enformer_small import textfiles

NUM_TEST_ROWS = 71103
SCORE_DENOMINATOR = 4.65

# Official weights, in the challenge's order (also the order of every table).
SUBSET_WEIGHTS: Mapping[str, float] = types.MappingProxyType({
    'all': 1.0,
    'high': 0.3,
    'low': 0.3,
    'yeast': 0.3,
    'random': 0.3,
    'challenging': 0.5,
    'SNVs': 1.25,
    'motif_perturbation': 0.3,
    'motif_tiling': 0.4,
})
SUBSET_NAMES: tuple[str, ...] = tuple(SUBSET_WEIGHTS)
PAIR_SUBSETS: frozenset[str] = frozenset(
    {'SNVs', 'motif_perturbation', 'motif_tiling'})
SPLIT_NAMES: tuple[str, ...] = ('public', 'private')

SCORE_PEARSON_R2 = 'Score PearsonR^2'
WEIGHTED_MEAN_R = 'weighted mean r'
SCORE_SPEARMAN = 'Score Spearman'
SCORE_NAMES: tuple[str, ...] = (
    SCORE_PEARSON_R2, WEIGHTED_MEAN_R, SCORE_SPEARMAN)


@dataclasses.dataclass(frozen=True)
class SubsetFiles:
  """File names of one subset inside `subsets_dir` / `public_dir`.

  `subset_files` are alternatives, the first one that exists is read (the
  official `all_SNVs_seqs.csv` is not public; the reconstruction stands in).
  `all` has no files: it is every test row.
  """
  subset_files: tuple[str, ...]
  public_file: str | None


SUBSET_FILES: Mapping[str, SubsetFiles] = types.MappingProxyType({
    'all': SubsetFiles((), None),
    'high': SubsetFiles(('high_exp_seqs.csv',), 'high_exp_indices.json'),
    'low': SubsetFiles(('low_exp_seqs.csv',), 'low_exp_indices.json'),
    'yeast': SubsetFiles(('yeast_seqs.csv',), 'yeast_exp_indices.json'),
    'random': SubsetFiles(('all_random_seqs.csv',), 'random_exp_indices.json'),
    'challenging': SubsetFiles(('challenging_seqs.csv',),
                               'challenging_exp_indices.json'),
    'SNVs': SubsetFiles(('all_SNVs_seqs.csv', 'snv_pairs_reconstructed.json'),
                        'SNVs_exp_indices.json'),
    'motif_perturbation': SubsetFiles(('motif_perturbation_seqs.csv',),
                                      'motif_perturbation_exp_indices.json'),
    'motif_tiling': SubsetFiles(('motif_tiling_seqs.csv',),
                                'motif_tiling_exp_indices.json'),
})
GROUND_FILE = 'ground.json'


class ScoringError(ValueError):
  """Input that cannot be scored. About a file: message starts `path:line: `
  (or `path: `)."""


class ScoringFileNotFoundError(ScoringError, FileNotFoundError):
  """A file or folder the scorer needs does not exist."""


# ---------------------------------------------------------------------------
# Subsets and splits.


@dataclasses.dataclass(frozen=True)
class Subset:
  """One scored subset of one split.

  Attributes:
    name: one of SUBSET_NAMES.
    weight: its official weight.
    rows: int64 test rows, [n] for single subsets, [n, 2] (alt, ref) for pair
      subsets.
  """
  name: str
  weight: float
  rows: np.ndarray

  @property
  def is_pair(self) -> bool:
    return self.rows.ndim == 2

  def __len__(self) -> int:
    return int(self.rows.shape[0])


@dataclasses.dataclass(frozen=True)
class Split:
  """The nine subsets of one split ('public' or 'private'), in order."""
  name: str
  subsets: tuple[Subset, ...]

  def __getitem__(self, subset_name: str) -> Subset:
    for subset in self.subsets:
      if subset.name == subset_name:
        return subset
    raise KeyError(subset_name)

  def used_rows(self) -> np.ndarray:
    """Sorted distinct test rows the split reads (pair members included)."""
    return np.unique(np.concatenate([s.rows.reshape(-1) for s in self.subsets]))


@dataclasses.dataclass(frozen=True)
class OfficialSplits:
  """Public and private splits of a test set of `num_rows` rows."""
  num_rows: int
  public: Split
  private: Split

  def split(self, name: str) -> Split:
    if name not in SPLIT_NAMES:
      raise KeyError(f'unknown split {name!r}; expected one of {SPLIT_NAMES}')
    return getattr(self, name)


def _index_array(values: Any, name: str, is_pair: bool,
                 num_rows: int) -> np.ndarray:
  """Validated int64 [n] (single) or [n, 2] (pair) row indices."""
  array = np.asarray(values)
  if array.size == 0:
    array = np.zeros((0, 2) if is_pair else (0,), np.int64)
  if not np.issubdtype(array.dtype, np.integer):
    raise ScoringError(f'subset {name}: row indices must be integers, got '
                       f'dtype {array.dtype}')
  expected_ndim = 2 if is_pair else 1
  if array.ndim != expected_ndim or (is_pair and array.shape[1] != 2):
    shape = '[n, 2] (alt, ref) pairs' if is_pair else '[n] rows'
    raise ScoringError(
        f'subset {name}: expected {shape}, got shape {array.shape}')
  array = array.astype(np.int64)
  outside = (array < 0) | (array >= num_rows)
  if outside.any():
    first = array.reshape(-1)[np.flatnonzero(outside.reshape(-1))[0]]
    raise ScoringError(
        f'subset {name}: {int(outside.sum())} row index(es) outside the '
        f'{num_rows}-row test set (first: {int(first)})')
  return array


def _unordered_keys(pairs: np.ndarray, num_rows: int) -> np.ndarray:
  """One int64 per pair, equal for (a, b) and (b, a)."""
  low = np.minimum(pairs[:, 0], pairs[:, 1])
  high = np.maximum(pairs[:, 0], pairs[:, 1])
  return low * num_rows + high


def build_splits(num_rows: int, subsets: Mapping[str, Any],
                 public: Mapping[str, Any]) -> OfficialSplits:
  """Public and private splits from the full subsets and the public entries.

  Args:
    num_rows: number of test rows (71,103 for the challenge).
    subsets: for every name in SUBSET_NAMES except 'all' (which is every row),
      the full subset: [n] rows, or [n, 2] (alt, ref) pairs for PAIR_SUBSETS.
      Duplicates are allowed (the official CSVs have some); they count once.
    public: the same names -> the public leaderboard's entries, kept as given.

  Returns:
    OfficialSplits, private split defined as in the module docstring.

  Raises:
    ScoringError: a missing or unknown subset name, bad shapes, rows outside
      [0, num_rows).
  """
  expected = set(SUBSET_NAMES) - {'all'}
  for what, mapping in (('subsets', subsets), ('public', public)):
    keys = set(mapping) - {'all'}
    if keys != expected:
      raise ScoringError(
          f'{what}: expected subsets {sorted(expected)}; missing '
          f'{sorted(expected - keys)}, unknown {sorted(keys - expected)}')
  full = {name: _index_array(subsets[name], name, name in PAIR_SUBSETS,
                             num_rows)
          for name in SUBSET_NAMES if name != 'all'}
  listed = {name: _index_array(public[name], f'public {name}',
                               name in PAIR_SUBSETS, num_rows)
            for name in SUBSET_NAMES if name != 'all'}

  # Every row that appears on the public leaderboard, alone or in a pair.
  public_rows = np.unique(np.concatenate(
      [rows.reshape(-1) for rows in listed.values()] + [np.zeros(0, np.int64)]))
  public_pair_keys = np.unique(np.concatenate(
      [_unordered_keys(listed[name], num_rows)
       for name in sorted(PAIR_SUBSETS)]))

  public_subsets = [Subset('all', SUBSET_WEIGHTS['all'], public_rows)]
  private_subsets = [Subset('all', SUBSET_WEIGHTS['all'], np.setdiff1d(
      np.arange(num_rows, dtype=np.int64), public_rows, assume_unique=True))]
  for name in SUBSET_NAMES[1:]:
    weight = SUBSET_WEIGHTS[name]
    public_subsets.append(Subset(name, weight, listed[name]))
    if name in PAIR_SUBSETS:
      distinct = (np.unique(full[name], axis=0) if len(full[name])
                  else full[name])
      keep = ~np.isin(_unordered_keys(distinct, num_rows), public_pair_keys)
      private_rows = distinct[keep]
    else:
      private_rows = np.setdiff1d(full[name], public_rows)
    private_subsets.append(Subset(name, weight, private_rows))
  return OfficialSplits(num_rows=num_rows,
                        public=Split('public', tuple(public_subsets)),
                        private=Split('private', tuple(private_subsets)))


# ---------------------------------------------------------------------------
# Text files: plain or gzip, CRLF accepted, trailing blank lines ignored.


def _read_text(path: str | os.PathLike[str], what: str) -> str:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ScoringFileNotFoundError(f'{path}: {what} not found')
  try:
    data = textfiles.read_bytes(path)
  except textfiles.CorruptGzipError as e:
    raise ScoringError(f'{path}: broken gzip file ({e})') from None
  try:
    return data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    raise ScoringError(f'{path}: not UTF-8 text (byte {e.start})') from None


def _read_json(path: str | os.PathLike[str], what: str) -> Any:
  text = _read_text(path, what)
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise ScoringError(f'{os.fspath(path)}:{e.lineno}: not valid JSON '
                       f'({e.msg})') from None


def _parse_row_index(text: str, where: str) -> int:
  try:
    return int(text.strip())
  except ValueError:
    raise ScoringError(f'{where}: expected a test row index (integer), got '
                       f'{text!r}') from None


def _read_subset_csv(path: pathlib.Path, is_pair: bool) -> np.ndarray:
  """Rows [n] from column `pos`, or pairs [n, 2] from `alt_pos`, `ref_pos`."""
  columns = ('alt_pos', 'ref_pos') if is_pair else ('pos',)
  reader = csv.reader(io.StringIO(_read_text(path, 'subset file'), newline=''))
  header = next(reader, None)
  if header is None:
    raise ScoringError(f'{path}:1: empty subset file (expected a header with '
                       f'column(s) {", ".join(columns)})')
  missing = [c for c in columns if c not in header]
  if missing:
    raise ScoringError(f'{path}:1: missing column(s) {", ".join(missing)} '
                       f'(header: {", ".join(header)})')
  positions = [header.index(c) for c in columns]
  rows = []
  for fields in reader:
    if not any(f.strip() for f in fields):
      continue
    where = f'{path}:{reader.line_num}'
    if len(fields) != len(header):
      raise ScoringError(f'{where}: {len(fields)} fields, header has '
                         f'{len(header)}')
    rows.append([_parse_row_index(fields[p], f'{where}: column {c}')
                 for p, c in zip(positions, columns)])
  array = np.asarray(rows, dtype=np.int64).reshape(-1, len(columns))
  return array if is_pair else array[:, 0]


def _read_pair_list_json(path: pathlib.Path) -> np.ndarray:
  """[[alt, ref], ...] JSON -> int64 [n, 2]."""
  payload = _read_json(path, 'pair list')
  if not isinstance(payload, list):
    raise ScoringError(f'{path}: expected a JSON list of [alt, ref] pairs')
  for i, pair in enumerate(payload):
    if (not isinstance(pair, list) or len(pair) != 2 or
        not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)):
      raise ScoringError(f'{path}: entry {i}: expected [alt_row, ref_row] '
                         f'integers, got {pair!r}')
  return np.asarray(payload, dtype=np.int64).reshape(-1, 2)


def _read_public_index_json(path: pathlib.Path, is_pair: bool) -> np.ndarray:
  """Keys of a public leaderboard index file: "row" or "alt,ref"."""
  payload = _read_json(path, 'public leaderboard index file')
  if not isinstance(payload, dict):
    raise ScoringError(f'{path}: expected a JSON object keyed by test row')
  rows = []
  for key in payload:
    parts = key.split(',')
    if len(parts) != (2 if is_pair else 1):
      expected = '"alt,ref"' if is_pair else 'a single row'
      raise ScoringError(f'{path}: key {key!r}: expected {expected}')
    rows.append([_parse_row_index(p, f'{path}: key {key!r}') for p in parts])
  array = np.asarray(rows, dtype=np.int64).reshape(-1, 2 if is_pair else 1)
  return array if is_pair else array[:, 0]


def _require_dir(path: str | os.PathLike[str], what: str) -> pathlib.Path:
  path = pathlib.Path(path)
  if not path.is_dir():
    raise ScoringFileNotFoundError(f'{path}: {what} folder not found')
  return path


def load_official_splits(subsets_dir: str | os.PathLike[str],
                         public_dir: str | os.PathLike[str],
                         *, num_rows: int = NUM_TEST_ROWS) -> OfficialSplits:
  """Reads the subset files and public index files and builds the splits.

  Args:
    subsets_dir: folder with the files named in SUBSET_FILES[...].subset_files
      (e.g. ../shared/data/dream/test_subsets).
    public_dir: folder with the `*_exp_indices.json` files (e.g.
      ../shared/data/dream/public_leaderboard). If it also holds ground.json,
      its keys must be exactly the public rows (a check on the folder).
    num_rows: test-set size; every index must lie in [0, num_rows).

  Returns:
    OfficialSplits (see `build_splits`).

  Raises:
    ScoringFileNotFoundError: a folder or file is missing.
    ScoringError: a malformed file (message names file and line or key).
  """
  subsets_dir = _require_dir(subsets_dir, 'test subsets')
  public_dir = _require_dir(public_dir, 'public leaderboard')
  subsets, public = {}, {}
  for name in SUBSET_NAMES[1:]:
    files = SUBSET_FILES[name]
    is_pair = name in PAIR_SUBSETS
    candidates = [subsets_dir / f for f in files.subset_files]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
      raise ScoringFileNotFoundError(
          f'{candidates[-1]}: subset file of {name} not found (looked for '
          f'{", ".join(files.subset_files)} in {subsets_dir})')
    subsets[name] = (_read_pair_list_json(path) if path.suffix == '.json'
                     else _read_subset_csv(path, is_pair))
    public[name] = _read_public_index_json(public_dir / files.public_file,
                                           is_pair)
    for what, array, source in (('subset', subsets[name], path),
                                ('public', public[name],
                                 public_dir / files.public_file)):
      try:
        _index_array(array, name, is_pair, num_rows)
      except ScoringError as e:
        raise ScoringError(f'{source}: {e}') from None
  splits = build_splits(num_rows, subsets, public)
  ground = public_dir / GROUND_FILE
  if ground.is_file():
    payload = _read_json(ground, 'ground truth')
    ground_rows = np.unique(np.asarray(
        [_parse_row_index(k, f'{ground}: key {k!r}') for k in payload],
        dtype=np.int64))
    if not np.array_equal(ground_rows, splits.public['all'].rows):
      raise ScoringError(
          f'{ground}: its {ground_rows.size} rows are not the '
          f'{len(splits.public["all"])} rows of the public index files in '
          f'{public_dir}')
  return splits


# ---------------------------------------------------------------------------
# Measurements and predictions.


@dataclasses.dataclass(frozen=True)
class TestSet:
  """The measured test set.

  Attributes:
    sequences: N sequences in file order (row index = test row).
    measured: float64 [N] measurements (MAUDE scale, may be negative).
    source: path it was read from.
  """
  __test__ = False  # Not a pytest test class, despite the name.

  sequences: tuple[str, ...]
  measured: np.ndarray
  source: str

  def __len__(self) -> int:
    return len(self.sequences)


def _read_table(path: str | os.PathLike[str],
                **options) -> dream_data.DreamTable:
  """`dream_data.read_dream_table`, its messages passed on as ScoringErrors."""
  try:
    return dream_data.read_dream_table(path, allow_negative=True, **options)
  except dream_data.DreamFileNotFoundError as e:
    raise ScoringFileNotFoundError(str(e)) from None
  except dream_data.DreamDataError as e:
    raise ScoringError(str(e)) from None


def read_test_set(path: str | os.PathLike[str]) -> TestSet:
  """Reads `sequence<TAB>measured` lines (no header): test_71103_measured.tsv.

  `dream_data.read_dream_table` reads it, with its policies (negative values
  allowed: the measurements are on the MAUDE scale); its messages are passed on
  unchanged.

  Raises:
    ScoringFileNotFoundError: no such file.
    ScoringError: (`path:line: ...`) anything `read_dream_table` refuses: an
      empty file, a line without exactly two fields, a bad sequence, a missing,
      non-numeric or non-finite measurement, ...
  """
  table = _read_table(path)
  return TestSet(table.sequences, table.values, table.source)


@dataclasses.dataclass(frozen=True)
class Predictions:
  """Predictions indexed by test row.

  Attributes:
    values: float64 [num_rows]; NaN where a row has no prediction.
    available: bool [num_rows], which rows have a prediction.
    source: where they were read from.
  """
  values: np.ndarray
  available: np.ndarray
  source: str

  @property
  def num_rows(self) -> int:
    return int(self.values.shape[0])

  @property
  def complete(self) -> bool:
    return bool(self.available.all())

  @classmethod
  def from_array(cls, values: Any, source: str = '<array>') -> 'Predictions':
    """Every row predicted; values [N] or [N, 1]. Non-finite -> ScoringError."""
    array = _prediction_vector(values, source)
    return cls(array, np.ones(array.shape[0], bool), source)


def _prediction_vector(values: Any, source: str) -> np.ndarray:
  array = np.asarray(values, dtype=np.float64)
  if array.ndim == 2 and array.shape[1] == 1:
    array = array[:, 0]
  if array.ndim != 1:
    raise ScoringError(f'{source}: predictions must have shape [N] or [N, 1], '
                       f'got {array.shape}')
  bad = np.flatnonzero(~np.isfinite(array))
  if bad.size:
    raise ScoringError(
        f'{source}: {bad.size} NaN/inf prediction(s) (first at test row '
        f'{int(bad[0])}: {array[bad[0]]!r}); fix the predictions, they are '
        'never scored as they are')
  return array


def _check_sequences(sequences: Sequence[str], first_line: int, path: str,
                     test_set: TestSet | None, line_of_row=None) -> None:
  if test_set is None:
    return
  if len(sequences) != len(test_set):
    raise ScoringError(f'{path}: {len(sequences)} prediction rows, but the '
                       f'test file {test_set.source} has {len(test_set)} rows')
  for row, (got, expected) in enumerate(zip(sequences, test_set.sequences)):
    if got.upper() != expected.upper():
      line = line_of_row(row) if line_of_row else first_line + row
      raise ScoringError(
          f'{path}:{line}: sequence does not match test row {row} of '
          f'{test_set.source} (got {got[:40]!r}..., expected '
          f'{expected[:40]!r}...); predictions must be in test-file order')


def _non_finite_error(path: str, bad: list[tuple[str, str]]) -> ScoringError:
  where, text = bad[0]
  return ScoringError(f'{where}: prediction {text!r} is not finite ({len(bad)} '
                      f'non-finite prediction(s) in {path}; first shown)')


def read_tsv_predictions(path: str | os.PathLike[str], *,
                         test_set: TestSet | None = None,
                         num_rows: int | None = None) -> Predictions:
  """Reads a final-phase submission: `sequence<TAB>prediction`, test-file order.

  `dream_data.read_dream_table` reads it, with the policies of every
  `sequence<TAB>value` file and two arguments: negative predictions are
  allowed, and so is a header line (`allow_header`: a line 1 such as
  `sequence<TAB>prediction` is skipped). Anything else it refuses, a
  non-finite prediction included (the first one is named), is a ScoringError
  with its `path:line: ` message unchanged.

  Args:
    path: the TSV (plain or gzip).
    test_set: if given, the row count and every sequence must match it
      (case-insensitive); the first mismatch is an error naming its line.
    num_rows: if given (and no test_set), the required row count.

  Returns:
    Predictions with every row available.

  Raises:
    ScoringFileNotFoundError, ScoringError (`path:line: ...`).
  """
  path = os.fspath(path)
  table = _read_table(path, allow_header=True)
  if test_set is None and num_rows is not None and len(table) != num_rows:
    raise ScoringError(f'{path}: {len(table)} prediction rows, expected '
                       f'{num_rows}')
  _check_sequences(table.sequences, table.first_line, path, test_set)
  return Predictions(table.values, np.ones(len(table), bool), path)


def read_json_predictions(path: str | os.PathLike[str], *,
                          num_rows: int = NUM_TEST_ROWS) -> Predictions:
  """Reads a leaderboard-phase submission `{"test_row": prediction, ...}`.

  Only the rows present are available; with the 9,045 public rows this scores
  the public split only.

  Raises:
    ScoringFileNotFoundError, ScoringError (`path: key '...': ...`) for a key
    that is not a row in [0, num_rows), a value that is not a number, and
    non-finite values (counted, first one named).
  """
  path = os.fspath(path)
  payload = _read_json(path, 'predictions file')
  if not isinstance(payload, dict) or not payload:
    raise ScoringError(f'{path}: expected a non-empty JSON object '
                       '{"test_row": prediction}')
  values = np.full(num_rows, np.nan, np.float64)
  available = np.zeros(num_rows, bool)
  bad = []
  for key, value in payload.items():
    where = f'{path}: key {key!r}'
    row = _parse_row_index(key, where)
    if not 0 <= row < num_rows:
      raise ScoringError(f'{where}: row outside the {num_rows}-row test set')
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ScoringError(f'{where}: prediction must be a number, got '
                         f'{value!r}')
    if not math.isfinite(value):
      bad.append((where, repr(value)))
    values[row] = value
    available[row] = True
  if bad:
    raise _non_finite_error(path, bad)
  return Predictions(values, available, path)


def read_csv_predictions(path: str | os.PathLike[str], column: str, *,
                         test_set: TestSet | None = None,
                         sequence_column: str = 'seq') -> Predictions:
  """Reads one column of a CSV with a header (Camformer style: seq,...).

  Args:
    path: the CSV (plain or gzip), one row per test row in test-file order.
    column: name of the prediction column.
    test_set: if given, the row count must match, and so must the sequences
      when the file has `sequence_column`.
    sequence_column: column holding the sequences.

  Raises:
    ScoringFileNotFoundError, ScoringError (`path:line: ...`), e.g. a missing
    column (the message lists the header).
  """
  path = os.fspath(path)
  reader = csv.reader(io.StringIO(_read_text(path, 'predictions file'),
                                  newline=''))
  header = next(reader, None)
  if not header:
    raise ScoringError(f'{path}:1: empty CSV (expected a header)')
  if column not in header:
    raise ScoringError(f'{path}:1: no column {column!r} (columns: '
                       f'{", ".join(header)})')
  value_at = header.index(column)
  seq_at = header.index(sequence_column) if sequence_column in header else None
  sequences, values, bad, lines = [], [], [], []
  for fields in reader:
    if not any(f.strip() for f in fields):
      continue
    where = f'{path}:{reader.line_num}'
    if len(fields) != len(header):
      raise ScoringError(f'{where}: {len(fields)} fields, header has '
                         f'{len(header)}')
    text = fields[value_at].strip()
    try:
      value = float(text)
    except ValueError:
      raise ScoringError(f'{where}: column {column}: {text!r} is not a number'
                         ) from None
    if not math.isfinite(value):
      bad.append((where, text))
    values.append(value)
    lines.append(reader.line_num)
    if seq_at is not None:
      sequences.append(fields[seq_at].strip())
  if not values:
    raise ScoringError(f'{path}:2: no prediction rows')
  if bad:
    raise _non_finite_error(path, bad)
  if test_set is not None:
    if seq_at is None:
      if len(values) != len(test_set):
        raise ScoringError(f'{path}: {len(values)} prediction rows, but the '
                           f'test file {test_set.source} has {len(test_set)}')
    else:
      _check_sequences(sequences, 2, path, test_set,
                       line_of_row=lines.__getitem__)
  array = np.asarray(values, np.float64)
  return Predictions(array, np.ones(array.shape[0], bool), path)


# ---------------------------------------------------------------------------
# Scores.


@dataclasses.dataclass(frozen=True)
class SubsetScore:
  """Correlations on one subset. r, r2, rho are NaN when undefined."""
  name: str
  weight: float
  n: int
  r: float
  r2: float
  rho: float


@dataclasses.dataclass(frozen=True)
class SplitScore:
  """All subsets of one split and its three weighted scores.

  Attributes:
    split: 'public' or 'private'.
    subsets: SubsetScore per subset, in SUBSET_NAMES order.
    score_pearson_r2: sum(w * r^2) / 4.65 ("Score PearsonR^2").
    weighted_mean_r: sum(w * r) / 4.65.
    score_spearman: sum(w * rho) / 4.65 ("Score Spearman").
  A NaN score means at least one subset's correlation is undefined
  (see `undefined_subsets`).
  """
  split: str
  subsets: tuple[SubsetScore, ...]
  score_pearson_r2: float
  weighted_mean_r: float
  score_spearman: float

  def __getitem__(self, subset_name: str) -> SubsetScore:
    for subset in self.subsets:
      if subset.name == subset_name:
        return subset
    raise KeyError(subset_name)

  @property
  def scores(self) -> dict[str, float]:
    """{SCORE_PEARSON_R2, WEIGHTED_MEAN_R, SCORE_SPEARMAN} -> value."""
    return {SCORE_PEARSON_R2: self.score_pearson_r2,
            WEIGHTED_MEAN_R: self.weighted_mean_r,
            SCORE_SPEARMAN: self.score_spearman}

  @property
  def undefined_subsets(self) -> tuple[str, ...]:
    return tuple(s.name for s in self.subsets
                 if math.isnan(s.r) or math.isnan(s.rho))


@dataclasses.dataclass(frozen=True)
class DreamScore:
  """Scores of one set of predictions; a split is None when not scorable."""
  public: SplitScore | None
  private: SplitScore | None
  source: str = ''

  def split(self, name: str) -> SplitScore | None:
    if name not in SPLIT_NAMES:
      raise KeyError(f'unknown split {name!r}; expected one of {SPLIT_NAMES}')
    return getattr(self, name)


def subset_score(predictions: np.ndarray, measured: np.ndarray,
                 subset: Subset) -> SubsetScore:
  """Pearson r and Spearman rho on one subset (pairs: of alt - ref).

  Args:
    predictions: float64 [num_rows], finite on the subset's rows.
    measured: float64 [num_rows].
    subset: the subset.
  """
  rows = subset.rows
  if subset.is_pair:
    pred = predictions[rows[:, 0]] - predictions[rows[:, 1]]
    meas = measured[rows[:, 0]] - measured[rows[:, 1]]
  else:
    pred, meas = predictions[rows], measured[rows]
  if len(subset) < 2:
    r = rho = float('nan')
  else:
    r = metrics.pearson_r(pred, meas)
    rho = metrics.spearman_rho(pred, meas)
  return SubsetScore(subset.name, subset.weight, len(subset), r, r * r, rho)


def combine_subset_scores(split: str,
                          subsets: Iterable[SubsetScore]) -> SplitScore:
  """The three weighted scores (denominator SCORE_DENOMINATOR = 4.65).

  NaN in any subset makes the affected scores NaN (explicitly, by arithmetic).
  """
  subsets = tuple(subsets)
  def weighted(values):
    return float(sum(s.weight * v for s, v in zip(subsets, values))
                 / SCORE_DENOMINATOR)
  return SplitScore(
      split=split, subsets=subsets,
      score_pearson_r2=weighted([s.r2 for s in subsets]),
      weighted_mean_r=weighted([s.r for s in subsets]),
      score_spearman=weighted([s.rho for s in subsets]))


def _as_predictions(predictions: Predictions | np.ndarray,
                    num_rows: int) -> Predictions:
  if not isinstance(predictions, Predictions):
    predictions = Predictions.from_array(predictions)
  if predictions.num_rows != num_rows:
    raise ScoringError(f'{predictions.source}: {predictions.num_rows} '
                       f'predictions for a {num_rows}-row test set')
  return predictions


def _as_measured(measured: TestSet | np.ndarray, num_rows: int) -> np.ndarray:
  if isinstance(measured, TestSet):
    measured = measured.measured
  array = np.asarray(measured, np.float64)
  if array.shape != (num_rows,):
    raise ScoringError(f'measurements have shape {array.shape}, expected '
                       f'({num_rows},)')
  bad = np.flatnonzero(~np.isfinite(array))
  if bad.size:
    raise ScoringError(f'measurements: {bad.size} NaN/inf value(s) (first at '
                       f'test row {int(bad[0])})')
  return array


def _check_covered(predictions: Predictions, split: Split) -> None:
  rows = split.used_rows()
  missing = rows[~predictions.available[rows]]
  if missing.size:
    raise ScoringError(
        f'{predictions.source}: cannot score the {split.name} split: '
        f'{missing.size} of its {rows.size} test rows have no prediction '
        f'(first missing: test row {int(missing[0])})')
  values = predictions.values[rows]
  bad = np.flatnonzero(~np.isfinite(values))
  if bad.size:
    raise ScoringError(
        f'{predictions.source}: {bad.size} NaN/inf prediction(s) among the '
        f'rows of the {split.name} split (first at test row '
        f'{int(rows[bad[0]])})')


def score_split(predictions: Predictions | np.ndarray,
                measured: TestSet | np.ndarray, split: Split,
                num_rows: int) -> SplitScore:
  """Scores one split; every row it uses must have a finite prediction."""
  predictions = _as_predictions(predictions, num_rows)
  measured = _as_measured(measured, num_rows)
  _check_covered(predictions, split)
  return combine_subset_scores(
      split.name,
      [subset_score(predictions.values, measured, s) for s in split.subsets])


def score_predictions(predictions: Predictions | np.ndarray,
                      measured: TestSet | np.ndarray,
                      splits: OfficialSplits,
                      *, which: Sequence[str] | None = None) -> DreamScore:
  """Official scores of test-set predictions on the public and private splits.

  Args:
    predictions: Predictions (from a reader), or a float array [num_rows] /
      [num_rows, 1] of predictions in test-row order (all rows available).
    measured: TestSet or float64 [num_rows] measurements.
    splits: from `load_official_splits` / `build_splits`.
    which: splits to score. None: every split the predictions cover (at least
      one must be covered); a split named here that is not covered is an error.

  Returns:
    DreamScore; a split not scored is None.

  Raises:
    ScoringError: NaN/inf predictions (count and first row named), a wrong
      number of rows, or an uncovered split (see `which`).
  """
  predictions = _as_predictions(predictions, splits.num_rows)
  measured = _as_measured(measured, splits.num_rows)
  if which is None:
    names = [n for n in SPLIT_NAMES
             if predictions.available[splits.split(n).used_rows()].all()]
    if not names:
      # Re-run the check of the smallest split to get its precise message.
      _check_covered(predictions, splits.public)
  else:
    names = list(which)
  scored = {n: score_split(predictions, measured, splits.split(n),
                           splits.num_rows) for n in names}
  return DreamScore(public=scored.get('public'), private=scored.get('private'),
                    source=predictions.source)


# ---------------------------------------------------------------------------
# Tables.


def _number(value: float | None, digits: int) -> str:
  if value is None:
    return 'n/a'
  if math.isnan(value):
    return 'nan'
  return f'{value:.{digits}f}'


def format_markdown(score: DreamScore, *, digits: int = 4) -> str:
  """Two markdown tables: per subset (n, pearson r, r^2, spearman for the
  public and the private split) and the three scores per split.

  Splits not scored show 'n/a'; undefined correlations show 'nan'.
  """
  splits = [(name, score.split(name)) for name in SPLIT_NAMES]
  header = ['subset', 'weight']
  for name, _ in splits:
    header += [f'{name} n', f'{name} pearson r', f'{name} r^2',
               f'{name} spearman']
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join(['---'] + ['---:'] * (len(header) - 1)) + '|']
  for subset_name in SUBSET_NAMES:
    cells = [subset_name, f'{SUBSET_WEIGHTS[subset_name]:g}']
    for _, split_score in splits:
      if split_score is None:
        cells += ['n/a'] * 4
      else:
        s = split_score[subset_name]
        cells += [f'{s.n:,}', _number(s.r, digits), _number(s.r2, digits),
                  _number(s.rho, digits)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += ['', '| score | ' + ' | '.join(n for n, _ in splits) + ' |',
            '|---|' + '---:|' * len(splits)]
  for score_name in SCORE_NAMES:
    cells = [score_name] + [
        _number(None if s is None else s.scores[score_name], digits)
        for _, s in splits]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'
