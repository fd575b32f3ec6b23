"""Does a warm start pay off? Synthetic data whose truth is known.

1. pretrain: the seed model (85 bp, one output) on a large synthetic DREAM file from the
   default expression model (`synthetic.ExpressionModel()`).
2. per seed, a small table from RELATED models on the same kind of sequences (the same
   motifs, planted as before): target `weights` has other motif weights, target
   `profile` other position profiles (proximal <-> distal, TATA flat), each with its own
   measurement noise; the noise-free values ride along as ignored columns.
3. per seed, on that table with a new head of two outputs: `finetune` (--init_checkpoint
   from step 1: trunk loaded, head re-initialised) against `scratch` (the same recipe,
   fresh parameters), both through experiments.train as a user runs it.

The score is the held-out Pearson per target (mean of the two) against the noise ceiling
(the held-out Pearson of the noise-free values with the measured ones), and the share of
the gap from scratch to the ceiling that fine-tuning closes.

Phases keep each run short (the CPU lock): run them in order, or `--phase all`.
  python benchmarks/transfer_synthetic.py --phase pretrain
  python benchmarks/transfer_synthetic.py --phase finetune --seeds 0
  python benchmarks/transfer_synthetic.py --phase report
  python benchmarks/transfer_synthetic.py --phase all --smoke      # minutes-sized check
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # pylint: disable=g-import-not-at-top

from enformer_small import dream_data  # pylint: disable=g-import-not-at-top
from enformer_small import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
from enformer_small import synthetic  # pylint: disable=g-import-not-at-top
from enformer_small import trainer  # pylint: disable=g-import-not-at-top
from enformer_small.train_config import TrainConfig  # pylint: disable=g-import-not-at-top

TARGETS = ('weights', 'profile')
# Other weights: same signs, other strengths (activators and the repressor).
WEIGHT_FACTORS = {'Reb1': 0.4, 'Abf1': 1.6, 'Rap1': 0.5, 'Gcn4': 1.8, 'Mcm1': 2.0,
                  'TATA': 0.6, 'polyT': 1.5, 'Rox1': 1.8}
OTHER_PROFILE = {'proximal': 'distal', 'distal': 'proximal', 'tata': 'flat',
                 'flat': 'flat'}
# The window both models read: [15:100] of the 110 bp rows, as the seed.
COMMON = dict(input_length=85, crop_start=15, shifts=(0,), dropout=False,
              optimizer='adamw', weight_decay=0.01, schedule='one_cycle', loss='mse',
              keep_checkpoints=1, eval_batch_size=500)


def related_models():
  base = synthetic.ExpressionModel()
  weights = dataclasses.replace(base, motifs=tuple(
      dataclasses.replace(m, weight=m.weight * WEIGHT_FACTORS.get(m.name, 1.0))
      for m in base.motifs))
  profile = dataclasses.replace(base, motifs=tuple(
      dataclasses.replace(m, profile=OTHER_PROFILE[m.profile]) for m in base.motifs))
  return {'weights': weights, 'profile': profile}


def write_table(path, rows, seed):
  """The small table: sequence, the measured targets, their noise-free values."""
  config = synthetic.SyntheticConfig(num_rows=rows, seed=seed)
  generated = synthetic.generate(config)
  rng = np.random.default_rng(seed)
  columns = {}
  for name, model in related_models().items():
    truth = synthetic.noise_free_from_codes(generated.random_codes,
                                            generated.random_lengths, model)
    noisy = truth + config.noise_sd * rng.standard_normal(truth.shape)
    columns[name] = np.round(np.clip(noisy, 0, synthetic.MAX_EXPRESSION), 4)
    columns[name + '_true'] = truth
  names = list(columns)
  with open(path, 'w') as f:
    f.write('\t'.join(['sequence'] + names) + '\n')
    for i, sequence in enumerate(generated.sequences()):
      f.write('\t'.join([sequence] + [f'{columns[n][i]:.6g}' for n in names]) + '\n')


def noise_ceiling(path, num_holdout, split_seed=0):
  """Per target: held-out Pearson of the noise-free values with the measured ones."""
  from enformer_small import tables
  spec = tables.TableSpec(target_columns=TARGETS + tuple(t + '_true' for t in TARGETS),
                          length=dream_data.SEQUENCE_LENGTH, pad=True)
  values = tables.read_table(path, spec, use_cache=False).expression
  _, holdout = dream_data.holdout_split(len(values), num_holdout, split_seed)
  return {t: metrics_lib.pearson_r(values[holdout, i + len(TARGETS)], values[holdout, i])
          for i, t in enumerate(TARGETS)}


def sizes(args):
  if args.smoke:
    return dict(pretrain_rows=3000, pretrain_epochs=1, finetune_rows=600,
                finetune_epochs=2, holdout=100)
  return dict(pretrain_rows=args.pretrain_rows, pretrain_epochs=args.pretrain_epochs,
              finetune_rows=args.finetune_rows, finetune_epochs=args.finetune_epochs,
              holdout=args.finetune_rows // 10)


def pretrain(args, size):
  config = TrainConfig(
      run_dir=os.path.join(args.out, 'pretrain'), synthetic_rows=size['pretrain_rows'],
      synthetic_dir=os.path.join(args.out, 'data'), num_holdout=2000 if not args.smoke
      else 300, batch_size=128, num_epochs=size['pretrain_epochs'],
      learning_rate=0.005, seed=0, **COMMON)
  started = time.time()
  result = trainer.train(config, trainer.RunOptions(overwrite=True, log_every_steps=0))
  record(args, dict(phase='pretrain', best_pearson=result.best_pearson,
                    noise_ceiling=result.noise_ceiling, seconds=time.time() - started,
                    rows=size['pretrain_rows'], epochs=size['pretrain_epochs']))


def finetune(args, size, seed):
  table = os.path.join(args.out, f'related_seed{seed}.tsv')
  write_table(table, size['finetune_rows'], 100 + seed)
  ceiling = noise_ceiling(table, size['holdout'])
  init = os.path.join(args.out, 'pretrain', 'checkpoint_best.npz')
  arms = {'finetune': dict(init_checkpoint=init, learning_rate=args.trunk_lr,
                           head_learning_rate=args.head_lr,
                           head_only_fraction=args.head_only_fraction),
          'scratch': dict(learning_rate=args.scratch_lr)}
  for arm, options in arms.items():
    config = TrainConfig(
        run_dir=os.path.join(args.out, f'{arm}_seed{seed}'), table_file=table,
        target_columns=TARGETS, sequence_length=dream_data.SEQUENCE_LENGTH,
        pad_sequences=True, num_holdout=size['holdout'], batch_size=64,
        num_epochs=size['finetune_epochs'], seed=seed, **COMMON, **options)
    started = time.time()
    result = trainer.train(config, trainer.RunOptions(overwrite=True, log_every_steps=0))
    best = result.history[result.best_epoch - 1]['holdout']
    record(args, dict(phase=arm, seed=seed, best_epoch=result.best_epoch,
                      pearson={t: best['per_target'][t]['pearson'] for t in TARGETS},
                      noise_ceiling=ceiling, seconds=time.time() - started,
                      rows=size['finetune_rows'], epochs=size['finetune_epochs']))


def record(args, entry):
  with open(os.path.join(args.out, 'results.jsonl'), 'a') as f:
    f.write(json.dumps(entry) + '\n')
  print(json.dumps(entry), flush=True)


def report(args):
  entries = [json.loads(line) for line in open(os.path.join(args.out, 'results.jsonl'))]
  runs = {}
  for e in entries:  # The last run of each (arm, seed) counts.
    if e['phase'] in ('finetune', 'scratch'):
      runs[e['phase'], e['seed']] = e
  seeds = sorted({seed for _, seed in runs if ('finetune', seed) in runs
                  and ('scratch', seed) in runs})
  def mean(d):
    return statistics.mean(d.values())
  lines = ['| seed | noise ceiling | from scratch | fine-tuned | gap closed |',
           '| --- | --- | --- | --- | --- |']
  closed = []
  for seed in seeds:
    ft, sc = runs['finetune', seed], runs['scratch', seed]
    ceil = mean(ft['noise_ceiling'])
    share = (mean(ft['pearson']) - mean(sc['pearson'])) / (ceil - mean(sc['pearson']))
    closed.append(share)
    def per(e):
      return ', '.join(f'{t} {e["pearson"][t]:.3f}' for t in TARGETS)
    lines.append(f'| {seed} | {ceil:.3f} | {mean(sc["pearson"]):.3f} ({per(sc)}) | '
                 f'{mean(ft["pearson"]):.3f} ({per(ft)}) | {share:.0%} |')
  if seeds:
    def avg(arm):
      return statistics.mean(mean(runs[arm, s]['pearson']) for s in seeds)
    ceil = statistics.mean(mean(runs['finetune', s]['noise_ceiling']) for s in seeds)
    lines.append(f'| mean | {ceil:.3f} | {avg("scratch"):.3f} | {avg("finetune"):.3f} | '
                 f'{(avg("finetune") - avg("scratch")) / (ceil - avg("scratch")):.0%} |')
  print('\n'.join(lines))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--phase', choices=['pretrain', 'finetune', 'report', 'all'],
                      default='all')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--out', default=os.path.join(REPO, 'runs', 'transfer_synthetic'))
  parser.add_argument('--smoke', action='store_true', help='tiny sizes: a code check')
  parser.add_argument('--pretrain_rows', type=int, default=50_000)
  parser.add_argument('--pretrain_epochs', type=int, default=3)
  parser.add_argument('--finetune_rows', type=int, default=3000)
  parser.add_argument('--finetune_epochs', type=int, default=10)
  parser.add_argument('--trunk_lr', type=float, default=0.001)
  parser.add_argument('--head_lr', type=float, default=0.005)
  parser.add_argument('--head_only_fraction', type=float, default=0.2)
  parser.add_argument('--scratch_lr', type=float, default=0.005)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  size = sizes(args)
  if args.phase in ('pretrain', 'all'):
    pretrain(args, size)
  if args.phase in ('finetune', 'all'):
    for seed in (int(s) for s in args.seeds.split(',')):
      finetune(args, size, seed)
  if args.phase in ('report', 'all'):
    report(args)


if __name__ == '__main__':
  main()
