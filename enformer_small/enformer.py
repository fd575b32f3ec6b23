"""Enformer in Haiku: DeepMind's model and the reduced DREAM 2022 seed.

Mirrors DeepMind's `enformer/enformer.py` module for module, with the same names:

  enformer
  ├── trunk
  │   ├── stem: Conv1D -> Residual(pointwise_conv_block) -> pool
  │   ├── conv_tower: conv_tower_block_i: conv_block -> Residual(pointwise_conv_block) -> pool
  │   ├── transformer: transformer_block_i: Residual(mha) -> Residual(mlp)
  │   ├── target_input: TargetLengthCrop1D
  │   └── final_pointwise: conv_block [-> MaxPool] -> Dropout -> GELU
  └── head_<name>: [Flatten ->] Linear -> softplus (soft-bin heads: the Linear's logits)

What the seed changed (`config.seed_config()`): 192 channels, 4 transformer layers, max
pooling (stride 1 in the stem), stem width 5, 4 tower blocks of width 4, Glorot conv
init, a crop to 6 tokens, a max-pool in final_pointwise, and a flattened scalar head.
"""

from typing import Callable, Dict, List, Optional

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from enformer_small import attention_module
from enformer_small import fast_cpu
from enformer_small.dropout import dropout
from enformer_small.config import EnformerConfig, RELATIVE_POSITION_FUNCTIONS

Array = jnp.ndarray


class Enformer(hk.Module):
  """Enformer trunk and heads.

  `__call__(inputs [B, L, 4], is_training) -> {head: [B, 1]}` for the seed (a flattened
  head) and `{head: [B, target_length, channels]}` for the original.
  """

  def __init__(self, config: EnformerConfig,
               cross_replica_axis: Optional[str] = None,
               name: str = 'enformer'):
    super().__init__(name=name)
    self._config = config
    c = config
    channels = c.channels
    stem_channels = channels // c.stem_channels_divisor

    def conv_block(filters, width=1, name='conv_block'):
      return ConvBlock(filters, width, config=c,
                       cross_replica_axis=cross_replica_axis, name=name)

    def pointwise_conv_block(filters):
      return Residual(conv_block(filters, 1, name='pointwise_conv_block'))

    def pool(stride=2):
      return pooling_module(c.pooling_type, pool_size=2, stride=stride)

    def build_stem():
      return Sequential(lambda: [
          hk.Conv1D(stem_channels, c.stem_width, w_init=sonnet_default_init,
                    name='conv1_d'),
          pointwise_conv_block(stem_channels),
          pool(c.stem_pool_stride),
      ], name='stem')

    filter_list = exponential_linspace_int(
        start=stem_channels, end=channels, num=c.conv_tower_blocks,
        divisible_by=c.conv_tower_divisible_by)

    def build_conv_tower():
      return Sequential(lambda: [
          Sequential(lambda: [
              conv_block(num_filters, c.conv_tower_width),
              pointwise_conv_block(num_filters),
              pool(),
          ], name=f'conv_tower_block_{i}')
          for i, num_filters in enumerate(filter_list)
      ], name='conv_tower')

    def transformer_mlp():
      return Sequential(lambda: [
          layer_norm(),
          hk.Linear(channels * 2, name='linear'),
          Dropout(c.dropout_rate),
          jax.nn.relu,
          hk.Linear(channels, name='linear_1'),
          Dropout(c.dropout_rate),
      ], name='mlp')

    def build_transformer():
      return Sequential(lambda: [
          Sequential(lambda: [
              Residual(Sequential(lambda: [
                  layer_norm(),
                  attention_module.MultiheadAttention(
                      value_size=c.value_size,
                      key_size=c.key_size,
                      num_heads=c.num_heads,
                      scaling=True,
                      attention_dropout_rate=c.attention_dropout_rate,
                      relative_positions=True,
                      relative_position_symmetric=False,
                      relative_position_functions=RELATIVE_POSITION_FUNCTIONS,
                      num_relative_position_features=(
                          c.num_relative_position_features),
                      positional_dropout_rate=c.positional_dropout_rate,
                      zero_initialize=True,
                      name=f'attention_{i}'),
                  Dropout(c.dropout_rate),
              ], name='mha')),
              Residual(transformer_mlp()),
          ], name=f'transformer_block_{i}')
          for i in range(c.num_transformer_layers)
      ], name='transformer')

    def build_final_pointwise():
      return Sequential(lambda: [
          conv_block(channels * c.final_channels_multiplier, 1),
          pool() if c.final_pool else None,
          Dropout(c.final_dropout_rate),
          gelu,
      ], name='final_pointwise')

    # Built inside the trunk's scope so that names read enformer/~/trunk/~/stem/..., as
    # the original's variables read enformer/trunk/stem/...
    self._trunk = Sequential(lambda: [
        build_stem(),
        build_conv_tower(),
        build_transformer(),
        TargetLengthCrop1D(c.target_length, name='target_input'),
        build_final_pointwise(),
    ], name='trunk')

    def head(head_name, num_channels):
      return Sequential(lambda: [
          flatten if c.head_flatten else None,
          hk.Linear(num_channels, name=c.head_linear_name),
          jax.nn.softplus if c.head_kind == 'softplus' else None,
      ], name=f'head_{head_name}')

    self._heads = {name: head(name, n) for name, n in c.heads}

  @property
  def trunk(self) -> 'Sequential':
    return self._trunk

  @property
  def heads(self) -> Dict[str, 'Sequential']:
    return self._heads

  def __call__(self, inputs: Array, is_training: bool) -> Dict[str, Array]:
    """inputs [B, L, 4] one-hot (A, C, G, T) -> {head: prediction}."""
    trunk_embedding = self.trunk(inputs, is_training=is_training)
    return {head: head_module(trunk_embedding, is_training=is_training)
            for head, head_module in self.heads.items()}


