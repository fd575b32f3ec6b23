"""Split-conformal prediction intervals for an ensemble (or a single checkpoint).

Calibration rows are rows no member trained on, with measured values: the held-out rows
the members share (recorded in their checkpoints: the training file, its content hash,
`num_holdout` and `split_seed`), or a calibration table. On them the ensemble's mean
prediction m is mapped to the measured scale, f = a + b m (a = 0, b = 1 on held-out
rows, which are on the training scale; least squares on a table, whose measurements may
be on another scale, e.g. MAUDE for the challenge's test set), and each row gets a
nonconformity score:

  absolute     s = |y - f|
  normalised   s = |y - f| / (b sd + beta)   (sd: the members' spread; beta: the mean of
               b sd over the calibration rows, so that agreeing members do not give a
               zero width)

The interval at coverage 1 - alpha is f -/+ q (times b sd + beta when normalised), q the
ceil((n + 1)(1 - alpha))-th smallest of the n scores (Vovk et al. 2005; Lei et al.
2018). What it promises: for a new row exchangeable with the calibration rows, the
interval holds the measured value with probability at least 1 - alpha (and at most
1 - alpha + 1/(n + 1)). What it does not: rows unlike the calibration rows (other
promoters, native sequences when calibrated on random ones) may be covered less often;
the test set's subsets are the check.

A calibration is saved as JSON (the sorted scores, the map, the members' file hashes) and
reused for later predictions of the same members at any coverage.
"""

import dataclasses
import json
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from enformer_small import dream_data
from enformer_small import files
from enformer_small import tables
from enformer_small.ensemble import Ensemble, Predictions

FORMAT = 'enformer_small-calibration-v1'
METHODS = ('absolute', 'normalised')


class CalibrationError(ValueError):
  """A calibration that cannot be made or reused; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Calibration:
  """What intervals need, per target t.

  scores: float64 [n, T], each column sorted; offset, slope: the map a + b m [T];
  beta: the normalised score's stabiliser [T] (0 for 'absolute').
  """
  method: str
  scores: np.ndarray
  offset: np.ndarray
  slope: np.ndarray
  beta: np.ndarray
  source: str
  members: Tuple[str, ...]

  def quantile(self, coverage: float) -> np.ndarray:
    """[T]: q at `coverage` (inf when there are too few rows for it)."""
    if not 0 < coverage < 1:
      raise CalibrationError(f'coverage must lie in (0, 1), got {coverage}')
    n = self.scores.shape[0]
    rank = math.ceil((n + 1) * coverage)
    if rank > n:
      return np.full(self.scores.shape[1], np.inf)
    return self.scores[rank - 1]

  def centre(self, predictions: Predictions) -> np.ndarray:
    return self.offset + self.slope * predictions.mean.astype(np.float64)

  def scale(self, predictions: Predictions) -> np.ndarray:
    if self.method == 'absolute':
      return np.ones(predictions.mean.shape)
    return self.slope * predictions.spread.astype(np.float64) + self.beta

  def intervals(self, predictions: Predictions, coverage: float
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre, lower, upper), float64 [N, T], on the calibration values' scale."""
    centre = self.centre(predictions)
    half = self.quantile(coverage) * self.scale(predictions)
    return centre, centre - half, centre + half

  def to_json(self) -> str:
    return json.dumps(dict(
        format=FORMAT, method=self.method, scores=self.scores.T.tolist(),
        offset=self.offset.tolist(), slope=self.slope.tolist(), beta=self.beta.tolist(),
        source=self.source, members=list(self.members)))

  @classmethod
  def from_json(cls, text: str, where: str = '<calibration>') -> 'Calibration':
    try:
      fields = json.loads(text)
      if fields.get('format') != FORMAT:
        raise ValueError(f'format {fields.get("format")!r}, expected {FORMAT!r}')
      return cls(method=fields['method'], scores=np.asarray(fields['scores'], np.float64).T,
                 offset=np.asarray(fields['offset'], np.float64),
                 slope=np.asarray(fields['slope'], np.float64),
                 beta=np.asarray(fields['beta'], np.float64), source=fields['source'],
                 members=tuple(fields['members']))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise CalibrationError(f'{where}: not a calibration file: {e}') from None


def member_ids(ensemble: Ensemble) -> Tuple[str, ...]:
  """The members' file hashes: a calibration belongs to exactly these checkpoints."""
  return tuple(sorted(files.hash_file(c.path) for c in ensemble.checkpoints))


