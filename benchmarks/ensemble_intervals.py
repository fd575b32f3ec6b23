"""An ensemble of real_6370.flags seeds on the 71,103 real test rows: scores, intervals.

  python benchmarks/ensemble_intervals.py \
      --members runs/real_6370_s0,runs/real_6370_s1,runs/real_6370_s2 --out runs/figs/ensemble

Reads each member's test predictions (`<run>/test.tsv`, written by experiments.predict
with the checkpoint's recorded settings) and prints, as markdown:

1. the official scores (public and private Score PearsonR^2 and Score Spearman) of each
   member, the members' mean ± sd, and the ensemble (the mean of the members);
2. split-conformal 90% intervals (`enformer_small.conformal`) calibrated on the public
   leaderboard's rows (measured values on the test set's MAUDE scale, mapped from the
   models' scale by least squares; the rows were public during the challenge) and
   checked on the private rows, overall and within each official subset: coverage and
   mean width, for the absolute and the spread-normalised score, for one member alone,
   and subset-aware (Mondrian: each subset calibrated on its own public rows);
3. how well the spread ranks the errors: Spearman of spread against |error| per subset.
"""

import argparse
import json
import os
import sys

import numpy as np

import official_scores  # benchmarks/, this script's own folder.
from official_scores import SCORES, SPLITS

from enformer_small import conformal  # pylint: disable=g-import-not-at-top
from enformer_small import ensemble
from enformer_small import metrics

COVERAGE = 0.9


def member_predictions(scorer, runs):
  """float32 [K, 71103, 1] of the members' test.tsv files."""
  return np.stack([scorer.read(os.path.join(run, 'test.tsv')) for run in runs])[..., None]


def score_lines(scorer, members):
  found = [scorer.score(m[:, 0]) for m in members]
  ens = scorer.score(ensemble.Predictions(members.astype(np.float32)).mean[:, 0])
  header = '| model | ' + ' | '.join(f'{split} {s}' for split in SPLITS for s in SCORES) + ' |'
  lines = [header, '|---' * (1 + len(SPLITS) * len(SCORES)) + '|']

  def cell(r):
    return ' | '.join(f'{r[split][s]:.4f}' for split in SPLITS for s in SCORES)
  lines += [f'| member {k} | {cell(r)} |' for k, r in enumerate(found)]
  lines.append('| members, mean ± sd | ' + ' | '.join(
      official_scores.mean_sd_cells(found)) + ' |')
  lines.append(f'| **ensemble** | {cell(ens)} |')
  return lines, found, ens


def subset_rows(split):
  """{subset: sorted rows} of a split, pair subsets by both members."""
  return {s.name: np.unique(s.rows.reshape(-1)) for s in split.subsets}


def interval_table(members, measured, calib, public):
  """The intervals of each variant, calibrated on rows `calib` (Mondrian: on each
  subset's public rows)."""
  variants = {}
  full = ensemble.Predictions(members)
  one = ensemble.Predictions(members[:1])
  for name, preds, method in (('ensemble, absolute', full, 'absolute'),
                              ('ensemble, normalised', full, 'normalised'),
                              ('member 0 alone, absolute', one, 'absolute')):
    cal = conformal.calibrate(_take(preds, calib), measured[calib], method=method,
                              fit_scale=True)
    centre, lo, hi = cal.intervals(preds, COVERAGE)
    variants[name] = (centre[:, 0], lo[:, 0], hi[:, 0])
  # Mondrian: each subset calibrated on its own public rows.
  mondrian = {}
  for subset, rows in public.items():
    cal = conformal.calibrate(_take(full, rows), measured[rows], method='absolute',
                              fit_scale=True)
    centre, lo, hi = cal.intervals(full, COVERAGE)
    mondrian[subset] = (centre[:, 0], lo[:, 0], hi[:, 0])
  return variants, mondrian


def _take(preds, rows):
  return ensemble.Predictions(preds.members[:, rows])


def coverage_lines(variants, mondrian, measured, private):
  names = list(variants) + ['ensemble, absolute, subset-aware']
  lines = ['| subset | private rows | ' + ' | '.join(f'{n}: coverage / width'
                                                    for n in names) + ' |',
           '|---' * (2 + len(names)) + '|']
  found = {}
  for subset, rows in private.items():
    cells = []
    for name in names:
      centre, lo, hi = (mondrian[subset] if name.endswith('subset-aware')
                        else variants[name])
      inside = (measured[rows] >= lo[rows]) & (measured[rows] <= hi[rows])
      width = float(np.mean(hi[rows] - lo[rows]))
      found.setdefault(name, {})[subset] = dict(coverage=float(inside.mean()), width=width)
      cells.append(f'{inside.mean():.3f} / {width:.3f}')
    lines.append(f'| {subset} | {len(rows):,} | ' + ' | '.join(cells) + ' |')
  return lines, found


def spread_lines(members, measured, variants, private):
  centre = variants['ensemble, absolute'][0]
  spread = ensemble.Predictions(members).spread[:, 0]
  lines = ['| subset | Spearman(spread, abs error) |', '|---|---|']
  found = {}
  for subset, rows in private.items():
    rho = metrics.spearman_rho(spread[rows], np.abs(measured[rows] - centre[rows]))
    found[subset] = rho
    lines.append(f'| {subset} | {rho:.3f} |')
  return lines, found


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--members', required=True, help='comma-separated run directories')
  parser.add_argument('--out', default=None, help='folder for results.json and tables.md')
  args = parser.parse_args()
  scorer = official_scores.OfficialScorer()
  runs = args.members.split(',')
  members = member_predictions(scorer, runs)
  measured = np.asarray(scorer.test_set.measured, np.float64)
  public = subset_rows(scorer.splits.public)
  calib = scorer.splits.public.used_rows()
  private = {name: np.setdiff1d(rows, calib)
             for name, rows in subset_rows(scorer.splits.private).items()}
  lines, found, ens = score_lines(scorer, members)
  variants, mondrian = interval_table(members, measured, calib, public)
  cover, coverage = coverage_lines(variants, mondrian, measured, private)
  spread, rhos = spread_lines(members, measured, variants, private)
  text = '\n'.join(
      ['## Official scores', ''] + lines +
      ['', f'## {COVERAGE:.0%} intervals: calibrated on the {len(calib):,} public rows, '
       'checked on the private rows (public rows left out)', ''] + cover +
      ['', '## Spread against error (private rows)', ''] + spread)
  print(text)
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'tables.md'), 'w') as f:
      f.write(text + '\n')
    with open(os.path.join(args.out, 'results.json'), 'w') as f:
      json.dump(dict(members=runs, member_scores=found, ensemble_scores=ens,
                     coverage=coverage, spread_error_spearman=rhos), f, indent=1)


if __name__ == '__main__':
  sys.exit(main())
