"""Specification of enformer_small.metrics: correlations and regression errors.

Expected values are computed by hand (shown in comments) or by scipy, which
serves only as an independent reference implementation.
"""

import math

import numpy as np
import pytest
from scipy import stats

from enformer_small import metrics

# x = [1, 2, 3, 4], y = [2, 4, 5, 9]
#   mean x = 2.5, dx = [-1.5, -0.5, 0.5, 1.5], sum dx^2 = 5
#   mean y = 5,   dy = [-3, -1, 0, 4],         sum dy^2 = 26
#   sum dx*dy = 4.5 + 0.5 + 0 + 6 = 11
#   r = 11 / sqrt(5 * 26) = 11 / sqrt(130) = 0.964763821...
HAND_X = [1.0, 2.0, 3.0, 4.0]
HAND_Y = [2.0, 4.0, 5.0, 9.0]
HAND_R = 11.0 / math.sqrt(130.0)

# Ties: x = [1, 2, 2, 3] -> ranks [1, 2.5, 2.5, 4]
#       y = [1, 3, 2, 4] -> ranks [1, 3, 2, 4]
#   both rank means 2.5; drx = [-1.5, 0, 0, 1.5], dry = [-1.5, 0.5, -0.5, 1.5]
#   sum drx*dry = 2.25 + 0 + 0 + 2.25 = 4.5; sum drx^2 = 4.5; sum dry^2 = 5
#   rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9) = 0.948683298...
TIE_X = [1.0, 2.0, 2.0, 3.0]
TIE_Y = [1.0, 3.0, 2.0, 4.0]
TIE_RHO = math.sqrt(0.9)


def test_pearson_r_matches_hand_computed_value():
  """pearson_r is the sample Pearson correlation."""
  assert metrics.pearson_r(HAND_X, HAND_Y) == pytest.approx(HAND_R, abs=1e-15)


def test_pearson_r_is_symmetric_and_sign_aware():
  """r(x, y) = r(y, x) and r(x, -y) = -r(x, y)."""
  assert metrics.pearson_r(HAND_Y, HAND_X) == pytest.approx(HAND_R, abs=1e-15)
  neg_y = [-v for v in HAND_Y]
  assert metrics.pearson_r(HAND_X, neg_y) == pytest.approx(-HAND_R, abs=1e-15)


def test_pearson_r_of_collinear_vectors_is_exactly_one():
  """Rounding never pushes |r| above 1."""
  x = np.linspace(0.1, 7.3, 1001)
  r_up = metrics.pearson_r(x, 3.7 * x + 0.2)
  r_down = metrics.pearson_r(x, -3.7 * x)
  assert 1.0 - 1e-15 <= r_up <= 1.0
  assert -1.0 <= r_down <= -1.0 + 1e-15