def calibrate(predictions: Predictions, measured: np.ndarray, *,
              method: str = 'absolute', fit_scale: bool = False, source: str = '',
              members: Tuple[str, ...] = ()) -> Calibration:
  """The calibration from an ensemble's predictions of rows with `measured` [N] or
  [N, T] values; fit_scale: map the mean to the values' scale by least squares;
  members: the ensemble's `member_ids`, recorded."""
  if method not in METHODS:
    raise CalibrationError(f'method must be one of {", ".join(METHODS)}; got {method!r}')
  mean = predictions.mean.astype(np.float64)
  y = np.asarray(measured, np.float64).reshape(mean.shape)
  if mean.shape[0] < 2:
    raise CalibrationError(f'{source}: {mean.shape[0]} calibration row(s); need more')
  if fit_scale:
    slope = np.array([np.polyfit(mean[:, t], y[:, t], 1)[0] for t in range(y.shape[1])])
    offset = y.mean(axis=0) - slope * mean.mean(axis=0)
  else:
    slope, offset = np.ones(y.shape[1]), np.zeros(y.shape[1])
  spread = slope * predictions.spread.astype(np.float64)
  beta = spread.mean(axis=0) if method == 'normalised' else np.zeros(y.shape[1])
  if method == 'normalised' and np.any(beta <= 0):
    raise CalibrationError('normalised scores need members that disagree somewhere: '
                           'give several checkpoints, or use the absolute method')
  residual = np.abs(y - (offset + slope * mean))
  scores = residual if method == 'absolute' else residual / (spread + beta)
  return Calibration(method, np.sort(scores, axis=0), offset, slope, beta, source,
                     tuple(members))


# ---------------------------------------------------------------------------
# Calibration rows.


def _recorded_split(ckpt) -> Optional[Dict[str, Any]]:
  used = ckpt.extra.get('train_config') or {}
  data = ckpt.extra.get('data') or {}
  if not used or not data.get('source'):
    return None
  return dict(source=data['source'], content_hash=data.get('content_hash'),
              num_rows=data.get('num_rows'), num_holdout=used.get('num_holdout'),
              split_seed=used.get('split_seed', 0), table=bool(used.get('table_file')))


def shared_holdout(ensemble: Ensemble) -> Dict[str, Any]:
  """The held-out split every member recorded; CalibrationError when a member records
  none or they differ."""
  splits = [(c.path, _recorded_split(c)) for c in ensemble.checkpoints]
  missing = [path for path, split in splits if split is None]
  if missing:
    raise CalibrationError(
        f'{missing[0]} records no held-out rows (a converted or hand-made checkpoint): '
        'give a calibration table of measured rows no member trained on')
  def key(s):
    return (s['content_hash'], s['num_rows'], s['num_holdout'], s['split_seed'])
  first_path, first = splits[0]
  for path, split in splits[1:]:
    if key(split) != key(first):
      raise CalibrationError(
          f'{path} and {first_path} were held out on different rows (another training '
          f'file or split: {split["source"]} split {split["split_seed"]} of '
          f'{split["num_holdout"]} against {first["source"]} split {first["split_seed"]}'
          f' of {first["num_holdout"]}): no row is unseen by every member; give a '
          'calibration table instead')
  return first


def holdout_rows(ensemble: Ensemble, split: Dict[str, Any]
                 ) -> Tuple[np.ndarray, np.ndarray, str]:
  """(codes [n, length], measured [n] or [n, T], description) of the shared held-out
  rows, read from the recorded training file (checked against its content hash)."""
  path = split['source']
  layout = ensemble.layout
  try:
    if split['table']:
      data = tables.read_table(path, layout.table)
      found = data.content_hash
    else:
      data = dream_data.read_dream_file(path)
      found = data.report.content_hash
  except dream_data.DreamDataError as e:
    raise CalibrationError(
        f'calibration needs the members\' training file to predict their held-out rows: '
        f'{e}; run from where training ran, or give a calibration table') from None
  if split['content_hash'] and found and found != split['content_hash']:
    raise CalibrationError(f'{path} is not the file the members were trained on (its '
                           'content differs): give a calibration table instead')
  _, rows = dream_data.holdout_split(len(data), split['num_holdout'], split['split_seed'])
  described = (f'the {len(rows):,} held-out rows of {path} (split seed '
               f'{split["split_seed"]}) that no member trained on')
  return np.asarray(data.codes)[rows], np.asarray(data.expression)[rows], described


def save(calibration: Calibration, path: str) -> None:
  text = calibration.to_json()
  files.atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def load(path: str, ensemble: Ensemble) -> Calibration:
  """A saved calibration, checked to belong to these members."""
  try:
    with open(path, 'r', encoding='utf-8') as f:
      calibration = Calibration.from_json(f.read(), path)
  except OSError as e:
    raise CalibrationError(f'{path}: cannot read the calibration: {e}') from None
  if calibration.members != member_ids(ensemble):
    raise CalibrationError(f'{path} calibrates other checkpoints than those given: '
                           'calibrate again (remove it or give another path)')
  return calibration

