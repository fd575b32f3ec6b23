r"""Which bases drive a checkpoint's predictions: ISM, gradient x input, integrated gradients.

  python -m experiments.attribute --checkpoint runs/demo/checkpoint_best.npz \
      --input seqs.fa --output_dir attr/
  # synthetic rows with known planted motifs: also scores how well the attributions
  # find them (AUROC) and draws the planted motif under each logo:
  python -m experiments.attribute --checkpoint runs/demo/checkpoint_best.npz \
      --synthetic_rows 300 --synthetic_seed 1 --output_dir attr_synthetic/

Input (--input): FASTA, a DREAM file (`sequence<TAB>expression`) or one sequence per
line, plain or gzip (`variant_effects.read_sequences`: a bad line is an error naming the
file and line). Sequences are encoded and predicted by the one inference path
(`enformer_small.inference`), as experiments.predict predicts them: the checkpoint's
encoding, plasmid context, windows, shifts and strands (--eval_shifts,
--reverse_complement_average and --heads override them). ISM mutates every position
some window reads; the gradient methods differentiate the same average of windows
(`Predictor.scorer`). Positions are 1-based in the sequence's encoding (the 110 bp DREAM
encoding, or a table's).

Writes to --output_dir:
  attributions.npz   names, sequences, codes [N, S] (4 = N), targets, predictions
                     [N, T], and per method [N, S, 4, T]: `ism` (alt - ref, 0 at the
                     reference base and where no window reads), `gradient_x_input`,
                     `integrated_gradients`
  summary.tsv        per sequence and target: the prediction, ISM's strongest loss and
                     gain (position+base, effect), and per gradient method the position
                     of the largest |contribution| and the sum of contributions
  figures/           for the first --num_figures sequences: <name>_logo.png and
                     <name>_ism.png (in synthetic mode the planted motifs under the logo)
  recovery.tsv       synthetic mode: AUROC of |attribution| at planted-motif positions
                     against the other random-region positions a window reads, overall,
                     per sequence and per motif; row `generator_ism` scores the ISM of
                     the generator's own expression function
"""

import os
from typing import Dict

from absl import flags
import numpy as np

from experiments import _flags
from experiments import _runtime

from enformer_small import attribution
from enformer_small import attribution_report as report
from enformer_small import checkpoint as checkpoint_lib
from enformer_small import dream_data
from enformer_small import ensemble
from enformer_small import files
from enformer_small import inference
from enformer_small import planted
from enformer_small import variant_effects

FLAGS = flags.FLAGS


class AttributeInputError(Exception):
  """Bad flags or input; the message says which."""


def define_flags() -> None:
  flags.DEFINE_string('checkpoint', None, 'Checkpoint(s) to attribute: a .npz, a run '
                      'directory, a comma list or a file listing them (an ensemble: '
                      "the members' mean, and their spread as <method>_spread).")
  flags.DEFINE_string('input', None, 'FASTA, DREAM file or one sequence per line.')
  flags.DEFINE_integer('synthetic_rows', 0,
                       'Instead of --input: this many synthetic rows (planted motifs '
                       'known: AUROC of recovery and the motifs in the figures).')
  flags.DEFINE_integer('synthetic_seed', 1, 'Seed of the synthetic rows (the demo '
                       'trains on seed 0).')
  flags.DEFINE_string('output_dir', None, 'Where the outputs go.')
  flags.DEFINE_list('methods', ['ism', 'gradient_x_input'], f'Any of {report.METHODS}.')
  _flags.define(inference.InferenceOptions)
  flags.DEFINE_integer('ig_steps', 32, 'Integrated gradients: points on the path.')
  flags.DEFINE_enum('ig_baseline', 'zeros', ['zeros', 'uniform'],
                    'Integrated gradients: all-N (zeros) or 0.25 per base (uniform).')
  flags.DEFINE_integer('num_figures', 5, 'Figures for the first N sequences.')
  flags.DEFINE_list('figure_rows', None, 'Figures for these rows (0-based) instead.')
  flags.DEFINE_enum('logo_method', None, list(report.METHODS),
                    'What the logo shows (default: the first gradient method computed, '
                    'else ISM).')
  flags.DEFINE_integer('figure_target', 0, 'Output (target index) the figures show.')
  flags.DEFINE_bool('progress', True, 'Progress bars (only on a terminal).')


