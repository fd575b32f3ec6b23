"""Synthetic DREAM-format promoter data from a documented, biologically shaped model.

Rows look like the Random Promoter DREAM Challenge 2022 training file
(`sequence<TAB>expression`, no header): 17 bp 5' flank + ~80 bp random region + 13 bp
3' flank, expression on the 0..17 scale of the assay's sorting bins, part of it integer.

The expression is a deterministic function of the SEQUENCE plus measurement noise:

1. Every window of the random region is scored on both strands against position weight
   matrices of yeast transcription factors (log-odds against a uniform background).
   The occupancy of a window is `sigmoid(score - best_score + affinity)`: a consensus site
   is bound with probability `sigmoid(affinity)` (0.95), a mismatch at a single-base
   column costs 3.4 nats (2.3 at a two-base column such as W). Windows containing an `N`
   are not bound.
2. Per factor, occupancies are weighted by a position-effect profile over the distance of
   the window from the 3' (TSS-proximal) end of the random region and summed; the sum
   saturates as `S = 1 - exp(-site_gain * sum)` (a promoter with several sites is not
   several times as active).
3. Activity (logit units) = bias + sum(activator weights * S) + Gcn4 x TATA synergy, with
   the activator part silenced by Ume6 (`* (1 - silencing * S_ume6)`, Sin3-Rpd3
   recruitment), minus Rox1 repression, plus a small term in the G+C content of the
   random region (in the real training data G+C content correlates with expression,
   r ~ 0.35).
4. Noise-free expression = 17 * sigmoid(activity). Measured expression = noise-free +
   Gaussian noise, clipped to [0, 17]; a share of rows is rounded to whole bins (as when all
   of a sequence's reads fall in one sorting bin; ~58% of the real rows are integers), the
   others are written with a fixed number of decimals.

Motif instances sampled from the PWMs are planted at random positions and strands (each
factor in 8-12% of rows) so that every factor occurs often enough to be learnt; the
expression never looks at what was planted, only at the final sequence (planted instances
may be overwritten by later ones or by `N`s).

Rows are generated in blocks of `block_rows` rows, each from its own random stream
(seeded by `(seed, block_index)`), so that any row range, any chunking and any number of
worker processes give the same bytes, and the first n rows do not depend on `num_rows`.
Every per-row computation is batch-independent (no BLAS reductions), so a row's values do
not depend on which other rows it is computed with.

Sequence codes follow the project convention: A=0, C=1, G=2, T=3, N/padding=4.
"""

import collections
import concurrent.futures
import dataclasses
import functools
import gzip
import multiprocessing
import os
import time
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np

from enformer_small.dream_data import FLANK_3, FLANK_5, PAD_CODE

RANDOM_LENGTH = 80
MAX_EXPRESSION = 17.0

_BASES = 'ACGT'
_ASCII_OF_CODE = np.frombuffer(b'ACGTN', dtype=np.uint8)
_IUPAC = {'A': 'A', 'C': 'C', 'G': 'G', 'T': 'T', 'R': 'AG', 'Y': 'CT', 'S': 'CG',
          'W': 'AT', 'K': 'GT', 'M': 'AC', 'B': 'CGT', 'D': 'AGT', 'H': 'ACT',
          'V': 'ACG', 'N': 'ACGT'}
# Tables are indexed by the informative (non-N) columns of a PWM: 4**10 entries at most.
_MAX_INDEXED_COLUMNS = 10
# Piece length of the packed k-mer codes used to assemble window indices.
_PIECE = 5
# Columns of packed codes beyond a region's end (>= the widest motif).
_PACKED_EXTRA = 16

# Length variants of the random region, relative to 80 bp, given that a row is a variant.
# Shaped after the 1,151 non-110 bp rows of the real train_6370.txt (87..135 bp): mostly
# one or two bases short, rarely longer; a sparse tail from 57 to 105 bp.
_LENGTH_DELTAS = np.array([-1, -2, -3, -4, -5, -6, 1, -7, 2], dtype=np.int64)
_LENGTH_DELTA_PROBS = np.array([0.70, 0.13, 0.045, 0.025, 0.015, 0.01, 0.025, 0.04, 0.01])
_LONG_TAIL_SHORT = (-23, -7)   # delta uniform in this range (inclusive) for the -7 bucket
_LONG_TAIL_LONG = (2, 25)      # and in this one for the +2 bucket

# Background base composition of the random region, as 256ths (the real random regions:
# A 0.225, C 0.192, G 0.281, T 0.301).
_BACKGROUND_256THS = (58, 49, 72, 77)


@dataclasses.dataclass(frozen=True)
class Motif:
  """A transcription-factor motif and its effect.

  Attributes:
    name: factor name.
    consensus: IUPAC consensus; the PWM gives `match_prob` to the allowed bases (shared)
      and the rest to the others; N columns are uniform (no information).
    weight: effect in logit units at saturation (> 0 activator, < 0 repressor).
    affinity: occupancy of a consensus site is sigmoid(affinity) (nats of log-odds above
      the score at which occupancy is one half).
    profile: name of the position-effect profile (see `position_profile`).
    plant_prob: probability that a row gets a planted instance (before `plant_scale`).
    match_prob: PWM probability mass of the allowed bases at a non-N column.
  """
  name: str
  consensus: str
  weight: float
  affinity: float
  profile: str
  plant_prob: float
  match_prob: float = 0.91

  @property
  def width(self) -> int:
    return len(self.consensus)


