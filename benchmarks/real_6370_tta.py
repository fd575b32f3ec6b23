"""Test-time shift averaging on trained checkpoints, scored officially on the test rows.

For each checkpoint and each set of shifts: `python -m experiments.predict` on the
71,103 test rows with `--eval_shifts` (the checkpoint's recorded reverse-complement
averaging and plasmid context apply), then the official DREAM scores
(`enformer_small.scoring`). The no-shift figures are those of the predictions the run
itself wrote (`test.tsv` next to the checkpoint, predicted with no extra flags), when
there. Prints one line per (checkpoint, shifts), the mean and sample sd over the
checkpoints, and, as a separate figure (an ensemble, not a single model), the scores of
the mean of the checkpoints' prediction columns.

Predictions go to --out_dir (outside the repository; reused when already there):

  python benchmarks/real_6370_tta.py --out_dir=/tmp/tta \\
      --checkpoints=runs/ablation/ema_seed0/checkpoint_best.npz,...seed1...,...seed2... \\
      --shift_sets='0;-10,-5,0,5,10'
"""

import argparse
import os
import subprocess
import sys

import numpy as np

import official_scores  # benchmarks/, this script's own folder.
from official_scores import REPO, SCORES, SPLITS


def predictions_path(checkpoint, index, shifts, out_dir):
  """Where the predictions of one checkpoint with one set of shifts are (or go)."""
  recorded = os.path.join(os.path.dirname(checkpoint), 'test.tsv')
  if shifts == '0' and os.path.exists(recorded):
    return recorded
  return os.path.join(out_dir, f'model{index}_shifts{shifts.replace(",", "_")}.tsv')


def predict(checkpoint, shifts, tsv):
  with open(tsv + '.log', 'w') as log:
    subprocess.run(
        [sys.executable, '-m', 'experiments.predict', f'--checkpoint={checkpoint}',
         f'--input={official_scores.TEST_FILE}', f'--output_tsv={tsv}',
         f'--eval_shifts={shifts}', '--noprogress'],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)


def line(label, result):
  return f'| {label} | ' + ' | '.join(
      f'{result[split][s]:.4f}' for split in SPLITS for s in SCORES) + ' |'


def summary(label, results):
  cells = official_scores.mean_sd_cells(results, bold=True)
  return f'| {label} | ' + ' | '.join(cells) + ' |'


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--checkpoints', required=True, help='comma-separated .npz paths')
  parser.add_argument('--shift_sets', default='0;-10,-5,0,5,10',
                      help='semicolon-separated sets of shifts; 0: no shift averaging')
  parser.add_argument('--out_dir', default='/tmp/tta')
  args = parser.parse_args()
  os.makedirs(args.out_dir, exist_ok=True)
  checkpoints = args.checkpoints.split(',')
  scorer = official_scores.OfficialScorer()
  print('| model, eval shifts | public PearsonR^2 | public Spearman | private PearsonR^2 '
        '| private Spearman |\n| --- | --- | --- | --- | --- |')
  for shifts in args.shift_sets.split(';'):
    columns, results = [], []
    for index, checkpoint in enumerate(checkpoints):
      tsv = predictions_path(checkpoint, index, shifts, args.out_dir)
      if not os.path.exists(tsv):
        predict(checkpoint, shifts, tsv)
      columns.append(scorer.read(tsv))
      results.append(scorer.score(columns[-1]))
      print(line(f'{checkpoint}, {shifts}', results[-1]), flush=True)
    print(summary(f'mean ± sd of {len(results)}, {shifts}', results))
    if len(columns) > 1:
      print(line(f'ensemble (mean of {len(columns)} columns), {shifts}',
                 scorer.score(np.mean(columns, axis=0))), flush=True)


if __name__ == '__main__':
  main()
