"""Dropout's unrolled threefry bits are jax's bits, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enformer_small import dropout as dropout_lib


@pytest.mark.parametrize('shape', [(5,), (3, 7), (4, 8, 6, 6), (256, 6, 192)])
@pytest.mark.parametrize('seed', [0, 12345])
def test_unrolled_bits_are_jax_random_bits(shape, seed):
  key = jax.random.PRNGKey(seed)
  ours = jax.jit(dropout_lib.random_bits16, static_argnums=1)(key, shape)
  np.testing.assert_array_equal(ours, jax.random.bits(key, shape, jnp.uint16))


def test_typed_threefry_key_gives_jax_random_bits():
  key = jax.random.key(3)
  np.testing.assert_array_equal(dropout_lib.random_bits16(key, (9, 4)),
                                jax.random.bits(key, (9, 4), jnp.uint16))


def test_other_key_implementations_fall_back_to_jax_random_bits():
  key = jax.random.key(3, impl='rbg')
  np.testing.assert_array_equal(dropout_lib.random_bits16(key, (9, 4)),
                                jax.random.bits(key, (9, 4), jnp.uint16))


def test_dropout_keeps_the_requested_share_and_rescales():
  x = jnp.ones((200_000,), jnp.float32)
  y = np.asarray(dropout_lib.dropout(jax.random.PRNGKey(0), 0.4, x))
  assert abs((y == 0).mean() - 0.4) < 0.005
  np.testing.assert_allclose(y[y != 0], 1 / 0.6, rtol=1e-6)