# Consensus sources (approximate PWMs are written from these consensus facts only):
# - Reb1 TTACCCGG: Morrow, Johnson & Warner 1989 (J Biol Chem 264:9061, REB1 binding to
#   TTACCCG sites); YeTFaSCo (de Boer & Hughes 2012, Nucleic Acids Res 40:D169).
# - Abf1 RTCRYNNNNNACG: the bipartite Abf1 consensus TCN7ACG with its degenerate flanks
#   (as listed for ABF1 in YeTFaSCo and SGD).
# - Rap1 RMACCCANNCA: core of the Rap1/UASrpg consensus RMACCCANNCAYY (Buchman, Lue &
#   Kornberg 1988, Mol Cell Biol 8:5086); trailing YY dropped to keep 9 informative columns.
# - Gcn4 TGASTCA: GCRE, Arndt & Fink 1986 (PNAS 83:8516, GCN4 binds 5'-TGACTC-3').
# - Mcm1 CCWWWWWWGG: CArG box of MADS-box factors (Shore & Sharrocks 1995, Eur J Biochem
#   229:1).
# - TATA box TATAWAWR: Basehoar, Zanton & Pugh 2004 (Cell 116:699).
# - poly(dA:dT) TTTTTTTT: Iyer & Struhl 1995 (EMBO J 14:2570); Raveh-Sadka et al. 2012
#   (Nat Genet 44:743) measured the effect of such tracts on yeast promoter activity.
# - Ume6 URS1 TAGCCGCCGA: Sumrada & Cooper 1987 (PNAS 84:3997, URS1 of CAR1); repression by
#   Sin3-Rpd3 recruitment: Kadosh & Struhl 1997 (Cell 89:365).
# - Rox1 YYNATTGTTY: Rox1 HMG repressor of hypoxic genes (Balasubramanian, Lowry & Zitomer
#   1993, Mol Cell Biol 13:6071).
DEFAULT_MOTIFS: Tuple[Motif, ...] = (
    Motif('Reb1', 'TTACCCGG', weight=1.3, affinity=3.0, profile='proximal',
          plant_prob=0.10),
    Motif('Abf1', 'RTCRYNNNNNACG', weight=1.3, affinity=3.0, profile='proximal',
          plant_prob=0.10),
    Motif('Rap1', 'RMACCCANNCA', weight=1.6, affinity=3.0, profile='proximal',
          plant_prob=0.10),
    Motif('Gcn4', 'TGASTCA', weight=0.8, affinity=3.0, profile='proximal',
          plant_prob=0.12),
    Motif('Mcm1', 'CCWWWWWWGG', weight=0.5, affinity=3.0, profile='flat',
          plant_prob=0.08),
    Motif('TATA', 'TATAWAWR', weight=0.65, affinity=3.0, profile='tata',
          plant_prob=0.12),
    Motif('polyT', 'TTTTTTTT', weight=0.8, affinity=3.0, profile='distal',
          plant_prob=0.10),
    # Ume6 acts only through ExpressionModel.silencer (it silences the activators).
    Motif('Ume6', 'TAGCCGCCGA', weight=0.0, affinity=3.0, profile='flat',
          plant_prob=0.08),
    Motif('Rox1', 'YYNATTGTTY', weight=-1.0, affinity=3.0, profile='proximal',
          plant_prob=0.10),
)


@dataclasses.dataclass(frozen=True)
class ExpressionModel:
  """The sequence -> expression function (see the module docstring).

  Attributes:
    motifs: factors; activators and repressors by the sign of `weight`.
    bias: activity (logit units) of a promoter with no bound factor and average G+C.
    site_gain: S = 1 - exp(-site_gain * occupancy sum); with 2, one consensus site at a
      fully effective position gives S ~ 0.85.
    synergy: (first, second, weight): extra activity weight * S_first * S_second.
    silencer: (name, strength): the activator part of the activity is multiplied by
      (1 - strength * S_name).
    gc_weight: activity per standard deviation (0.08) of G+C content around 0.47.
  """
  motifs: Tuple[Motif, ...] = DEFAULT_MOTIFS
  bias: float = -0.15
  site_gain: float = 2.0
  synergy: Tuple[str, str, float] = ('Gcn4', 'TATA', 1.3)
  silencer: Tuple[str, float] = ('Ume6', 0.75)
  gc_weight: float = 0.3

  def motif(self, name: str) -> Motif:
    for m in self.motifs:
      if m.name == name:
        return m
    raise KeyError(f'no motif named {name!r}')


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """What to generate.

  Attributes:
    num_rows: rows in the file.
    seed: non-negative integer; with the other fields it fixes every byte.
    noise_sd: sd of the Gaussian measurement noise on the 0..17 scale.
    integer_share: share of rows rounded to whole bins.
    decimals: decimals of the other rows (fixed, e.g. 12.3457).
    length_variant_share: share of rows whose random region is not 80 bp.
    n_row_share: share of rows with a run of `N` bases near the 3' end of the random region.
    plant_scale: multiplies every motif's `plant_prob`.
    block_rows: rows per independently seeded block (part of the data's definition).
    model: the expression model.
  """
  num_rows: int = 100_000
  seed: int = 0
  noise_sd: float = 1.15
  integer_share: float = 0.58
  decimals: int = 4
  length_variant_share: float = 0.18
  n_row_share: float = 0.004
  plant_scale: float = 1.0
  block_rows: int = 1 << 16
  model: ExpressionModel = ExpressionModel()

  def __post_init__(self):
    if self.num_rows < 0:
      raise ValueError(f'num_rows must be >= 0, got {self.num_rows}')
    if self.seed < 0:
      raise ValueError(f'seed must be >= 0, got {self.seed}')
    if not 0 <= self.integer_share <= 1:
      raise ValueError(f'integer_share must be in [0, 1], got {self.integer_share}')
    if not 1 <= self.decimals <= 8:
      raise ValueError(f'decimals must be in 1..8, got {self.decimals}')
    if not 0 <= self.length_variant_share <= 1:
      raise ValueError('length_variant_share must be in [0, 1], got '
                       f'{self.length_variant_share}')
    if not 0 <= self.n_row_share <= 1:
      raise ValueError(f'n_row_share must be in [0, 1], got {self.n_row_share}')
    if self.noise_sd < 0:
      raise ValueError(f'noise_sd must be >= 0, got {self.noise_sd}')
    if self.block_rows < 1:
      raise ValueError(f'block_rows must be >= 1, got {self.block_rows}')


