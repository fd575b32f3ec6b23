"""Which bases drive a prediction: in-silico mutagenesis and gradient attributions.

Every method works on a `Scorer`: an eval-mode function of one-hot batches
`x [B, L, 4] -> [B, T]` (T outputs: the chosen heads' outputs, flattened) with its
variables. In eval mode (BatchNorm moving averages, no dropout) a sequence's prediction
does not depend on the other sequences of its batch, which is what lets mutants of many
sequences share one batch.

- `ism`: the effect alt - ref of every single-base substitution, [N, L, 4, T], zero at
  the reference base. A batch of mutants leaves the host as the unmutated sequences'
  uint8 codes (a byte per base) and two index vectors (position, base); the device makes
  the substitutions and the one-hot. Batches have a fixed size, so one compilation
  serves any number of sequences.
- `gradient_x_input`: d output / d input times the input (the contribution score of
  DeepMind's Enformer usage notebook), [N, L, 4, T], non-zero at the reference base only.
- `integrated_gradients` (Sundararajan et al. 2017): the smoother variant; the path
  integral of the gradient from a baseline, times (x - baseline). Its sum over bases and
  positions equals f(x) - f(baseline) up to the Riemann error (completeness).

Reverse-complement averaging is a property of the scorer
(`reverse_complement_average=True`), so every method attributes the averaged model.
"""

import dataclasses
import functools
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from enformer_small import metrics
from enformer_small import model as model_lib
from enformer_small.config import EnformerConfig

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


@functools.lru_cache(maxsize=None)
def _enformer_apply(config: EnformerConfig, heads: Tuple[str, ...],
                    reverse_complement_average: bool, fast_cpu: bool):
  """One `apply` per (config, heads, averaging, fast_cpu), so jitted callers are
  compiled once."""
  model = model_lib.make_model(config, fast_cpu=fast_cpu)

  def forward(variables, x):
    params, state = variables
    outputs, _ = model.apply(params, state, None, x, is_training=False)
    # Predictions, as training evaluates them: a soft-bin head's expectation.
    return jnp.concatenate(
        [model_lib.head_predictions(config, outputs[h]).reshape(x.shape[0], -1)
         for h in heads], axis=1)

  def apply(variables, x):
    x = x.astype(jnp.float32)
    if not reverse_complement_average:
      return forward(variables, x)
    return 0.5 * (forward(variables, x) + forward(variables, reverse_complement(x)))
  return apply


def enformer_scorer(config: EnformerConfig, params, state,
                    heads: Optional[Sequence[str]] = None,
                    reverse_complement_average: bool = False,
                    fast_cpu: bool = False) -> Scorer:
  """A `Scorer` of an Enformer (any config) in eval mode.

  Args:
    config, params, state: the model, e.g. from `checkpoint.load_checkpoint`.
    heads: heads to attribute (default: all, in config order); their outputs are
      flattened and concatenated into the T outputs.
    reverse_complement_average: attribute (f(x) + f(rc(x))) / 2.
    fast_cpu: the model arranged for XLA:CPU (`fast_cpu.py`): the same function,
      rounded otherwise (predictions and attributions agree to ~1e-6, not bit for bit).
  """
  heads = tuple(heads) if heads else tuple(name for name, _ in config.heads)
  unknown = sorted(set(heads) - set(config.head_channels))
  if unknown:
    raise ValueError(f'unknown head(s) {unknown}; the model has '
                     f'{[name for name, _ in config.heads]}')
  apply = _enformer_apply(config, heads, bool(reverse_complement_average), bool(fast_cpu))
  variables = (params, state)
  dummy = jax.ShapeDtypeStruct((1, config.input_length, 4), jnp.float32)
  outputs = model_lib.make_model(config).apply
  shapes = jax.eval_shape(lambda v, x: {
      h: model_lib.head_predictions(config, o)
      for h, o in outputs(v[0], v[1], None, x, is_training=False)[0].items()},
                          variables, dummy)
  targets = []
  for head in heads:
    size = int(np.prod(shapes[head].shape[1:]))
    targets += [head] if size == 1 else [f'{head}/{i}' for i in range(size)]
  return Scorer(apply, variables, config.input_length, tuple(targets))


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


def _one_hot(codes: jax.Array) -> jax.Array:
  return (codes[..., None] == jnp.arange(4, dtype=codes.dtype)).astype(jnp.float32)


# ---------------------------------------------------------------------------
# Forward passes of (mutated) sequences, in fixed-size batches.


@functools.lru_cache(maxsize=None)
def _mutant_forward(apply):
  """jit((variables, rows uint8 [M, L], pos, base [M]) -> [M, T]).

  Output m is the prediction of rows[m] with base[m] at position pos[m] (pos -1:
  unmutated). The host sends codes (a byte per base); the substitution and the one-hot
  happen on the device. Shapes depend on M and L only, so one compilation serves any
  number of sequences.
  """
  def run(variables, rows, pos, base):
    at = jnp.arange(rows.shape[1])[None, :] == pos[:, None]
    rows = jnp.where(at, base[:, None].astype(rows.dtype), rows)
    return apply(variables, _one_hot(rows))
  return jax.jit(run)


