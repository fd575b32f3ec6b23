"""Dropout drawing 16 random bits per element instead of 32.

Random bits dominated the CPU train step after the convolutions: the seed model applies
dropout to ~15 M activations per 1,024 sequences, and threefry produces 32 bits a call.
Sixteen bits per element halve that work and keep the drop probability within 2^-17 of
the requested rate (0.4 -> 26,214 / 65,536 = 0.399994).
"""

import jax
import jax.numpy as jnp


def dropout(rng: jax.Array, rate: float, x: jnp.ndarray) -> jnp.ndarray:
  """Zeroes each element with probability `rate` and scales the rest by 1/(1-rate)."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'dropout rate must be in [0, 1), got {rate}')
  if rate == 0.0:
    return x
  threshold = round(rate * 2**16)
  bits = jax.random.bits(rng, x.shape, dtype=jnp.uint16)
  keep = bits >= jnp.uint16(threshold)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)
