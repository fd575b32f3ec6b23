r"""Which bases drive a checkpoint's predictions: ISM, gradient x input, integrated gradients.

  python -m experiments.attribute --checkpoint runs/demo/checkpoint_best.npz \
      --input seqs.fa --output_dir attr/
  # synthetic rows with known planted motifs: also scores how well the attributions
  # find them (AUROC) and draws the planted motif under each logo:
  python -m experiments.attribute --checkpoint runs/demo/checkpoint_best.npz \
      --synthetic_rows 300 --synthetic_seed 1 --output_dir attr_synthetic/

Input (--input): FASTA, a DREAM file (`sequence<TAB>expression`) or one sequence per
line, plain or gzip. The last two are read by the project's one reader of that layout
(`dream_data.read_dream_table`, `variant_effects.read_sequences`) with its policies: a
bad line is an error naming the file and line, values may be negative and are not
used, and there is no header line. Sequences are encoded as in training (the 110 bp
DREAM encoding) and the model reads its window of it, [s, s + L) (s the checkpoint's
crop_start: 15 for the seed's 85 bp, 0 for 110 bp); positions below are 1-based in the
sequence as written.
Checkpoints of experiments.train and converted ones (experiments.convert) both work.

Writes to --output_dir:
  attributions.npz   names, sequences, window_start, codes [N, L] (4 = N), targets,
                     predictions [N, T], and per method [N, L, 4, T]: `ism` (alt - ref,
                     0 at the reference base), `gradient_x_input`, `integrated_gradients`
  summary.tsv        per sequence and target: the prediction, ISM's strongest loss and
                     gain (position+base, effect), and per gradient method the position
                     of the largest |contribution| and the sum of contributions
  figures/           for the first --num_figures sequences: <name>_logo.png (the
                     attribution per base as a logo, logomaker; in synthetic mode the
                     planted motifs' PWMs under it) and <name>_ism.png (ISM heat map)
  recovery.tsv       synthetic mode: AUROC of |attribution| at planted-motif positions
                     against the other random-region positions, overall, averaged per
                     sequence and per motif; row `generator_ism` scores the ISM of the
                     generator's own expression function (the ceiling of this labelling)
"""

import dataclasses
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from absl import flags
import numpy as np

from experiments import _runtime

from enformer_small import attribution
from enformer_small import checkpoint as checkpoint_lib
from enformer_small import dream_data
from enformer_small import synthetic
from enformer_small import variant_effects

FLAGS = flags.FLAGS
METHODS = ('ism', 'gradient_x_input', 'integrated_gradients')
BASES = 'ACGT'


class AttributeInputError(Exception):
  """Bad flags or input; the message says which."""


# ---------------------------------------------------------------------------
# Inputs.


@dataclasses.dataclass(frozen=True)
class Input:
  """Sequences to attribute; `synthetic_config` set when they come from the generator."""
  names: List[str]
  sequences: List[str]
  synthetic_config: Optional[synthetic.SyntheticConfig] = None


def synthetic_input(rows: int, seed: int) -> Input:
  """The first `rows` rows of the synthetic data set of `seed` (the demo trains on
  seed 0, so another seed gives sequences the model has not seen)."""
  config = synthetic.SyntheticConfig(num_rows=rows, seed=seed)
  data = synthetic.generate(config)
  return Input([f'synthetic{seed}_row{i}' for i in range(rows)], data.sequences(),
               config)


def window_of(ckpt) -> variant_effects.Window:
  return variant_effects.Window.of_checkpoint(ckpt)


def one_hot(window: variant_effects.Window, sequences: Sequence[str]) -> np.ndarray:
  return dream_data.one_hot(window.codes(sequences))


