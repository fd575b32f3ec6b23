"""Which bases drive a prediction: in-silico mutagenesis and gradient attributions.

Positions are those of the sequence's encoding (`inference.Layout`: the 110 bp DREAM
encoding, or a table's), whatever window or windows the model reads of it.

- `ism`: the effect alt - ref of every single-base substitution, [N, S, 4, T], zero at
  the reference base and at positions no window reads. Every mutant is predicted by the
  one inference path (`inference.Predictor`: the checkpoint's windows, shifts and
  strands, averaged as `predict` averages them), so an effect is exactly the difference
  of two predictions `predict` would make (to the rounding of other batch
  compositions).
- `gradient_x_input`: d output / d input times the input (the contribution score of
  DeepMind's Enformer usage notebook), [N, S, 4, T], non-zero at the reference base only.
- `integrated_gradients` (Sundararajan et al. 2017): the smoother variant; the path
  integral of the gradient from a baseline, times (x - baseline). Its sum over bases and
  positions equals f(x) - f(baseline) up to the Riemann error (completeness).

The gradient methods differentiate a `Scorer`: an eval-mode function of one-hot batches
`x [B, S, 4] -> [B, T]`. A checkpoint's (`Predictor.scorer`) averages the same windows
and strands as its predictions, on the device, so attributions are of the averaged model.
"""

import dataclasses
import functools
from typing import Any, Callable, Iterator, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from enformer_small import metrics

Progress = Optional[Callable[[int], None]]
PAD_CODE = 4


@dataclasses.dataclass(frozen=True)
class Scorer:
  """An eval-mode model to attribute.

  Attributes:
    apply: (variables, x float32 [B, L, 4]) -> float32 [B, T]; a pure function, hashable
      (jitted functions are cached per `apply`, so build it once per model kind).
    variables: the pytree `apply` reads (e.g. (params, state)).
    input_length: L.
    targets: T names of the outputs, e.g. ('yeast',).
  """
  apply: Callable[[Any, jax.Array], jax.Array]
  variables: Any
  input_length: int
  targets: Tuple[str, ...]


def reverse_complement(x: jax.Array) -> jax.Array:
  """[B, L, 4] one-hot (A, C, G, T) -> the other strand, read 5' to 3'."""
  return x[:, ::-1, ::-1]


# ---------------------------------------------------------------------------
# Inputs.


def codes_of_one_hot(x: Union[np.ndarray, jax.Array]) -> np.ndarray:
  """uint8 [N, L] codes (A=0 C=1 G=2 T=3, all-zero column 4) of one-hot x [N, L, 4].

  Raises:
    ValueError: x is not [N, L, 4] with one-hot or all-zero columns.
  """
  x = np.asarray(x)
  if x.ndim != 3 or x.shape[-1] != 4:
    raise ValueError(f'expected one-hot inputs [N, L, 4], got shape {x.shape}')
  ones = x == 1
  valid = (ones | (x == 0)).all(axis=-1) & (ones.sum(axis=-1) <= 1)
  if not valid.all():
    n, l = np.argwhere(~valid)[0]
    raise ValueError(f'inputs must be one-hot (or all-zero for N) columns; sequence '
                     f'{n}, position {l} is {x[n, l].tolist()}')
  return np.where(ones.any(axis=-1), ones.argmax(axis=-1), PAD_CODE).astype(np.uint8)


def _check_length(scorer: Scorer, length: int) -> None:
  if length != scorer.input_length:
    raise ValueError(f'inputs of {length} bp for a model of {scorer.input_length} bp')


def _batch_size_for(total: int, batch_size: int) -> int:
  """batch_size, or the power of two >= total (min 8) when fewer rows are asked for:
  a lone sequence's 255 mutants need not pay for a batch of 1,024."""
  if total >= batch_size:
    return batch_size
  return max(8, 1 << max(total - 1, 0).bit_length())


# ---------------------------------------------------------------------------
# In-silico mutagenesis.