def gelu(x: Array) -> Array:
  """Enformer's GELU approximation, sigmoid(1.702 x) * x (not jax.nn.gelu)."""
  return jax.nn.sigmoid(1.702 * x) * x


def flatten(x: Array) -> Array:
  """[B, ...] -> [B, prod(...)] in row-major order, as Sonnet's Flatten."""
  return x.reshape(x.shape[0], -1)


def layer_norm() -> hk.LayerNorm:
  return hk.LayerNorm(axis=-1, create_scale=True, create_offset=True,
                      scale_init=hk.initializers.Constant(1.), name='layer_norm')


def sonnet_default_init(shape, dtype) -> Array:
  """Sonnet's default weight init: truncated normal with stddev 1 / sqrt(fan_in)."""
  fan_in = int(np.prod(shape[:-1]))
  return hk.initializers.TruncatedNormal(stddev=1. / np.sqrt(fan_in))(shape, dtype)


_CONV_W_INITS = {
    'truncated_normal': sonnet_default_init,
    'glorot_uniform': hk.initializers.VarianceScaling(1.0, 'fan_avg', 'uniform'),
}


class ConvBlock(hk.Module):
  """BatchNorm -> GELU -> Conv1D(filters, width, SAME): [B, T, C] -> [B, T, filters].

  BatchNorm is Sonnet's CrossReplicaBatchNorm: batch statistics averaged over
  `cross_replica_axis` (the pmap axis) in training; zero-debiased moving averages.
  """

  def __init__(self, filters: int, width: int, config: EnformerConfig,
               cross_replica_axis: Optional[str] = None, name: str = 'conv_block'):
    super().__init__(name=name)
    self._batch_norm = hk.BatchNorm(
        create_scale=True, create_offset=True,
        scale_init=hk.initializers.Constant(1.),
        decay_rate=config.batch_norm_decay, eps=config.batch_norm_eps,
        cross_replica_axis=cross_replica_axis, name='batch_norm')
    self._conv = hk.Conv1D(filters, width, padding='SAME',
                           w_init=_CONV_W_INITS[config.conv_block_w_init],
                           name='conv1_d')

  def __call__(self, inputs: Array, is_training: bool) -> Array:
    x = self._batch_norm(inputs, is_training=is_training)
    return self._conv(gelu(x))


class Sequential(hk.Module):
  """Applies layers in order, passing `is_training` to those that take it.

  As in the original, `layers` may be a callable building the layers, so that they are
  created inside this module's name scope; None entries are skipped.
  """

  def __init__(self, layers, name: Optional[str] = None):
    super().__init__(name=name)
    if callable(layers):
      layers = layers()
    self._layers: List[Callable[..., Array]] = [l for l in layers if l is not None]

  @property
  def layers(self) -> List[Callable[..., Array]]:
    return self._layers

  def __call__(self, inputs: Array, is_training: bool, **kwargs) -> Array:
    outputs = inputs
    for layer in self._layers:
      if accepts_is_training(layer):
        outputs = layer(outputs, is_training=is_training, **kwargs)
      else:
        outputs = layer(outputs, **kwargs)
    return outputs


def accepts_is_training(module) -> bool:
  return isinstance(module, (Sequential, Residual, ConvBlock, Dropout,
                             SoftmaxPooling1D, TargetLengthCrop1D,
                             attention_module.MultiheadAttention))


class Residual(hk.Module):
  """x + module(x)."""

  def __init__(self, module: hk.Module, name: str = 'residual'):
    super().__init__(name=name)
    self._module = module

  def __call__(self, inputs: Array, is_training: bool, **kwargs) -> Array:
    outputs = inputs + self._module(inputs, is_training=is_training, **kwargs)
    if fast_cpu.enabled():
      return fast_cpu.gradient_computed_once(outputs)
    return outputs


