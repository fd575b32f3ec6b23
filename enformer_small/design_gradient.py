"""Gradient design: a straight-through softmax relaxation of the sequence (Fast SeqProp).

Each design keeps logits theta [S, 4] over the bases of its mutable positions (the fixed
ones stay the start's). A step samples a one-hot sequence from softmax(theta), passes it
forward through every member's scorer (`Predictor.scorer`: the checkpoint's windows
averaged on the device) with the gradient of softmax(theta) in its place (the
straight-through estimator, Linder & Seelig 2021), and moves theta by Adam up the
objective (the ensemble's mean minus k times its spread, as `design.Objective`).

The relaxation knows no discrete constraint, so after every step each design's argmax
sequence is projected onto them (with `max_edits`, only the edits of the largest
first-order gain are kept: the score's input gradient at the new base minus at the
start's) and, if valid, evaluated by the
`Designer` through the one inference path: the design is the best valid sequence seen.
A step costs one evaluation for the gradient and one for the projected sequence.
"""

import functools
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from enformer_small import design as design_lib
from enformer_small.design import Designer, Objective, Result


@functools.lru_cache(maxsize=None)
def _score_fn(applies: Tuple[Callable, ...], objective: Objective):
  """jit((variables per member, x [B, S, 4]) -> score [B]): `Objective.score` in jax."""
  def score(variables, x):
    values = jnp.stack([apply(v, x) for apply, v in zip(applies, variables)])
    values = values[..., objective.output] - (
        0.0 if objective.minus_output is None else values[..., objective.minus_output])
    mean = values.mean(axis=0)
    spread = values.std(axis=0, ddof=1) if len(applies) > 1 else jnp.zeros_like(mean)
    centre = {'max': mean, 'min': -mean,
              'target': -jnp.abs(mean - objective.target_value)}[objective.direction]
    return centre - objective.spread_penalty * spread
  return score


@functools.lru_cache(maxsize=None)
def _step_fn(applies: Tuple[Callable, ...], objective: Objective, learning_rate: float):
  score = _score_fn(applies, objective)
  optimizer = optax.adam(learning_rate)

  def loss(theta, offset, key, variables, fixed, mutable):
    probs = jax.nn.softmax(theta, axis=-1)
    hard = jax.nn.one_hot(jax.random.categorical(key, theta), 4)
    relaxed = hard + probs - jax.lax.stop_gradient(probs)
    # `offset` is zero: its gradient is the input gradient at the sampled sequence.
    x = jnp.where(mutable[None, :, None], relaxed, fixed) + offset
    found = score(variables, x)
    return -jnp.sum(found), found

  @jax.jit
  def step(theta, opt_state, key, variables, fixed, mutable):
    (_, found), (grads, input_grads) = jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=True)(theta, jnp.zeros_like(fixed), key, variables,
                                             fixed, mutable)
    updates, opt_state = optimizer.update(grads, opt_state, theta)
    return optax.apply_updates(theta, updates), opt_state, -input_grads

  return optimizer, step


def project(theta: np.ndarray, gains: np.ndarray, starts: np.ndarray,
            mutable: np.ndarray, max_edits: Optional[int]) -> np.ndarray:
  """uint8 [N, S]: each design's argmax at its mutable positions, keeping at most
  `max_edits` changes: those of the largest first-order gain (the score's input
  gradient `gains` [N, S, 4] at the new base minus at the start's)."""
  best = theta.argmax(axis=-1).astype(np.uint8)
  codes = np.where(mutable[None], best, starts).astype(np.uint8)
  if max_edits is None:
    return codes
  def at(bases):
    return np.take_along_axis(gains, np.minimum(bases, 3)[..., None], -1)[..., 0]
  gain = at(codes) - at(starts)
  for d in range(codes.shape[0]):
    changed = np.flatnonzero(codes[d] != starts[d])
    if changed.size > max_edits:
      drop = changed[np.argsort(gain[d, changed], kind='stable')[:changed.size - max_edits]]
      codes[d, drop] = starts[d, drop]
  return codes


def gradient(designer: Designer, starts: np.ndarray, *, budget: int = 2400,
             learning_rate: float = 0.5, init_scale: float = 2.0, seed: int = 0,
             progress: Optional[Callable[[int], None]] = None) -> Result:
  """Straight-through gradient design; see the module docstring.

  Args:
    designer: the ensemble (every member's scorer), objective and constraints.
    starts: uint8 [N, S] valid starts.
    budget: evaluations per design (two a step).
    learning_rate: Adam's step on the logits.
    init_scale: the start's base gets this logit, the others 0.
    seed: the sampling (a run is repeatable).
  """
  starts = design_lib._check_starts(designer, starts)  # pylint: disable=protected-access
  constraints = designer.constraints
  members = designer.ensemble.members
  scorers = [m.scorer() for m in members]
  applies = tuple(s.apply for s in scorers)
  variables = tuple(s.variables for s in scorers)
  optimizer, step = _step_fn(applies, designer.objective, float(learning_rate))
  fixed = jnp.asarray(np.eye(5, 4, dtype=np.float32)[starts])
  mutable = jnp.asarray(constraints.mutable)
  theta = jnp.asarray(init_scale * np.eye(5, 4, dtype=np.float32)[starts])
  opt_state = optimizer.init(theta)
  key = jax.random.PRNGKey(seed)
  initial = designer.evaluate(starts)
  best = initial.take(np.arange(len(starts)))
  traces = [[(0, float(s))] for s in best.score]
  # The steps' projected sequences are scored together, a batch of the predictor's size
  # at a time: one step's few sequences alone would be padded to that size anyway
  # (`Predictor.predict_rows`), and the search's next step does not depend on them.
  per_batch = designer.batch_size or designer.ensemble.members[0].batch_size
  pending = []
  for spent in range(2, budget + 1, 2):
    key, sample = jax.random.split(key)
    theta, opt_state, gains = step(theta, opt_state, sample, variables, fixed, mutable)
    candidates = project(np.asarray(theta), np.asarray(gains), starts,
                         constraints.mutable, constraints.max_edits)
    pending.append((spent, candidates, constraints.valid(candidates, starts)))
    if len(pending) * len(starts) >= per_batch or spent + 2 > budget:
      _keep_better(designer, pending, best, traces)
      pending = []
    if progress:
      progress(2 * len(starts))
  return Result(starts, best, traces, 'gradient', initial)


def _keep_better(designer: Designer, pending, best, traces) -> None:
  """Scores the valid sequences of the pending steps [(spent, codes [N, S], valid [N])]
  at once, then takes them step by step into `best` (in place) and the traces."""
  scored = designer.evaluate(np.concatenate([codes[ok] for _, codes, ok in pending]))
  first = 0
  for spent, codes, ok in pending:
    rows = np.flatnonzero(ok)
    best.replace_where_better(rows, scored.take(np.arange(first, first + rows.size)))
    first += rows.size
    for d, trace in enumerate(traces):
      trace.append((spent, float(best.score[d])))