@dataclasses.dataclass(frozen=True)
class SyntheticRows:
  """Generated rows.

  Attributes:
    random_codes: uint8 [n, max_random_length], the random regions (A=0 C=1 G=2 T=3 N=4),
      left-aligned, padded at the end with 4.
    random_lengths: int32 [n], length of each random region (80 for most rows).
    expression: float64 [n], the written (noisy, clipped, binned) expression.
    noise_free: float64 [n], 17 * sigmoid(activity), before noise.
    decimals: decimals the non-integer expressions are written with.
  """
  random_codes: np.ndarray
  random_lengths: np.ndarray
  expression: np.ndarray
  noise_free: np.ndarray
  decimals: int

  def __len__(self) -> int:
    return int(self.expression.shape[0])

  @property
  def lengths(self) -> np.ndarray:
    """int32 [n]: full sequence lengths (flanks included)."""
    return self.random_lengths + np.int32(len(FLANK_5) + len(FLANK_3))

  def codes(self, length: int = 110) -> np.ndarray:
    """uint8 [n, length]: full sequences in the project's code convention (A=0 C=1 G=2
    T=3, N and end padding 4), truncated / padded at the end like `dream_data`."""
    n = len(self)
    full = np.full((n, len(FLANK_5) + self.random_codes.shape[1] + len(FLANK_3)
                    + length), PAD_CODE, np.uint8)
    full[:, :len(FLANK_5)] = _codes_of(FLANK_5)
    full[:, len(FLANK_5):len(FLANK_5) + self.random_codes.shape[1]] = self.random_codes
    flank3_at = len(FLANK_5) + self.random_lengths.astype(np.intp)
    full[np.arange(n)[:, None], flank3_at[:, None] + np.arange(len(FLANK_3))] = (
        _codes_of(FLANK_3))
    end = flank3_at + len(FLANK_3)
    full[np.arange(full.shape[1]) >= end[:, None]] = PAD_CODE
    return full[:, :length].copy()

  def sequences(self) -> list:
    """The full sequences as str (flanks included)."""
    ascii_codes = _ASCII_OF_CODE[self.random_codes]
    return [FLANK_5 + row[:n].tobytes().decode('ascii') + FLANK_3
            for row, n in zip(ascii_codes, self.random_lengths)]

  def to_bytes(self) -> bytes:
    """The rows in DREAM file format (`sequence<TAB>expression\\n` per row)."""
    return _format_lines(self)


@dataclasses.dataclass(frozen=True)
class SyntheticReport:
  """What `write_synthetic_file` wrote.

  noise_ceiling_pearson: Pearson r of the noise-free with the written expression, i.e.
  the best correlation any model of the sequence can expect on this data.
  """
  path: str
  rows: int
  seconds: float
  bytes_written: int
  noise_ceiling_pearson: float
  expression_mean: float
  expression_sd: float
  expression_min: float
  expression_max: float
  integer_share: float
  length_variant_share: float
  n_row_share: float

  @property
  def rows_per_second(self) -> float:
    return self.rows / self.seconds if self.seconds > 0 else float('inf')


# ----------------------------------------------------------------------------- PWMs


def pwm(motif: Motif) -> np.ndarray:
  """float64 [width, 4]: base probabilities per column (rows sum to 1)."""
  probs = np.zeros((motif.width, 4))
  for i, letter in enumerate(motif.consensus):
    allowed = _IUPAC[letter]
    if len(allowed) == 4:
      probs[i] = 0.25
      continue
    others = 4 - len(allowed)
    for j, base in enumerate(_BASES):
      probs[i, j] = (motif.match_prob / len(allowed) if base in allowed
                     else (1 - motif.match_prob) / others)
  return probs


def reverse_complement_pwm(probs: np.ndarray) -> np.ndarray:
  """[width, 4] PWM of the other strand (columns reversed, A<->T and C<->G swapped)."""
  return probs[::-1, ::-1]


def log_odds(probs: np.ndarray) -> np.ndarray:
  """[width, 4] natural-log odds against a uniform background."""
  return np.log(probs / 0.25)


def _informative_columns(probs: np.ndarray) -> Tuple[int, ...]:
  return tuple(int(i) for i in np.flatnonzero(np.ptp(probs, axis=1) > 0))


@functools.lru_cache(maxsize=64)
def _occupancy_tables(motif: Motif) -> Tuple[Tuple[Tuple[int, ...], np.ndarray], ...]:
  """Lookup tables of window occupancy for both strands.

  Returns:
    ((columns, table), ...): summing `table[index]` over the entries gives the window's
    occupancy (both strands), where `index` packs the window's bases at `columns` (2 bits
    each, first column most significant); `table[-1]` is 0 (used for masked windows).
    One entry when both strands fit in one table (palindromes count once), else one per
    strand.
  """
  forward = pwm(motif)
  strands = [forward]
  reverse = reverse_complement_pwm(forward)
  if not np.allclose(reverse, forward):
    strands.append(reverse)
  best = log_odds(forward).max(axis=1).sum()
  union = sorted(set().union(*(_informative_columns(p) for p in strands)))
  if len(union) <= _MAX_INDEXED_COLUMNS:
    groups = [(tuple(union), strands)]
  else:
    groups = [(_informative_columns(p), [p]) for p in strands]
  tables = []
  for columns, group in groups:
    if len(columns) > _MAX_INDEXED_COLUMNS:
      raise ValueError(f'motif {motif.name}: {len(columns)} informative columns, at most '
                       f'{_MAX_INDEXED_COLUMNS} supported')
    table = np.zeros(4 ** len(columns) + 1)
    for probs in group:
      # Score of every k-mer, first column most significant: an outer sum per column.
      window_score = np.zeros(1)
      for column in columns:
        window_score = (window_score[:, None] + log_odds(probs)[column][None, :]).ravel()
      table[:-1] += _sigmoid(window_score - best + motif.affinity)
    tables.append((columns, table.astype(np.float32)))
  return tuple(tables)


def _codes_of(text: str) -> np.ndarray:
  return np.array(['ACGT'.index(c) if c in 'ACGT' else PAD_CODE for c in text], np.uint8)


def _sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def position_profile(name: str, distance: np.ndarray) -> np.ndarray:
  """Position-effect profile (relative effect, max 1).

  Args:
    name: 'proximal' (stronger near the TSS side), 'distal' (stronger far from it),
      'tata' (a bump ~30 bp upstream of the 3' end, where TATA boxes act), or 'flat'.
    distance: float [P], distance (bp) of the window centre from the 3' end of the random
      region.
  """
  d = np.asarray(distance, dtype=np.float64)
  if name == 'proximal':
    return 0.35 + 0.65 * np.exp(-d / 30.0)
  if name == 'distal':
    return 0.4 + 0.6 * _sigmoid((d - 40.0) / 8.0)
  if name == 'tata':
    return 0.15 + 0.85 * np.exp(-0.5 * ((d - 30.0) / 12.0) ** 2)
  if name == 'flat':
    return np.ones_like(d)
  raise ValueError(f'unknown position profile {name!r}')