def _read_input() -> planted.Input:
  if bool(FLAGS.input) == bool(FLAGS.synthetic_rows):
    raise AttributeInputError('give exactly one of --input and --synthetic_rows')
  if FLAGS.synthetic_rows:
    return planted.synthetic_input(FLAGS.synthetic_rows, FLAGS.synthetic_seed)
  names, sequences = variant_effects.read_sequences(FLAGS.input)
  return planted.Input(names, sequences)


def _check_flags() -> None:
  if not FLAGS.checkpoint or not FLAGS.output_dir:
    raise AttributeInputError('--checkpoint and --output_dir are required')
  files.check_output(FLAGS.output_dir, directory=True, flag='--output_dir')
  unknown = sorted(set(FLAGS.methods) - set(report.METHODS))
  if unknown or not FLAGS.methods:
    raise AttributeInputError(f'--methods: unknown {unknown}; choose from '
                              f'{report.METHODS}')


def _write_recovery(data: planted.Input, span: planted.Span, covered: np.ndarray,
                    found: Dict[str, np.ndarray], path: str) -> None:
  labels, scored = planted.planted_labels(data, span)
  scored &= covered[None]
  t = FLAGS.figure_target
  importance = {m: (attribution.ism_importance(found[m]) if m == 'ism' else
                    np.abs(attribution.contribution(found[m])))[..., t]
                for m in FLAGS.methods}
  # The ceiling of this labelling: background sites and the G+C term make non-motif
  # positions matter too, so even the generator's own function scores below 1.
  importance['generator_ism'] = np.abs(planted.generator_ism(data, span)).sum(axis=-1)
  names = [m.name for m in data.synthetic_config.model.motifs]
  table = planted.recovery_aurocs(labels, scored, importance, names)
  columns = ['all', 'per_sequence'] + names
  lines = ['method\t' + '\t'.join(columns)]
  lines += [m + '\t' + '\t'.join(f'{table[m][c]:.4f}' for c in columns) for m in table]
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print(f'motif recovery (AUROC of |attribution|, planted motif vs other positions; '
        f'{int((labels[scored] >= 0).sum()):,} motif and '
        f'{int((labels[scored] < 0).sum()):,} other positions):')
  print('\n'.join(lines))


def _write_figures(data, span, x, found, targets) -> int:
  rows = ([int(r) for r in FLAGS.figure_rows] if FLAGS.figure_rows else
          range(min(FLAGS.num_figures, len(data.sequences))))
  directory = os.path.join(FLAGS.output_dir, 'figures')
  for i in rows:
    logo = planted.planted_logo(data, span, i) if data.synthetic_config else None
    report.draw_figures(directory, data.names[i], x, i, FLAGS.figure_target, span.start,
                        found, logo, FLAGS.logo_method)
  return len(rows)


def run() -> Dict[str, np.ndarray]:
  _check_flags()
  data = _read_input()
  model = ensemble.load(FLAGS.checkpoint, _flags.parse(inference.InferenceOptions))
  span = planted.Span(0, model.layout.length)
  codes = model.layout.encode(data.sequences).codes
  x = dream_data.one_hot(codes)
  print(f'{FLAGS.checkpoint}: {ensemble.describe(model)}; '
        f'{len(data.sequences):,} sequences; targets {", ".join(model.targets)}')
  note = model.layout.fit_note(data.sequences)
  if note:
    print(f'{FLAGS.input or "synthetic rows"}: {note}')
  found = report.compute(model, x, FLAGS.methods, ig_baseline=FLAGS.ig_baseline,
                         ig_steps=FLAGS.ig_steps,
                         progress=_runtime.progress_bars(FLAGS.progress, 'fwd'))
  os.makedirs(os.path.join(FLAGS.output_dir, 'figures'), exist_ok=True)
  np.savez(os.path.join(FLAGS.output_dir, 'attributions.npz'), names=np.array(data.names),
           sequences=np.array(data.sequences), codes=codes,
           targets=np.array(model.targets), **found)
  with open(os.path.join(FLAGS.output_dir, 'summary.tsv'), 'w') as f:
    f.write('\n'.join(report.summary_lines(data.names, model.targets, span.start,
                                           found)) + '\n')
  drawn = _write_figures(data, span, x, found, model.targets)
  if data.synthetic_config:
    _write_recovery(data, span, model.covered(), found,
                    os.path.join(FLAGS.output_dir, 'recovery.tsv'))
  print(f'wrote {FLAGS.output_dir}/attributions.npz, summary.tsv and '
        f'{drawn} sequence(s) of figures')
  return found


main = _runtime.command(
    run, (AttributeInputError, checkpoint_lib.CheckpointError, files.OutputPathError,
          ValueError))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  _runtime.run(main)
