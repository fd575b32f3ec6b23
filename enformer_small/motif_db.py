"""Known motifs: JASPAR's fungi collection (offline), MEME files, and TOMTOM matches.

A `Motif` is a name and a position probability matrix (PPM) [W, 4] over A, C, G, T,
rows summing to 1. Databases:

- `jaspar`: a JASPAR collection read from the SQLite file the `pyjaspar` package ships
  (a local file: nothing is fetched). The default, JASPAR2024's CORE fungi collection,
  holds 178 motifs, among them the yeast promoter regulators REB1 (MA0363), ABF1
  (MA0265) and RAP1 (MA0359).
- `read_meme` / `write_meme`: MEME motif files (MEME suite format 4, DNA); a file that
  cannot be read is an error naming the file and line.

`tomtom` compares query PPMs with a database by memelite's TOMTOM (Gupta et al. 2007,
the complete-score variant, Euclidean distance, both strands of each target). Its
p-values take the database's columns as their background, so they need a database of
some size (memelite warns below 25 motifs): compare with JASPAR plus any file of one's
own, not with a handful of motifs alone. q-values are Benjamini-Hochberg over each
query's p-values against every target, as MEME's Tomtom reports them.
"""

import dataclasses
import logging
import os
import re
import warnings
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

BASES = 'ACGT'
JASPAR_RELEASE = 'JASPAR2024'
# Fewer targets than this and memelite's TOMTOM p-values lean on which targets they are.
MIN_TARGETS = 25
log = logging.getLogger(__name__)


