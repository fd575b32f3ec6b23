"""Dropout drawing 16 random bits per element instead of 32, from an unrolled threefry.

Random bits dominated the CPU train step after the convolutions: the seed model applies
dropout to ~15 M activations per 1,024 sequences, and threefry produces 32 bits a call.
Sixteen bits per element halve that work and keep the drop probability within 2^-17 of
the requested rate (0.4 -> 26,214 / 65,536 = 0.399994).

On CPU, jax lowers its threefry primitive as a rolled loop (5 trips of a `while`), which
XLA cannot fuse with the mask that consumes the bits: each mask's bits were written out
and read back, ~7% of the CPU train step at batch 256. `threefry_bits16` computes the
same bits as `jax.random.bits(key, shape, jnp.uint16)` (jax's partitionable threefry,
its default) with the rounds unrolled in plain lax ops, which XLA fuses into the mask.
Other keys (rbg, typed keys of another implementation, or the non-partitionable
threefry) fall back to `jax.random.bits`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from enformer_small import fast_cpu

# Threefry-2x32's rotation constants, alternating per group of four rounds.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_KEY_PARITY = np.uint32(0x1BD11BDA)


def dropout(rng: jax.Array, rate: float, x: jnp.ndarray) -> jnp.ndarray:
  """Zeroes each element with probability `rate` and scales the rest by 1/(1-rate)."""
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'dropout rate must be in [0, 1), got {rate}')
  if rate == 0.0:
    return x
  threshold = round(rate * 2**16)
  keep = random_bits16(rng, x.shape) >= jnp.uint16(threshold)
  if fast_cpu.enabled():  # One mask for the forward and backward passes.
    keep = fast_cpu.computed_once(keep)
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)


def random_bits16(rng: jax.Array, shape) -> jnp.ndarray:
  """`jax.random.bits(rng, shape, jnp.uint16)`, unrolled where the key allows."""
  key_data = rng
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    if 'threefry' not in str(jax.random.key_impl(rng)):
      return jax.random.bits(rng, shape, dtype=jnp.uint16)
    key_data = jax.random.key_data(rng)
  raw_threefry = (jax.config.jax_default_prng_impl == 'threefry2x32'
                  or jnp.issubdtype(rng.dtype, jax.dtypes.prng_key))
  if (not raw_threefry or key_data.shape != (2,) or math.prod(shape) >= 2**32
      or not jax.config.jax_threefry_partitionable):
    return jax.random.bits(rng, shape, dtype=jnp.uint16)
  return threefry_bits16(key_data, tuple(shape))


def threefry_bits16(key_data: jnp.ndarray, shape) -> jnp.ndarray:
  """Threefry-2x32 of each element's flat index (< 2^32) under `key_data` uint32[2],
  the two output words xor-ed and truncated to 16 bits: jax's partitionable bits."""
  k1, k2 = key_data[0], key_data[1]
  ks = (k1, k2, k1 ^ k2 ^ _KEY_PARITY)
  # The counter is the 64-bit flat index: its high word is 0 below 2^32 elements.
  x0 = jnp.broadcast_to(ks[0], shape)
  x1 = lax.iota(jnp.uint32, math.prod(shape)).reshape(shape) + ks[1]
  for group in range(5):
    for rotation in _ROTATIONS[group % 2]:
      x0 = x0 + x1
      x1 = x0 ^ _rotate_left(x1, rotation)
    x0 = x0 + ks[(group + 1) % 3]
    x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
  return (x0 ^ x1).astype(jnp.uint16)


def _rotate_left(x: jnp.ndarray, bits: int) -> jnp.ndarray:
  return lax.shift_left(x, np.uint32(bits)) | lax.shift_right_logical(x, np.uint32(32 - bits))
