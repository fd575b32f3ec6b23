"""What a designed sequence may be: the constraints every design method keeps.

Sequences are codes (A=0, C=1, G=2, T=3, N=4) of the model's encoding, [M, S]. A
candidate is valid against its start when:

  mutable          only positions marked mutable differ from the start (for DREAM rows
                   by default the 80 bp random region, 17..96 of the 110 bp construct:
                   the constant flanks are the plasmid's);
  max_edits        at most this many positions differ from the start;
  gc_range         the G+C share of the mutable positions lies in [lo, hi];
  forbidden        no site (IUPAC strings, e.g. GAATTC for EcoRI, read on both strands)
                   occurs over a mutable position (a site wholly inside the fixed flanks
                   is the construct's own and no design can change it);
  max_homopolymer  no run of one base longer than this touches a mutable position.

`valid` checks a whole batch at once (numpy, vectorised), so methods filter their
candidates before spending model evaluations on them; starts must themselves be valid
(`violations` says why one is not).
"""

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np

from enformer_small import dream_data

BASES = 'ACGT'
N_CODE = dream_data.PAD_CODE
IUPAC = {'A': 'A', 'C': 'C', 'G': 'G', 'T': 'T', 'U': 'T', 'R': 'AG', 'Y': 'CT',
         'S': 'CG', 'W': 'AT', 'K': 'GT', 'M': 'AC', 'B': 'CGT', 'D': 'AGT',
         'H': 'ACT', 'V': 'ACG', 'N': 'ACGT'}
COMPLEMENT = str.maketrans('ACGTURYSWKMBDHVN', 'TGCAAYRSWMKVHDBN')


class ConstraintError(ValueError):
  """Constraints that cannot be met or parsed; the message says which."""


def check_iupac(site: str) -> str:
  """`site` in upper case; ConstraintError unless every letter is an IUPAC code."""
  site = site.strip().upper()
  bad = sorted(set(site) - set(IUPAC))
  if not site or bad:
    raise ConstraintError(f'{site!r} is not an IUPAC nucleotide string (letters '
                          f'{"".join(IUPAC)}){"; found " + "".join(bad) if bad else ""}')
  return site


def reverse_complement(site: str) -> str:
  return site.translate(COMPLEMENT)[::-1]


def allowed(site: str) -> np.ndarray:
  """bool [k, 5]: which codes each position of an IUPAC site accepts (N never)."""
  table = np.zeros((len(site), N_CODE + 1), bool)
  for i, letter in enumerate(site):
    table[i, [BASES.index(b) for b in IUPAC[letter]]] = True
  return table


def site_matches(codes: np.ndarray, site: str) -> np.ndarray:
  """bool [M, S - k + 1]: where `site` (one strand) starts in codes [M, S]."""
  table = allowed(site)
  k = len(site)
  if codes.shape[1] < k:
    return np.zeros((codes.shape[0], 0), bool)
  windows = np.lib.stride_tricks.sliding_window_view(codes, k, axis=1)  # [M, W, k]
  return table[np.arange(k), windows].all(axis=-1)


def dream_mutable(length: int = dream_data.SEQUENCE_LENGTH) -> np.ndarray:
  """bool [length]: the random region of the 110 bp DREAM construct."""
  mutable = np.zeros(length, bool)
  lo = len(dream_data.FLANK_5)
  mutable[lo:min(length, dream_data.SEQUENCE_LENGTH - len(dream_data.FLANK_3))] = True
  return mutable


