r"""Designs sequences with one or several checkpoints, under constraints.

  # 100 random starts in the DREAM construct, greedy, at most 10 edits, an ensemble of
  # two seeds designing and a third judging:
  python -m experiments.design --checkpoint=runs/s0,runs/s1 --judge=runs/s2 \
      --random_starts=100 --methods=greedy,evolve,gradient --max_edits=10 \
      --output_dir=runs/designs
  # lower expression, no EcoRI / BamHI site, G+C 35-60%, runs of at most 6:
  python -m experiments.design --checkpoint=ckpt.npz --starts=seqs.fa --objective=min \
      --forbidden=GAATTC,GGATCC --gc_range=0.35,0.6 --max_homopolymer=6 --output_dir=out
  # implant a motif (IUPAC, or --motif_file with a MEME / JASPAR matrix):
  python -m experiments.design --checkpoint=ckpt.npz --random_starts=10 \
      --methods=implant --motif=TTACCCGG --output_dir=out

Methods (`enformer_small.design`, `design_gradient`): greedy, beam, evolve, gradient,
implant. Every candidate is predicted through the one inference path by every designer
member (--eval_shifts and --reverse_complement_average override what the checkpoints
record, e.g. a cheaper search); --judge scores the designs with its own recorded
settings and takes no part in designing. The objective is the designer members' mean
minus --spread_penalty times their spread (maximised, minimised, or brought to
--target_value); --minus_output makes it a difference of two outputs. Constraints
(`design_constraints`): --mutable positions only (default: the 80 bp random region of a
DREAM construct, every position of a table), --max_edits, --gc_range, --forbidden sites
(IUPAC, both strands), --max_homopolymer. --robustness adds the mutational robustness
of each design and its start (Vaishnav et al. 2022). Writes designs.tsv, designs.fa and
objective_<method>.png into --output_dir (`design_report`).
"""

import os
import time
from typing import Optional

from absl import flags
import numpy as np

from experiments import _flags
from experiments import _runtime

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import design
from enformer_small import design_constraints as rules
from enformer_small import design_gradient
from enformer_small import design_report
from enformer_small import dream_data
from enformer_small import ensemble
from enformer_small import files
from enformer_small import inference
from enformer_small import robustness
from enformer_small import variant_effects

FLAGS = flags.FLAGS
METHODS = ('greedy', 'beam', 'evolve', 'gradient', 'implant')


class DesignFlagsError(Exception):
  """Bad flags; the message says which."""


def define_flags() -> None:
  flags.DEFINE_string('checkpoint', None, 'Designer: checkpoint(s), a comma list or a '
                      'file listing them (run directories too).')
  flags.DEFINE_string('judge', None, 'Checkpoint(s) that score the designs without '
                      'designing them (their recorded inference settings).')
  flags.DEFINE_string('starts', None, 'Starting sequences: FASTA, DREAM file or one a line.')
  flags.DEFINE_integer('random_starts', 0, 'Instead of --starts: this many random starts '
                       '(random bases at the mutable positions of the construct).')
  flags.DEFINE_list('methods', ['greedy'], f'Any of {", ".join(METHODS)}.')
  flags.DEFINE_integer('budget', 2400, 'Candidate evaluations per design and method.')
  flags.DEFINE_enum('objective', 'max', list(design.DIRECTIONS),
                    'max or min the prediction, or bring it to --target_value.')
  flags.DEFINE_float('target_value', 0.0, '--objective=target: the value to reach.')
  flags.DEFINE_string('output', '0', 'The output optimised: index or target name.')
  flags.DEFINE_string('minus_output', None, 'Optimise output - this one (specificity).')
  flags.DEFINE_float('spread_penalty', 0.0, 'k in mean - k * spread over the members.')
  flags.DEFINE_string('mutable', 'auto', "Positions that may change: 'auto' (the DREAM "
                      "construct's random region; a table's every position), 'all', or "
                      "'FROM:TO' (1-based, inclusive).")
  flags.DEFINE_integer('max_edits', None, 'At most this many changes from the start.')
  flags.DEFINE_list('gc_range', None, 'LO,HI: G+C share of the mutable positions.')
  flags.DEFINE_list('forbidden', [], 'Sites (IUPAC) that may not appear, both strands.')
  flags.DEFINE_integer('max_homopolymer', None, 'Longest run of one base allowed.')
  flags.DEFINE_integer('beam_width', 3, 'beam: sequences kept per design.')
  flags.DEFINE_integer('population', 48, 'evolve: population per design.')
  flags.DEFINE_float('learning_rate', 0.5, 'gradient: Adam step on the logits.')
  flags.DEFINE_string('motif', None, 'implant: an IUPAC motif.')
  flags.DEFINE_string('motif_file', None, 'implant: a MEME or JASPAR matrix (consensus).')
  flags.DEFINE_bool('robustness', False, 'Also the mutational robustness of designs and '
                    'starts (the ISM of every design).')
  flags.DEFINE_integer('seed', 0, 'Seed of the random starts and the random methods.')
  flags.DEFINE_string('output_dir', None, 'Where the outputs go.')
  _flags.define(inference.InferenceOptions)
  flags.DEFINE_bool('progress', True, 'Progress bars (only on a terminal).')


