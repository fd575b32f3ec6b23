"""An opt-in for CPU training speed: values XLA:CPU computes once instead of per consumer.

XLA fuses cheap elementwise producers into each of their consumers, recomputing them
there. In the train step that duplicated two kinds of work (profiled at batch 256 on a
2-core CPU, BUILD_NOTES.md):
  * the gradient along the residual stream, a chain of adds and LayerNorm backward terms
    that every residual's backward pass extends: the fusions feeding each block's weight
    gradients recomputed the chain from the top of the transformer, up to 57 inputs each;
  * the dropout masks: the threefry rounds behind each mask ran again in the backward
    pass and inside other fusions.
`jax.lax.optimization_barrier` does not stop this on CPU: XLA:CPU expands barriers away
before fusion. A while loop's result, though, is a buffer that fusion cannot reach into,
so `computed_once` routes a value through a loop whose body leaves it unchanged.

The function is the same, but XLA then rounds differently inside the fusions (fused
multiply-adds fall elsewhere), so training is not bit-identical to the default. That is
why it is an option (`scope(True)`, `experiments.train --compute_once`) and the seed's
recipe stays as it was, bit for bit.
"""

import contextlib
import contextvars
from typing import Iterator

import jax
import jax.numpy as jnp

_ENABLED = contextvars.ContextVar('computed_once', default=False)


def enabled() -> bool:
  """Whether modules traced now should compute their residual gradients and masks once."""
  return _ENABLED.get()


@contextlib.contextmanager
def scope(enable: bool = True) -> Iterator[None]:
  """Within (at trace time): Residual and dropout use `computed_once`."""
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


@jax.custom_vjp
def gradient_computed_once(x: jnp.ndarray) -> jnp.ndarray:
  """The identity, whose cotangent is `computed_once`."""
  return x


def _gradient_computed_once_fwd(x):
  return x, None


def _gradient_computed_once_bwd(_, g):
  return (computed_once(g),)


gradient_computed_once.defvjp(_gradient_computed_once_fwd, _gradient_computed_once_bwd)