class MotifFileError(ValueError):
  """A motif file or database that cannot be read; the message names it (and line)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Motif:
  """A named motif.

  Attributes:
    id: unique within its database (a JASPAR matrix ID, a MEME motif's first word, a
      discovered pattern's name).
    name: the factor's name (JASPAR's TF name; else the id).
    ppm: float64 [W, 4] base probabilities (A, C, G, T) per position, rows sum to 1.
    source: where it came from, for tables (e.g. 'JASPAR2024 CORE fungi').
  """
  id: str
  name: str
  ppm: np.ndarray
  source: str = ''

  @property
  def label(self) -> str:
    """'id name', or the id alone when they are the same."""
    return self.id if self.name in ('', self.id) else f'{self.id} {self.name}'

  @property
  def width(self) -> int:
    return int(self.ppm.shape[0])

  def consensus(self, threshold: float = 0.5) -> str:
    """The most probable base per position, lower case under `threshold`."""
    best = self.ppm.argmax(axis=1)
    return ''.join(BASES[b] if self.ppm[i, b] >= threshold else BASES[b].lower()
                   for i, b in enumerate(best))


def normalised(matrix: np.ndarray, what: str) -> np.ndarray:
  """float64 [W, 4] with rows scaled to sum 1 (counts or probabilities in).

  Raises:
    MotifFileError: not [W >= 1, 4], negative or non-finite, or a row summing to 0.
  """
  matrix = np.asarray(matrix, np.float64)
  if matrix.ndim != 2 or matrix.shape[1] != 4 or matrix.shape[0] < 1:
    raise MotifFileError(f'{what}: expected a [width, 4] matrix, got {matrix.shape}')
  totals = matrix.sum(axis=1, keepdims=True)
  if not np.isfinite(matrix).all() or (matrix < 0).any() or (totals <= 0).any():
    raise MotifFileError(f'{what}: values must be finite, >= 0 and not all 0 in a row')
  return matrix / totals


def reverse_complement(ppm: np.ndarray) -> np.ndarray:
  """[W, 4] PPM of the other strand (positions reversed, A<->T, C<->G)."""
  return np.ascontiguousarray(ppm[::-1, ::-1])


# ---------------------------------------------------------------------------
# JASPAR.


def jaspar(tax_group: str = 'fungi', collection: str = 'CORE',
           release: str = JASPAR_RELEASE) -> List[Motif]:
  """The latest version of each motif of a JASPAR collection, from pyjaspar's local
  SQLite copy of `release` (no network).

  Raises:
    MotifFileError: pyjaspar is missing, or has no such release or collection.
  """
  try:
    import pyjaspar
  except ImportError as e:
    raise MotifFileError(f'JASPAR needs the pyjaspar package ({e}); install '
                         'pyjaspar==4.0.0') from None
  if release not in pyjaspar.jaspar_releases:
    raise MotifFileError(f'JASPAR release {release!r} is not in pyjaspar '
                         f'{pyjaspar.__version__}; it has '
                         f'{", ".join(sorted(pyjaspar.jaspar_releases))}')
  path = os.path.join(pyjaspar.utils.data_dir(), pyjaspar.jaspar_releases[release])
  if not os.path.isfile(path):
    raise MotifFileError(f'{path}: the {release} database is missing from pyjaspar')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # Biopython's notes on absent annotations.
    database = pyjaspar.jaspardb(sqlite_db_path=path)
    found = database.fetch_motifs(collection=collection, tax_group=[tax_group])
  source = f'{release} {collection} {tax_group}'
  motifs = [Motif(m.matrix_id, m.name, normalised(
      np.array([m.counts[b] for b in BASES]).T, f'{source} {m.matrix_id}'), source)
            for m in found]
  if not motifs:
    raise MotifFileError(f'{release} has no {collection} motifs of tax group '
                         f'{tax_group!r}')
  return motifs


# ---------------------------------------------------------------------------
# MEME files.

_WIDTH = re.compile(r'\bw=\s*(\d+)')
_ALENGTH = re.compile(r'\balength=\s*(\d+)')


def _matrix_rows(path: str, lines: List[str], at: int, width: Optional[int]
                 ) -> Tuple[np.ndarray, int]:
  """(rows, index of the next line) of the matrix whose first row is lines[at]."""
  rows = []
  while at < len(lines) and (width is None or len(rows) < width):
    fields = lines[at].split()
    if not fields and width is None and rows:
      break
    if fields:
      try:
        values = [float(v) for v in fields]
      except ValueError:
        if width is None and rows:
          break
        raise MotifFileError(f'{path}:{at + 1}: expected a row of 4 probabilities, '
                             f'got {lines[at].strip()[:60]!r}') from None
      if len(values) != 4:
        raise MotifFileError(f'{path}:{at + 1}: expected 4 values (A C G T), got '
                             f'{len(values)}')
      rows.append(values)
    at += 1
  if width is not None and len(rows) < width:
    raise MotifFileError(f'{path}:{at}: the matrix ends after {len(rows)} of its '
                         f'{width} rows')
  return np.array(rows, np.float64).reshape(-1, 4), at


def _parse_meme(path: str, lines: List[str]) -> List[Motif]:
  motifs, at, header = [], 0, None
  while at < len(lines):
    line = lines[at].strip()
    if line.startswith('ALPHABET') and line.split('=', 1)[-1].split()[:1] != ['ACGT']:
      raise MotifFileError(f'{path}:{at + 1}: only the DNA alphabet ACGT is read, got '
                           f'{line!r}')
    if line.startswith('MOTIF'):
      words = line.split()
      if len(words) < 2:
        raise MotifFileError(f'{path}:{at + 1}: MOTIF without a name')
      header = (words[1], words[2] if len(words) > 2 else words[1], at + 1)
    elif line.startswith('letter-probability matrix'):
      if header is None:
        raise MotifFileError(f'{path}:{at + 1}: a matrix before any MOTIF line')
      alength = _ALENGTH.search(line)
      if alength and int(alength.group(1)) != 4:
        raise MotifFileError(f'{path}:{at + 1}: alength= {alength.group(1)}; only DNA '
                             '(4 letters) is read')
      width = _WIDTH.search(line)
      rows, at = _matrix_rows(path, lines, at + 1,
                              int(width.group(1)) if width else None)
      motifs.append(Motif(header[0], header[1], normalised(
          rows, f'{path}:{header[2]}: motif {header[0]}'), path))
      header = None
      continue
    at += 1
  return motifs


def read_meme(path: str) -> List[Motif]:
  """The motifs of a MEME file (format 4: `MOTIF id [name]`, then a
  `letter-probability matrix:` line and its rows of A C G T probabilities).

  Raises:
    MotifFileError: unreadable, no motif, or a malformed motif (naming the line).
  """
  try:
    with open(path, 'r', encoding='utf-8-sig') as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise MotifFileError(f'{path}: cannot read: {e}') from None
  motifs = _parse_meme(path, lines)
  if not motifs:
    raise MotifFileError(f'{path}: no motif (no "letter-probability matrix" after a '
                         'MOTIF line)')
  ids = [m.id for m in motifs]
  repeated = sorted({i for i in ids if ids.count(i) > 1})
  if repeated:
    raise MotifFileError(f'{path}: motif id {repeated[0]!r} is used more than once')
  return motifs


def meme_text(motifs: Iterable[Motif]) -> str:
  """The motifs as a MEME file (format 4, uniform background)."""
  parts = ['MEME version 4\n\nALPHABET= ACGT\n\nstrands: + -\n\n'
           'Background letter frequencies\nA 0.25 C 0.25 G 0.25 T 0.25\n']
  for m in motifs:
    name = '' if m.name in ('', m.id) else ' ' + m.name.replace(' ', '_')
    rows = '\n'.join(' '.join(f'{v:.6f}' for v in row) for row in m.ppm)
    parts.append(f'\nMOTIF {m.id.replace(" ", "_")}{name}\nletter-probability matrix: '
                 f'alength= 4 w= {m.width} nsites= 20 E= 0\n{rows}\n')
  return ''.join(parts)


def write_meme(path: str, motifs: Iterable[Motif]) -> None:
  with open(path, 'w') as f:
    f.write(meme_text(motifs))


def generator_motifs(model) -> List[Motif]:
  """The synthetic generator's PWMs (`synthetic.ExpressionModel.motifs`) as motifs
  `planted_<factor>`, source 'generator'."""
  from enformer_small import synthetic
  return [Motif(f'planted_{m.name}', m.name, synthetic.pwm(m), 'generator')
          for m in model.motifs]


def database(meme_files: Sequence[str] = (), *, use_jaspar: bool = True,
             release: str = JASPAR_RELEASE) -> List[Motif]:
  """JASPAR's CORE fungi motifs (unless `use_jaspar` is False) and those of the MEME
  files, in that order."""
  motifs = jaspar(release=release) if use_jaspar else []
  for path in meme_files:
    motifs += read_meme(path)
  if not motifs:
    raise MotifFileError('no motif database: JASPAR left out and no MEME file given')
  return motifs


# ---------------------------------------------------------------------------
# TOMTOM.


@dataclasses.dataclass(frozen=True)
class Match:
  """A database motif's best alignment with a query.

  Attributes:
    target: the database motif.
    p_value: TOMTOM's p-value of the alignment.
    q_value: its Benjamini-Hochberg q-value among the query's p-values against every
      target of the database.
    offset: the position of the (strand-oriented) target aligned with the query's
      first position; negative when the query starts before the target.
    overlap: positions aligned.
    strand: '+' the target as stored, '-' its reverse complement.
  """
  target: Motif
  p_value: float
  q_value: float
  offset: int
  overlap: int
  strand: str


def bh_qvalues(p_values: np.ndarray) -> np.ndarray:
  """[Q, T] Benjamini-Hochberg q-values of each row's T p-values (capped at 1)."""
  p_values = np.asarray(p_values, np.float64)
  count = p_values.shape[1]
  order = np.argsort(p_values, axis=1, kind='stable')
  ranked = np.take_along_axis(p_values, order, axis=1) * count / np.arange(1, count + 1)
  # The q-value of rank i is the smallest scaled p-value at rank i or beyond.
  ranked = np.minimum.accumulate(ranked[:, ::-1], axis=1)[:, ::-1]
  out = np.empty_like(p_values)
  np.put_along_axis(out, order, np.minimum(ranked, 1.0), axis=1)
  return out