@dataclasses.dataclass(frozen=True)
class Constraints:
  """See the module docstring; None (or empty) leaves a constraint out."""
  mutable: np.ndarray
  max_edits: Optional[int] = None
  gc_range: Optional[Tuple[float, float]] = None
  forbidden: Tuple[str, ...] = ()
  max_homopolymer: Optional[int] = None

  def __post_init__(self):
    object.__setattr__(self, 'mutable', np.asarray(self.mutable, bool))
    object.__setattr__(self, 'forbidden', tuple(check_iupac(s) for s in self.forbidden))
    if not self.mutable.any():
      raise ConstraintError('no position may change: nothing to design')
    if self.max_edits is not None and self.max_edits < 1:
      raise ConstraintError(f'max_edits must be at least 1, got {self.max_edits}')
    if self.gc_range is not None:
      lo, hi = self.gc_range
      if not 0 <= lo <= hi <= 1:
        raise ConstraintError(f'gc_range must satisfy 0 <= lo <= hi <= 1, got '
                              f'{self.gc_range}')
    if self.max_homopolymer is not None and self.max_homopolymer < 1:
      raise ConstraintError(f'max_homopolymer must be at least 1, got '
                            f'{self.max_homopolymer}')

  @property
  def length(self) -> int:
    return int(self.mutable.shape[0])

  def edits(self, codes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """int [M]: positions where codes [M, S] differ from their starts [M, S]."""
    return np.count_nonzero(codes != starts, axis=1)

  def gc(self, codes: np.ndarray) -> np.ndarray:
    """float [M]: the G+C share of the mutable positions."""
    designed = codes[:, self.mutable]
    return np.mean((designed == 1) | (designed == 2), axis=1)

  def forbidden_sites(self, codes: np.ndarray) -> np.ndarray:
    """int [M]: occurrences of forbidden sites (both strands) over a mutable position."""
    found = np.zeros(codes.shape[0], int)
    for site in self.forbidden:
      k = len(site)
      # A site at offset o covers positions o .. o + k - 1.
      touches = np.convolve(self.mutable.astype(int), np.ones(k, int),
                            mode='valid') > 0
      for strand in {site, reverse_complement(site)}:
        found += (site_matches(codes, strand) & touches[None]).sum(axis=1)
    return found

  def longest_run(self, codes: np.ndarray) -> np.ndarray:
    """int [M]: the longest run of one base (N excluded) touching a mutable position."""
    m, s = codes.shape
    forward = np.zeros((m, s), int)
    backward = np.zeros((m, s), int)
    base = codes < N_CODE
    forward[:, 0] = base[:, 0]
    for i in range(1, s):
      same = base[:, i] & (codes[:, i] == codes[:, i - 1])
      forward[:, i] = np.where(same, forward[:, i - 1] + 1, base[:, i].astype(int))
    backward[:, -1] = base[:, -1]
    for i in range(s - 2, -1, -1):
      same = base[:, i] & (codes[:, i] == codes[:, i + 1])
      backward[:, i] = np.where(same, backward[:, i + 1] + 1, base[:, i].astype(int))
    run = np.where(base, forward + backward - 1, 0)
    return run[:, self.mutable].max(axis=1)

  def valid(self, codes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """bool [M]: which candidates codes [M, S] keep every constraint against starts."""
    codes, starts = np.asarray(codes), np.asarray(starts)
    ok = ~np.any((codes != starts) & ~self.mutable[None], axis=1)
    if self.max_edits is not None:
      ok &= self.edits(codes, starts) <= self.max_edits
    if self.gc_range is not None:
      gc = self.gc(codes)
      ok &= (gc >= self.gc_range[0] - 1e-9) & (gc <= self.gc_range[1] + 1e-9)
    if self.forbidden:
      ok &= self.forbidden_sites(codes) == 0
    if self.max_homopolymer is not None:
      ok &= self.longest_run(codes) <= self.max_homopolymer
    return ok

  def violations(self, code: np.ndarray) -> List[str]:
    """Why a start (codes [S]) breaks the constraints that do not depend on edits."""
    code = np.asarray(code)[None]
    found = []
    if self.gc_range is not None and not (
        self.gc_range[0] - 1e-9 <= self.gc(code)[0] <= self.gc_range[1] + 1e-9):
      found.append(f'G+C {self.gc(code)[0]:.2f} outside {self.gc_range}')
    if self.forbidden and self.forbidden_sites(code)[0]:
      found.append(f'a forbidden site ({", ".join(self.forbidden)})')
    if self.max_homopolymer is not None and (
        self.longest_run(code)[0] > self.max_homopolymer):
      found.append(f'a run of {self.longest_run(code)[0]} identical bases')
    return found


def random_starts(constraints: Constraints, template: np.ndarray, count: int,
                  rng: np.random.Generator, max_tries: int = 1000) -> np.ndarray:
  """uint8 [count, S]: `template` [S] with uniform random bases at the mutable
  positions, each start redrawn until it keeps the constraints (edits aside)."""
  out = np.empty((count, constraints.length), np.uint8)
  mutable = np.flatnonzero(constraints.mutable)
  for i in range(count):
    for _ in range(max_tries):
      code = np.array(template, np.uint8)
      code[mutable] = rng.integers(0, 4, mutable.size)
      if not constraints.violations(code):
        out[i] = code
        break
    else:
      raise ConstraintError(f'no random start keeps the constraints in {max_tries} '
                            'draws: loosen them')
  return out


def codes_of(sequences: Sequence[str], length: int) -> np.ndarray:
  return dream_data.encode_sequences(list(sequences), length)


def sequences_of(codes: np.ndarray) -> List[str]:
  letters = np.array(list(BASES + 'N'))
  return [''.join(letters[row]) for row in np.asarray(codes)]
