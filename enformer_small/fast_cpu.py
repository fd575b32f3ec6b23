"""An opt-in for CPU speed: the step arranged for XLA:CPU, the same function rounded otherwise.

Two things XLA:CPU did slowly in the seed model (profiled on a 2-core CPU, BUILD_NOTES.md):
  * It fuses cheap elementwise producers into each consumer, recomputing them there. The
    gradient along the residual stream (a chain of adds and LayerNorm backward terms) was
    recomputed from the top of the transformer in the fusions feeding each block's weight
    gradients (up to 57 inputs each), and the threefry rounds behind each dropout mask ran
    again in the backward pass. `jax.lax.optimization_barrier` does not stop this on CPU
    (XLA:CPU expands barriers away before fusion); a while loop's result is a buffer that
    fusion cannot reach into, so `computed_once` routes a value through a loop whose body
    leaves it unchanged. Used by `enformer.Residual` and `dropout.dropout`.
  * The relative-position logits `einsum('bhik,hjk->bhij', q, r_k)` made it lay the queries
    out [H, K, B*T], a slow transpose (~8.6 ms a layer in the forward pass at batch 1,024);
    with the operands in the other order it does not (`relative_logits`).

Values are the same, but XLA rounds differently (fused multiply-adds and the dot's sums
fall elsewhere), so results are not bit-identical to the default: hence an option
(`model.make_model(fast_cpu=True)`, which traces the modules within `scope(True)`;
`--fast_cpu` of `experiments.train`, `predict`, `attribute` and `variant_effects`), and
the seed's recipe stays as it was, bit for bit.
"""

import contextlib
import contextvars
from typing import Iterator

import jax
import jax.numpy as jnp

_ENABLED = contextvars.ContextVar('fast_cpu', default=False)


def enabled() -> bool:
  """Whether modules traced now take the arrangement for XLA:CPU."""
  return _ENABLED.get()


@contextlib.contextmanager
def scope(enable: bool = True) -> Iterator[None]:
  """Within (at trace time): Residual and dropout use `computed_once`, and attention
  orders its relative-logit operands for XLA:CPU."""
  token = _ENABLED.set(enable)
  try:
    yield
  finally:
    _ENABLED.reset(token)


def computed_once(x: jnp.ndarray) -> jnp.ndarray:
  """`x`, as one buffer that XLA:CPU cannot fuse (and so recompute) into its consumers.

  On CPU only: elsewhere `x` itself (a GPU fetches a while loop's condition to the host,
  which slowed the step by a third on an H100).
  """
  return jax.lax.platform_dependent(x, cpu=_through_a_loop, default=lambda x: x)


def _through_a_loop(x: jnp.ndarray) -> jnp.ndarray:
  """`x`, out of a while loop.

  The loop runs its body only when the first and last elements of `x` differ, a
  condition XLA cannot fold; the body multiplies by that condition, which is then 1
  (for booleans, and-s with true), so the value is `x` whether it runs or not.
  """
  flat = x.reshape(-1)
  differ = flat[0] != flat[-1]

  def body(carry):
    value, condition = carry
    return value * condition.astype(value.dtype), jnp.zeros_like(condition)

  value, _ = jax.lax.while_loop(lambda carry: carry[1], body, (x, differ))
  return value


def relative_logits(q: jnp.ndarray, r_k: jnp.ndarray) -> jnp.ndarray:
  """`einsum('bhik,hjk->bhij', q [B, H, T, K], r_k [H, R, K])` -> [B, H, T, R].

  On CPU with the operands in the other order, which XLA:CPU computes without laying
  q out as [H, K, B*T] first; elsewhere as written.
  """
  return jax.lax.platform_dependent(
      q, r_k, cpu=lambda q, r_k: jnp.einsum('hjk,bhik->bhij', r_k, q),
      default=lambda q, r_k: jnp.einsum('bhik,hjk->bhij', q, r_k))


@jax.custom_vjp
def gradient_computed_once(x: jnp.ndarray) -> jnp.ndarray:
  """The identity, whose cotangent is `computed_once`."""
  return x


def _gradient_computed_once_fwd(x):
  return x, None


def _gradient_computed_once_bwd(_, g):
  return (computed_once(g),)


gradient_computed_once.defvjp(_gradient_computed_once_fwd, _gradient_computed_once_bwd)
