"""What a model learned, as motifs: many sequences' attributions clustered by TF-MoDISco.

1. `hypothetical_contributions`: per-base scores [N, S, 4] of one-hot sequences
   [N, S, 4] (sequence-encoding coordinates, S = 110 for DREAM rows) through the one
   inference path (`inference.Predictor.scorer`: the checkpoint's windows, shifts and
   strands averaged; an `ensemble.Ensemble`: the mean over its members):
   - 'hypothetical' (default): the input gradient minus its mean over the 4 bases at
     each position, what TF-MoDISco expects as hypothetical scores; at the reference
     base it is gradient x input, centred.
   - 'gradient_x_input': the gradient itself, so TF-MoDISco's contribution (one-hot
     times it) is exactly `attribution.gradient_x_input`.
   - 'ism': ISM's effects minus their mean over the 4 bases (0 at the reference
     included): 4 x 3 x S forward passes a sequence, for small sets.
2. `discover`: TF-MoDISco (modisco-lite 3.0.0, `modiscolite.tfmodisco.TFMoDISco`) on
   the random region of each row (`default_region`: the 80 bp between the constant
   DREAM flanks, which never vary and would otherwise be found as a "motif" at a fixed
   place); motifs as PPMs and contribution-weight matrices (CWMs), with their seqlets.

TF-MoDISco's settings (`DiscoverySettings`) are chosen for 80 bp inputs. With its
defaults (seqlet core 20-21 bp with 5-10 bp flanks, patterns trimmed to 30 bp and
padded with 10 bp on each side) modisco-lite returns no motif on windows under ~100 bp
(tfmodisco-lite issue #68). Why: a seqlet is kept only while it can be expanded to its
pattern's full length inside its sequence (`aggregator._expand_seqlets_to_fill_pattern`
and `merge_in_seqlets_filledges` drop it otherwise), and a polished pattern is
30 + 2 x 10 = 50 bp, so in an 80 bp region only motifs in its middle ~30 bp keep their
seqlets, too few to pass `final_min_cluster_size`; seqlet calling also skips the
`flank` bp at each end. Measured on 2,000 synthetic rows whose attributions are the
generator's own ISM, mean-centred (9 planted factors; patterns found, consensus):

  core/flank/trim/pad  FDR   found
  20/5/30/10 (CLI)     0.05  none
  20/5/16/3            0.05  3: Rap1, polyT+TATA, Gcn4
  12/4/16/3            0.05  7: Gcn4 and Abf1 merged
  15/5/20/5            0.05  3
  10/3/15/2            0.05  8 (Abf1 merged with Gcn4)
  10/3/15/2 (default)  0.2   9: 8 factors, TOMTOM q < 0.05 (not Mcm1, the weakest),
                             Abf1 apart from Gcn4, and a TATA-Gcn4 composite
  8/3/14/2             0.05  8

The default keeps modisco-lite's own `target_seqlet_fdr` (0.2; its CLI narrows it to
0.05) and its CLI's 2 Leiden runs (10 gave the same motifs at 5x the time).
"""

import concurrent.futures
import dataclasses
import logging
import multiprocessing
import time
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from enformer_small import dream_data
from enformer_small import motif_db
from enformer_small.settings import setting

METHODS = ('hypothetical', 'gradient_x_input', 'ism')
SIGNS = {'pos': 'positive', 'neg': 'negative'}
# A CWM is trimmed to the span of positions carrying this share of its largest total
# |contribution| (the modisco-lite report's rule) before matching and scanning.
TRIM_FRACTION = 0.3
Progress = Optional[Callable[[int], None]]
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DiscoverySettings:
  """TF-MoDISco's settings (modisco-lite's names) for 80-110 bp inputs."""
  sliding_window_size: int = setting(
      10, 'TF-MoDISco: the seqlet core (bp) over which attributions are summed.')
  flank_size: int = setting(3, 'TF-MoDISco: bp added on each side of a seqlet core.')
  trim_to_window_size: int = setting(
      15, 'TF-MoDISco: patterns are trimmed to their most informative window of this '
      'many bp.')
  initial_flank_to_add: int = setting(
      2, 'TF-MoDISco: bp added on each side of a trimmed pattern (the pattern is then '
      'trim_to_window_size + 2 x this; every seqlet must fit in its sequence).')
  target_seqlet_fdr: float = setting(0.2, 'TF-MoDISco: FDR of seqlet calling.')
  min_metacluster_size: int = setting(
      30, 'TF-MoDISco: fewest seqlets of a sign worth clustering.')
  max_seqlets_per_metacluster: int = setting(
      20000, 'TF-MoDISco: most seqlets of a sign clustered (the strongest).')
  final_min_cluster_size: int = setting(
      20, 'TF-MoDISco: fewest seqlets of a reported motif.')
  n_leiden_runs: int = setting(
      2, 'TF-MoDISco: Leiden clusterings (random seeds) per clustering step.')

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if value <= 0 or (field.name == 'target_seqlet_fdr' and value >= 1):
        raise ValueError(f'{field.name} must be positive'
                         + (' and below 1' if field.name == 'target_seqlet_fdr' else '')
                         + f', got {value}')

  @property
  def seqlet_length(self) -> int:
    return self.sliding_window_size + 2 * self.flank_size

  def kwargs(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, eq=False)