def tomtom(queries: Sequence[np.ndarray], targets: Sequence[Motif], *,
           top: int = 3) -> List[List[Match]]:
  """The best `top` matches of each query in `targets` by TOMTOM p-value.

  Args:
    queries: PPMs [W, 4] (probabilities; each at least one position).
    targets: the database (both strands of each are compared).
    top: matches kept per query, best first.

  Returns:
    per query, its matches sorted by p-value.
  """
  from memelite import tomtom as memelite_tomtom
  if not queries:
    return []
  if not targets:
    raise ValueError('TOMTOM needs a database of at least one motif')
  if len(targets) < MIN_TARGETS:
    log.warning('TOMTOM against %d motifs: its p-values take the database as their '
                'background and are unreliable below %d motifs (add JASPAR)',
                len(targets), MIN_TARGETS)
  # One dtype and layout always: memelite compiles (~2 min, cached on disk) per layout.
  q = [np.ascontiguousarray(np.asarray(m, np.float64).T) for m in queries]
  t = [np.ascontiguousarray(m.ppm.T) for m in targets]
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', UserWarning)
    p, _, offsets, overlaps, strands = memelite_tomtom(q, t)[:5]
  q_values = bh_qvalues(p)
  out = []
  for i in range(len(queries)):
    best = np.argsort(p[i], kind='stable')[:top]
    out.append([Match(targets[j], float(p[i, j]), float(q_values[i, j]),
                      int(offsets[i, j]), int(overlaps[i, j]), '+-'[int(strands[i, j])])
                for j in best])
  return out