def _index(name: Optional[str], targets) -> Optional[int]:
  if name is None:
    return None
  if name.isdigit() and int(name) < len(targets):
    return int(name)
  if name in targets:
    return targets.index(name)
  raise DesignFlagsError(f'no output {name!r}; the model has {", ".join(targets)}')


def _mutable(layout: inference.Layout) -> np.ndarray:
  if FLAGS.mutable == 'auto':
    return (rules.dream_mutable(layout.length) if layout.table is None
            else np.ones(layout.length, bool))
  if FLAGS.mutable == 'all':
    return np.ones(layout.length, bool)
  try:
    lo, hi = (int(v) for v in FLAGS.mutable.split(':'))
  except ValueError:
    raise DesignFlagsError(f'--mutable={FLAGS.mutable}: expected auto, all or FROM:TO')
  if not 1 <= lo <= hi <= layout.length:
    raise DesignFlagsError(f'--mutable={FLAGS.mutable} outside 1..{layout.length}')
  mutable = np.zeros(layout.length, bool)
  mutable[lo - 1:hi] = True
  return mutable


def _constraints(layout: inference.Layout) -> rules.Constraints:
  gc = None
  if FLAGS.gc_range:
    try:
      gc = tuple(float(v) for v in FLAGS.gc_range)
    except ValueError:
      raise DesignFlagsError(f'--gc_range={",".join(FLAGS.gc_range)}: expected LO,HI')
    if len(gc) != 2:
      raise DesignFlagsError('--gc_range takes two numbers, LO,HI')
  return rules.Constraints(_mutable(layout), max_edits=FLAGS.max_edits, gc_range=gc,
                           forbidden=tuple(FLAGS.forbidden),
                           max_homopolymer=FLAGS.max_homopolymer)


def _starts(layout: inference.Layout, constraints: rules.Constraints) -> np.ndarray:
  if bool(FLAGS.starts) == bool(FLAGS.random_starts):
    raise DesignFlagsError('give exactly one of --starts and --random_starts')
  if FLAGS.starts:
    _, sequences = variant_effects.read_sequences(FLAGS.starts)
    return layout.encode(sequences).codes
  template = (dream_data.encode_sequences([dream_data.FLANK_5 + 'N' * 80 +
                                           dream_data.FLANK_3], layout.length)[0]
              if layout.table is None else np.zeros(layout.length, np.uint8))
  return rules.random_starts(constraints, template, FLAGS.random_starts,
                             np.random.default_rng(FLAGS.seed))


def _motif() -> np.ndarray:
  if bool(FLAGS.motif) == bool(FLAGS.motif_file):
    raise DesignFlagsError('implant needs exactly one of --motif and --motif_file')
  return (design.motif_codes(FLAGS.motif) if FLAGS.motif else
          design.consensus(design.read_pwm(FLAGS.motif_file)))


