"""Motif sites in sequences (memelite's FIMO), and the sites an edit makes or breaks.

`scan` finds every site of the given motifs (JASPAR's, a MEME file's or discovered
ones, `motif_db.Motif`) in any sequences: the inputs of predict, designs, variant
tables. Positions are 0-based in the sequence as written, [start, end); a '-' strand
site is the motif's reverse complement at those positions (FIMO's convention). The
score is FIMO's log2-odds against a uniform background and the p-value its exact
p-value under that background; a site is reported at p <= `threshold` (FIMO's default,
1e-4). N and other letters match no base.

`site_changes` reads an edit as "this edit breaks a site of factor X": for ref/alt pairs
it lists the sites found in ref but not in alt ('lost') and in alt but not in ref
('gained'). A site is the same in both when the motif and strand agree and its start
maps across the edit: positions before the first difference are unchanged, later
ones move by len(alt) - len(ref) (an insertion or deletion shifts what follows it; a
substitution moves nothing). A site whose bases change but which still passes the
threshold is kept, not lost.
"""

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np

from enformer_small import dream_data
from enformer_small import motif_db

DEFAULT_THRESHOLD = 1e-4
_COMPLEMENT = str.maketrans('ACGTNacgtn', 'TGCANtgcan')


@dataclasses.dataclass(frozen=True)
class Hit:
  """A motif site: sequence index, motif id, [start, end) 0-based, strand '+'/'-',
  FIMO's score and p-value, and the site's bases read on its strand."""
  sequence: int
  motif: str
  start: int
  end: int
  strand: str
  score: float
  p_value: float
  site: str = ''


@dataclasses.dataclass(frozen=True)
class SiteChange:
  """A site an edit breaks ('lost': in ref, `hit` in ref coordinates) or makes
  ('gained': in alt, `hit` in alt coordinates); hit.sequence is the pair's index."""
  change: str
  hit: Hit


def _check_motifs(motifs: Sequence[motif_db.Motif]) -> None:
  ids = [m.id for m in motifs]
  if not ids:
    raise ValueError('no motif to scan for')
  repeated = sorted({i for i in ids if ids.count(i) > 1})
  if repeated:
    raise ValueError(f'motif id {repeated[0]!r} is given more than once')


def _site(sequence: str, start: int, end: int, strand: str) -> str:
  bases = sequence[start:end]
  return bases if strand == '+' else bases.translate(_COMPLEMENT)[::-1]


def scan(sequences: Sequence[str], motifs: Sequence[motif_db.Motif], *,
         threshold: float = DEFAULT_THRESHOLD) -> List[Hit]:
  """Every site of `motifs` in `sequences` at p <= threshold, both strands.

  Args:
    sequences: N sequences (any length; letters other than ACGT are N).
    motifs: with unique ids.
    threshold: FIMO's p-value threshold.

  Returns:
    hits sorted by sequence, start, motif and strand.
  """
  from memelite import fimo
  _check_motifs(motifs)
  if not 0 < threshold < 1:
    raise ValueError(f'threshold must be in (0, 1), got {threshold}')
  if not sequences:
    return []
  lengths = np.array([len(s) for s in sequences])
  width = max(int(lengths.max()), max(m.width for m in motifs))
  # Shorter sequences are padded with N (no base): sites reaching into it are dropped.
  x = dream_data.one_hot(dream_data.encode_sequences(list(sequences), width))
  x = np.ascontiguousarray(x.transpose(0, 2, 1))
  pwms = {m.id: np.ascontiguousarray(m.ppm.T) for m in motifs}
  hits = []
  for table in fimo(pwms, x, threshold=threshold):
    columns = zip(*(table[c].tolist() for c in ('motif_name', 'sequence_name', 'start',
                                                 'end', 'strand', 'score', 'p-value')))
    for motif, i, start, end, strand, score, p_value in columns:
      if end <= lengths[i]:
        hits.append(Hit(int(i), str(motif), int(start), int(end), strand, float(score),
                        float(p_value), _site(sequences[i], start, end, strand)))
  hits.sort(key=lambda h: (h.sequence, h.start, h.motif, h.strand))
  return hits


def _mapped_start(start: int, prefix: int, shift: int) -> int:
  return start if start < prefix else start + shift


def _common_prefix(a: str, b: str) -> int:
  n = min(len(a), len(b))
  differs = np.flatnonzero(np.frombuffer(a[:n].upper().encode(), np.uint8)
                           != np.frombuffer(b[:n].upper().encode(), np.uint8))
  return int(differs[0]) if differs.size else n


def site_changes(refs: Sequence[str], alts: Sequence[str],
                 motifs: Sequence[motif_db.Motif], *,
                 threshold: float = DEFAULT_THRESHOLD) -> List[SiteChange]:
  """The sites lost and gained by each edit ref -> alt (see the module docstring).

  Args:
    refs, alts: N sequence pairs.
    motifs: as for `scan`.
    threshold: FIMO's p-value threshold for a site.

  Returns:
    per pair in order, its lost sites then its gained ones, each by position.
  """
  if len(refs) != len(alts):
    raise ValueError(f'{len(refs)} ref and {len(alts)} alt sequences')
  n = len(refs)
  by_pair: Dict[Tuple[int, int], List[Hit]] = {}
  # Refs are sequences 0..n-1 of the scan, alts n..2n-1: key (pair, 0 ref / 1 alt).
  for hit in scan(list(refs) + list(alts), motifs, threshold=threshold):
    by_pair.setdefault((hit.sequence % n, hit.sequence // n), []).append(
        dataclasses.replace(hit, sequence=hit.sequence % n))
  out = []
  for i in range(n):
    prefix, shift = _common_prefix(refs[i], alts[i]), len(alts[i]) - len(refs[i])
    ref_hits, alt_hits = by_pair.get((i, 0), []), by_pair.get((i, 1), [])
    in_alt = {(h.motif, h.strand, h.start) for h in alt_hits}
    in_ref = {(h.motif, h.strand, _mapped_start(h.start, prefix, shift))
              for h in ref_hits}
    out += [SiteChange('lost', h) for h in ref_hits
            if (h.motif, h.strand, _mapped_start(h.start, prefix, shift)) not in in_alt]
    out += [SiteChange('gained', h) for h in alt_hits
            if (h.motif, h.strand, h.start) not in in_ref]
  return out
