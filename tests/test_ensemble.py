"""Ensembles and their calibrated intervals (enformer_small.ensemble, .conformal).

- An ensemble's prediction is the mean of its members' (each read as its checkpoint
  records), its spread their sample standard deviation; members must read the same
  inputs and predict the same targets.
- Members are named by a comma list, a file listing them, or both.
- Split-conformal intervals: the quantile is the ceil((n + 1)(1 - alpha))-th smallest
  score (by hand); on exchangeable rows they hold their coverage (simulated); a fitted
  scale recovers a known affine map; calibrations save, reload, and refuse other
  members; calibration rows are the held-out rows the members share (the tiny run's).
"""

import os

import numpy as np
import pytest

from enformer_small import checkpoint
from enformer_small import conformal
from enformer_small import dream_data
from enformer_small import ensemble
from enformer_small import inference
from enformer_small import train_data

# One small batch for every prediction here: one compilation, little padding.
OPTIONS = inference.InferenceOptions(batch_size=64)


@pytest.fixture(scope='module')
def two_members(tiny_run, tmp_path_factory):
  """The tiny run's best model and a copy with its head nudged: two members."""
  config, _ = tiny_run
  best = os.path.join(config.run_dir, checkpoint.BEST_NAME)
  ckpt = checkpoint.load_checkpoint(best)
  params = {m: dict(v) for m, v in ckpt.params.items()}
  head = [m for m in params if m.endswith('head_yeast/~/output')][0]
  params[head]['b'] = params[head]['b'] + np.linspace(-0.5, 0.5, params[head]['b'].size,
                                                      dtype=np.float32)
  other = str(tmp_path_factory.mktemp('members') / 'other.npz')
  checkpoint.save_checkpoint(other, params=params, state=ckpt.state,
                             model_config=ckpt.model_config, extra=ckpt.extra)
  return best, other


def test_mean_and_spread_are_those_of_the_members_predicted_alone(two_members):
  best, other = two_members
  both = ensemble.load(f'{best},{other}', OPTIONS)
  codes = dream_data.encode_sequences(['TGCATTTTTTTCACATC' + 'ACGT' * 20 + 'GGTTACGGCTGTT',
                                       'TGCATTTTTTTCACATC' + 'TTGA' * 20 + 'GGTTACGGCTGTT'])
  found = both.predict_codes(codes)
  alone = [inference.load(p, OPTIONS).predict_codes(codes) for p in (best, other)]
  np.testing.assert_array_equal(found.members, np.stack(alone))
  mean = ((alone[0].astype(np.float64) + alone[1]) / 2).astype(np.float32)
  np.testing.assert_array_equal(found.mean, mean)
  spread = (np.abs(alone[0].astype(np.float64) - alone[1]) / np.sqrt(2)).astype(np.float32)
  np.testing.assert_allclose(found.spread, spread, rtol=1e-6)
  one = ensemble.load(best, OPTIONS).predict_codes(codes)
  np.testing.assert_array_equal(one.mean, alone[0])
  assert not one.spread.any()


def test_members_are_named_by_a_list_a_file_or_both(tmp_path, two_members):
  best, other = two_members
  listing = tmp_path / 'members.txt'
  rel = os.path.relpath(other, tmp_path)
  listing.write_text(f'# the members\n{best}\n\n{rel}  # a nudged copy\n')
  assert ensemble.member_paths(str(listing)) == [best, str(tmp_path / rel)]
  assert ensemble.member_paths(f'{best},{listing}') == [best, best, str(tmp_path / rel)]
  with pytest.raises(ensemble.EnsembleError, match='no checkpoint'):
    ensemble.member_paths(' , ')
  (tmp_path / 'empty.txt').write_text('# nothing\n')
  with pytest.raises(ensemble.EnsembleError, match='lists no checkpoint'):
    ensemble.member_paths(str(tmp_path / 'empty.txt'))


def test_members_reading_other_inputs_are_refused(two_members, tmp_path):
  best, _ = two_members
  ckpt = checkpoint.load_checkpoint(best)
  bare = str(tmp_path / 'no_context.npz')
  extra = dict(ckpt.extra, plasmid_context=0, crop_start=0,
               recipe=dict(ckpt.recipe, eval_shifts=[]))
  checkpoint.save_checkpoint(bare, params=ckpt.params, state=ckpt.state,
                             model_config=ckpt.model_config, extra=extra)
  with pytest.raises(ensemble.EnsembleError, match='reads other inputs'):
    ensemble.load(f'{best},{bare}', OPTIONS)


# ---------------------------------------------------------------------------
# Conformal intervals.


def _fake(mean, spread=None):
  """Predictions of a two-member ensemble with this mean and spread ([N] each)."""
  mean = np.asarray(mean, np.float64)
  spread = np.zeros_like(mean) if spread is None else np.asarray(spread, np.float64)
  half = spread / np.sqrt(2)
  return ensemble.Predictions(np.stack([mean - half, mean + half])[..., None]
                              .astype(np.float32))


def _calibration(scores, **fields):
  scores = np.sort(np.asarray(scores, np.float64))[:, None]
  base = dict(method='absolute', scores=scores, offset=np.zeros(1), slope=np.ones(1),
              beta=np.zeros(1), source='by hand', members=('a',))
  return conformal.Calibration(**dict(base, **fields))