def planted_labels(data: Input, window: variant_effects.Window
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """(motif index per window position, -1 where none: int [N, L]; scored: bool [N, L]).

  Positives are the informative columns of intact planted instances; scored positions
  are the random region's bases inside the window (the constant flanks never vary in
  training, so they are left out of both classes).
  """
  flank = len(dream_data.FLANK_5)
  n = len(data.sequences)
  lengths = np.array([len(s) for s in data.sequences]) - flank - len(dream_data.FLANK_3)
  motif = np.full((n, flank + max(lengths.max(), window.start + window.length)), -1,
                  np.int64)
  motif[:, flank:] = synthetic.planted_sites(data.synthetic_config).motif_map(
      n, motif.shape[1] - flank, data.synthetic_config.model)
  position = np.arange(window.start, window.start + window.length)
  scored = (position[None] >= flank) & (position[None] < flank + lengths[:, None])
  return motif[:, window.start:window.start + window.length], scored


def generator_ism(data: Input, window: variant_effects.Window) -> np.ndarray:
  """float64 [N, L, 4]: ISM of the synthetic data's own noise-free expression function
  (what a perfect model would attribute); 0 outside the random region."""
  flank = len(dream_data.FLANK_5)
  mutants, where = [], []
  for n, sequence in enumerate(data.sequences):
    for l in range(window.length):
      p = window.start + l
      if not flank <= p < len(sequence) - len(dream_data.FLANK_3):
        continue
      for b, base in enumerate(BASES):
        if sequence[p].upper() != base:
          mutants.append(sequence[:p] + base + sequence[p + 1:])
          where.append((n, l, b))
  reference = synthetic.noise_free_expression(data.sequences, data.synthetic_config.model)
  values = synthetic.noise_free_expression(mutants, data.synthetic_config.model)
  out = np.zeros((len(data.sequences), window.length, 4))
  n, l, b = np.array(where).T
  out[n, l, b] = values - reference[n]
  return out


def recovery_aurocs(labels: np.ndarray, scored: np.ndarray,
                    importance: Dict[str, np.ndarray],
                    motif_names: Sequence[str] = ()) -> Dict[str, Dict[str, float]]:
  """{method: {'all': AUROC, 'per_sequence': mean AUROC, motif name: AUROC}}.

  `all` pools every scored position of every sequence; `per_sequence` averages the
  AUROC within each sequence that has both classes; a motif's AUROC is its positions
  against the non-motif positions.
  """
  out = {}
  for method, scores in importance.items():
    found = {'all': attribution.auroc(scores[scored], labels[scored] >= 0)}
    within = [attribution.auroc(scores[i][scored[i]], labels[i][scored[i]] >= 0)
              for i in range(labels.shape[0])]
    within = [a for a in within if not np.isnan(a)]
    found['per_sequence'] = float(np.mean(within)) if within else float('nan')
    for m, name in enumerate(motif_names):
      keep = scored & ((labels == m) | (labels < 0))
      found[name] = attribution.auroc(scores[keep], labels[keep] == m)
    out[method] = found
  return out


# ---------------------------------------------------------------------------
# Attributions.


def _progress_bar(total: int, description: str):
  if not (FLAGS.progress and sys.stderr.isatty()):
    return None, lambda n: None
  import tqdm
  bar = tqdm.tqdm(total=total, desc=description, unit='fwd', unit_scale=True,
                  dynamic_ncols=True, leave=False, file=sys.stderr)
  return bar, bar.update


def compute(scorer: attribution.Scorer, x: np.ndarray, methods: Sequence[str]
            ) -> Dict[str, np.ndarray]:
  """{'predictions': [N, T], method: [N, L, 4, T]} with progress bars and timings."""
  n, length = x.shape[:2]
  rows = {'ism': n * (3 * length + 1), 'gradient_x_input': n,
          'integrated_gradients': n}
  out = {'predictions': attribution.predict(scorer, x, batch_size=FLAGS.batch_size)}
  for method in methods:
    bar, update = _progress_bar(rows[method], method)
    started = time.perf_counter()
    kwargs = dict(batch_size=FLAGS.batch_size, progress=update)
    if method == 'ism':
      out[method] = attribution.ism(scorer, x, **kwargs)
    elif method == 'gradient_x_input':
      out[method] = attribution.gradient_x_input(scorer, x, **kwargs)
    else:
      out[method] = attribution.integrated_gradients(
          scorer, x, baseline=FLAGS.ig_baseline, steps=FLAGS.ig_steps, **kwargs)
    if bar is not None:
      bar.close()
    print(f'{method}: {n:,} sequences in {time.perf_counter() - started:.1f} s')
  return out


def summary_lines(names: Sequence[str], targets: Sequence[str], start: int,
                  found: Dict[str, np.ndarray]) -> List[str]:
  """The TSV summary (header first); positions 1-based in the sequence as written."""
  methods = [m for m in METHODS if m in found]
  header = ['name', 'target', 'prediction']
  if 'ism' in methods:
    header += ['ism_min_at', 'ism_min_effect', 'ism_max_at', 'ism_max_effect']
  for m in methods:
    if m != 'ism':
      header += [f'{m}_top_position', f'{m}_top_score', f'{m}_sum']
  lines = ['\t'.join(header)]
  for i, name in enumerate(names):
    for t, target in enumerate(targets):
      row = [name, target, f'{found["predictions"][i, t]:.6g}']
      if 'ism' in methods:
        effects = found['ism'][i, :, :, t]
        for pick in (np.argmin, np.argmax):
          l, b = np.unravel_index(pick(effects), effects.shape)
          row += [f'{start + l + 1}{BASES[b]}', f'{effects[l, b]:.6g}']
      for m in methods:
        if m == 'ism':
          continue
        score = found[m][i, :, :, t].sum(axis=-1)
        top = int(np.argmax(np.abs(score)))
        row += [str(start + top + 1), f'{score[top]:.6g}', f'{score.sum():.6g}']
      lines.append('\t'.join(row))
  return lines


# ---------------------------------------------------------------------------
# Figures.


def logo_matrix(found: Dict[str, np.ndarray], x: np.ndarray, i: int, t: int,
                method: Optional[str] = None) -> Tuple[np.ndarray, str]:
  """[L, 4] to draw as a logo, and what it is.

  A gradient method's attribution as it is (non-zero at the reference base); from ISM,
  the reference base's height is minus the mean effect of replacing it. `method` None:
  the first gradient method found, else ISM.
  """
  for name in ((method,) if method else ('gradient_x_input', 'integrated_gradients')):
    if name != 'ism' and name in found:
      return found[name][i, :, :, t], name.replace('_', ' ')
  effects = found['ism'][i, :, :, t]
  return -x[i] * effects.sum(axis=-1, keepdims=True) / 3, 'ISM: -mean substitution effect'


def draw_figures(directory: str, name: str, x: np.ndarray, i: int, t: int, start: int,
                 found: Dict[str, np.ndarray], planted: Optional[np.ndarray] = None
                 ) -> List[str]:
  """<name>_logo.png (with the planted motifs' PWMs under it when given: [L, 4]) and,
  with ISM, <name>_ism.png. Returns the paths written."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import logomaker
  import pandas as pd
  length = x.shape[1]
  positions = np.arange(start + 1, start + length + 1)
  matrix, what = logo_matrix(found, x, i, t, FLAGS.logo_method)
  panels = 2 if planted is not None else 1
  fig, axes = plt.subplots(panels, 1, figsize=(max(8, length / 7), 2.2 * panels),
                           squeeze=False, sharex=True)
  logomaker.Logo(pd.DataFrame(matrix, columns=list(BASES), index=positions),
                 ax=axes[0, 0], color_scheme='classic')
  axes[0, 0].set_title(f'{name}: {what}')
  axes[0, 0].axhline(0, color='grey', lw=0.5)
  if planted is not None:
    logomaker.Logo(pd.DataFrame(planted, columns=list(BASES), index=positions),
                   ax=axes[1, 0], color_scheme='classic')
    axes[1, 0].set_ylabel('bits')
    axes[1, 0].set_title('planted motifs (PWM information, as planted)')
  axes[-1, 0].set_xlabel('position in the sequence (1-based)')
  axes[-1, 0].set_xlim(positions[0] - 0.5, positions[-1] + 0.5)
  written = [os.path.join(directory, f'{name}_logo.png')]
  fig.tight_layout()
  fig.savefig(written[0], dpi=110)
  plt.close(fig)
  if 'ism' in found:
    written.append(_draw_ism(directory, name, found['ism'][i, :, :, t], x[i], positions))
  return written


def _draw_ism(directory: str, name: str, effects: np.ndarray, x: np.ndarray,
              positions: np.ndarray) -> str:
  import matplotlib.pyplot as plt
  limit = float(np.abs(effects).max()) or 1.0
  fig, ax = plt.subplots(figsize=(max(8, len(positions) / 7), 2.0))
  image = ax.imshow(effects.T, aspect='auto', cmap='RdBu_r', vmin=-limit, vmax=limit,
                    extent=(positions[0] - 0.5, positions[-1] + 0.5, 3.5, -0.5))
  l, b = np.nonzero(x)
  ax.scatter(positions[l], b, s=4, c='black', marker='o')
  ax.set_yticks(range(4), list(BASES))
  ax.set_title(f'{name}: ISM, predicted alt - ref (dots: reference base)')
  fig.colorbar(image, ax=ax, pad=0.01)
  path = os.path.join(directory, f'{name}_ism.png')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def planted_logo(data: Input, window: variant_effects.Window, row: int) -> np.ndarray:
  """[L, 4] information content (bits) of each intact planted PWM at its place."""
  sites = synthetic.planted_sites(data.synthetic_config, row, row + 1)
  out = np.zeros((window.length, 4))
  for i in np.flatnonzero(sites.intact):
    motif = data.synthetic_config.model.motifs[sites.motif[i]]
    probs = synthetic.pwm(motif)
    if sites.reverse[i]:
      probs = synthetic.reverse_complement_pwm(probs)
    bits = probs * (2 + (probs * np.log2(probs)).sum(axis=1, keepdims=True))
    at = len(dream_data.FLANK_5) + sites.start[i] + np.arange(motif.width) - window.start
    inside = (at >= 0) & (at < window.length)
    out[at[inside]] = bits[inside]
  return out


# ---------------------------------------------------------------------------
# Command line.


def define_flags() -> None:
  flags.DEFINE_string('checkpoint', None, 'Checkpoint (.npz) to attribute.')
  flags.DEFINE_string('input', None, 'FASTA, DREAM file or one sequence per line.')
  flags.DEFINE_integer('synthetic_rows', 0,
                       'Instead of --input: this many synthetic rows (planted motifs '
                       'known: AUROC of recovery and the motifs in the figures).')
  flags.DEFINE_integer('synthetic_seed', 1, 'Seed of the synthetic rows (the demo '
                       'trains on seed 0).')
  flags.DEFINE_string('output_dir', None, 'Where the outputs go.')
  flags.DEFINE_list('methods', ['ism', 'gradient_x_input'], f'Any of {METHODS}.')
  flags.DEFINE_list('heads', None, 'Heads to attribute (default: all).')
  flags.DEFINE_bool('reverse_complement_average', False,
                    'Attribute the mean of the predictions of both strands.')
  flags.DEFINE_integer('batch_size', 256, 'Rows (sequences or mutants) per forward pass.')
  flags.DEFINE_bool('fast_cpu', False,
                    "CPU speed: the model's passes (forward, and backward for the "
                    'gradient methods) arranged for XLA:CPU (enformer_small/fast_cpu.py); '
                    'the same function, rounded otherwise, so not bit-identical to the '
                    'default.')
  flags.DEFINE_integer('ig_steps', 32, 'Integrated gradients: points on the path.')
  flags.DEFINE_enum('ig_baseline', 'zeros', ['zeros', 'uniform'],
                    'Integrated gradients: all-N (zeros) or 0.25 per base (uniform).')
  flags.DEFINE_integer('num_figures', 5, 'Figures for the first N sequences.')
  flags.DEFINE_list('figure_rows', None, 'Figures for these rows (0-based) instead.')
  flags.DEFINE_enum('logo_method', None, list(METHODS),
                    'What the logo shows (default: the first gradient method computed, '
                    'else ISM).')
  flags.DEFINE_integer('figure_target', 0, 'Output (target index) the figures show.')
  flags.DEFINE_bool('progress', True, 'Progress bars (only on a terminal).')


def _read_input() -> Input:
  if bool(FLAGS.input) == bool(FLAGS.synthetic_rows):
    raise AttributeInputError('give exactly one of --input and --synthetic_rows')
  if FLAGS.synthetic_rows:
    return synthetic_input(FLAGS.synthetic_rows, FLAGS.synthetic_seed)
  names, sequences = variant_effects.read_sequences(FLAGS.input)
  return Input(names, sequences)


def _check_flags() -> None:
  if not FLAGS.checkpoint or not FLAGS.output_dir:
    raise AttributeInputError('--checkpoint and --output_dir are required')
  unknown = sorted(set(FLAGS.methods) - set(METHODS))
  if unknown or not FLAGS.methods:
    raise AttributeInputError(f'--methods: unknown {unknown}; choose from {METHODS}')


def _write_recovery(data: Input, window, found, path: str) -> None:
  labels, scored = planted_labels(data, window)
  importance = {m: (attribution.ism_importance(found[m]) if m == 'ism' else
                    np.abs(attribution.contribution(found[m])))[..., FLAGS.figure_target]
                for m in FLAGS.methods}
  # The ceiling of this labelling: background sites and the G+C term make non-motif
  # positions matter too, so even the generator's own function scores below 1.
  importance['generator_ism'] = np.abs(generator_ism(data, window)).sum(axis=-1)
  names = [m.name for m in data.synthetic_config.model.motifs]
  table = recovery_aurocs(labels, scored, importance, names)
  columns = ['all', 'per_sequence'] + names
  lines = ['method\t' + '\t'.join(columns)]
  lines += [m + '\t' + '\t'.join(f'{table[m][c]:.4f}' for c in columns) for m in table]
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')
  print(f'motif recovery (AUROC of |attribution|, planted motif vs other positions; '
        f'{int((labels[scored] >= 0).sum()):,} motif and '
        f'{int((labels[scored] < 0).sum()):,} other positions):')
  print('\n'.join(lines))


def run(argv_unused=None) -> Dict[str, np.ndarray]:
  _check_flags()
  data = _read_input()
  ckpt = checkpoint_lib.load_checkpoint(FLAGS.checkpoint)
  window = window_of(ckpt)
  scorer = attribution.enformer_scorer(ckpt.model_config, ckpt.params, ckpt.state,
                                       heads=FLAGS.heads,
                                       reverse_complement_average=FLAGS.reverse_complement_average,
                                       fast_cpu=FLAGS.fast_cpu)
  x = one_hot(window, data.sequences)
  print(f'{FLAGS.checkpoint}: {window.length} bp model (window [{window.start}:'
        f'{window.start + window.length}] of 110); {len(data.sequences):,} sequences; '
        f'targets {", ".join(scorer.targets)}')
  found = compute(scorer, x, FLAGS.methods)
  os.makedirs(os.path.join(FLAGS.output_dir, 'figures'), exist_ok=True)
  arrays = {k: v for k, v in found.items()}
  np.savez(os.path.join(FLAGS.output_dir, 'attributions.npz'), names=np.array(data.names),
           sequences=np.array(data.sequences), window_start=window.start,
           codes=window.codes(data.sequences), targets=np.array(scorer.targets), **arrays)
  with open(os.path.join(FLAGS.output_dir, 'summary.tsv'), 'w') as f:
    f.write('\n'.join(summary_lines(data.names, scorer.targets, window.start, found))
            + '\n')
  rows = ([int(r) for r in FLAGS.figure_rows] if FLAGS.figure_rows else
          range(min(FLAGS.num_figures, len(data.sequences))))
  for i in rows:
    planted = planted_logo(data, window, i) if data.synthetic_config else None
    draw_figures(os.path.join(FLAGS.output_dir, 'figures'), data.names[i], x, i,
                 FLAGS.figure_target, window.start, found, planted)
  if data.synthetic_config:
    _write_recovery(data, window, found, os.path.join(FLAGS.output_dir, 'recovery.tsv'))
  print(f'wrote {FLAGS.output_dir}/attributions.npz, summary.tsv and '
        f'{len(rows)} sequence(s) of figures')
  return found


main = _runtime.command(
    run, (AttributeInputError, checkpoint_lib.CheckpointError, ValueError))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  _runtime.run(main)
