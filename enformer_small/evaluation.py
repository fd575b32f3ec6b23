"""Held-out evaluation of a run and the metrics it records per epoch.

Held-out predictions go through the one inference path (`inference.predict_rows`):
eval mode, the recipe's windows (shift 0, or the mean over --eval_shifts and both
strands with --eval_reverse_complement), exactly as `experiments.predict` predicts with
the checkpoint afterwards.

Train correlations are computed from the predictions the train steps make anyway
(training mode: dropout on, BatchNorm on batch statistics, parameters moving during the
epoch), as Keras reports training metrics; they cost nothing extra but sit below what
the final parameters would score in eval mode.
"""

import time
from typing import Any, Dict, Tuple

import numpy as np

from enformer_small import inference
from enformer_small import metrics as metrics_lib
from enformer_small import training
from enformer_small.train_config import TrainConfig


def poisson_loss_np(pred: np.ndarray, target: np.ndarray) -> float:
  """training.poisson_loss in numpy (float64): mean(pred - y log(pred + 1e-7))."""
  pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
  return float(np.mean(pred - target * np.log(pred + training.POISSON_EPSILON)))


def summarise(pred: np.ndarray, target: np.ndarray,
              loss: str = 'poisson') -> Dict[str, float]:
  """loss, mse, mae, pearson, spearman and n of predictions vs targets.

  loss: the recipe's loss, of the predictions: Poisson or MSE. The soft-bin loss needs
  the bins' logits, which are not kept: no 'loss' then.
  """
  out = metrics_lib.regression_metrics(pred, target)
  if loss == 'poisson':
    out = dict(loss=poisson_loss_np(pred, target), **out)
  elif loss == 'mse':
    out = dict(loss=out['mse'], **out)
  out['n'] = int(pred.shape[0])
  return out


def summarise_targets(pred: np.ndarray, target: np.ndarray,
                      config: TrainConfig) -> Dict[str, Any]:
  """`summarise` of one target; of several, the mean over targets of each metric (the
  best epoch is the best mean Pearson) and each target's own under 'per_target'."""
  return metrics_lib.by_target(pred, target, config.target_columns,
                               lambda p, t: summarise(p, t, config.loss))


def per_row(x: Any, config: TrainConfig) -> np.ndarray:
  """Device values [D, B(, T)] -> [D * B(, T)]: one row per example, T targets kept."""
  x = np.asarray(x)
  return x.reshape((-1,) + (x.shape[-1:] if config.num_targets > 1 else ()))


def evaluate(eval_step, params, state, run_data, config: TrainConfig,
             batch_size: int) -> Tuple[np.ndarray, np.ndarray, float]:
  """Held-out predictions, their targets ([n], or [n, T] for several targets) and the
  seconds it took; params and state replicated."""
  started = time.perf_counter()
  predictions = inference.predict_rows(
      lambda inputs: eval_step(params, state, inputs), run_data.rows.codes,
      config.eval_windows, batch_size=batch_size, indices=run_data.holdout_rows)
  targets = np.asarray(run_data.rows.expression, np.float32)[run_data.holdout_rows]
  if config.num_targets == 1:
    predictions, targets = predictions[:, 0], targets.reshape(-1)
  return predictions, targets, time.perf_counter() - started
