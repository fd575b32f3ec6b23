r"""Predicted effects of edits (alt - ref) with any checkpoint of this project.

  python -m experiments.variant_effects --checkpoint runs/demo/checkpoint_best.npz \
      --edits edits.tsv --output_tsv effects.tsv
  python -m experiments.variant_effects --checkpoint seed.npz --pairs pairs.tsv \
      --output_tsv effects.tsv --reverse_complement_average

Inputs (plain or gzip, tab-separated; '#' lines and a header line naming the columns are
skipped; a bad line is an error naming the file and line):
  --pairs   `ref_sequence<TAB>alt_sequence` or `name<TAB>ref_sequence<TAB>alt_sequence`
  --edits   `sequence<TAB>position<TAB>ref<TAB>alt`, position 1-based in the sequence as
            written, ref checked against it, `-` for an empty ref (insertion before
            position) or alt (deletion)

Both sequences of a pair are predicted by the one inference path
(`enformer_small.inference`), as experiments.predict predicts them: the checkpoint's
encoding, plasmid context, window, shifts and strands (--eval_shifts,
--reverse_complement_average and --heads override them). Checkpoints of
experiments.train and converted ones (experiments.convert) both work.

Output (--output_tsv): the input's columns, `window_changed` (0 when the edit lies
outside every window the model reads, so its effect is 0 by construction), then per
output of the model `ref_prediction`, `alt_prediction`, `effect` (suffixed `_<target>`
when the model has several outputs).
"""

import time
from typing import List, Sequence

from absl import flags

from experiments import _flags
from experiments import _runtime

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import ensemble
from enformer_small import files
from enformer_small import inference
from enformer_small import variant_effects

FLAGS = flags.FLAGS


class VariantFlagsError(Exception):
  """Bad flags; the message says which."""


def define_flags() -> None:
  flags.DEFINE_string('checkpoint', None, 'Checkpoint(s) to predict with: a .npz, a run '
                      'directory, a comma list or a file listing them (an ensemble: '
                      'the mean effect and its spread across members).')
  flags.DEFINE_string('pairs', None, '[name<TAB>]ref_sequence<TAB>alt_sequence per line.')
  flags.DEFINE_string('edits', None, 'sequence<TAB>position<TAB>ref<TAB>alt per line.')
  flags.DEFINE_string('output_tsv', None, 'Where the effects go.')
  _flags.define(inference.InferenceOptions)
  flags.DEFINE_bool('progress', True, 'Progress bar (only on a terminal).')


def effect_columns(targets: Sequence[str], members: int = 1) -> List[str]:
  suffix = (lambda t: '') if len(targets) == 1 else (lambda t: f'_{t}')
  kinds = ('ref_prediction', 'alt_prediction', 'effect') + (
      ('effect_spread',) if members > 1 else ())
  return [f'{kind}{suffix(t)}' for t in targets for kind in kinds]


def tsv_lines(header: Sequence[str], rows: Sequence[Sequence[str]],
              effects: variant_effects.Effects) -> List[str]:
  """Header and one line per input row, with the effect columns appended (and the
  spread of the effect across checkpoints, when there are several)."""
  members = 1 if effects.member_effects is None else len(effects.member_effects)
  lines = ['\t'.join(list(header) + ['window_changed'] +
                     effect_columns(effects.targets, members))]
  effect, spread = effects.effect, effects.effect_spread
  for i, row in enumerate(rows):
    values = []
    for t in range(len(effects.targets)):
      values += [f'{effects.ref[i, t]:.8g}', f'{effects.alt[i, t]:.8g}',
                 f'{effect[i, t]:.8g}'] + ([f'{spread[i, t]:.8g}'] if members > 1 else [])
    lines.append('\t'.join(list(row) + [str(int(effects.window_changed[i]))] + values))
  return lines


def run(argv_unused=None) -> variant_effects.Effects:
  if not FLAGS.checkpoint or not FLAGS.output_tsv:
    raise VariantFlagsError('--checkpoint and --output_tsv are required')
  if bool(FLAGS.pairs) == bool(FLAGS.edits):
    raise VariantFlagsError('give exactly one of --pairs and --edits')
  files.check_output(FLAGS.output_tsv, inputs=(FLAGS.pairs, FLAGS.edits, FLAGS.checkpoint),
                     flag='--output_tsv')
  if FLAGS.pairs:
    names, refs, alts = variant_effects.read_pairs(FLAGS.pairs)
    header, rows = ['name', 'ref_sequence', 'alt_sequence'], list(zip(names, refs, alts))
  else:
    edits = variant_effects.read_edits(FLAGS.edits)
    refs, alts = [e.sequence for e in edits], [e.apply() for e in edits]
    header = list(variant_effects.EDIT_COLUMNS)
    rows = [(e.sequence, str(e.position), e.ref or '-', e.alt or '-') for e in edits]
  model = ensemble.load(FLAGS.checkpoint, _flags.parse(inference.InferenceOptions))
  print(f'{FLAGS.checkpoint}: {ensemble.describe(model)}; {len(rows):,} '
        f'{"pairs" if FLAGS.pairs else "edits"}')
  note = model.layout.fit_note(list(refs) + list(alts))
  if note:
    print(f'{FLAGS.pairs or FLAGS.edits} (ref and alt sequences): {note}')
  started = time.perf_counter()
  bars = _runtime.progress_bars(FLAGS.progress)
  bar = bars(2 * len(rows) * model.passes) if bars else None
  effects = variant_effects.pair_effects(model, refs, alts,
                                         progress=bar.update if bar else None)
  if bar is not None:
    bar.close()
  print(f'predicted in {time.perf_counter() - started:.1f} s; '
        f'{int((~effects.window_changed).sum()):,} edit(s) outside the model window')
  text = '\n'.join(tsv_lines(header, rows, effects)) + '\n'
  files.atomic_write(FLAGS.output_tsv, lambda f: f.write(text.encode('utf-8')))
  print(f'wrote {FLAGS.output_tsv}')
  return effects


main = _runtime.command(
    run, (VariantFlagsError, checkpoint_lib.CheckpointError, ensemble.EnsembleError,
          ValueError))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  _runtime.run(main)
