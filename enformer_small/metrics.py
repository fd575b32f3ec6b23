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
"""Correlation and regression metrics (numpy only, float64 throughout).

Policies for degenerate input (each one is tested):

* Inputs are vectors: shape [N], or [N, 1] (a model's single output column),
  which is treated as [N]. Any other shape is a `ValueError`, so that [N] and
  [N, 1] never broadcast into an [N, N] matrix by accident.
* Both inputs must have the same length N (else `ValueError` naming both
  lengths); correlations need N >= 2, the error metrics N >= 1.
* NaN or +-inf anywhere in an input is a `ValueError` that names the argument,
  how many values are bad and the index of the first one. A metric is never
  computed silently over non-finite numbers.
* A constant input (all values equal, so zero variance) has no correlation:
  `pearson_r` and `spearman_rho` return an explicit `float('nan')`, never a
  number. The test is exact equality of all values, not a variance threshold,
  because the float mean of identical values need not equal them and would
  otherwise leave tiny residuals that produce a meaningless "correlation".
"""

from typing import Any

import numpy as np


def _as_vector(values: Any, name: str) -> np.ndarray:
  """float64 [N] copy-free view of `values` ([N] or [N, 1]); validates it."""
  array = np.asarray(values, dtype=np.float64)
  if array.ndim == 2 and array.shape[1] == 1:
    array = array[:, 0]
  if array.ndim != 1:
    raise ValueError(
        f'{name} must be a vector of shape [N] or [N, 1], got shape '
        f'{array.shape}')
  finite = np.isfinite(array)
  if not finite.all():
    bad = np.flatnonzero(~finite)
    raise ValueError(
        f'{name} contains {bad.size} NaN/inf value(s) (first at index '
        f'{int(bad[0])}: {array[bad[0]]!r}); metrics are not computed over '
        'non-finite numbers')
  return array


def _as_pair(x: Any, y: Any, names: tuple[str, str],
             min_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Validated float64 vectors of equal length >= `min_length`."""
  x = _as_vector(x, names[0])
  y = _as_vector(y, names[1])
  if x.shape[0] != y.shape[0]:
    raise ValueError(f'length mismatch: {names[0]} has {x.shape[0]} values, '
                     f'{names[1]} has {y.shape[0]}')
  if x.shape[0] < min_length:
    raise ValueError(f'need at least {min_length} value(s), got {x.shape[0]}')
  return x, y


def _is_constant(x: np.ndarray) -> bool:
  return bool(np.all(x == x[0]))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson r of validated float64 vectors; NaN if either is constant."""
  if _is_constant(x) or _is_constant(y):
    return float('nan')
  dx = x - x.mean()
  dy = y - y.mean()
  r = np.dot(dx, dy) / np.sqrt(np.dot(dx, dx) * np.dot(dy, dy))
  # Rounding can push |r| a hair above 1 for (anti)collinear inputs.
  return float(np.clip(r, -1.0, 1.0))


def average_ranks(values: Any) -> np.ndarray:
  """1-based ranks of a vector, ties sharing the mean of their ranks.

  Example: [10, 20, 20, 30] -> [1, 2.5, 2.5, 4].

  Args:
    values: [N] (or [N, 1]) finite numbers.

  Returns:
    float64 [N] ranks.
  """
  x = _as_vector(values, 'values')
  order = np.argsort(x, kind='stable')
  sorted_x = x[order]
  n = x.shape[0]
  # Tie groups are runs of equal values in sorted order: [start, end).
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], n]
  # Ranks start..end-1 (0-based) averaged, plus one for 1-based ranks.
  group_rank = (starts + ends - 1) / 2.0 + 1.0
  ranks = np.empty(n, dtype=np.float64)
  ranks[order] = np.repeat(group_rank, ends - starts)
  return ranks


def pearson_r(x: Any, y: Any) -> float:
  """Pearson correlation coefficient of two vectors.

  Args:
    x: [N] or [N, 1] finite numbers.
    y: same length as x.

  Returns:
    r in [-1, 1] as a Python float, or float('nan') when x or y is constant.

  Raises:
    ValueError: bad shape, length mismatch, N < 2, or NaN/inf in an input.
  """
  x, y = _as_pair(x, y, ('x', 'y'), min_length=2)
  return _pearson(x, y)


def spearman_rho(x: Any, y: Any) -> float:
  """Spearman rank correlation: Pearson r of the average ranks (ties averaged).

  Args:
    x: [N] or [N, 1] finite numbers.
    y: same length as x.

  Returns:
    rho in [-1, 1] as a Python float, or float('nan') when x or y is constant.

  Raises:
    ValueError: bad shape, length mismatch, N < 2, or NaN/inf in an input.
  """
  x, y = _as_pair(x, y, ('x', 'y'), min_length=2)
  if _is_constant(x) or _is_constant(y):
    return float('nan')
  return _pearson(average_ranks(x), average_ranks(y))


def regression_metrics(pred: Any, target: Any) -> dict[str, float]:
  """Error and correlation metrics of predictions against targets.

  Args:
    pred: [N] or [N, 1] finite predictions.
    target: [N] or [N, 1] finite targets.

  Returns:
    {'mse', 'mae', 'pearson', 'spearman'} as Python floats. The correlations
    are float('nan') when pred or target is constant (see module docstring).
    N = 1 gives the errors and NaN correlations.

  Raises:
    ValueError: bad shape, length mismatch, N = 0, or NaN/inf in pred or target
      (the message names which, how many and the first index).
  """
  pred, target = _as_pair(pred, target, ('pred', 'target'), min_length=1)
  error = pred - target
  if pred.shape[0] < 2:
    pearson = spearman = float('nan')
  else:
    pearson = _pearson(pred, target)
    spearman = (float('nan') if _is_constant(pred) or _is_constant(target)
                else _pearson(average_ranks(pred), average_ranks(target)))
  return {
      'mse': float(np.mean(error * error)),
      'mae': float(np.mean(np.abs(error))),
      'pearson': pearson,
      'spearman': spearman,
  }


def by_target(pred: Any, target: Any, names, summarise) -> dict:
  """`summarise(pred, target)` (a dict of numbers) of one target ([N] or [N, 1]); of
  several ([N, T], `names` T long), the mean over targets of each value (an 'n' kept as
  it is) and each target's own under 'per_target'."""
  pred, target = np.asarray(pred), np.asarray(target)
  if pred.ndim == 1 or pred.shape[1] == 1:
    return summarise(pred.reshape(-1), target.reshape(-1))
  per_target = {name: summarise(pred[:, i], target[:, i]) for i, name in enumerate(names)}
  first = next(iter(per_target.values()))
  out = {key: float(np.mean([m[key] for m in per_target.values()]))
         for key in first if key != 'n'}
  if 'n' in first:
    out['n'] = first['n']
  return dict(out, per_target=per_target)