def _batch_size_for(total: int, batch_size: int) -> int:
  """batch_size, or the power of two >= total (min 8) when fewer rows are asked for:
  a lone sequence's 255 mutants need not pay for a batch of 1,024."""
  if total >= batch_size:
    return batch_size
  return max(8, 1 << max(total - 1, 0).bit_length())


def _run_batches(scorer: Scorer, codes: np.ndarray,
                 batches: Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                 batch_size: int
                 ) -> Iterator[Tuple[Tuple[np.ndarray, ...], np.ndarray]]:
  """((seq, pos, base), outputs [rows, T]) per batch of (seq, pos, base) indices.

  A short batch is padded with copies of its first row to `batch_size` (one compiled
  shape) and its outputs trimmed.
  """
  forward = _mutant_forward(scorer.apply)
  for index in batches:
    rows = index[0].shape[0]
    pad = batch_size - rows
    seq, pos, base = (np.concatenate([a, np.repeat(a[:1], pad)]) if pad else a
                      for a in index)
    out = forward(scorer.variables, codes[seq], pos.astype(np.int32),
                  base.astype(np.int32))
    yield index, np.asarray(out)[:rows]


def predict_codes(scorer: Scorer, codes: np.ndarray, *, batch_size: int = 256,
                  progress: Progress = None) -> np.ndarray:
  """float32 [N, T]: eval-mode predictions of uint8 codes [N, L] (4 = N, a zero column)."""
  codes = np.asarray(codes, np.uint8)
  _check_length(scorer, codes.shape[1])
  n = codes.shape[0]
  size = _batch_size_for(n, batch_size)
  seqs = np.arange(n)
  batches = ((seqs[i:i + size], np.full(min(size, n - i), -1), np.zeros(min(size, n - i)))
             for i in range(0, n, size))
  out = np.zeros((n, len(scorer.targets)), np.float32)
  for (seq, _, _), values in _run_batches(scorer, codes, batches, size):
    out[seq] = values
    if progress:
      progress(seq.shape[0])
  return out


def predict(scorer: Scorer, x: np.ndarray, *, batch_size: int = 256,
            progress: Progress = None) -> np.ndarray:
  """float32 [N, T]: eval-mode predictions of one-hot x [N, L, 4]."""
  return predict_codes(scorer, codes_of_one_hot(x), batch_size=batch_size,
                       progress=progress)


# ---------------------------------------------------------------------------
# In-silico mutagenesis.


def substitutions(codes: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Every single-base substitution of codes [N, L], as (seq, pos, base) int32 [M].

  Ordered by sequence, position, base; 3 per position, 4 at an N (code 4), so
  M = 3 N L + the number of Ns.
  """
  codes = np.asarray(codes)
  n, length = codes.shape
  base = np.broadcast_to(np.arange(4), (n, length, 4))
  keep = base != codes[:, :, None]
  seq, pos, alt = np.nonzero(keep)
  return seq.astype(np.int32), pos.astype(np.int32), alt.astype(np.int32)


def _substitution_batches(codes: np.ndarray, batch_size: int, block: int = 4096
                          ) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """`substitutions(codes)` in batches of batch_size, listed `block` sequences at a
  time so that the index lists stay small however many sequences there are."""
  carry = None
  for lo in range(0, codes.shape[0], block):
    seq, pos, base = substitutions(codes[lo:lo + block])
    seq = seq + lo
    if carry is not None:
      seq, pos, base = (np.concatenate([c, a]) for c, a in zip(carry, (seq, pos, base)))
    full = seq.shape[0] // batch_size * batch_size
    for i in range(0, full, batch_size):
      yield seq[i:i + batch_size], pos[i:i + batch_size], base[i:i + batch_size]
    carry = (seq[full:], pos[full:], base[full:])
  if carry is not None and carry[0].size:
    yield carry


def ism(scorer: Scorer, x: np.ndarray, *, batch_size: int = 256,
        progress: Progress = None) -> np.ndarray:
  """In-silico mutagenesis: the predicted effect of every single-base substitution.

  Args:
    scorer: the model (eval mode).
    x: one-hot [N, L, 4] at the model's input length; all-zero columns are N.
    batch_size: mutants per forward pass (bounds memory: activations of one batch).
    progress: called with the number of forward rows done after each batch
      (N reference rows, then 3 N L + #N mutants).

  Returns:
    float32 [N, L, 4, T]: prediction(x with base b at position l) - prediction(x); 0 at
    the reference base.
  """
  codes = codes_of_one_hot(x)
  _check_length(scorer, codes.shape[1])
  n, length = codes.shape
  reference = predict_codes(scorer, codes, batch_size=batch_size, progress=progress)
  effects = np.zeros((n, length, 4, len(scorer.targets)), np.float32)
  total = 3 * n * length + int(np.count_nonzero(codes == PAD_CODE))
  size = _batch_size_for(total, batch_size)
  batches = _run_batches(scorer, codes, _substitution_batches(codes, size), size)
  for (seq, pos, base), values in batches:
    effects[seq, pos, base] = values - reference[seq]
    if progress:
      progress(seq.shape[0])
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
