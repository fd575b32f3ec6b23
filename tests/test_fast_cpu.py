"""The CPU speed option `fast_cpu`: the same values, arranged for XLA:CPU, off by default.

The seed model's steps, eval and attributions with and without it are compared in
test_slow_fast_cpu.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enformer_small import fast_cpu
from enformer_small import dropout as dropout_lib


@pytest.mark.parametrize('x', [
    np.array([1.5, -0.0, 2.0, 1.5], np.float32),           # first == last: loop skipped
    np.array([[1.0, np.nan], [np.inf, -3.25]], np.float32),  # first != last: body runs
    np.array([np.nan, 1.0, np.nan], np.float32),            # NaN != NaN: body runs
    np.array([1e-40, 3.0, -1e-42], np.float32),             # subnormals kept
    np.array([True, False, True]),
    np.array([False, True, True]),
])
def test_computed_once_is_the_identity_bit_for_bit(x):
  got = np.asarray(jax.jit(fast_cpu.computed_once)(x))
  assert got.dtype == x.dtype
  np.testing.assert_array_equal(got.view(np.uint8), x.view(np.uint8))


def test_on_cpu_the_value_comes_out_of_a_while_loop():
  text = jax.jit(lambda x: fast_cpu.computed_once(x) * 2).lower(
      jnp.ones((4, 3))).compile().as_text()
  assert ' while(' in text


def test_gradient_computed_once_changes_neither_values_nor_gradients():
  x = jnp.linspace(-2., 2., 12).reshape(3, 4)

  def f(x, once):
    y = x * 2
    return jnp.sum(jnp.sin(fast_cpu.gradient_computed_once(y) if once else y) * x)

  for fn in (f, jax.grad(f)):
    np.testing.assert_array_equal(jax.jit(fn, static_argnums=1)(x, True),
                                  jax.jit(fn, static_argnums=1)(x, False))


def test_dropout_in_the_scope_draws_the_same_mask_and_values():
  key, x = jax.random.PRNGKey(7), jnp.linspace(-1., 1., 6 * 192).reshape(6, 192)

  def drop(x, once):
    with fast_cpu.scope(once):
      return dropout_lib.dropout(key, 0.4, x)

  np.testing.assert_array_equal(jax.jit(drop, static_argnums=1)(x, True),
                                jax.jit(drop, static_argnums=1)(x, False))
  assert not fast_cpu.enabled()  # The scope ends with the block.