def test_the_quantile_is_the_conformal_rank_by_hand():
  """n = 9 scores 1..9: coverage 0.9 takes the ceil(10 * 0.9) = 9th smallest, 0.8 the
  8th, 0.5 the 5th; 0.95 would need the 10th: an infinite interval."""
  calibration = _calibration(np.arange(9, 0, -1))
  assert calibration.quantile(0.9)[0] == 9
  assert calibration.quantile(0.8)[0] == 8
  assert calibration.quantile(0.5)[0] == 5
  assert np.isinf(calibration.quantile(0.95)[0])
  centre, lower, upper = calibration.intervals(_fake([10.0, 2.0]), 0.8)
  np.testing.assert_array_equal(lower[:, 0], [2.0, -6.0])
  np.testing.assert_array_equal(upper[:, 0], [18.0, 10.0])
  with pytest.raises(conformal.CalibrationError, match='coverage'):
    calibration.quantile(1.0)


def test_intervals_hold_their_coverage_on_exchangeable_rows():
  """Rows drawn alike: 90% intervals from 2,000 calibration rows cover 88-92% of 20,000
  new ones, with either score (heteroscedastic noise the spread tracks)."""
  rng = np.random.default_rng(0)
  def draw(n):
    mean = rng.uniform(0, 17, n)
    sd = rng.uniform(0.2, 2.0, n)
    return mean, sd, mean + sd * rng.standard_normal(n)
  m, s, y = draw(2000)
  m2, s2, y2 = draw(20000)
  for method in conformal.METHODS:
    calibration = conformal.calibrate(_fake(m, s), y, method=method)
    _, lower, upper = calibration.intervals(_fake(m2, s2), 0.9)
    covered = np.mean((y2 >= lower[:, 0]) & (y2 <= upper[:, 0]))
    assert 0.88 <= covered <= 0.92, (method, covered)
  absolute = conformal.calibrate(_fake(m, s), y, method='absolute')
  normalised = conformal.calibrate(_fake(m, s), y, method='normalised')
  def width(c):
    return np.mean(np.diff(c.intervals(_fake(m2, s2), 0.9)[1:], axis=0))
  # Where the noise follows the spread, normalised intervals are narrower on average.
  assert width(normalised) < width(absolute)


def test_a_fitted_scale_maps_predictions_to_the_measured_scale():
  rng = np.random.default_rng(1)
  m = rng.uniform(0, 17, 500)
  y = 3.0 + 2.0 * m + rng.normal(0, 0.01, 500)
  calibration = conformal.calibrate(_fake(m), y, fit_scale=True)
  assert calibration.slope[0] == pytest.approx(2.0, abs=1e-3)
  assert calibration.offset[0] == pytest.approx(3.0, abs=1e-2)
  with pytest.raises(conformal.CalibrationError, match='disagree'):
    conformal.calibrate(_fake(m), y, method='normalised')


def test_a_saved_calibration_reloads_for_its_members_only(two_members, tmp_path):
  best, other = two_members
  both = ensemble.load(f'{best},{other}', OPTIONS)
  codes, measured, _ = conformal.holdout_rows(both, conformal.shared_holdout(both))
  calibration = conformal.calibrate(both.predict_codes(codes), measured,
                                    method='normalised', source='held-out rows',
                                    members=conformal.member_ids(both))
  path = str(tmp_path / 'calibration.json')
  conformal.save(calibration, path)
  again = conformal.load(path, both)
  np.testing.assert_array_equal(again.scores, calibration.scores)
  assert (again.method, again.source) == ('normalised', 'held-out rows')
  with pytest.raises(conformal.CalibrationError, match='other checkpoints'):
    conformal.load(path, ensemble.load(best, OPTIONS))


def test_calibration_rows_are_the_held_out_rows_every_member_shares(tiny_run, two_members,
                                                                    tmp_path):
  config, _ = tiny_run
  best, other = two_members
  both = ensemble.load(f'{best},{other}', OPTIONS)
  split = conformal.shared_holdout(both)
  codes, measured, described = conformal.holdout_rows(both, split)
  data = dream_data.read_dream_file(train_data.synthetic_path(config))
  _, holdout = dream_data.holdout_split(len(data), config.num_holdout, config.split_seed)
  np.testing.assert_array_equal(codes, data.codes[holdout])
  np.testing.assert_array_equal(measured, data.expression[holdout])
  assert '100 held-out rows' in described
  ckpt = checkpoint.load_checkpoint(other)
  moved = str(tmp_path / 'other_split.npz')
  extra = dict(ckpt.extra, train_config=dict(ckpt.extra['train_config'], split_seed=7))
  checkpoint.save_checkpoint(moved, params=ckpt.params, state=ckpt.state,
                             model_config=ckpt.model_config, extra=extra)
  with pytest.raises(conformal.CalibrationError, match='different rows'):
    conformal.shared_holdout(ensemble.load(f'{best},{moved}', OPTIONS))
  converted = str(tmp_path / 'converted.npz')
  checkpoint.save_checkpoint(converted, params=ckpt.params, state=ckpt.state,
                             model_config=ckpt.model_config,
                             extra=dict(crop_start=10, plasmid_context=10,
                                        recipe=ckpt.recipe))
  with pytest.raises(conformal.CalibrationError, match='records no held-out rows'):
    conformal.shared_holdout(ensemble.load(converted, OPTIONS))
