"""Recipes on the 6,370 real training rows, scored officially on the 71,103 test rows.

Each (recipe, seed) runs as a user would: `python -m experiments.train` on
../shared/data/dream/train_6370.txt, then `python -m experiments.predict` on the test
set with no extra flags (the checkpoint's recorded inference settings apply), then the
official DREAM scores of the predictions (`enformer_small.scoring`). Prints one line per
run and a markdown table of mean and spread (sample sd) over the seeds of each recipe.

The recipes (RECIPES) go from the seed's to `real_6370.flags`, one element at a time,
each on top of the one before: the ablation table of BUILD_NOTES.md.

  python benchmarks/real_6370_ablation.py --recipes epochs_30 --seeds 0,1,2   # real_6370.flags
  python benchmarks/real_6370_ablation.py --recipes all --seeds 0
"""

import argparse
import json
import os
import subprocess
import sys
import time

import official_scores  # benchmarks/, this script's own folder.
from official_scores import DATA, REPO, SCORES, SPLITS
# Shared by every recipe: the data, at most 10% held out, and the run's bookkeeping.
COMMON = ['--flagfile=small.flags', f'--train_file={DATA}/train_6370.txt',
          '--num_holdout=637', '--eval_batch_size=1000']
# After the recipe's flags, so that a recipe's nested flagfile does not undo them.
BOOKKEEPING = ['--keep_checkpoints=1', '--log_every_steps=1000000']
# The seed's recipe at this size (the old real_6370.flags, 637 held out), then one
# element at a time.
SEED = ['--batch_size=128', '--num_epochs=30', '--nodropout']
ADAMW = ['--batch_size=128', '--num_epochs=20', '--nodropout', '--optimizer=adamw',
         '--learning_rate=0.005', '--weight_decay=0.01', '--schedule=one_cycle']
RC = ADAMW + ['--reverse_complement']
RC_EVAL = RC + ['--eval_reverse_complement']
CONTEXT = RC_EVAL + ['--input_length=110', '--plasmid_context=10', '--crop_start=-1',
                     '--shifts=' + ','.join(str(s) for s in range(-10, 11)),
                     '--shift_mode=random']
DROPOUT = [f for f in CONTEXT if f != '--nodropout'] + ['--dropout']
RECAL = DROPOUT + ['--bn_recalibration_batches=10']
SOFT_BIN = RECAL + ['--loss=soft_bin']
EMA = SOFT_BIN + ['--ema_decay=0.99']
LR_0025 = [f for f in EMA if f != '--learning_rate=0.005'] + ['--learning_rate=0.0025']
EVAL_SHIFTS = LR_0025 + ['--eval_shifts=-10,-5,0,5,10']
# The last element, 30 epochs instead of 20, completes the recipe of real_6370.flags,
# which is run as users run it (its flags must stay the ones above plus that one).
FINAL = ['--flagfile=real_6370.flags']
RECIPES = {
    'seed': SEED, 'adamw_one_cycle': ADAMW, 'rc_train': RC, 'rc_eval': RC_EVAL,
    'context_110bp': CONTEXT, 'dropout': DROPOUT, 'bn_recalibration': RECAL,
    'soft_bin': SOFT_BIN, 'ema': EMA, 'lr_0025': LR_0025, 'eval_shifts': EVAL_SHIFTS,
    'epochs_30': FINAL,
}


def run(cmd, log):
  with open(log, 'a') as f:
    f.write('$ ' + ' '.join(cmd) + '\n')
    f.flush()
    subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, check=True)


def train_and_score(name, flags, seed, out_dir, scorer):
  """{split: {score: value}} of one trained recipe, and its wall seconds."""
  run_dir = os.path.join(out_dir, f'{name}_seed{seed}')
  log = run_dir + '.log'
  t0 = time.perf_counter()
  run([sys.executable, '-m', 'experiments.train', *COMMON, *flags, *BOOKKEEPING,
       f'--seed={seed}', f'--run_dir={run_dir}', '--overwrite', '--noprogress'], log)
  train_s = time.perf_counter() - t0
  tsv = os.path.join(run_dir, 'test.tsv')
  run([sys.executable, '-m', 'experiments.predict',
       f'--checkpoint={run_dir}/checkpoint_best.npz',
       f'--input={official_scores.TEST_FILE}', f'--output_tsv={tsv}',
       '--noprogress'], log)
  result = scorer.score_tsv(tsv)
  with open(run_dir + '.json', 'w') as f:
    json.dump(dict(result, train_s=train_s, flags=flags, seed=seed), f, indent=1)
  return result, train_s


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--recipes', default='all')
  parser.add_argument('--seeds', default='0')
  parser.add_argument('--out_dir', default=os.path.join(REPO, 'runs', 'ablation'))
  parser.add_argument('--extra', default='',
                      help='flags added to every recipe (space-separated), to try a change')
  parser.add_argument('--tag', default='', help='appended to the run names')
  parser.add_argument('--summarise', action='store_true',
                      help='no runs: the table of every result saved in --out_dir')
  args = parser.parse_args()
  names = list(RECIPES) if args.recipes == 'all' else args.recipes.split(',')
  os.makedirs(args.out_dir, exist_ok=True)
  scorer = None if args.summarise else official_scores.OfficialScorer()
  table = {}
  for name in names:
    for seed in map(int, args.seeds.split(',')):
      if args.summarise:
        path = os.path.join(args.out_dir, f'{name}{args.tag}_seed{seed}.json')
        if os.path.exists(path):
          with open(path) as f:
            table.setdefault(name, []).append(json.load(f))
        continue
      result, seconds = train_and_score(name + args.tag,
                                        RECIPES[name] + args.extra.split(), seed,
                                        args.out_dir, scorer)
      table.setdefault(name, []).append(result)
      print(f'{name} seed {seed}: train {seconds:.0f} s; ' + '; '.join(
          f'{split} ' + ' / '.join(f'{result[split][s]:.4f}' for s in SCORES)
          for split in SPLITS), flush=True)
  print('\n| recipe | seeds | public PearsonR^2 | public Spearman | private PearsonR^2 '
        '| private Spearman |\n| --- | ---: | --- | --- | --- | --- |')
  for name, results in table.items():
    cells = official_scores.mean_sd_cells(results)
    print(f'| {name} | {len(results)} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
  main()