def _run_method(method: str, designer: design.Designer, starts, bars) -> design.Result:
  bar = bars(FLAGS.budget * len(starts), method) if bars else None
  update = bar.update if bar else None
  seed, budget = FLAGS.seed, FLAGS.budget
  if method in ('greedy', 'beam'):
    width = 1 if method == 'greedy' else FLAGS.beam_width
    found = design.beam(designer, starts, width=width, budget=budget, progress=update)
  elif method == 'evolve':
    found = design.evolve(designer, starts, population=FLAGS.population, budget=budget,
                          seed=seed, progress=update)
  elif method == 'gradient':
    found = design_gradient.gradient(designer, starts, budget=budget,
                                     learning_rate=FLAGS.learning_rate, seed=seed,
                                     progress=update)
  else:
    found = design.implant(designer, starts, _motif(), progress=update)
  if bar is not None:
    bar.close()
  return found


def _check_flags() -> None:
  if not FLAGS.checkpoint or not FLAGS.output_dir:
    raise DesignFlagsError('--checkpoint and --output_dir are required')
  unknown = sorted(set(FLAGS.methods) - set(METHODS))
  if unknown or not FLAGS.methods:
    raise DesignFlagsError(f'--methods: unknown {unknown}; choose from {", ".join(METHODS)}')
  files.check_output(FLAGS.output_dir, directory=True, flag='--output_dir')


def run():
  _check_flags()
  designer_models = ensemble.load(FLAGS.checkpoint, _flags.parse(inference.InferenceOptions))
  layout, targets = designer_models.layout, designer_models.targets
  objective = design.Objective(FLAGS.objective, FLAGS.target_value,
                               _index(FLAGS.output, targets),
                               _index(FLAGS.minus_output, targets), FLAGS.spread_penalty)
  constraints = _constraints(layout)
  starts = _starts(layout, constraints)
  judge = ensemble.load(FLAGS.judge) if FLAGS.judge else None
  print(f'designer: {ensemble.describe(designer_models)}; {len(starts):,} starts, '
        f'{constraints.mutable.sum()} mutable positions'
        + (f'; judge: {ensemble.describe(judge)}' if judge else ''))
  bars = _runtime.progress_bars(FLAGS.progress, 'eval')

  def robust_of(codes):
    return robustness.robustness(designer_models, codes, constraints.mutable,
                                 output=objective.output).robust
  # The starts are judged (and their robustness computed) once, for every method.
  judged_starts = (objective.member_values(judge.predict_codes(starts).members)
                   if judge is not None else None)
  robust_starts = robust_of(starts) if FLAGS.robustness else None
  results, judged, robust = [], {}, {}
  for method in FLAGS.methods:
    designer = design.Designer(designer_models, objective, constraints)
    started = time.perf_counter()
    found = _run_method(method, designer, starts, bars)
    seconds = time.perf_counter() - started
    results.append(found)
    print(f'{found.method}: {len(starts):,} designs in {seconds:.1f} s '
          f'({designer.evaluations / seconds:,.0f} evaluations/s); objective '
          f'{np.mean(found.initial.score):.4f} -> '
          f'{np.mean(found.designs.score):.4f} (mean over designs)')
    if judge is not None:
      judged[found.method] = design_report.Judged(
          objective.member_values(judge.predict_codes(found.designs.codes).members),
          judged_starts)
    if FLAGS.robustness:
      robust[found.method] = {'design': robust_of(found.designs.codes),
                              'start': robust_starts}
  written = design_report.write(FLAGS.output_dir, results, constraints,
                                judged or None, robust or None)
  print('wrote ' + ', '.join(os.path.basename(p) for p in written) + f' in '
        f'{FLAGS.output_dir}')
  return results


main = _runtime.command(run, (DesignFlagsError, checkpoint_lib.CheckpointError,
                              ensemble.EnsembleError, rules.ConstraintError,
                              files.OutputPathError, ValueError))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  _runtime.run(main)
