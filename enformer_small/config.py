"""Model configuration: the seed's reduced Enformer and DeepMind's original.

Every way in which the DREAM 2022 seed departs from DeepMind's `enformer.py` is a named
field here, so that both models are built by the same modules (`enformer.py`) and a
reader can see at a glance what the seed changed.
"""

import dataclasses
from typing import Mapping, Optional, Tuple

# DeepMind's relative positional basis functions, in the order the original uses them.
RELATIVE_POSITION_FUNCTIONS = (
    'positional_features_exponential',
    'positional_features_central_mask',
    'positional_features_gamma',
)


HEAD_KINDS = ('softplus', 'soft_bins')


@dataclasses.dataclass(frozen=True)
class EnformerConfig:
  """Hyperparameters of `enformer.Enformer`.

  Defaults are DeepMind's original Enformer (`original_config()`); `seed_config()` lists
  the seed's changes.
  """
  input_length: int = 196_608
  channels: int = 1536
  num_transformer_layers: int = 11
  num_heads: int = 8
  pooling_type: str = 'attention'  # 'attention' (softmax pooling) or 'max'
  heads: Tuple[Tuple[str, int], ...] = (('human', 5313), ('mouse', 1643))

  # stem: Conv1D(channels // stem_channels_divisor, stem_width) -> residual pointwise
  # conv_block -> pool(2, stem_pool_stride).
  stem_channels_divisor: int = 2
  stem_width: int = 15
  stem_pool_stride: int = 2

  # conv_tower: filters = exponential_linspace_int(channels // stem_channels_divisor,
  # channels, conv_tower_blocks, conv_tower_divisible_by).
  conv_tower_blocks: int = 6
  conv_tower_width: int = 5
  conv_tower_divisible_by: int = 128

  # Sonnet's default is a truncated normal (stddev 1/sqrt(fan_in)); the seed used
  # Glorot uniform in conv_block.
  conv_block_w_init: str = 'truncated_normal'  # or 'glorot_uniform'

  # transformer
  key_size: int = 64
  dropout_rate: float = 0.4
  attention_dropout_rate: float = 0.05
  positional_dropout_rate: float = 0.01

  # TargetLengthCrop1D; None disables the crop.
  target_length: Optional[int] = 896

  # final_pointwise: conv_block(channels * final_channels_multiplier, 1) [-> MaxPool(2)]
  # -> Dropout(dropout_rate / 8) -> GELU.
  final_channels_multiplier: int = 2
  final_pool: bool = False

  # Heads: [Flatten ->] Linear(num_channels) -> softplus.
  head_flatten: bool = False
  head_linear_name: Optional[str] = None  # Sonnet's default name when None
  # 'softplus': the heads above (the seed's and DeepMind's). 'soft_bins': no softplus,
  # the head's channels are the logits of expression bins 0..n-1 (LegNet's soft-bin
  # targets, `recipe.soft_bin_loss`); the prediction is their expectation.
  head_kind: str = 'softplus'

  # BatchNorm moving averages (Sonnet ExponentialMovingAverage(0.9), zero-debiased).
  batch_norm_decay: float = 0.9
  batch_norm_eps: float = 1e-5

  def __post_init__(self):
    if self.head_kind not in HEAD_KINDS:
      raise ValueError(f'head_kind must be one of {HEAD_KINDS}, got {self.head_kind!r}')

  @property
  def value_size(self) -> int:
    return self.channels // self.num_heads

  @property
  def num_relative_position_features(self) -> int:
    return self.channels // self.num_heads

  @property
  def final_dropout_rate(self) -> float:
    return self.dropout_rate / 8

  @property
  def head_channels(self) -> Mapping[str, int]:
    return dict(self.heads)

  def with_soft_bin_head(self, num_bins: int = 18) -> 'EnformerConfig':
    """Every head replaced by `num_bins` soft-bin logits (`head_kind='soft_bins'`).

    The seed's head is Linear(576 -> 1) at 85 bp (768 -> 1 at 110 bp); 18 bins make it
    Linear(576 -> 18): 1,995,617 + 17 x 577 = 2,005,426 parameters at 85 bp, and
    1,995,809 + 17 x 769 = 2,008,882 at 110 bp.
    """
    return dataclasses.replace(
        self, heads=tuple((name, num_bins) for name, _ in self.heads),
        head_kind='soft_bins')

  def with_outputs(self, num_outputs: int) -> 'EnformerConfig':
    """Every head with `num_outputs` channels: one per target column of a table.

    The seed's head Linear(576 -> 1) becomes Linear(576 -> n): 1,995,617 + (n - 1) x 577
    parameters at 85 bp, 1,995,809 + (n - 1) x 769 at 110 bp.
    """
    if num_outputs < 1:
      raise ValueError(f'num_outputs must be >= 1, got {num_outputs}')
    return dataclasses.replace(
        self, heads=tuple((name, num_outputs) for name, _ in self.heads))

  def without_dropout(self) -> 'EnformerConfig':
    """The same model with every dropout rate zero (training-mode BatchNorm only)."""
    return dataclasses.replace(
        self, dropout_rate=0.0, attention_dropout_rate=0.0,
        positional_dropout_rate=0.0)


def original_config() -> EnformerConfig:
  """DeepMind's Enformer (Avsec et al. 2021): 196,608 bp in, 896 x 128 bp bins out."""
  return EnformerConfig()


def seed_config(input_length: int = 85) -> EnformerConfig:
  """The reduced Enformer of the DREAM 2022 seed: 1,995,617 parameters at 85 bp.

  The seed trained on `X[:, 15:100]` (85 bp) of a 110 bp encoding; any length works.
  """
  return EnformerConfig(
      input_length=input_length,
      channels=192,
      num_transformer_layers=4,
      num_heads=8,
      pooling_type='max',
      heads=(('yeast', 1),),
      stem_channels_divisor=4,
      stem_width=5,
      stem_pool_stride=1,
      conv_tower_blocks=4,
      conv_tower_width=4,
      conv_tower_divisible_by=32,
      conv_block_w_init='glorot_uniform',
      target_length=6,
      final_channels_multiplier=1,
      final_pool=True,
      head_flatten=True,
      head_linear_name='output',
  )
