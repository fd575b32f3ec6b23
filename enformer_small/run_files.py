"""The files a run writes beside its checkpoints (process 0): metrics, plot, config record.

  metrics.jsonl       one JSON object per epoch: train and held-out loss, MSE, MAE,
                      Pearson, Spearman, learning rate, seq/s, seconds
  pearson.png         train and held-out Pearson per epoch (the seed's Figure 2)
  train_config.json   the settings of the run, with what they resolved to (the file
                      actually read, the window, the model, steps per epoch)
"""

import json
import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import jax

from enformer_small import files
from enformer_small import model as model_lib
from enformer_small import recipe as recipe_lib
from enformer_small.train_config import TrainConfig

METRICS_FILE = 'metrics.jsonl'
PLOT_FILE = 'pearson.png'
CONFIG_FILE = 'train_config.json'


def best_of(history: Sequence[Dict[str, Any]]) -> Tuple[int, float]:
  """(epoch, held-out Pearson) of the best epoch so far; (0, -inf) before any."""
  best_epoch, best = 0, -math.inf
  for record in history:
    value = record['holdout']['pearson']
    if value is not None and math.isfinite(value) and value > best:
      best_epoch, best = record['epoch'], value
  return best_epoch, best


def write_metrics_file(run_dir: str, history: Sequence[Dict[str, Any]]) -> str:
  path = os.path.join(run_dir, METRICS_FILE)
  text = ''.join(json.dumps(record) + '\n' for record in history)
  files.atomic_write(path, lambda f: f.write(text.encode('utf-8')))
  return path


def plot_history(run_dir: str, history: Sequence[Dict[str, Any]],
                 noise_ceiling: Optional[float] = None, title: str = '') -> str:
  """Train and held-out Pearson per epoch, as the seed's Figure 2 (PNG)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import matplotlib.ticker
  epochs = [r['epoch'] for r in history]
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  ax.plot(epochs, [r['train']['pearson'] for r in history], 'o-', ms=3,
          label='train (training mode, during the epoch)')
  ax.plot(epochs, [r['holdout']['pearson'] for r in history], 's-', ms=3,
          label='held-out')
  best_epoch, best = best_of(history)
  if best_epoch:
    ax.axvline(best_epoch, color='grey', ls=':', lw=1,
               label=f'best epoch {best_epoch} (r = {best:.3f})')
  if noise_ceiling is not None:
    ax.axhline(noise_ceiling, color='k', ls='--', lw=1,
               label=f'noise ceiling {noise_ceiling:.3f}')
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel('epoch')
  ax.set_ylabel('Pearson r')
  ax.set_title(title or 'Pearson r per epoch')
  ax.grid(alpha=0.3)
  ax.legend(loc='lower right', fontsize=8)
  fig.tight_layout()
  path = os.path.join(run_dir, PLOT_FILE)
  files.atomic_write(path, lambda f: fig.savefig(f, format='png'))
  plt.close(fig)
  return path


def describe_model(config: TrainConfig, model_config, num_params: int) -> str:
  head = (f', soft-bin head ({recipe_lib.NUM_SOFT_BINS} bins)'
          if model_config.head_kind == 'soft_bins' else '')
  outputs = model_lib.num_outputs(model_config)
  if outputs > 1:
    head += f', {outputs} outputs ({", ".join(config.target_columns)})'
  if config.freeze:
    head += f', frozen: {", ".join(config.freeze)}'
  return (f'seed Enformer at {config.input_length} bp'
          f'{"" if config.dropout else " without dropout"}{head}, {num_params:,} '
          'parameters')


def write_config_file(config: TrainConfig, run_data, plan, num_params: int) -> str:
  """train_config.json: the flags, with what was actually used in their place."""
  used = config.to_json_dict()
  used.update(train_file=run_data.path, crop_start=config.window_start)
  used['resolved'] = dict(
      data=run_data.data_id, train_rows=len(run_data.train_rows),
      holdout_rows=len(run_data.holdout_rows),
      model=describe_model(config, plan.model_config, num_params),
      parameters=num_params, row_length=config.row_length,
      window=[config.window_start, config.window_start + config.input_length],
      steps_per_epoch=plan.steps_per_epoch, total_steps=plan.total_steps,
      devices=jax.device_count(), processes=jax.process_count())
  path = os.path.join(config.run_dir, CONFIG_FILE)
  files.atomic_write(path, lambda f: f.write(json.dumps(used, indent=1).encode()))
  return path


def checkpoint_extra(config: TrainConfig, data_id: Dict[str, Any],
                     best_epoch: int) -> Dict[str, Any]:
  """What a checkpoint records besides the arrays: the flags, window, recipe, data."""
  return dict(train_config=config.to_json_dict(), crop_start=config.window_start,
              plasmid_context=config.plasmid_context,
              recipe=recipe_lib.fields_as_dict(config.recipe), data=data_id,
              best_epoch=best_epoch)


def epoch_line(record: Dict[str, Any], num_epochs: int, is_best: bool) -> str:
  """The one line logged per epoch."""
  tr, ho = record['train'], record['holdout']
  def loss(m):
    return f' loss {m["loss"]:.4f}' if 'loss' in m else ''
  per_target = ''.join(f' {name} {m["pearson"]:.4f}'
                       for name, m in ho.get('per_target', {}).items())
  return (f'epoch {record["epoch"]}/{num_epochs}: train{loss(tr)} r '
          f'{tr["pearson"]:.4f} | held-out{loss(ho)} mse {ho["mse"]:.3f} '
          f'mae {ho["mae"]:.3f} r {ho["pearson"]:.4f} rho {ho["spearman"]:.4f}'
          + (f' (r per target:{per_target})' if per_target else '') +
          f' | {record["train_seq_per_s"]:.0f} seq/s, {record["epoch_seconds"]:.0f} s'
          + (' [best]' if is_best else ''))
