"""Multi-head attention with relative positional encodings, as in Enformer.

Mirrors DeepMind's `enformer/attention_module.py` (Transformer-XL style relative
attention with Enformer's exponential / central-mask / gamma positional basis) in Haiku.
Shapes: B batch, T tokens, H heads, K key size, V value size, Cr positional features.
"""

from typing import Callable, Optional, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

from enformer_small import fast_cpu
from enformer_small.dropout import dropout


class MultiheadAttention(hk.Module):
  """Multi-head attention with optional relative positions (Enformer's variant)."""

  def __init__(self,
               value_size: int,
               key_size: int,
               num_heads: int,
               scaling: bool = True,
               attention_dropout_rate: float = 0.1,
               relative_positions: bool = False,
               relative_position_symmetric: bool = False,
               relative_position_functions: Optional[Sequence[str]] = None,
               num_relative_position_features: Optional[int] = None,
               positional_dropout_rate: float = 0.1,
               zero_initialize: bool = True,
               initializer: Optional[hk.initializers.Initializer] = None,
               name: Optional[str] = None):
    super().__init__(name=name)
    self._value_size = value_size
    self._key_size = key_size
    self._num_heads = num_heads
    self._attention_dropout_rate = attention_dropout_rate
    self._scaling = scaling
    self._relative_positions = relative_positions
    self._relative_position_symmetric = relative_position_symmetric
    self._relative_position_functions = tuple(relative_position_functions or ())
    if num_relative_position_features is None:
      # One block of basis functions per function, doubled when sign-weighted.
      divisible_by = 2 * len(self._relative_position_functions)
      num_relative_position_features = (value_size // divisible_by) * divisible_by
    self._num_relative_position_features = num_relative_position_features
    self._positional_dropout_rate = positional_dropout_rate
    self._initializer = initializer or hk.initializers.VarianceScaling(2.0)

    key_proj_size = key_size * num_heads
    embedding_size = value_size * num_heads
    self._q_layer = hk.Linear(key_proj_size, with_bias=False,
                              w_init=self._initializer, name='q_layer')
    self._k_layer = hk.Linear(key_proj_size, with_bias=False,
                              w_init=self._initializer, name='k_layer')
    self._v_layer = hk.Linear(embedding_size, with_bias=False,
                              w_init=self._initializer, name='v_layer')
    # A zero output projection makes each residual attention block start as identity.
    self._embedding_layer = hk.Linear(
        embedding_size,
        w_init=hk.initializers.Constant(0.) if zero_initialize else self._initializer,
        name='embedding_layer')
    if relative_positions:
      self._r_k_layer = hk.Linear(key_proj_size, with_bias=False,
                                  w_init=self._initializer, name='r_k_layer')

  def _multihead_output(self, linear: hk.Linear, inputs: jnp.ndarray) -> jnp.ndarray:
    """[B, T, C] -> [B, H, T, C']: project, then split channels into heads."""
    output = linear(inputs)
    *batch, length, channels = output.shape
    output = output.reshape(*batch, length, self._num_heads,
                            channels // self._num_heads)
    return jnp.swapaxes(output, -3, -2)

  def __call__(self, inputs: jnp.ndarray, is_training: bool = False) -> jnp.ndarray:
    """[B, T, C] -> [B, T, H * V]."""
    seq_len = inputs.shape[-2]
    q = self._multihead_output(self._q_layer, inputs)  # [B, H, T, K]
    k = self._multihead_output(self._k_layer, inputs)  # [B, H, T, K]
    v = self._multihead_output(self._v_layer, inputs)  # [B, H, T, V]

    if self._scaling:
      q = q * self._key_size**-0.5

    if self._relative_positions:
      bias_shape = [1, self._num_heads, 1, self._key_size]
      r_w_bias = hk.get_parameter('r_w_bias', bias_shape, q.dtype,
                                  init=self._initializer)
      r_r_bias = hk.get_parameter('r_r_bias', bias_shape, q.dtype,
                                  init=self._initializer)
      distances = jnp.arange(-seq_len + 1, seq_len, dtype=jnp.float32)[None]
      positional_encodings = positional_features_all(
          positions=distances,
          feature_size=self._num_relative_position_features,
          seq_length=seq_len,
          feature_functions=self._relative_position_functions,
          symmetric=self._relative_position_symmetric).astype(inputs.dtype)
      # [1, 2T-1, Cr]
      if is_training and self._positional_dropout_rate:
        positional_encodings = dropout(
            hk.next_rng_key(), self._positional_dropout_rate, positional_encodings)
      # [H, 2T-1, K], one for the whole batch: contracting it with a batch axis of 1
      # made XLA broadcast it to [B, H, 2T-1, K] and run B x H tiny matmuls.
      r_k = self._multihead_output(self._r_k_layer, positional_encodings[0])
      content_logits = jnp.einsum('bhik,bhjk->bhij', q + r_w_bias, k)
      if fast_cpu.enabled():
        relative_logits = fast_cpu.relative_logits(q + r_r_bias, r_k)
      else:
        relative_logits = jnp.einsum('bhik,hjk->bhij', q + r_r_bias, r_k)
      relative_logits = relative_shift(relative_logits)  # [B, H, T, T]
      logits = content_logits + relative_logits
    else:
      logits = jnp.einsum('bhik,bhjk->bhij', q, k)

    weights = jax.nn.softmax(logits)
    if is_training and self._attention_dropout_rate:
      weights = dropout(hk.next_rng_key(), self._attention_dropout_rate, weights)

    output = jnp.einsum('bhij,bhjv->bhiv', weights, v)  # [B, H, T, V]
    output = jnp.swapaxes(output, -3, -2)  # [B, T, H, V]
    output = output.reshape(*output.shape[:-2], -1)  # [B, T, H * V]
    return self._embedding_layer(output)


def relative_shift(x: jnp.ndarray) -> jnp.ndarray:
  """Turns logits against relative positions into logits against key positions.

  Args:
    x: [B, H, T, 2T - 1]; x[..., i, m] scores query i against relative distance
      d = m - (T - 1) (key j = i + d, so column T - 1 is distance 0).

  Returns:
    [B, H, T, T] with out[..., i, j] = x[..., i, (T - 1) + (j - i)], by the
    pad-reshape-slice trick of Transformer-XL (no gather).
  """
  to_pad = jnp.zeros_like(x[..., :1])
  x = jnp.concatenate([to_pad, x], axis=-1)  # [..., T, 2T]
  *batch, t1, t2 = x.shape
  x = x.reshape(*batch, t2, t1)[..., 1:, :]
  x = x.reshape(*batch, t1, t2 - 1)
  return x[..., :(t2 + 1) // 2]


def positional_features_all(positions: jnp.ndarray,
                            feature_size: int,
                            seq_length: Optional[int] = None,
                            bin_size: Optional[int] = None,
                            feature_functions: Optional[Sequence[str]] = None,
                            symmetric: bool = False) -> jnp.ndarray:
  """Relative positional features [..., feature_size] of `positions`.

  An equal share of `feature_size` goes to each basis function. Unless `symmetric`, the
  features are repeated multiplied by sign(position), so that the model can tell a key
  upstream from one downstream.
  """
  if feature_functions is None:
    feature_functions = ('positional_features_exponential',
                         'positional_features_central_mask',
                         'positional_features_gamma')
  num_components = len(feature_functions)
  if not symmetric:
    num_components *= 2
  if feature_size % num_components:
    raise ValueError(f'feature_size ({feature_size}) must be divisible by '
                     f'{num_components} (2 x the number of basis functions).')
  num_basis_per_class = feature_size // num_components
  embeddings = jnp.concatenate([
      get_positional_feature_function(f)(jnp.abs(positions), num_basis_per_class,
                                         seq_length, bin_size)
      for f in feature_functions
  ], axis=-1)
  if not symmetric:
    embeddings = jnp.concatenate(
        [embeddings, jnp.sign(positions)[..., None] * embeddings], axis=-1)
  return embeddings


def _prepend_dims(x: jnp.ndarray, num_dims: int) -> jnp.ndarray:
  return x.reshape((1,) * num_dims + x.shape)


def positional_features_exponential(positions: jnp.ndarray,
                                    feature_size: int,
                                    seq_length: Optional[int] = None,
                                    bin_size: Optional[int] = None,
                                    min_half_life: float = 3.0) -> jnp.ndarray:
  """exp(-ln 2 |p| / h) for half-lives h = 2^linspace(min_half_life, log2(seq_length))."""
  del bin_size  # Unused, as in the original.
  if seq_length is None:
    seq_length = jnp.max(jnp.abs(positions)) + 1
  max_range = jnp.log(jnp.float32(seq_length)) / jnp.log(jnp.float32(2.0))
  half_life = jnp.power(2.0, jnp.linspace(min_half_life, max_range, feature_size))
  half_life = _prepend_dims(half_life, positions.ndim)
  positions = jnp.abs(positions)
  return jnp.exp(-jnp.log(2.0) / half_life * positions[..., None])


def positional_features_central_mask(positions: jnp.ndarray,
                                     feature_size: int,
                                     seq_length: Optional[int] = None,
                                     bin_size: Optional[int] = None) -> jnp.ndarray:
  """1 where |p| < 2^(i+1) - 1 for i = 0..feature_size-1 (nested windows), else 0."""
  del seq_length, bin_size
  center_widths = jnp.power(2.0, jnp.arange(1, feature_size + 1, dtype=jnp.float32))
  center_widths = _prepend_dims(center_widths - 1, positions.ndim)
  return (center_widths > jnp.abs(positions)[..., None]).astype(jnp.float32)


def gamma_pdf(x: jnp.ndarray, concentration: jnp.ndarray,
              rate: jnp.ndarray) -> jnp.ndarray:
  """Density of Gamma(concentration, rate) at x (x^(a-1) is 0 at x = 0 for a > 1)."""
  log_unnormalized_prob = jax.scipy.special.xlogy(concentration - 1., x) - rate * x
  log_normalization = (jax.scipy.special.gammaln(concentration) -
                       concentration * jnp.log(rate))
  return jnp.exp(log_unnormalized_prob - log_normalization)


def positional_features_gamma(positions: jnp.ndarray,
                              feature_size: int,
                              seq_length: Optional[int] = None,
                              bin_size: Optional[int] = None,
                              stddev: Optional[float] = None,
                              start_mean: Optional[float] = None) -> jnp.ndarray:
  """Gamma densities with means spread over [seq_length / F, seq_length].

  Each feature is normalised by its maximum over the given positions (axis 1 of
  [1, 2T-1, F]), as in the original.
  """
  del bin_size
  if seq_length is None:
    seq_length = jnp.max(jnp.abs(positions)) + 1
  if stddev is None:
    stddev = seq_length / (2 * feature_size)
  if start_mean is None:
    start_mean = seq_length / feature_size
  mean = jnp.linspace(start_mean, seq_length, num=feature_size, dtype=jnp.float32)
  mean = _prepend_dims(mean, positions.ndim)
  concentration = (mean / stddev)**2
  rate = mean / stddev**2
  probabilities = gamma_pdf(
      jnp.abs(positions.astype(jnp.float32))[..., None], concentration, rate)
  probabilities += 1e-8  # Keeps the normalisation finite where the density underflows.
  return probabilities / jnp.max(probabilities, axis=1, keepdims=True)


_POSITIONAL_FEATURE_FUNCTIONS = {
    'positional_features_exponential': positional_features_exponential,
    'positional_features_central_mask': positional_features_central_mask,
    'positional_features_gamma': positional_features_gamma,
}


def get_positional_feature_function(name: str) -> Callable[..., jnp.ndarray]:
  if name not in _POSITIONAL_FEATURE_FUNCTIONS:
    raise ValueError(f'Function {name} not available in '
                     f'{sorted(_POSITIONAL_FEATURE_FUNCTIONS)}')
  return _POSITIONAL_FEATURE_FUNCTIONS[name]
