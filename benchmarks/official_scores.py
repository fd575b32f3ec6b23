"""The official DREAM scores of the 71,103 real test rows, for the benchmark scripts.

One reading of the test set and its official splits per script (`OfficialScorer`), and
one way to write the mean ± sample sd over seeds or checkpoints (`mean_sd_cells`), as
BUILD_NOTES' tables give them. Used by `real_6370_ablation.py` and `real_6370_tta.py`.
"""

import os
import statistics
import sys
from typing import Dict, List, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DATA = os.path.join(REPO, '..', 'shared', 'data', 'dream')
TEST_FILE = os.path.join(DATA, 'test_71103_measured.tsv')
SCORES = ('Score PearsonR^2', 'Score Spearman')
SPLITS = ('public', 'private')

Result = Dict[str, Dict[str, float]]  # {split: {score name: value}}


class OfficialScorer:
  """Scores prediction columns or TSVs on the public and private splits."""

  def __init__(self, data_dir: str = DATA):
    from enformer_small import scoring
    self._scoring = scoring
    self.test_set = scoring.read_test_set(os.path.join(data_dir, 'test_71103_measured.tsv'))
    self.splits = scoring.load_official_splits(os.path.join(data_dir, 'test_subsets'),
                                               os.path.join(data_dir, 'public_leaderboard'))

  def read(self, tsv: str) -> np.ndarray:
    """float64 [71,103] predictions of a `sequence<TAB>prediction` file, checked against
    the test rows."""
    return self._scoring.read_tsv_predictions(tsv, test_set=self.test_set).values

  def score(self, values: np.ndarray) -> Result:
    found = self._scoring.score_predictions(np.asarray(values, np.float64), self.test_set,
                                            self.splits)
    return {split: found.split(split).scores for split in SPLITS}

  def score_tsv(self, tsv: str) -> Result:
    return self.score(self.read(tsv))


def mean_sd_cells(results: Sequence[Result], bold: bool = False) -> List[str]:
  """Table cells 'mean ± sd' (3 decimals; the mean alone for one result), one per split
  and score, in SPLITS x SCORES order."""
  cells = []
  for split in SPLITS:
    for s in SCORES:
      values = [r[split][s] for r in results]
      sd = f' ± {statistics.stdev(values):.3f}' if len(values) > 1 else ''
      cell = f'{statistics.mean(values):.3f}{sd}'
      cells.append(f'**{cell}**' if bold else cell)
  return cells