@functools.lru_cache(maxsize=4096)
def _window_profile(name: str, region_length: int, width: int) -> np.ndarray:
  starts = np.arange(region_length - width + 1)
  centre_distance = region_length - (starts + width / 2.0)
  return position_profile(name, centre_distance).astype(np.float32)


# ----------------------------------------------------------------------------- scanning


def _packed_pieces(codes: np.ndarray) -> np.ndarray:
  """intp [n, R + _PACKED_EXTRA]: 5-mer starting at each position, 2 bits per base.

  Bases beyond the end read as A, so that windows of a group table may reach past the
  end for members that do not look at those columns.
  """
  n, length = codes.shape
  width = length + _PACKED_EXTRA
  padded = np.zeros((n, width + _PIECE - 1), dtype=np.intp)
  padded[:, :length] = codes
  packed = padded[:, :width].copy()
  for j in range(1, _PIECE):
    packed <<= 2
    packed |= padded[:, j:j + width]
  return packed


@functools.lru_cache(maxsize=256)
def _runs(columns: Tuple[int, ...]) -> Tuple[Tuple[int, int], ...]:
  """(start, length) pieces of at most _PIECE contiguous columns covering `columns`."""
  runs = []
  for c in columns:
    if runs and runs[-1][0] + runs[-1][1] == c and runs[-1][1] < _PIECE:
      runs[-1] = (runs[-1][0], runs[-1][1] + 1)
    else:
      runs.append((c, 1))
  return tuple(runs)


def _window_index(packed: np.ndarray, columns: Tuple[int, ...], positions: int) -> np.ndarray:
  """intp [n, positions]: the bases at `columns` of each window, packed 2 bits each."""
  index = None
  for start, length in _runs(columns):
    piece = packed[:, start:start + positions]
    if length < _PIECE:
      piece = piece >> (2 * (_PIECE - length))
    if index is None:
      index = piece
    else:
      index = index << (2 * length)  # a new array: `piece` may be a view of `packed`
      index |= piece
  return index


@dataclasses.dataclass(frozen=True)
class _TableGroup:
  """Occupancy tables of up to 4 motifs indexed by the same window columns.

  One gather of a 4-, 8- or 16-byte item fetches every member's occupancy at a window.
  """
  columns: Tuple[int, ...]
  items: np.ndarray                     # [4**k + 1] float32/float64/complex128 view
  members: Tuple[Tuple[int, int], ...]  # (motif index, slot in the item)
  slots: int


def _subindex(columns: Tuple[int, ...], sub: Tuple[int, ...]) -> np.ndarray:
  """intp [4**len(columns)]: for every packed index over `columns`, the index over `sub`."""
  index = np.arange(4 ** len(columns))
  out = np.zeros_like(index)
  for c in sub:
    base = (index >> (2 * (len(columns) - 1 - columns.index(c)))) & 3
    out = (out << 2) | base
  return out


@functools.lru_cache(maxsize=16)
def _table_groups(model: 'ExpressionModel') -> Tuple[_TableGroup, ...]:
  """Per-motif tables (see `_occupancy_tables`) packed into groups for fast gathers.

  A motif with a single table joins the first group whose columns include its own and
  that has room (4 members); otherwise it starts a group. Values are copied unchanged, so
  grouping never changes a result.
  """
  plans = []  # [columns, [(motif index, columns, table)]]
  for m, motif in enumerate(model.motifs):
    tables = _occupancy_tables(motif)
    for columns, table in tables:
      home = None
      if len(tables) == 1:
        for plan in plans:
          if set(columns) <= set(plan[0]) and len(plan[1]) < 4:
            home = plan
            break
      if home is None:
        home = [columns, []]
        plans.append(home)
      home[1].append((m, columns, table))
  groups = []
  for columns, members in plans:
    slots = 1 if len(members) == 1 else 2 if len(members) == 2 else 4
    stacked = np.zeros((4 ** len(columns) + 1, slots), dtype=np.float32)
    for slot, (_, own_columns, table) in enumerate(members):
      stacked[:-1, slot] = table[_subindex(columns, own_columns)]
    item = {1: np.float32, 2: np.float64, 4: np.complex128}[slots]
    groups.append(_TableGroup(columns, stacked.view(item).ravel(),
                              tuple((m, slot) for slot, (m, _, _) in enumerate(members)),
                              slots))
  return tuple(groups)


# Rows scanned at a time: keeps the [rows, positions] intermediates in cache.
_SCAN_ROWS = 2048


def _motif_sums(codes: np.ndarray, has_n: bool, model: ExpressionModel) -> np.ndarray:
  """float64 [n, num_motifs]: position-weighted occupancy sums, rows of one length.

  Args:
    codes: uint8 [n, R], random regions of equal length R (may contain 4 = N).
    has_n: whether any code is 4 (then windows overlapping an N are not bound).
  """
  n, length = codes.shape
  sums = np.zeros((n, len(model.motifs)))
  positions = [length - m.width + 1 for m in model.motifs]
  for lo in range(0, n, _SCAN_ROWS):
    chunk = codes[lo:lo + _SCAN_ROWS]
    rows = slice(lo, lo + chunk.shape[0])
    if has_n:
      sums[rows] = _motif_sums_masked(chunk, model)
      continue
    packed = _packed_pieces(chunk)
    for group in _table_groups(model):
      live = [(m, slot) for m, slot in group.members if positions[m] > 0]
      if not live:
        continue
      span = max(positions[m] for m, _ in live)
      items = np.take(group.items, _window_index(packed, group.columns, span))
      occupancy = items.view(np.float32).reshape(chunk.shape[0], span, group.slots)
      for m, slot in live:
        motif = model.motifs[m]
        # einsum, not BLAS: its per-row sum does not depend on how many rows are in the
        # batch, so a row's value never depends on the chunk it is computed in.
        sums[rows, m] += np.einsum('np,p->n', occupancy[:, :positions[m], slot],
                                   _window_profile(motif.profile, length, motif.width))
  return sums