class DiscoveredMotif:
  """A TF-MoDISco pattern.

  Attributes:
    name: 'pos_<i>' / 'neg_<i>': the metacluster (sign of the summed contribution) and
      the rank by seqlet count within it.
    ppm: float64 [W, 4] base frequencies of its seqlets (A, C, G, T).
    cwm: float64 [W, 4] their mean contribution (one-hot x hypothetical).
    hcwm: float64 [W, 4] their mean hypothetical contribution.
    sites: int64 [K, 3] per seqlet (sequence, start in the encoding, 1 if on the
      reverse strand); each seqlet spans W positions.
    trim: [lo, hi) of the positions kept for matching and scanning (`TRIM_FRACTION`).
  """
  name: str
  ppm: np.ndarray
  cwm: np.ndarray
  hcwm: np.ndarray
  sites: np.ndarray
  trim: Tuple[int, int]

  @property
  def sign(self) -> str:
    return SIGNS[self.name.split('_')[0]]

  @property
  def seqlets(self) -> int:
    return int(self.sites.shape[0])

  @property
  def trimmed_ppm(self) -> np.ndarray:
    return self.ppm[self.trim[0]:self.trim[1]]

  @property
  def trimmed_cwm(self) -> np.ndarray:
    return self.cwm[self.trim[0]:self.trim[1]]

  def as_motif(self) -> motif_db.Motif:
    """The trimmed PPM as a database motif (for TOMTOM and FIMO)."""
    return motif_db.Motif(self.name, self.name, motif_db.normalised(
        self.trimmed_ppm + 1e-6, self.name), 'discovered')


# ---------------------------------------------------------------------------
# Attributions.


def members_of(model) -> Tuple:
  """The predictors of an `ensemble.Ensemble`, or (predictor,)."""
  return tuple(getattr(model, 'members', (model,)))


def work_rows(model, n: int, method: str) -> int:
  """How many rows `hypothetical_contributions` reports to `progress` for n sequences."""
  if method != 'ism':
    return n * len(members_of(model))
  return sum(n * (3 * int(m.covered().sum()) + 1) * len(m.windows.passes)
             for m in members_of(model))


def centred(scores: np.ndarray) -> np.ndarray:
  """scores [..., 4] minus their mean over the last axis (the 4 bases)."""
  return scores - scores.mean(axis=-1, keepdims=True)


def hypothetical_contributions(model, x: np.ndarray, *, method: str = 'hypothetical',
                               target: int = 0, batch_size: Optional[int] = None,
                               progress: Progress = None) -> np.ndarray:
  """float32 [N, S, 4]: hypothetical scores of one-hot sequences (see the docstring).

  Args:
    model: an `inference.Predictor` or an `ensemble.Ensemble` (the mean of its members).
    x: one-hot [N, S, 4] of sequence encodings (S = model.layout.length).
    method: one of METHODS.
    target: the output attributed (an index into the model's targets).
    batch_size: rows per pass (default each predictor's).
    progress: called with rows done (`work_rows` in all).
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {", ".join(METHODS)}; got {method!r}')
  members = members_of(model)
  if not 0 <= target < len(members[0].targets):
    raise ValueError(f'target {target} out of range: the model predicts '
                     f'{len(members[0].targets)} output(s)')
  from enformer_small import attribution  # Not imported by TF-MoDISco's process.
  total = np.zeros(x.shape, np.float64)
  for member in members:
    size = batch_size or member.batch_size
    if method == 'ism':
      scores = attribution.ism(member, x, batch_size=size, progress=progress)
    else:
      scores = attribution.input_gradients(member.scorer(), x, batch_size=size,
                                           progress=progress)
    scores = scores[..., target]
    total += scores if method == 'gradient_x_input' else centred(scores)
  return (total / len(members)).astype(np.float32)


def default_region(layout) -> Tuple[int, int]:
  """[lo, hi) of the encoding to search: the random region of DREAM rows (between the
  constant flanks), the whole sequence of a table's."""
  if layout.table is None and layout.length == dream_data.SEQUENCE_LENGTH:
    return len(dream_data.FLANK_5), layout.length - len(dream_data.FLANK_3)
  return 0, layout.length


# ---------------------------------------------------------------------------
# TF-MoDISco.


