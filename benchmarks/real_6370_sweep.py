"""Screens recipe variants on the 6,370 real rows on an accelerator without TensorFlow.

The lent GPUs' image has no TensorFlow, so `experiments.train`'s tf.data pipeline cannot
run there. This script trains the same model with the library's optimizer, steps,
BatchNorm recalibration and window averaging, fed by numpy batches built the way the
pipeline builds them for `real_6370.flags` (each epoch a permutation of the training
rows; each example at a random shift, reverse-complemented with probability 1/2). It
picks the best epoch on the same 637 held-out rows and scores the 71,103 test rows
officially. The batch order and dropout draws differ from the pipeline's, so its figures
only screen variants: a variant worth keeping is then trained and predicted with
`experiments.train` / `experiments.predict` on the CPU, and only those figures are
reported as results.

Writes one JSON line per (variant, seed) to --out as each run ends, and a line per epoch
to stderr. On one H100 (2026-11-26) the first epoch, which compiles the steps, dominated:
with 3 processes at once it ended after 227-240 s, each later epoch (44 steps, recalibration,
10 held-out windows) took 0.6-0.9 s and the test set ~40 s; 15 processes at once
finished no run in 480 s. Each variant's optimizer is another compiled step, so run few
variants per session (only the seeds of one variant share a compilation).

  python benchmarks/real_6370_sweep.py --variants base,epochs_30 --seeds 0,1,2 \
      --data_dir ../shared/data/dream --out sweep.jsonl
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from enformer_small import attribution  # pylint: disable=g-import-not-at-top
from enformer_small import config as config_lib
from enformer_small import dream_data
from enformer_small import metrics
from enformer_small import plasmid
from enformer_small import recipe as recipe_lib
from enformer_small import training
from enformer_small import inference
from enformer_small import window_average

import official_scores  # benchmarks/, this script's own folder.

# real_6370.flags as it was when this screen moved it from 20 to 30 epochs, as fields.
BASE_RECIPE = recipe_lib.Recipe(
    optimizer='adamw', learning_rate=0.0025, weight_decay=0.01, schedule='one_cycle',
    reverse_complement=True, eval_reverse_complement=True, eval_shifts=(-10, -5, 0, 5, 10),
    plasmid_context=10, bn_recalibration_batches=10, loss='soft_bin', ema_decay=0.99)
BASE = dict(batch_size=128, num_epochs=20, max_shift=10, dropout=True)
NUM_HOLDOUT = 637
INPUT_LENGTH = 110

# name -> overrides of BASE (run geometry) and BASE_RECIPE (fields), one idea each.
VARIANTS = {
    'base': {},
    'epochs_30': dict(num_epochs=30),
    'epochs_40': dict(num_epochs=40),
    'lr_0035': dict(learning_rate=0.0035),
    'lr_0015': dict(learning_rate=0.0015),
    'lr_0015_epochs_30': dict(learning_rate=0.0015, num_epochs=30),
    'wd_0.05': dict(weight_decay=0.05),
    'wd_0.1': dict(weight_decay=0.1),
    'ema_0.995': dict(ema_decay=0.995),
    'ema_0.995_epochs_30': dict(ema_decay=0.995, num_epochs=30),
    'batch_64': dict(batch_size=64),
    'bn_recal_40': dict(bn_recalibration_batches=40),
    'shift_5': dict(max_shift=5),
    'clip_1': dict(clip_global_norm=1.0),
    'nodropout': dict(dropout=False),
    # A quick check of the script itself: one epoch, one window per row.
    'smoke': dict(num_epochs=1, eval_shifts=(), eval_reverse_complement=False),
}


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  recipe: recipe_lib.Recipe
  batch_size: int
  num_epochs: int
  max_shift: int
  dropout: bool


def variant(name: str) -> Variant:
  overrides = dict(VARIANTS[name])
  geometry = {k: overrides.pop(k, v) for k, v in BASE.items()}
  return Variant(name=name, recipe=dataclasses.replace(BASE_RECIPE, **overrides),
                 **geometry)


@dataclasses.dataclass(frozen=True)
class Data:
  """Training rows and test rows, each extended by the plasmid context."""
  train_codes: np.ndarray
  train_targets: np.ndarray
  holdout_codes: np.ndarray
  holdout_targets: np.ndarray
  test_codes: np.ndarray
  scorer: official_scores.OfficialScorer  # the test rows' measurements and splits


def load(data_dir: str, context: int, split_seed: int = 0) -> Data:
  data = dream_data.read_dream_file(os.path.join(data_dir, 'train_6370.txt'),
                                    use_cache=False)
  train_rows, holdout_rows = dream_data.holdout_split(len(data), NUM_HOLDOUT, split_seed)
  codes = plasmid.add_context(data.codes, context)
  scorer = official_scores.OfficialScorer(data_dir)
  test = scorer.test_set
  test_codes = plasmid.add_context(
      dream_data.encode_sequences(test.sequences, length=dream_data.SEQUENCE_LENGTH),
      context)
  expression = np.asarray(data.expression, np.float32)
  return Data(codes[train_rows], expression[train_rows], codes[holdout_rows],
              expression[holdout_rows], test_codes, scorer)


def windows(codes: np.ndarray, starts: np.ndarray, reverse: np.ndarray) -> np.ndarray:
  """uint8 one-hot [B, 110, 4] of codes[i, starts[i]:+110], reverse-complemented where
  `reverse` (`attribution.reverse_complement`)."""
  cut = codes[np.arange(len(codes))[:, None], starts[:, None] + np.arange(INPUT_LENGTH)]
  one_hot = dream_data.one_hot(cut, np.uint8)
  return np.where(reverse[:, None, None], attribution.reverse_complement(one_hot), one_hot)


def epoch_batches(data: Data, v: Variant, rng: np.random.Generator):
  """The epoch's full batches, [1, B, ...] for one device."""
  order = rng.permutation(len(data.train_codes))
  context = v.recipe.plasmid_context
  for i in range(len(order) // v.batch_size):
    rows = order[i * v.batch_size:(i + 1) * v.batch_size]
    starts = context + rng.integers(-v.max_shift, v.max_shift + 1, len(rows))
    reverse = rng.random(len(rows)) < 0.5
    yield dict(inputs=windows(data.train_codes[rows], starts, reverse)[None],
               targets=data.train_targets[rows][:, None][None])


def predict(eval_step, params, state, codes: np.ndarray, recipe: recipe_lib.Recipe,
            batch: int = 4096) -> np.ndarray:
  """The recipe's window average over the rows, by the one inference path."""
  windows = window_average.of_recipe(recipe, recipe.plasmid_context, INPUT_LENGTH)
  return inference.predict_rows(lambda x: eval_step(params, state, x), codes, windows,
                                batch_size=min(batch, len(codes)))[:, 0]


def train_and_score(data: Data, v: Variant, seed: int, steps) -> dict:
  started = time.perf_counter()
  steps_per_epoch = len(data.train_codes) // v.batch_size
  optimizer, train_step, eval_step, stats_step = steps
  state = training.replicate(training.init_train_state(
      model_config(v), optimizer, jax.random.PRNGKey(seed)))
  rng = np.random.default_rng(seed)
  history, best = [], (-2.0, None)
  for epoch in range(v.num_epochs):
    for batch in epoch_batches(data, v, rng):
      state, _ = train_step(state, training.shard_batch(batch))
    params = recipe_lib.ema_params(state.opt_state)
    params = state.params if params is None else params
    bn_state = state.state
    if v.recipe.bn_recalibration_batches:
      # Its own generator, so that the number of batches does not move training's draws.
      batches = epoch_batches(data, v, np.random.default_rng([seed, epoch, 1]))
      bn_state = training.recalibrate_batch_norm(
          stats_step, params, state.state,
          (training.shard_batch(b['inputs']) for _, b in zip(
              range(v.recipe.bn_recalibration_batches), batches)))
    r = metrics.pearson_r(predict(eval_step, params, bn_state, data.holdout_codes,
                                  v.recipe), data.holdout_targets)
    history.append(round(r, 4))
    print(f'{v.name} seed {seed} epoch {epoch + 1}: held-out r {r:.4f} '
          f'({time.perf_counter() - started:.0f} s)', file=sys.stderr, flush=True)
    if r > best[0]:
      best = (r, jax.device_get((params, bn_state)), epoch + 1)
  preds = predict(eval_step, *best[1], data.test_codes, v.recipe)
  score = data.scorer.score(preds)
  return dict(variant=v.name, seed=seed, best_epoch=best[2], holdout_r=history,
              steps_per_epoch=steps_per_epoch, seconds=round(time.perf_counter() - started, 1),
              **{f'{split}_{name}': round(score[split][s], 4)
                 for split in official_scores.SPLITS
                 for name, s in zip(('pearson_r2', 'spearman'), official_scores.SCORES)})


def model_config(v: Variant) -> config_lib.EnformerConfig:
  config = config_lib.seed_config(INPUT_LENGTH).with_soft_bin_head(
      recipe_lib.NUM_SOFT_BINS)
  return config if v.dropout else config.without_dropout()


def build_steps(data: Data, v: Variant):
  total_steps = len(data.train_codes) // v.batch_size * v.num_epochs
  optimizer = recipe_lib.make_optimizer(v.recipe, total_steps)
  mc = model_config(v)
  return (optimizer,
          training.make_train_step(mc, optimizer, loss=v.recipe.loss,
                                   soft_bin_sigma=v.recipe.soft_bin_sigma),
          training.make_eval_step(mc), training.make_batch_stats_step(mc))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--variants', default='base', help='comma-separated VARIANTS')
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--data_dir', default=os.path.join(REPO, '..', 'shared', 'data',
                                                         'dream'))
  parser.add_argument('--out', required=True, help='JSON lines, appended')
  args = parser.parse_args()
  names = args.variants.split(',')
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    parser.error(f'unknown variants {unknown}; known: {", ".join(VARIANTS)}')
  if jax.local_device_count() != 1:
    parser.error('the batches carry one device axis of 1: run with one visible device '
                 '(e.g. CUDA_VISIBLE_DEVICES=0)')
  data = load(args.data_dir, BASE_RECIPE.plasmid_context)
  for name in names:
    v = variant(name)
    steps = build_steps(data, v)
    for seed in (int(s) for s in args.seeds.split(',')):
      result = train_and_score(data, v, seed, steps)
      print(json.dumps(result), flush=True)
      with open(args.out, 'a') as f:
        f.write(json.dumps(result) + '\n')


if __name__ == '__main__':
  main()