def _motif_sums_masked(codes: np.ndarray, model: ExpressionModel) -> np.ndarray:
  """As `_motif_sums` for rows with N: windows overlapping an N are not bound."""
  n, length = codes.shape
  sums = np.zeros((n, len(model.motifs)))
  n_before = np.zeros((n, length + 1), dtype=np.int32)
  np.cumsum(codes > 3, axis=1, out=n_before[:, 1:])
  packed = _packed_pieces(codes & 3)
  for m, motif in enumerate(model.motifs):
    positions = length - motif.width + 1
    if positions <= 0:
      continue
    masked = (n_before[:, motif.width:motif.width + positions]
              - n_before[:, :positions]) > 0
    profile = _window_profile(motif.profile, length, motif.width)
    for columns, table in _occupancy_tables(motif):
      index = np.where(masked, table.shape[0] - 1, _window_index(packed, columns, positions))
      sums[:, m] += np.einsum('np,p->n', np.take(table, index), profile)
  return sums


def motif_saturations(random_codes: np.ndarray, random_lengths: np.ndarray,
                      model: ExpressionModel = ExpressionModel()) -> np.ndarray:
  """float64 [n, num_motifs]: S = 1 - exp(-site_gain * weighted occupancy sum) per motif.

  Args:
    random_codes: uint8 [n, >= max length], left-aligned random regions (4 = N / pad).
    random_lengths: int [n], random-region lengths.
    model: the expression model.
  """
  return -np.expm1(-model.site_gain * occupancy_sums(random_codes, random_lengths, model))


def occupancy_sums(random_codes: np.ndarray, random_lengths: np.ndarray,
                   model: ExpressionModel = ExpressionModel()) -> np.ndarray:
  """float64 [n, num_motifs]: position-weighted occupancy sums (both strands) per motif.

  Args:
    random_codes: uint8 [n, >= max length], left-aligned random regions (4 = N / pad).
    random_lengths: int [n], random-region lengths.
    model: the expression model.
  """
  random_lengths = np.asarray(random_lengths)
  sums = np.zeros((random_codes.shape[0], len(model.motifs)))
  has_n_row = (random_codes > 3) & (np.arange(random_codes.shape[1]) < random_lengths[:, None])
  has_n_row = has_n_row.any(axis=1)
  for length in np.unique(random_lengths):
    for has_n in (False, True):
      rows = np.flatnonzero((random_lengths == length) & (has_n_row == has_n))
      if rows.size == 0:
        continue
      if rows.size == random_codes.shape[0]:
        group = random_codes[:, :length]
      else:
        group = random_codes[rows, :length]
      sums[rows] = _motif_sums(np.ascontiguousarray(group), has_n, model)
  return sums


def gc_content(random_codes: np.ndarray, random_lengths: np.ndarray) -> np.ndarray:
  """float64 [n]: share of C/G among the random region's bases (N counts as neither)."""
  valid = np.arange(random_codes.shape[1]) < np.asarray(random_lengths)[:, None]
  gc = ((random_codes == 1) | (random_codes == 2)) & valid
  return gc.sum(axis=1) / np.maximum(random_lengths, 1)


def activity(random_codes: np.ndarray, random_lengths: np.ndarray,
             model: ExpressionModel = ExpressionModel()) -> np.ndarray:
  """float64 [n]: activity in logit units (see the module docstring)."""
  return activity_from_features(motif_saturations(random_codes, random_lengths, model),
                                gc_content(random_codes, random_lengths), model)


def activity_from_features(saturation: np.ndarray, gc: np.ndarray,
                           model: ExpressionModel = ExpressionModel()) -> np.ndarray:
  """float64 [n]: activity from motif saturations [n, num_motifs] and G+C content [n]."""
  # Elementwise sums in a fixed order (no BLAS), so each row's value is batch-independent.
  by_name = {m.name: saturation[:, i] for i, m in enumerate(model.motifs)}
  activators = np.zeros(saturation.shape[0])
  repressors = np.zeros(saturation.shape[0])
  for motif in model.motifs:
    if motif.weight > 0:
      activators += motif.weight * by_name[motif.name]
    elif motif.weight < 0:
      repressors += motif.weight * by_name[motif.name]
  first, second, synergy = model.synergy
  activators += synergy * by_name[first] * by_name[second]
  silencer, strength = model.silencer
  activators *= 1.0 - strength * by_name[silencer]
  return model.bias + activators + repressors + model.gc_weight * (gc - 0.47) / 0.08


def noise_free_from_codes(random_codes: np.ndarray, random_lengths: np.ndarray,
                          model: ExpressionModel = ExpressionModel()) -> np.ndarray:
  """float64 [n]: noise-free expression 17 * sigmoid(activity), from random regions."""
  return MAX_EXPRESSION * _sigmoid(activity(random_codes, random_lengths, model))