def substitutions(codes: np.ndarray, positions: Optional[np.ndarray] = None
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every single-base substitution of codes [N, S] at `positions` (default all), as
  (seq, pos, base) int32 [M].

  Ordered by sequence, position, base; 3 per position, 4 at an N (code 4).
  """
  codes = np.asarray(codes)
  n, length = codes.shape
  positions = np.arange(length) if positions is None else np.asarray(positions)
  base = np.broadcast_to(np.arange(4), (n, len(positions), 4))
  keep = base != codes[:, positions, None]
  seq, index, alt = np.nonzero(keep)
  return (seq.astype(np.int32), positions[index].astype(np.int32),
          alt.astype(np.int32))


def mutants(codes: np.ndarray, seq: np.ndarray, pos: np.ndarray,
            base: np.ndarray) -> np.ndarray:
  """uint8 [M, S]: codes[seq[m]] with base[m] at pos[m]."""
  out = np.array(codes[seq], np.uint8)
  out[np.arange(len(seq)), pos] = base
  return out


def ism(predictor, x: np.ndarray, *, batch_size: Optional[int] = None,
        progress: Progress = None) -> np.ndarray:
  """In-silico mutagenesis: the predicted effect of every single-base substitution.

  Args:
    predictor: an `inference.Predictor` (eval mode, its windows averaged).
    x: one-hot [N, S, 4] of sequence encodings (S = predictor.layout.length); all-zero
      columns are N.
    batch_size: rows per forward pass (default the predictor's; it bounds memory).
    progress: called with the number of rows done after each batch of each window
      (N reference rows, then the mutants, once per window averaged).

  Returns:
    float32 [N, S, 4, T]: prediction(x with base b at position s) - prediction(x); 0 at
    the reference base and where no window reads.
  """
  codes = codes_of_one_hot(x)
  if codes.shape[1] != predictor.layout.length:
    raise ValueError(f'inputs of {codes.shape[1]} bp for a model reading '
                     f'{predictor.layout.length} bp sequences')
  n, length = codes.shape
  size = batch_size or predictor.batch_size
  reference = predictor.predict_codes(codes, progress=progress,
                                      batch_size=_batch_size_for(n, size))
  positions = np.flatnonzero(predictor.covered())
  effects = np.zeros((n, length, 4, len(predictor.targets)), np.float32)
  # Blocks of sequences whose mutants fill ~32 batches: the index lists stay small and
  # the padded last batch of each block costs little.
  block = max(1, 32 * size // max(1, 3 * len(positions)))
  for lo in range(0, n, block):
    seq, pos, base = substitutions(codes[lo:lo + block], positions)
    values = predictor.predict_codes(
        mutants(codes[lo:lo + block], seq, pos, base), progress=progress,
        batch_size=_batch_size_for(len(seq), size))
    effects[lo + seq, pos, base] = values - reference[lo + seq]
  return effects


# ---------------------------------------------------------------------------
# Gradients.


@functools.lru_cache(maxsize=None)
def _input_gradients(apply):
  """jit((variables, x [B, L, 4]) -> d out[:, t] / d x, [B, L, 4, T])."""
  def run(variables, x):
    out, pullback = jax.vjp(lambda inputs: apply(variables, inputs), x)
    # Eval mode: row b of the output depends on row b of x only, so one pullback of a
    # column of ones gives every sequence's gradient of output t at once.
    cotangents = jnp.eye(out.shape[1], dtype=out.dtype)[:, None, :] * jnp.ones_like(out)
    grads = jax.vmap(lambda c: pullback(c)[0])(cotangents)  # [T, B, L, 4]
    return jnp.moveaxis(grads, 0, -1)
  return jax.jit(run)


def _padded_batches(x: np.ndarray, size: int) -> Iterator[Tuple[int, np.ndarray]]:
  for i in range(0, x.shape[0], size):
    batch = x[i:i + size]
    rows = batch.shape[0]
    if rows < size:
      batch = np.concatenate([batch, np.zeros((size - rows,) + x.shape[1:], x.dtype)])
    yield rows, batch


def input_gradients(scorer: Scorer, x: np.ndarray, *, batch_size: int = 256,
                    progress: Progress = None) -> np.ndarray:
  """float32 [N, L, 4, T]: d prediction_t / d x at x (any real-valued x)."""
  x = np.asarray(x, np.float32)
  _check_length(scorer, x.shape[1])
  size = _batch_size_for(x.shape[0], batch_size)
  grads = _input_gradients(scorer.apply)
  out = np.zeros(x.shape + (len(scorer.targets),), np.float32)
  done = 0
  for rows, batch in _padded_batches(x, size):
    out[done:done + rows] = np.asarray(grads(scorer.variables, batch))[:rows]
    done += rows
    if progress:
      progress(rows)
  return out


def gradient_x_input(scorer: Scorer, x: np.ndarray, *, batch_size: int = 256,
                     progress: Progress = None) -> np.ndarray:
  """Gradient times input, [N, L, 4, T] (non-zero at the one-hot's bases only).

  Summed over the last-but-one axis (bases) it is the per-position contribution score
  of DeepMind's Enformer usage notebook.
  """
  codes_of_one_hot(x)
  x = np.asarray(x, np.float32)
  return input_gradients(scorer, x, batch_size=batch_size, progress=progress) * x[..., None]


def integrated_gradients(scorer: Scorer, x: np.ndarray, *,
                         baseline: Union[str, np.ndarray] = 'zeros', steps: int = 32,
                         batch_size: int = 256, progress: Progress = None) -> np.ndarray:
  """Integrated gradients, [N, L, 4, T]: (x - x0) * mean over alpha of grad f(x0 + alpha (x - x0)).

  Args:
    scorer: the model.
    x: one-hot [N, L, 4].
    baseline: 'zeros' (all N: attributions at the reference bases only, like gradient x
      input), 'uniform' (0.25 everywhere), or an array broadcastable to x.
    steps: points of the midpoint rule, alpha = (k + 1/2) / steps.
    batch_size: rows per forward pass (steps x sequences).
    progress: called with the number of sequences done.

  Sum over positions and bases -> f(x) - f(baseline) as steps grows (completeness).
  """
  codes_of_one_hot(x)
  x = np.asarray(x, np.float32)
  if isinstance(baseline, str):
    if baseline not in ('zeros', 'uniform'):
      raise ValueError(f"baseline must be 'zeros', 'uniform' or an array, got {baseline!r}")
    baseline = np.full_like(x, 0.0 if baseline == 'zeros' else 0.25)
  baseline = np.broadcast_to(np.asarray(baseline, np.float32), x.shape)
  if steps < 1:
    raise ValueError(f'steps must be >= 1, got {steps}')
  alphas = ((np.arange(steps) + 0.5) / steps).astype(np.float32)
  per_block = max(1, batch_size // steps)
  out = np.zeros(x.shape + (len(scorer.targets),), np.float32)
  for lo in range(0, x.shape[0], per_block):
    delta = x[lo:lo + per_block] - baseline[lo:lo + per_block]
    path = baseline[lo:lo + per_block][None] + alphas[:, None, None, None] * delta[None]
    grads = input_gradients(scorer, path.reshape((-1,) + x.shape[1:]),
                            batch_size=steps * per_block)
    grads = grads.reshape((steps,) + delta.shape + grads.shape[-1:]).mean(axis=0)
    out[lo:lo + per_block] = grads * delta[..., None]
    if progress:
      progress(delta.shape[0])
  return out


# ---------------------------------------------------------------------------
# Summaries.


def ism_importance(effects: np.ndarray) -> np.ndarray:
  """[N, L, T]: sum of |effect| over the substitutions at each position (ISM)."""
  return np.abs(effects).sum(axis=2)


def contribution(attributions: np.ndarray) -> np.ndarray:
  """[N, L, T]: attributions [N, L, 4, T] summed over bases (gradient methods)."""
  return attributions.sum(axis=2)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve of `scores` for binary `labels` (ties count one half).

  The Mann-Whitney statistic: the chance that a random positive outscores a random
  negative. NaN when either class is empty.
  """
  scores = np.asarray(scores, np.float64).ravel()
  labels = np.asarray(labels, bool).ravel()
  positives = int(labels.sum())
  negatives = labels.size - positives
  if positives == 0 or negatives == 0:
    return float('nan')
  ranks = metrics.average_ranks(scores)
  return float((ranks[labels].sum() - positives * (positives + 1) / 2)
               / (positives * negatives))