class Dropout(hk.Module):
  """Dropout active only in training (and only when the rate is non-zero)."""

  def __init__(self, rate: float, name: str = 'dropout'):
    super().__init__(name=name)
    self._rate = rate

  def __call__(self, inputs: Array, is_training: bool) -> Array:
    if not is_training or not self._rate:
      return inputs
    return dropout(hk.next_rng_key(), self._rate, inputs)


class TargetLengthCrop1D(hk.Module):
  """Crops [B, T, C] symmetrically to [B, target_length, C] (no-op when trim is 0)."""

  def __init__(self, target_length: Optional[int], name: str = 'target_length_crop'):
    super().__init__(name=name)
    self._target_length = target_length

  def __call__(self, inputs: Array, is_training: bool = False) -> Array:
    del is_training
    if self._target_length is None:
      return inputs
    trim = (inputs.shape[-2] - self._target_length) // 2
    if trim < 0:
      raise ValueError(f'inputs ({inputs.shape[-2]} tokens) shorter than the target '
                       f'length {self._target_length}')
    if trim == 0:
      return inputs
    return inputs[..., trim:-trim, :]


class SoftmaxPooling1D(hk.Module):
  """Pooling by softmax-weighted sums over windows: [B, T, C] -> [B, T // pool, C].

  The logit projection starts as `w_init_scale` x identity, so at initialisation the
  pooling sharpens toward max pooling as the scale grows.
  """

  def __init__(self, pool_size: int = 2, per_channel: bool = False,
               w_init_scale: float = 0.0, name: str = 'softmax_pooling'):
    super().__init__(name=name)
    self._pool_size = pool_size
    self._per_channel = per_channel
    self._w_init_scale = w_init_scale

  def __call__(self, inputs: Array, is_training: bool = False) -> Array:
    del is_training
    *batch, length, num_features = inputs.shape
    inputs = inputs.reshape(*batch, length // self._pool_size, self._pool_size,
                            num_features)
    logit_linear = hk.Linear(
        num_features if self._per_channel else 1, with_bias=False,
        w_init=identity_init(self._w_init_scale), name='linear')
    weights = jax.nn.softmax(logit_linear(inputs), axis=-2)
    return jnp.sum(inputs * weights, axis=-2)


def identity_init(gain: float) -> hk.initializers.Initializer:
  def init(shape, dtype):
    return gain * jnp.eye(shape[-2], shape[-1], dtype=dtype)
  return init


class MaxPool1D:
  """Max pooling over the length axis, SAME padding: [B, T, C] -> [B, ceil(T / s), C].

  Only windows of 2 (all Enformer uses), written as an elementwise maximum of neighbours
  instead of lax.reduce_window: XLA fuses it, whereas reduce_window's gradient
  (select-and-scatter with index iotas) took a quarter of the CPU train step. Ties send
  the gradient to the first element of the window, as TensorFlow's MaxPool does.
  """

  def __init__(self, pool_size: int, stride: int):
    if pool_size != 2 or stride not in (1, 2):
      raise ValueError(f'MaxPool1D supports pool_size 2 with stride 1 or 2, '
                       f'got {pool_size} and {stride}')
    self._stride = stride

  def __call__(self, inputs: Array) -> Array:
    length = inputs.shape[-2]
    # SAME padding adds the missing element at the end; -inf never wins the max.
    pad = 1 if self._stride == 1 else length % 2
    padded = jnp.pad(inputs, [(0, 0)] * (inputs.ndim - 2) + [(0, pad), (0, 0)],
                     constant_values=-jnp.inf)
    if self._stride == 1:
      first, second = padded[..., :-1, :], padded[..., 1:, :]
    else:
      first, second = padded[..., 0::2, :], padded[..., 1::2, :]
    return jnp.where(first >= second, first, second)


def pooling_module(kind: str, pool_size: int, stride: Optional[int] = None):
  """The original's pooling choice; `stride` (default pool_size) is the seed's addition."""
  stride = pool_size if stride is None else stride
  if kind == 'attention':
    if stride != pool_size:
      raise ValueError('attention pooling only supports stride == pool_size')
    return SoftmaxPooling1D(pool_size=pool_size, per_channel=True, w_init_scale=2.0)
  if kind == 'max':
    return MaxPool1D(pool_size, stride)
  raise ValueError(f'Invalid pooling kind: {kind}.')


def exponential_linspace_int(start: int, end: int, num: int,
                             divisible_by: int = 1) -> List[int]:
  """`num` integers from `start` to `end`, evenly spaced in log scale, each rounded to
  a multiple of `divisible_by`."""
  def _round(x):
    return int(np.round(x / divisible_by) * divisible_by)
  base = np.exp(np.log(end / start) / (num - 1))
  return [_round(start * base**i) for i in range(num)]
