"""Mutational robustness of a sequence (Vaishnav et al. 2022, Nature).

A sequence's robustness is the share of its single-base substitutions whose predicted
effect is small: |prediction(mutant) - prediction(sequence)| < threshold, 0.1616 by
default as in the published app of the paper (on the 0-17 expression scale of the
challenge's data, which this project's models predict). Its effect vector is every
substitution's effect, sorted. Effects come from in-silico mutagenesis through the one
inference path (`attribution.ism`), of the ensemble's mean (the mean of the members'
effects), over the positions that may change (the 80 bp random region of a DREAM
construct by default).
"""

import dataclasses

import numpy as np

from enformer_small import attribution
from enformer_small import dream_data
from enformer_small.ensemble import Ensemble

THRESHOLD = 0.1616


@dataclasses.dataclass(frozen=True)
class Robustness:
  """robust: float [N], the share of small effects; effects: float32 [N, M] the
  substitutions' effects sorted ascending (M = 3 per position, 4 at an N)."""
  robust: np.ndarray
  effects: np.ndarray
  threshold: float


def robustness(ensemble: Ensemble, codes: np.ndarray, positions: np.ndarray, *,
               output: int = 0, threshold: float = THRESHOLD,
               batch_size=None, progress=None) -> Robustness:
  """Robustness of sequences codes uint8 [N, S] over the substitutions at `positions`
  (bool [S]) of output `output`."""
  x = dream_data.one_hot(np.asarray(codes, np.uint8))
  effects = np.mean([attribution.ism(m, x, batch_size=batch_size, progress=progress)
                     [..., output] for m in ensemble.members], axis=0)  # [N, S, 4]
  substituted = (x == 0) & np.asarray(positions, bool)[None, :, None]
  per_row = substituted.reshape(len(x), -1).sum(axis=1)
  if len(set(per_row.tolist())) > 1:  # N at different places: pad with NaN.
    width = int(per_row.max())
    table = np.full((len(x), width), np.nan, np.float32)
    for i in range(len(x)):
      table[i, :per_row[i]] = np.sort(effects[i][substituted[i]])
  else:
    table = np.sort(effects[substituted].reshape(len(x), -1), axis=1)
  robust = np.nanmean(np.where(np.isnan(table), np.nan, np.abs(table) < threshold),
                      axis=1)
  return Robustness(robust, table.astype(np.float32), threshold)
