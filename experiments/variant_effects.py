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

Sequences are encoded as in training (110 bp DREAM encoding) and the model reads its
window (the checkpoint's crop_start and input length). Checkpoints of experiments.train
and converted ones (experiments.convert) both work.

Output (--output_tsv): the input's columns, `window_changed` (0 when the edit lies
outside the model's window, so its effect is 0 by construction), then per output of the
model `ref_prediction`, `alt_prediction`, `effect` (suffixed `_<target>` when the
chosen heads give several outputs).
"""

import sys
import time
from typing import List, Sequence

from absl import flags

from experiments import _runtime

from enformer_small import attribution
from enformer_small import checkpoint as checkpoint_lib
from enformer_small import files
from enformer_small import variant_effects

FLAGS = flags.FLAGS


class VariantFlagsError(Exception):
  """Bad flags; the message says which."""


def define_flags() -> None:
  flags.DEFINE_string('checkpoint', None, 'Checkpoint (.npz) to predict with.')
  flags.DEFINE_string('pairs', None, '[name<TAB>]ref_sequence<TAB>alt_sequence per line.')
  flags.DEFINE_string('edits', None, 'sequence<TAB>position<TAB>ref<TAB>alt per line.')
  flags.DEFINE_string('output_tsv', None, 'Where the effects go.')
  flags.DEFINE_list('heads', None, 'Heads to predict (default: all).')
  flags.DEFINE_bool('reverse_complement_average', False,
                    'Average each prediction with that of the reverse complement.')
  flags.DEFINE_integer('batch_size', 256, 'Sequences per forward pass.')
  flags.DEFINE_bool('fast_cpu', False,
                    'CPU speed: the forward pass arranged for XLA:CPU (enformer_small/'
                    'fast_cpu.py); the same function, rounded otherwise, so not '
                    'bit-identical to the default.')
  flags.DEFINE_bool('progress', True, 'Progress bar (only on a terminal).')


def effect_columns(targets: Sequence[str]) -> List[str]:
  suffix = (lambda t: '') if len(targets) == 1 else (lambda t: f'_{t}')
  return [f'{kind}{suffix(t)}' for t in targets
          for kind in ('ref_prediction', 'alt_prediction', 'effect')]


def tsv_lines(header: Sequence[str], rows: Sequence[Sequence[str]],
              effects: variant_effects.Effects) -> List[str]:
  """Header and one line per input row, with the effect columns appended."""
  lines = ['\t'.join(list(header) + ['window_changed'] + effect_columns(effects.targets))]
  effect = effects.effect
  for i, row in enumerate(rows):
    values = []
    for t in range(len(effects.targets)):
      values += [f'{effects.ref[i, t]:.8g}', f'{effects.alt[i, t]:.8g}',
                 f'{effect[i, t]:.8g}']
    lines.append('\t'.join(list(row) + [str(int(effects.window_changed[i]))] + values))
  return lines


def _progress():
  if not (FLAGS.progress and sys.stderr.isatty()):
    return None, None
  import tqdm
  bar = tqdm.tqdm(unit='seq', unit_scale=True, dynamic_ncols=True,
                  leave=False, file=sys.stderr)
  return bar, bar.update


def run(argv_unused=None) -> variant_effects.Effects:
  if not FLAGS.checkpoint or not FLAGS.output_tsv:
    raise VariantFlagsError('--checkpoint and --output_tsv are required')
  if bool(FLAGS.pairs) == bool(FLAGS.edits):
    raise VariantFlagsError('give exactly one of --pairs and --edits')
  if FLAGS.pairs:
    names, refs, alts = variant_effects.read_pairs(FLAGS.pairs)
    header, rows = ['name', 'ref_sequence', 'alt_sequence'], list(zip(names, refs, alts))
  else:
    edits = variant_effects.read_edits(FLAGS.edits)
    refs, alts = [e.sequence for e in edits], [e.apply() for e in edits]
    header = list(variant_effects.EDIT_COLUMNS)
    rows = [(e.sequence, str(e.position), e.ref or '-', e.alt or '-') for e in edits]
  ckpt = checkpoint_lib.load_checkpoint(FLAGS.checkpoint)
  window = variant_effects.Window.of_checkpoint(ckpt)
  scorer = attribution.enformer_scorer(
      ckpt.model_config, ckpt.params, ckpt.state, heads=FLAGS.heads,
      reverse_complement_average=FLAGS.reverse_complement_average, fast_cpu=FLAGS.fast_cpu)
  print(f'{FLAGS.checkpoint}: {window.length} bp model (window [{window.start}:'
        f'{window.start + window.length}] of 110); {len(rows):,} '
        f'{"pairs" if FLAGS.pairs else "edits"}')
  started = time.perf_counter()
  bar, update = _progress()
  effects = variant_effects.pair_effects(scorer, refs, alts, window,
                                         batch_size=FLAGS.batch_size, progress=update)
  if bar is not None:
    bar.close()
  print(f'predicted in {time.perf_counter() - started:.1f} s; '
        f'{int((~effects.window_changed).sum()):,} edit(s) outside the model window')
  text = '\n'.join(tsv_lines(header, rows, effects)) + '\n'
  files.atomic_write(FLAGS.output_tsv, lambda f: f.write(text.encode('utf-8')))
  print(f'wrote {FLAGS.output_tsv}')
  return effects


main = _runtime.command(
    run, (VariantFlagsError, checkpoint_lib.CheckpointError, ValueError))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  _runtime.run(main)