def split_random_regions(sequences: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
  """Random regions of full sequences, as (uint8 [n, max length] codes, int32 lengths).

  Raises:
    ValueError: a sequence does not start with FLANK_5 or end with FLANK_3.
  """
  regions = []
  for i, seq in enumerate(sequences):
    seq = seq.upper()
    if not (seq.startswith(FLANK_5) and seq.endswith(FLANK_3)
            and len(seq) >= len(FLANK_5) + len(FLANK_3)):
      raise ValueError(f'sequence {i} lacks the constant flanks {FLANK_5}...{FLANK_3}: '
                       f'{seq[:40]!r}')
    regions.append(seq[len(FLANK_5):len(seq) - len(FLANK_3)])
  lengths = np.array([len(r) for r in regions], dtype=np.int32)
  codes = np.full((len(regions), max(lengths.max(initial=0), 1)), PAD_CODE, np.uint8)
  lut = np.full(256, PAD_CODE, dtype=np.uint8)
  for code, base in enumerate(_BASES):
    lut[ord(base)] = code
  for i, region in enumerate(regions):
    codes[i, :len(region)] = lut[np.frombuffer(region.encode('ascii'), np.uint8)]
  return codes, lengths


def noise_free_expression(sequences: Sequence[str],
                          model: ExpressionModel = ExpressionModel()) -> np.ndarray:
  """float64 [n]: noise-free expression of full sequences (flanks included)."""
  codes, lengths = split_random_regions(sequences)
  return noise_free_from_codes(codes, lengths, model)


# ----------------------------------------------------------------------------- generation


def _block_rng(seed: int, block_index: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([seed, block_index]))


def _sample_lengths(rng, n, share) -> np.ndarray:
  """int32 [n]: random-region lengths, 80 except for a `share` of variants."""
  variant = rng.random(n) < share
  cumulative = np.cumsum(_LENGTH_DELTA_PROBS) / _LENGTH_DELTA_PROBS.sum()
  bucket = np.minimum(np.searchsorted(cumulative, rng.random(n), side='right'),
                      len(_LENGTH_DELTAS) - 1)
  delta = _LENGTH_DELTAS[bucket]
  tail = rng.random(n)
  short_lo, short_hi = _LONG_TAIL_SHORT
  long_lo, long_hi = _LONG_TAIL_LONG
  short_tail = short_lo + (tail * (short_hi - short_lo + 1)).astype(np.int64)
  long_tail = long_lo + (tail * (long_hi - long_lo + 1)).astype(np.int64)
  delta = np.where(delta == -7, short_tail, np.where(delta == 2, long_tail, delta))
  return (RANDOM_LENGTH + np.where(variant, delta, 0)).astype(np.int32)


def _background_lut() -> np.ndarray:
  return np.repeat(np.arange(4, dtype=np.uint8), _BACKGROUND_256THS)


def _plant(rng, codes, lengths, motif: Motif, prob: float
           ) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
  """Writes PWM-sampled instances of `motif` into a random `prob` share of rows.

  Returns:
    (rows, starts, reverse, instances [k, width] codes) of what was written, or None.
  """
  n = codes.shape[0]
  width = motif.width
  rows = np.flatnonzero(rng.random(n) < prob)
  u_pos, u_strand = rng.random(rows.size), rng.random(rows.size)
  u_bases = rng.random((rows.size, width))
  fits = lengths[rows] >= width
  rows, u_pos, u_strand, u_bases = rows[fits], u_pos[fits], u_strand[fits], u_bases[fits]
  if rows.size == 0:
    return None
  probs = pwm(motif)
  instance = (u_bases[:, :, None] > np.cumsum(probs, axis=1)[None, :, :-1]).sum(axis=2)
  reverse = u_strand < 0.5
  instance[reverse] = 3 - instance[reverse, ::-1]
  start = (u_pos * (lengths[rows] - width + 1)).astype(np.int64)
  codes[rows[:, None], start[:, None] + np.arange(width)] = instance.astype(np.uint8)
  return rows, start, reverse, instance.astype(np.uint8)


def _add_n_runs(rng, codes, lengths, share) -> None:
  """Sequencing failures: a run of mostly-N bases near the 3' end of a few rows."""
  rows = np.flatnonzero(rng.random(codes.shape[0]) < share)
  run = 10 + (rng.random(rows.size) * 14).astype(np.int64)    # 10..23 bases
  gap = (rng.random(rows.size) * 4).astype(np.int64)          # 0..3 bases before the 3' end
  u = rng.random((rows.size, codes.shape[1]))
  if rows.size == 0:
    return
  column = np.arange(codes.shape[1])
  end = lengths[rows] - gap
  in_run = (column >= (end - run)[:, None]) & (column < end[:, None])
  in_run &= u < 0.75
  block = codes[rows]
  block[in_run] = PAD_CODE
  codes[rows] = block


def _generate_block(config: SyntheticConfig, block_index: int) -> SyntheticRows:
  first = block_index * config.block_rows
  n = min(config.block_rows, max(config.num_rows - first, 0))
  return _generate_block_rows(config, block_index, n)


def _generate_block_rows(config: SyntheticConfig, block_index: int, n: int,
                         sites: Optional[list] = None) -> SyntheticRows:
  """The first n rows of block `block_index` (always drawn as a full block's streams).

  `sites`, when given, receives one `PlantedSites` of the block's first n rows
  (recording draws no random numbers, so the rows are the same either way).
  """
  rng = _block_rng(config.seed, block_index)
  full = config.block_rows
  lengths = _sample_lengths(rng, full, config.length_variant_share)
  width = int(lengths.max())
  codes = _background_lut()[rng.integers(0, 256, size=(full, width), dtype=np.uint8)]
  planted = [_plant(rng, codes, lengths, motif,
                    min(1.0, motif.plant_prob * config.plant_scale))
             for motif in config.model.motifs]
  _add_n_runs(rng, codes, lengths, config.n_row_share)
  codes[np.arange(width) >= lengths[:, None]] = PAD_CODE
  if sites is not None:
    sites.append(_surviving_sites(codes, planted, n))
  noise = rng.standard_normal(full)
  integer = rng.random(full) < config.integer_share

  codes, lengths, noise, integer = codes[:n], lengths[:n], noise[:n], integer[:n]
  if n and lengths.max() < width:
    codes = codes[:, :lengths.max()]
  codes = np.ascontiguousarray(codes)
  noise_free = noise_free_from_codes(codes, lengths, config.model)
  measured = np.clip(noise_free + config.noise_sd * noise, 0.0, MAX_EXPRESSION)
  measured = np.where(integer, np.rint(measured), measured)
  scale = 10 ** config.decimals
  expression = np.rint(measured * scale) / scale
  return SyntheticRows(codes, lengths, expression, noise_free, config.decimals)


@dataclasses.dataclass(frozen=True)
class PlantedSites:
  """Motif instances the generator planted, one entry per instance, in planting order.

  Attributes:
    row: int64 [k], row number (counted from the `start` given to `planted_sites`).
    motif: int64 [k], index into `config.model.motifs`.
    start: int64 [k], first base of the instance in the random region (0-based; add
      len(FLANK_5) for the full sequence).
    reverse: bool [k], planted on the reverse strand.
    intact: bool [k], the final sequence still holds every planted base (later plants
      and N runs may overwrite part of an instance).
  """
  row: np.ndarray
  motif: np.ndarray
  start: np.ndarray
  reverse: np.ndarray
  intact: np.ndarray

  def __len__(self) -> int:
    return int(self.row.shape[0])

  def motif_map(self, num_rows: int, width: int, model: 'ExpressionModel' = None,
                intact_only: bool = True, informative_only: bool = True) -> np.ndarray:
    """int64 [num_rows, width]: the motif index planted at each random-region position,
    -1 where none (where instances overlap, the later one).

    Args:
      num_rows, width: shape of the map (rows as numbered here, random-region bases).
      model: the expression model the sites were planted from (default: the default).
      intact_only: leave out instances that were partly overwritten.
      informative_only: leave out an instance's uniform (N) columns, which carry no
        information about the factor (e.g. the 5 middle bases of Abf1's RTCRYNNNNNACG).
    """
    model = ExpressionModel() if model is None else model
    out = np.full((num_rows, width), -1, np.int64)
    for i in np.flatnonzero(self.intact if intact_only else np.ones(len(self), bool)):
      motif = model.motifs[int(self.motif[i])]
      columns = np.arange(motif.width)
      if informative_only:
        columns = np.array(_informative_columns(pwm(motif)), np.int64)
        if self.reverse[i]:
          columns = motif.width - 1 - columns
      out[self.row[i], self.start[i] + columns] = self.motif[i]
    return out

  def mask(self, num_rows: int, width: int, model: 'ExpressionModel' = None,
           **kwargs) -> np.ndarray:
    """bool [num_rows, width]: positions covered by planted instances (see motif_map)."""
    return self.motif_map(num_rows, width, model, **kwargs) >= 0


def _surviving_sites(codes: np.ndarray, planted: Sequence, n: int) -> PlantedSites:
  """The instances of `planted` (from `_plant`, per motif) in rows < n, checked against
  the final codes."""
  fields = []
  for m, found in enumerate(planted):
    if found is None:
      continue
    rows, start, reverse, instance = found
    keep = rows < n
    rows, start, reverse, instance = rows[keep], start[keep], reverse[keep], instance[keep]
    now = codes[rows[:, None], start[:, None] + np.arange(instance.shape[1])]
    fields.append((rows, np.full(rows.size, m), start, reverse, (now == instance).all(1)))
  if not fields:
    return PlantedSites(*(np.zeros(0, np.int64),) * 3, np.zeros(0, bool), np.zeros(0, bool))
  row, motif, start, reverse, intact = (np.concatenate(f) for f in zip(*fields))
  return PlantedSites(row.astype(np.int64), motif.astype(np.int64), start.astype(np.int64),
                      reverse, intact)


def _blocks(config: SyntheticConfig, start: int,
            stop: Optional[int]) -> Iterator[Tuple[int, int, int]]:
  """(block, its first row, rows to generate of it) covering rows [start, stop)."""
  stop = config.num_rows if stop is None else min(stop, config.num_rows)
  if not 0 <= start <= stop:
    raise ValueError(f'need 0 <= start <= stop, got {start}, {stop}')
  for block in range(start // config.block_rows, -(-stop // config.block_rows)):
    first = block * config.block_rows
    yield block, first, min(config.block_rows, stop - first)


def planted_sites(config: SyntheticConfig, start: int = 0,
                  stop: Optional[int] = None) -> PlantedSites:
  """The motif instances planted in rows [start, stop) of the data set `config` defines.

  Regenerates the rows (as `generate` does, with the same result) and records what
  `_plant` wrote; rows are numbered from `start`. The expression model never looks at
  this record, only at the final sequence.
  """
  parts = []
  for block, first, count in _blocks(config, start, stop):
    found = []
    _generate_block_rows(config, block, count, found)
    sites = found[0]
    keep = sites.row >= start - first
    parts.append(PlantedSites(sites.row[keep] + first - start, sites.motif[keep],
                              sites.start[keep], sites.reverse[keep], sites.intact[keep]))
  if not parts:
    return PlantedSites(*(np.zeros(0, np.int64),) * 3, np.zeros(0, bool), np.zeros(0, bool))
  fields = [(p.row, p.motif, p.start, p.reverse, p.intact) for p in parts]
  return PlantedSites(*(np.concatenate(f) for f in zip(*fields)))


def _concat(parts: Sequence[SyntheticRows], decimals: int) -> SyntheticRows:
  if not parts:
    return SyntheticRows(np.zeros((0, RANDOM_LENGTH), np.uint8), np.zeros(0, np.int32),
                         np.zeros(0), np.zeros(0), decimals)
  width = max(p.random_codes.shape[1] for p in parts)
  codes = np.full((sum(len(p) for p in parts), width), PAD_CODE, np.uint8)
  start = 0
  for p in parts:
    codes[start:start + len(p), :p.random_codes.shape[1]] = p.random_codes
    start += len(p)
  return SyntheticRows(codes,
                       np.concatenate([p.random_lengths for p in parts]),
                       np.concatenate([p.expression for p in parts]),
                       np.concatenate([p.noise_free for p in parts]), decimals)


def generate(config: SyntheticConfig, start: int = 0,
             stop: Optional[int] = None) -> SyntheticRows:
  """Rows [start, stop) of the data set `config` defines (default: all of it).

  The same rows come out whatever range they are asked for in.
  """
  parts = []
  for block, first, count in _blocks(config, start, stop):
    rows = _generate_block_rows(config, block, count)
    lo = max(start - first, 0)
    if lo:
      rows = SyntheticRows(rows.random_codes[lo:], rows.random_lengths[lo:],
                           rows.expression[lo:], rows.noise_free[lo:], rows.decimals)
    parts.append(rows)
  return _concat(parts, config.decimals)


# ----------------------------------------------------------------------------- formatting


def _format_lines(rows: SyntheticRows) -> bytes:
  """DREAM-format bytes for `rows`, built in one [n, width] buffer and compacted."""
  n = len(rows)
  if n == 0:
    return b''
  d = rows.decimals
  region = rows.random_codes.shape[1]
  f5, f3 = len(FLANK_5), len(FLANK_3)
  tab = f5 + region + f3
  tens = tab + 1
  dot = tens + 2
  width = dot + 1 + d + 1
  buf = np.empty((n, width), dtype=np.uint8)
  buf[:, :f5] = np.frombuffer(FLANK_5.encode(), np.uint8)
  buf[:, f5:f5 + region] = _ASCII_OF_CODE[rows.random_codes]
  buf[:, f5 + region:tab] = np.frombuffer(FLANK_3.encode(), np.uint8)
  buf[:, tab] = ord('\t')
  scaled = np.rint(rows.expression * 10 ** d).astype(np.int64)
  whole, frac = np.divmod(scaled, 10 ** d)
  buf[:, tens] = 48 + whole // 10
  buf[:, tens + 1] = 48 + whole % 10
  buf[:, dot] = ord('.')
  for j in range(d):
    buf[:, dot + 1 + j] = 48 + (frac // 10 ** (d - 1 - j)) % 10
  buf[:, -1] = ord('\n')
  keep = np.ones((n, width), dtype=bool)
  keep[:, f5:f5 + region] = np.arange(region) < rows.random_lengths[:, None]
  keep[:, tens] = whole >= 10
  keep[:, dot:dot + 1 + d] = (frac != 0)[:, None]
  return buf[keep].tobytes()


# ----------------------------------------------------------------------------- file writing


class _Moments:
  """Streaming count, means and co-moments of (noise_free, expression), plus counts.

  Blocks are merged with the pairwise update of Chan, Golub & LeVeque (1979), so the
  Pearson r of millions of rows needs no second pass and stays accurate.
  """

  def __init__(self):
    self.n = 0
    self.mean = np.zeros(2)
    self.comoment = np.zeros((2, 2))
    self.minimum = np.inf
    self.maximum = -np.inf
    self.integers = 0
    self.variants = 0
    self.with_n = 0

  @classmethod
  def of_rows(cls, rows: SyntheticRows) -> '_Moments':
    moments = cls.of_pairs(rows.noise_free, rows.expression)
    moments.integers = int(np.count_nonzero(rows.expression == np.rint(rows.expression)))
    moments.variants = int(np.count_nonzero(rows.random_lengths != RANDOM_LENGTH))
    valid = np.arange(rows.random_codes.shape[1]) < rows.random_lengths[:, None]
    moments.with_n = int(np.count_nonzero(((rows.random_codes > 3) & valid).any(axis=1)))
    return moments

  @classmethod
  def of_pairs(cls, x: np.ndarray, y: np.ndarray) -> '_Moments':
    moments = cls()
    if len(x) == 0:
      return moments
    xy = np.stack([np.asarray(x, np.float64), np.asarray(y, np.float64)])
    moments.n = xy.shape[1]
    moments.mean = xy.mean(axis=1)
    centred = xy - moments.mean[:, None]
    moments.comoment = centred @ centred.T
    moments.minimum = float(xy[1].min())
    moments.maximum = float(xy[1].max())
    return moments

  def merge(self, other: '_Moments') -> None:
    if other.n == 0:
      return
    total = self.n + other.n
    delta = other.mean - self.mean
    self.comoment = (self.comoment + other.comoment
                     + np.outer(delta, delta) * (self.n * other.n / total))
    self.mean = self.mean + delta * (other.n / total)
    self.n = total
    self.minimum = min(self.minimum, other.minimum)
    self.maximum = max(self.maximum, other.maximum)
    self.integers += other.integers
    self.variants += other.variants
    self.with_n += other.with_n

  def pearson(self) -> float:
    c = self.comoment
    denominator = np.sqrt(c[0, 0] * c[1, 1])
    return float(c[0, 1] / denominator) if denominator > 0 else float('nan')


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson r of two [n] arrays (the noise ceiling when x is noise-free, y measured)."""
  return _Moments.of_pairs(x, y).pearson()


def _block_output(config: SyntheticConfig, block_index: int) -> Tuple[bytes, _Moments]:
  """One block as file bytes and its summary (what a worker process sends back)."""
  rows = _generate_block(config, block_index)
  return rows.to_bytes(), _Moments.of_rows(rows)


def _block_outputs(config: SyntheticConfig,
                   workers: int) -> Iterator[Tuple[bytes, _Moments]]:
  """`_block_output` of every block, in order; `workers` processes work ahead.

  Worker processes are spawned (not forked) so that a caller with threads (JAX, TF) is
  safe; at most `workers + 1` blocks are in flight, which bounds memory.
  """
  num_blocks = -(-config.num_rows // config.block_rows)
  if workers <= 1 or num_blocks <= 1:
    for block in range(num_blocks):
      yield _block_output(config, block)
    return
  context = multiprocessing.get_context('spawn')
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    pending = collections.deque()
    next_block = 0
    while next_block < num_blocks or pending:
      while next_block < num_blocks and len(pending) < workers + 1:
        pending.append(pool.submit(_block_output, config, next_block))
        next_block += 1
      yield pending.popleft().result()


def write_synthetic_file(path: str, config: SyntheticConfig,
                         workers: Optional[int] = None) -> SyntheticReport:
  """Writes the data set `config` defines to `path` (gzip when it ends in .gz).

  Args:
    path: output file; parent directories are created. A .gz file is written with mtime 0
      and no file name inside, so it is reproducible too.
    config: what to generate.
    workers: generator processes (default: one per core, at most 2, for files of 4 blocks
      or more; else 1); never changes the bytes.

  Returns:
    The report; `noise_ceiling_pearson` is over all rows written.
  """
  num_blocks = -(-config.num_rows // config.block_rows)
  if workers is None:
    # Spawning a worker costs ~1 s (importing numpy): worth it from a few blocks on.
    workers = min(2, os.cpu_count() or 1) if num_blocks >= 4 else 1
  started = time.perf_counter()
  moments = _Moments()
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with open(path, 'wb') as raw:
    out = (gzip.GzipFile(filename='', mode='wb', fileobj=raw, compresslevel=4, mtime=0)
           if path.endswith('.gz') else raw)
    try:
      for data, block_moments in _block_outputs(config, workers):
        out.write(data)
        moments.merge(block_moments)
    finally:
      if out is not raw:
        out.close()
  n = max(moments.n, 1)
  sd = float(np.sqrt(moments.comoment[1, 1] / n)) if moments.n else float('nan')
  return SyntheticReport(
      path=path,
      rows=moments.n,
      seconds=time.perf_counter() - started,
      bytes_written=os.path.getsize(path),
      noise_ceiling_pearson=moments.pearson(),
      expression_mean=float(moments.mean[1]) if moments.n else float('nan'),
      expression_sd=sd,
      expression_min=float(moments.minimum),
      expression_max=float(moments.maximum),
      integer_share=moments.integers / n,
      length_variant_share=moments.variants / n,
      n_row_share=moments.with_n / n,
  )
