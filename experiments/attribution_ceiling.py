r"""Why the generator's own function recovers the planted motifs only so far, and what
the per-position aggregation of an attribution does to that (synthetic data).

  python -m experiments.attribution_ceiling \
      --checkpoint runs/demo/checkpoint_best.npz \
      --attributions attr_synthetic/attributions.npz --output_dir ceiling/

Reads the ISM of `experiments.attribute --synthetic_rows N --synthetic_seed S
--methods=ism,...` (same N and S here), computes the model's raw input gradients, the
exact ISM of the generator's ladder of functions and their per-position aggregations
(`enformer_small.attribution_ceiling`), and writes aurocs.tsv, decomposition.tsv and
labellings.tsv (and prints them).
"""

import os

from absl import flags
import numpy as np

from experiments import _runtime

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import dream_data
from enformer_small import inference
from enformer_small import planted
from enformer_small.attribution_ceiling import (auroc_lines, correlation,
                                                decomposition_lines, ism_aggregations,
                                                label_variant_lines, ladder_ism, linearity,
                                                model_importance)

FLAGS = flags.FLAGS


def run(argv_unused=None) -> None:
  if not (FLAGS.checkpoint and FLAGS.attributions and FLAGS.output_dir):
    raise CeilingInputError('--checkpoint, --attributions and --output_dir are required')
  data = planted.synthetic_input(FLAGS.synthetic_rows, FLAGS.synthetic_seed)
  predictor = inference.load(FLAGS.checkpoint)
  window = planted.Span(0, predictor.layout.length)
  arrays = dict(np.load(FLAGS.attributions))
  if not np.array_equal(arrays['codes'], window.codes(data.sequences)):
    raise ValueError(f'{FLAGS.attributions} holds other sequences than '
                     f'--synthetic_rows={FLAGS.synthetic_rows} '
                     f'--synthetic_seed={FLAGS.synthetic_seed}')
  x = dream_data.one_hot(window.codes(data.sequences))
  labels, scored = planted.planted_labels(data, window)
  scored &= predictor.covered()[None]
  truth = ladder_ism(data, window.start, window.length)
  importance = {f'generator {name} | {k}': v for name, effects in truth.items()
                for k, v in ism_aggregations(effects).items()}
  found, gradients = model_importance(predictor.scorer(), x, arrays)
  importance.update(found)
  names = [m.name for m in data.synthetic_config.model.motifs]
  model_ism = arrays['ism'][..., 0]
  keep = scored[..., None] & (x == 0)
  extra = [f'correlation of the model ISM with the expression ISM, shift {s:+d}\t'
           f'{correlation(model_ism, truth["expression"], keep, s):.4f}'
           for s in (-1, 0, 1)]
  extra.append('correlation of the model ISM with its first-order (gradient) '
               f'prediction\t{linearity(model_ism, gradients, x, scored):.4f}')
  sources = {k: importance[k] for k in (
      'generator expression | sum|e|', 'generator activity_no_gc | sum|e|',
      'generator occupancy_flat | sum|e|', 'model ISM | sum|e|',
      'model gradient | |sum g*x|')}
  tables = {'aurocs.tsv': auroc_lines(labels, scored, importance, names),
            'decomposition.tsv': decomposition_lines(data, labels, scored, truth, window)
                                 + extra,
            'labellings.tsv': label_variant_lines(data, labels, scored, window, sources)}
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  for name, lines in tables.items():
    with open(os.path.join(FLAGS.output_dir, name), 'w') as f:
      f.write('\n'.join(lines) + '\n')
    print('\n'.join(lines) + '\n')


def define_flags() -> None:
  flags.DEFINE_string('checkpoint', None, 'Checkpoint the attributions are of.')
  flags.DEFINE_string('attributions', None, 'attributions.npz of experiments.attribute.')
  flags.DEFINE_integer('synthetic_rows', 500, 'As given to experiments.attribute.')
  flags.DEFINE_integer('synthetic_seed', 1, 'As given to experiments.attribute.')
  flags.DEFINE_string('output_dir', None, 'Where aurocs.tsv and decomposition.tsv go.')


class CeilingInputError(Exception):
  """Missing flags; the message says which."""


main = _runtime.command(run, (CeilingInputError, checkpoint_lib.CheckpointError, ValueError))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  _runtime.run(main)