def trim_span(cwm: np.ndarray, fraction: float = TRIM_FRACTION) -> Tuple[int, int]:
  """[lo, hi): first to last position whose total |contribution| is >= fraction x the
  largest (all positions when the CWM is all zero)."""
  score = np.abs(cwm).sum(axis=1)
  keep = np.flatnonzero(score >= fraction * score.max()) if score.max() > 0 else [
      0, len(score) - 1]
  return int(keep[0]), int(keep[-1]) + 1


def _motif_of(pattern, name: str, offset: int) -> DiscoveredMotif:
  sites = np.array([(s.example_idx, s.start + offset, int(bool(s.is_revcomp)))
                    for s in pattern.seqlets], np.int64).reshape(-1, 3)
  cwm = np.asarray(pattern.contrib_scores, np.float64)
  return DiscoveredMotif(name, np.asarray(pattern.sequence, np.float64), cwm,
                         np.asarray(pattern.hypothetical_contribs, np.float64), sites,
                         trim_span(cwm))


def check_region(region: Tuple[int, int], length: int,
                 settings: DiscoverySettings) -> None:
  """Raises ValueError unless [lo, hi) lies in `length` bp and holds a seqlet with the
  margins seqlet calling leaves at each end."""
  lo, hi = region
  if not 0 <= lo < hi <= length:
    raise ValueError(f'region [{lo}, {hi}) outside the {length} bp sequences')
  need = settings.seqlet_length + 2 * settings.flank_size
  if hi - lo < need:
    raise ValueError(f'region [{lo}, {hi}) is shorter than a seqlet with its margins '
                     f'({need} bp)')


def check_inputs(x: np.ndarray, scores: np.ndarray, region: Tuple[int, int],
                 settings: DiscoverySettings) -> None:
  """Raises ValueError for shapes that do not match, scores that are not finite or a
  region too short to hold a seqlet."""
  if x.ndim != 3 or x.shape[-1] != 4 or scores.shape != x.shape:
    raise ValueError(f'one-hot sequences [N, S, 4] and scores of the same shape '
                     f'expected; got {x.shape} and {scores.shape}')
  bad = int(np.size(scores) - np.isfinite(scores).sum())
  if bad:
    raise ValueError(f'{bad:,} of the {np.size(scores):,} attribution scores are NaN or '
                     "infinite: the model's outputs or gradients are not finite")
  check_region(region, x.shape[1], settings)


def _run_modisco(one_hot: np.ndarray, hypothetical: np.ndarray,
                 settings: DiscoverySettings, offset: int) -> List[DiscoveredMotif]:
  """TF-MoDISco on the cropped tracks, its patterns as DiscoveredMotifs (sites shifted
  by `offset` into encoding coordinates)."""
  from modiscolite import tfmodisco
  positive, negative = tfmodisco.TFMoDISco(one_hot=one_hot,
                                           hypothetical_contribs=hypothetical,
                                           **settings.kwargs())
  return [_motif_of(p, f'{prefix}_{i}', offset)
          for prefix, patterns in (('pos', positive), ('neg', negative))
          for i, p in enumerate(patterns or ())]


def discover(x: np.ndarray, scores: np.ndarray, *, region: Tuple[int, int],
             settings: DiscoverySettings = DiscoverySettings(),
             isolated: bool = True) -> List[DiscoveredMotif]:
  """TF-MoDISco's motifs of sequences and their hypothetical scores, in `region`.

  Args:
    x: one-hot [N, S, 4] sequences (all-zero columns are N).
    scores: float [N, S, 4] hypothetical contributions (`hypothetical_contributions`).
    region: [lo, hi) of the encoding searched (`default_region`).
    settings: TF-MoDISco's settings.
    isolated: run TF-MoDISco in a fresh spawned process. modisco-lite forks worker
      processes, and forking a process whose JAX runtime runs threads can deadlock
      (JAX warns of it); the fresh process never starts JAX.

  Returns:
    the positive patterns, then the negative ones, each by seqlet count; sites in
    encoding coordinates. Empty when no pattern passes TF-MoDISco's filters.
  """
  check_inputs(x, scores, region, settings)
  lo, hi = region
  args = (np.ascontiguousarray(x[:, lo:hi], np.float32),
          np.ascontiguousarray(scores[:, lo:hi], np.float32), settings, lo)
  started = time.perf_counter()
  if isolated:
    context = multiprocessing.get_context('spawn')
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
      found = pool.submit(_run_modisco, *args).result()
  else:
    found = _run_modisco(*args)
  log.info('TF-MoDISco: %d motif(s) from %s sequences in %.1f s', len(found),
           f'{x.shape[0]:,}', time.perf_counter() - started)
  return found


def annotate(found: Sequence[DiscoveredMotif], database: Sequence[motif_db.Motif], *,
             top: int = 3) -> List[List[motif_db.Match]]:
  """Each discovered motif's best `top` TOMTOM matches in `database` (trimmed PPMs)."""
  return motif_db.tomtom([m.as_motif().ppm for m in found], database, top=top)