def test_pearson_r_agrees_with_scipy_on_random_data():
  """scipy.stats.pearsonr as a reference."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=5000)
  y = 0.6 * x + rng.normal(size=5000)
  assert metrics.pearson_r(x, y) == pytest.approx(stats.pearsonr(x, y)[0],
                                                  abs=1e-12)


def test_pearson_r_uses_float64_even_for_float32_input():
  """float32 input with a large offset still gives the float64 answer."""
  rng = np.random.default_rng(1)
  x = (1e4 + rng.normal(size=20000)).astype(np.float32)
  y = (x.astype(np.float64) - 1e4 + rng.normal(size=20000)).astype(np.float32)
  expected = np.corrcoef(x.astype(np.float64), y.astype(np.float64))[0, 1]
  assert metrics.pearson_r(x, y) == pytest.approx(expected, abs=1e-12)


def test_average_ranks_share_the_mean_rank_within_ties():
  """Tied values get the mean of the ranks they occupy (1-based)."""
  np.testing.assert_array_equal(metrics.average_ranks([10, 20, 20, 30]),
                                [1.0, 2.5, 2.5, 4.0])
  np.testing.assert_array_equal(metrics.average_ranks([3, 1, 3, 3, 0]),
                                [4.0, 2.0, 4.0, 4.0, 1.0])


def test_spearman_rho_with_ties_matches_hand_computed_value():
  """rho is Pearson r of average ranks."""
  assert metrics.spearman_rho(TIE_X, TIE_Y) == pytest.approx(TIE_RHO, abs=1e-15)


def test_spearman_rho_with_ties_agrees_with_scipy():
  """scipy.stats.spearmanr (average ranks) as a reference, many ties."""
  rng = np.random.default_rng(2)
  x = rng.integers(0, 6, size=3000).astype(float)
  y = x + rng.integers(0, 4, size=3000)
  assert metrics.spearman_rho(x, y) == pytest.approx(
      stats.spearmanr(x, y)[0], abs=1e-12)
  assert metrics.spearman_rho(TIE_X, TIE_Y) == pytest.approx(
      stats.spearmanr(TIE_X, TIE_Y)[0], abs=1e-15)


def test_spearman_rho_is_invariant_to_monotone_transforms():
  """Only the order matters: rho(x, exp(y)) = rho(x, y)."""
  assert metrics.spearman_rho(HAND_X, np.exp(HAND_Y)) == pytest.approx(1.0)


def test_constant_input_gives_explicit_nan_correlation():
  """Zero variance: the correlation is undefined, returned as NaN, not a number.

  [0.1, 0.1, 0.1] is a trap: its float mean is not exactly 0.1, so a variance
  test would see tiny residuals and return a meaningless r.
  """
  for constant in ([5.0, 5.0, 5.0], [0.1, 0.1, 0.1]):
    assert math.isnan(metrics.pearson_r(constant, [1.0, 2.0, 3.0]))
    assert math.isnan(metrics.pearson_r([1.0, 2.0, 3.0], constant))
    assert math.isnan(metrics.spearman_rho(constant, [1.0, 2.0, 3.0]))
  result = metrics.regression_metrics([2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
  assert math.isnan(result['pearson']) and math.isnan(result['spearman'])
  assert result['mse'] == pytest.approx(2.0 / 3.0)  # errors 1, 0, -1


@pytest.mark.parametrize('bad', [float('nan'), float('inf'), -float('inf')])
def test_non_finite_input_is_an_error_naming_count_and_first_index(bad):
  """NaN/inf never yields a number: ValueError with argument, count, index."""
  pred = [1.0, 2.0, bad, 4.0, bad]
  with pytest.raises(ValueError, match=r'pred contains 2 NaN/inf .*first at '
                     r'index 2'):
    metrics.regression_metrics(pred, [1.0, 2.0, 3.0, 4.0, 5.0])
  with pytest.raises(ValueError, match=r'y contains 2 NaN/inf'):
    metrics.pearson_r([1.0, 2.0, 3.0, 4.0, 5.0], pred)
  with pytest.raises(ValueError, match=r'x contains 2 NaN/inf'):
    metrics.spearman_rho(pred, [1.0, 2.0, 3.0, 4.0, 5.0])


def test_length_mismatch_is_an_error():
  """Different lengths: ValueError naming both lengths."""
  with pytest.raises(ValueError, match=r'length mismatch: x has 3 values, y '
                     r'has 4'):
    metrics.pearson_r([1, 2, 3], [1, 2, 3, 4])
  with pytest.raises(ValueError, match=r'pred has 2 values, target has 3'):
    metrics.regression_metrics([1, 2], [1, 2, 3])


def test_column_vectors_are_accepted_but_matrices_are_not():
  """[N, 1] is read as [N] (never broadcast to [N, N]); [N, 2] is an error."""
  pred = np.asarray(HAND_X)[:, None]
  result = metrics.regression_metrics(pred, HAND_Y)
  # errors pred - target = [-1, -2, -2, -5]: mse = 34/4, mae = 10/4
  assert result['mse'] == pytest.approx(8.5)
  assert result['mae'] == pytest.approx(2.5)
  assert result['pearson'] == pytest.approx(HAND_R)
  with pytest.raises(ValueError, match=r'shape \[N\] or \[N, 1\]'):
    metrics.pearson_r(np.ones((4, 2)), HAND_Y)


def test_too_short_inputs_are_errors_or_nan():
  """Correlations need 2 values; errors need 1 (a single value has NaN r)."""
  with pytest.raises(ValueError, match='at least 2'):
    metrics.pearson_r([1.0], [2.0])
  with pytest.raises(ValueError, match='at least 1'):
    metrics.regression_metrics([], [])
  single = metrics.regression_metrics([1.0], [3.0])
  assert single['mse'] == 4.0 and single['mae'] == 2.0
  assert math.isnan(single['pearson'])


def test_regression_metrics_hand_computed():
  """mse, mae, pearson, spearman of a small case, all by hand."""
  result = metrics.regression_metrics(HAND_Y, HAND_X)
  assert set(result) == {'mse', 'mae', 'pearson', 'spearman'}
  assert result['mse'] == pytest.approx(8.5)
  assert result['mae'] == pytest.approx(2.5)
  assert result['pearson'] == pytest.approx(HAND_R)
  assert result['spearman'] == pytest.approx(1.0)  # same order
  assert all(type(v) is float for v in result.values())
