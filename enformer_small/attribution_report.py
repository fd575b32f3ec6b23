"""What the attribution command computes and draws: the methods, a summary, figures.

`compute` runs the chosen methods through one `inference.Predictor` (ISM on its
predictions, the gradient methods on its scorer: both average the checkpoint's windows
and strands); `summary_lines` and `draw_figures` give the TSV summary and the logo and
ISM heat-map PNGs of `experiments.attribute`.
"""

import logging
import os
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from enformer_small import attribution
from enformer_small.ensemble import Ensemble, Predictions

METHODS = ('ism', 'gradient_x_input', 'integrated_gradients')
BASES = 'ACGT'
log = logging.getLogger(__name__)


def compute(model, x: np.ndarray, methods: Sequence[str], *,
            ig_baseline: str = 'zeros', ig_steps: int = 32,
            progress: Optional[Callable[[int, str], object]] = None
            ) -> Dict[str, np.ndarray]:
  """{'predictions': [N, T], method: [N, S, 4, T]} of one-hot sequences x [N, S, 4].

  model: an `inference.Predictor`, or an `ensemble.Ensemble`, whose attributions are
    the means of its members' (their sd across members under '<name>_spread').
  progress: makes a bar (total rows, description) per method; None: none.
  """
  members = model.members if isinstance(model, Ensemble) else (model,)
  found = [_compute_one(m, x, methods, ig_baseline, ig_steps, progress) for m in members]
  out = {}
  for name in found[0]:
    stacked = Predictions(np.stack([f[name] for f in found]))
    out[name] = stacked.mean
    if len(found) > 1:
      out[f'{name}_spread'] = stacked.spread
  return out


def _compute_one(predictor, x, methods, ig_baseline, ig_steps, progress):
  codes = attribution.codes_of_one_hot(x)
  n, passes = x.shape[0], len(predictor.windows.passes)
  mutated = int(predictor.covered().sum())
  rows = {'ism': n * (3 * mutated + 1) * passes, 'gradient_x_input': n,
          'integrated_gradients': n}
  out = {'predictions': predictor.predict_codes(codes)}
  scorer = predictor.scorer()
  for method in methods:
    bar = progress(rows[method], method) if progress else None
    update = bar.update if bar else None
    started = time.perf_counter()
    kwargs = dict(batch_size=predictor.batch_size, progress=update)
    if method == 'ism':
      out[method] = attribution.ism(predictor, x, **kwargs)
    elif method == 'gradient_x_input':
      out[method] = attribution.gradient_x_input(scorer, x, **kwargs)
    else:
      out[method] = attribution.integrated_gradients(
          scorer, x, baseline=ig_baseline, steps=ig_steps, **kwargs)
    if bar is not None:
      bar.close()
    log.info('%s: %s sequences in %.1f s', method, f'{n:,}', time.perf_counter() - started)
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
                 found: Dict[str, np.ndarray], planted: Optional[np.ndarray] = None,
                 logo_method: Optional[str] = None) -> List[str]:
  """<name>_logo.png (with the planted motifs' PWMs under it when given: [L, 4]) and,
  with ISM, <name>_ism.png. Returns the paths written."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import logomaker
  import pandas as pd
  length = x.shape[1]
  positions = np.arange(start + 1, start + length + 1)
  matrix, what = logo_matrix(found, x, i, t, logo_method)
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
