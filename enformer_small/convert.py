"""Converts checkpoints of the seed's TensorFlow/Sonnet Enformer into Haiku params + state.

The seed (a modified copy of DeepMind's `enformer.py`) saved its models with
`tf.saved_model.save(model, ...)`; its variables are named by Sonnet's object graph:

  _trunk/_layers/0/_layers/0/w                              stem Conv1D
  _trunk/_layers/0/_layers/1/_module/_layers/0/moving_mean  stem Residual(conv_block) BatchNorm
  _trunk/_layers/2/_layers/0/_layers/0/_module/_layers/1/_q_layer/w   attention_0
  _heads/yeast/_layers/1/w                                  head Linear (after Flatten)

Indices count every layer of a Sonnet `Sequential`, functions (gelu, relu, Flatten) and
Dropout included, exactly as `enformer.Sequential.layers` does. So instead of a table the
mapping is derived by walking the Haiku module tree (`variable_mapping`), which covers any
preset built by `enformer.Enformer`: the seed at any input length and DeepMind's original
(attention pooling, heads human/mouse).

Only the head's Linear depends on the input length (flattened tokens x channels, e.g.
85 bp -> 3 tokens x 192 = 576, 110 bp -> 4 x 192 = 768). TensorFlow is imported only
inside `convert_checkpoint`; `convert_variables` works on a plain dict of arrays.
"""

import dataclasses
import math
import os
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import haiku as hk
import numpy as np

from enformer_small import attention_module
from enformer_small import enformer
from enformer_small import model
from enformer_small.config import EnformerConfig

# Suffix TF2 object-based checkpoints give every variable.
_VALUE_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
# Bookkeeping entries that are not model variables.
_IGNORED_KEYS = ('_CHECKPOINTABLE_OBJECT_GRAPH', 'save_counter')
_OPTIMIZER_SLOT_MARKER = '.OPTIMIZER_SLOT'
# Sonnet ExponentialMovingAverage variables -> Haiku ExponentialMovingAverage state.
_EMA_FIELDS = (('_counter', 'counter'), ('_hidden', 'hidden'), ('average', 'average'))
_MAX_LISTED = 12


class ConversionError(ValueError):
  """A checkpoint that cannot be read or does not fit the requested model."""


@dataclasses.dataclass(frozen=True)
class VariableMapping:
  """One Sonnet variable and the Haiku entry it fills.

  Attributes:
    sonnet_key: the variable's path below the model root, e.g. `_trunk/_layers/0/...`.
    collection: 'params' or 'state'.
    module: Haiku module name, e.g. `enformer/~/trunk/~/stem/~/conv1_d`.
    name: entry within the module, e.g. `w`, or `counter` of a `.../mean_ema`.
    squeeze: the Sonnet variable drops the Haiku entry's size-1 axes (BatchNorm
      scale/offset are [C] in Sonnet, (1, 1, C) in Haiku).
  """
  sonnet_key: str
  collection: str
  module: str
  name: str
  squeeze: bool = False

  def sonnet_shape(self, haiku_shape: Sequence[int]) -> Tuple[int, ...]:
    shape = tuple(haiku_shape)
    return tuple(d for d in shape if d != 1) if self.squeeze else shape


# ----------------------------------------------------------------------------------
# The mapping: a walk over the Haiku module tree mirroring Sonnet's object graph.
# ----------------------------------------------------------------------------------


def _linear_like(module: hk.Module, path: str) -> Iterator[VariableMapping]:
  """hk.Linear / hk.Conv1D: `w` [, `b`], the same shapes as Sonnet's."""
  yield VariableMapping(f'{path}/w', 'params', module.module_name, 'w')
  if module.with_bias:
    yield VariableMapping(f'{path}/b', 'params', module.module_name, 'b')


def _walk(module, path: str) -> Iterator[VariableMapping]:
  """Mappings of `module` (a layer of `enformer.Enformer`) whose Sonnet path is `path`."""
  if isinstance(module, enformer.Enformer):
    yield from _walk(module.trunk, '_trunk')
    for head_name, head in module.heads.items():
      yield from _walk(head, f'_heads/{head_name}')
  elif isinstance(module, enformer.Sequential):
    for index, layer in enumerate(module.layers):
      yield from _walk(layer, f'{path}/_layers/{index}')
  elif isinstance(module, enformer.Residual):
    yield from _walk(module._module, f'{path}/_module')  # pylint: disable=protected-access
  elif isinstance(module, enformer.ConvBlock):
    # Sonnet's conv_block is Sequential([BatchNorm, gelu, Conv1D]).
    yield from _walk(module._batch_norm, f'{path}/_layers/0')  # pylint: disable=protected-access
    yield from _walk(module._conv, f'{path}/_layers/2')  # pylint: disable=protected-access
  elif isinstance(module, hk.BatchNorm):
    for name, create in (('scale', module.create_scale), ('offset', module.create_offset)):
      if create:
        yield VariableMapping(f'{path}/{name}', 'params', module.module_name, name,
                              squeeze=True)
    for sonnet_ema, haiku_ema in (('moving_mean', module.mean_ema),
                                  ('moving_variance', module.var_ema)):
      for sonnet_field, haiku_field in _EMA_FIELDS:
        yield VariableMapping(f'{path}/{sonnet_ema}/{sonnet_field}', 'state',
                              haiku_ema.module_name, haiku_field)
  elif isinstance(module, hk.LayerNorm):
    for name, create in (('scale', module.create_scale), ('offset', module.create_offset)):
      if create:
        yield VariableMapping(f'{path}/{name}', 'params', module.module_name, name)
  elif isinstance(module, (hk.Linear, hk.Conv1D)):
    yield from _linear_like(module, path)
  elif isinstance(module, attention_module.MultiheadAttention):
    # pylint: disable=protected-access
    layers = ['_q_layer', '_k_layer', '_v_layer', '_embedding_layer']
    if module._relative_positions:
      layers.append('_r_k_layer')
    for attr in layers:
      yield from _linear_like(getattr(module, attr), f'{path}/{attr}')
    if module._relative_positions:
      for name in ('r_w_bias', 'r_r_bias'):
        yield VariableMapping(f'{path}/_{name}', 'params', module.module_name, name)
    # pylint: enable=protected-access
  elif isinstance(module, enformer.SoftmaxPooling1D):
    # Its hk.Linear is created inside __call__, hence `<pooling>/linear` (no `~`).
    yield VariableMapping(f'{path}/_logit_linear/w', 'params',
                          f'{module.module_name}/linear', 'w')
  elif isinstance(module, (enformer.Dropout, enformer.TargetLengthCrop1D)):
    return  # No variables.
  elif isinstance(module, hk.Module):
    raise TypeError(f'convert.py does not know how Sonnet names the variables of '
                    f'{type(module).__name__} ({module.module_name}) at {path}')
  # Anything else (gelu, relu, flatten, softplus, MaxPool1D) holds no variables.


def variable_mapping(config: EnformerConfig) -> List[VariableMapping]:
  """Every Sonnet variable of `enformer.Enformer(config)` and the Haiku entry it fills."""
  def build():
    return list(_walk(enformer.Enformer(config), ''))
  # Building the modules creates no parameters, so apply needs none.
  return hk.transform(build).apply({}, None)


# ----------------------------------------------------------------------------------
# Input-length arithmetic (only the flattened head depends on it).
# ----------------------------------------------------------------------------------


def output_tokens(config: EnformerConfig, input_length: int) -> Optional[int]:
  """Tokens at the trunk's output for `input_length` bp, or None if it is too short.

  Max pooling (SAME padding) gives ceil(T / stride) tokens, attention pooling
  floor(T / 2); TargetLengthCrop1D trims (T - target) // 2 from each side.
  """
  def pool(tokens: int, stride: int) -> int:
    if config.pooling_type == 'attention':
      return tokens // stride
    return math.ceil(tokens / stride)

  tokens = pool(input_length, config.stem_pool_stride)
  for _ in range(config.conv_tower_blocks):
    tokens = pool(tokens, 2)
  if config.target_length is not None:
    trim = (tokens - config.target_length) // 2
    if trim < 0:
      return None
    tokens -= 2 * trim
  if config.final_pool:
    tokens = pool(tokens, 2)
  return tokens if tokens > 0 else None


def min_input_length(config: EnformerConfig) -> int:
  """The shortest input the trunk accepts (the crop needs `target_length` tokens)."""
  low, high = 0, 1  # output_tokens(low) is None; find a high that works.
  while output_tokens(config, high) is None:
    low, high = high, 2 * high
  while high - low > 1:  # Tokens only grow with the length: bisect.
    middle = (low + high) // 2
    if output_tokens(config, middle) is None:
      low = middle
    else:
      high = middle
  return high


def final_channels(config: EnformerConfig) -> int:
  return config.channels * config.final_channels_multiplier


def lengths_with_tokens(config: EnformerConfig, tokens: int,
                        max_length: Optional[int] = None) -> List[Tuple[int, int]]:
  """Inclusive ranges of input lengths (up to `max_length`) giving `tokens` tokens."""
  if max_length is None:
    max_length = max(1024, 4 * config.input_length)
  ranges: List[Tuple[int, int]] = []
  for length in range(1, max_length + 1):
    if output_tokens(config, length) != tokens:
      continue
    if ranges and ranges[-1][1] == length - 1:
      ranges[-1] = (ranges[-1][0], length)
    else:
      ranges.append((length, length))
  return ranges


def _describe_ranges(ranges: List[Tuple[int, int]], limit: int = 6) -> str:
  parts = [f'{a}' if a == b else f'{a}-{b}' for a, b in ranges[:limit]]
  if len(ranges) > limit:
    parts.append('...')
  return ', '.join(parts)


def _head_length_hint(config: EnformerConfig, checkpoint_shape: Sequence[int]) -> str:
  """Which input lengths a flattened head's `w` of `checkpoint_shape` was built for."""
  channels = final_channels(config)
  expected_tokens = output_tokens(config, config.input_length)
  hint = (f' The head flattens tokens x {channels} channels: input_length '
          f'{config.input_length} gives {expected_tokens} tokens.')
  if not checkpoint_shape or checkpoint_shape[0] % channels:
    return hint + (f' {checkpoint_shape[0] if checkpoint_shape else "?"} is not a '
                   f'multiple of {channels}: the checkpoint has other channels.')
  tokens = checkpoint_shape[0] // channels
  ranges = lengths_with_tokens(config, tokens)
  if not ranges:
    return hint + f' No input length gives the checkpoint\'s {tokens} tokens.'
  return hint + (f' The checkpoint\'s {checkpoint_shape[0]} = {tokens} tokens x '
                 f'{channels} channels fits input lengths {_describe_ranges(ranges)}')


# ----------------------------------------------------------------------------------
# Conversion.
# ----------------------------------------------------------------------------------


def _strip_suffix(key: str) -> str:
  return key[:-len(_VALUE_SUFFIX)] if key.endswith(_VALUE_SUFFIX) else key


def _is_bookkeeping(key: str) -> bool:
  return (key in _IGNORED_KEYS or key.endswith('/save_counter')
          or _OPTIMIZER_SLOT_MARKER in key)


def _model_root(keys: Sequence[str]) -> str:
  """The prefix before `_trunk/` ('module/' in a Checkpoint, '' in a SavedModel)."""
  roots = sorted({key[:key.index('_trunk/')] for key in keys if '_trunk/' in key})
  if not roots:
    raise ConversionError(
        'no Enformer variables (keys containing `_trunk/`) in the checkpoint; '
        f'first keys: {sorted(keys)[:5]}')
  if len(roots) > 1:
    raise ConversionError(f'several Enformer models in the checkpoint (roots {roots})')
  return roots[0]


def _list(items: Sequence[str]) -> str:
  shown = '\n  '.join(items[:_MAX_LISTED])
  more = f'\n  ... and {len(items) - _MAX_LISTED} more' if len(items) > _MAX_LISTED else ''
  return f'\n  {shown}{more}'


def convert_variables(variables: Mapping[str, np.ndarray], config: EnformerConfig
                      ) -> Tuple[hk.Params, hk.State]:
  """Haiku (params, state) of `enformer.Enformer(config)` from Sonnet variables.

  Args:
    variables: Sonnet variable name -> array, as a TF checkpoint lists them, with or
      without a root (`module/`) and the `/.ATTRIBUTES/VARIABLE_VALUE` suffix. The
      object graph, save counters and optimizer slots are ignored, and so is anything
      outside the model root (e.g. an optimizer saved beside the model).
    config: the model to fill; `config.input_length` sizes the flattened head.

  Returns:
    (params, state) as `model.make_model(config).init` lays them out: BatchNorm
    scale/offset reshaped [C] -> (1, 1, C); Sonnet's moving_mean/moving_variance
    {_counter, _hidden, average} -> `.../mean_ema`/`.../var_ema` {counter (int32),
    hidden, average} (both are zero-debiased EMAs with the same update rule).

  Raises:
    ConversionError: listing the model variables missing from `variables`, the ones
      left unused, and those of the wrong shape (for the head: the input lengths that
      the checkpoint fits).
  """
  if output_tokens(config, config.input_length) is None:
    raise ConversionError(
        f'input_length {config.input_length} is too short for this model: the trunk '
        f'needs at least {min_input_length(config)} bp')
  root, by_key = _model_variables(variables)
  param_shapes, state_shapes = model.param_shapes(config)
  expected = {'params': param_shapes, 'state': state_shapes}
  mapping = variable_mapping(config)
  covered = {(m.collection, m.module, m.name) for m in mapping}
  uncovered = [f'{c}: {mod}/{name}' for c, tree in expected.items()
               for mod, entries in tree.items() for name in entries
               if (c, mod, name) not in covered]
  if uncovered:  # A model change the walk does not know about: a bug here.
    raise TypeError('convert.variable_mapping leaves Haiku entries unfilled:'
                    + _list(uncovered))
  out, missing, mismatched = _fill(mapping, expected, by_key, root, config)
  used = {m.sonnet_key for m in mapping}
  unused = sorted(f'{root}{k} {list(np.shape(v))}' for k, v in by_key.items()
                  if k not in used)
  _check_fit(config, mismatched, missing, unused)
  return out['params'], out['state']


def _model_variables(variables: Mapping[str, np.ndarray]
                     ) -> Tuple[str, Dict[str, np.ndarray]]:
  """(the model's root, {key below the root: array}), bookkeeping left out."""
  names = [k for k in (_strip_suffix(k) for k in variables) if not _is_bookkeeping(k)]
  root = _model_root(names)
  by_key = {}
  for raw_key, value in variables.items():
    key = _strip_suffix(raw_key)
    if _is_bookkeeping(key) or not key.startswith(root):
      continue
    by_key[key[len(root):]] = value
  return root, by_key


def _fill(mapping, expected, by_key, root: str, config: EnformerConfig):
  """The Haiku trees filled from `by_key`, and the missing and misfit variables."""
  out: Dict[str, Dict[str, Dict[str, np.ndarray]]] = {'params': {}, 'state': {}}
  missing, mismatched = [], []
  for m in mapping:
    target = expected[m.collection][m.module][m.name]
    want = m.sonnet_shape(target.shape)
    if m.sonnet_key not in by_key:
      missing.append(f'{root}{m.sonnet_key} {list(want)}')
      continue
    value = np.asarray(by_key[m.sonnet_key])
    if tuple(value.shape) != want:
      problem = (f'{root}{m.sonnet_key}: checkpoint shape {list(value.shape)}, '
                 f'model expects {list(want)} ({m.module}/{m.name})')
      if (config.head_flatten and m.sonnet_key.startswith('_heads/') and m.name == 'w'
          and value.ndim == 2 and value.shape[1:] == want[1:]):
        problem += '.' + _head_length_hint(config, value.shape)
      mismatched.append(problem)
      continue
    if np.issubdtype(target.dtype, np.integer):
      if np.any(np.abs(value) > np.iinfo(target.dtype).max):
        mismatched.append(f'{root}{m.sonnet_key}: {value} overflows {target.dtype}')
        continue
    # copy=False: no copy of arrays already of the right dtype.
    out[m.collection].setdefault(m.module, {})[m.name] = (
        value.reshape(target.shape).astype(target.dtype, copy=False))
  return out, missing, mismatched


def _check_fit(config: EnformerConfig, mismatched, missing, unused) -> None:
  problems = []
  if mismatched:
    problems.append(f'{len(mismatched)} variable(s) of the wrong shape:'
                    + _list(mismatched))
  if missing:
    problems.append(f'{len(missing)} model variable(s) missing from the checkpoint:'
                    + _list(missing))
  if unused:
    problems.append(f'{len(unused)} checkpoint variable(s) the model does not use:'
                    + _list(unused))
  if problems:
    raise ConversionError(
        f'checkpoint does not fit the model (channels {config.channels}, '
        f'{config.num_transformer_layers} transformer layers, heads '
        f'{dict(config.heads)}, input_length {config.input_length}): '
        + '\n'.join(problems))


def to_sonnet_variables(params: hk.Params, state: hk.State, config: EnformerConfig,
                        root: str = 'module/') -> Dict[str, np.ndarray]:
  """The inverse of `convert_variables`: Sonnet checkpoint keys -> numpy arrays.

  Keys carry `root` and the `/.ATTRIBUTES/VARIABLE_VALUE` suffix as in a
  `tf.train.Checkpoint(module=model)`; BatchNorm counters become int64 as in Sonnet.
  """
  trees = {'params': params, 'state': state}
  variables = {}
  for m in variable_mapping(config):
    value = np.asarray(trees[m.collection][m.module][m.name])
    value = value.reshape(m.sonnet_shape(value.shape))
    if m.name == 'counter':
      value = value.astype(np.int64)
    variables[f'{root}{m.sonnet_key}{_VALUE_SUFFIX}'] = value
  return variables


def resolve_checkpoint_prefix(path: str) -> str:
  """The TF checkpoint prefix (`<prefix>.index` exists) that `path` designates.

  Accepts a prefix (`.../ckpt`, or a `.index`/`.data-*` file of one), a directory
  with a `checkpoint` file or a single `*.index`, a SavedModel directory, or its
  `variables/` directory.
  """
  path = os.fspath(path)
  for suffix in ('.index', '.data-00000-of-00001'):
    if path.endswith(suffix) and os.path.isfile(path):
      path = path[:-len(suffix)]
  if os.path.isfile(path + '.index'):
    return path
  if not os.path.exists(path):
    raise ConversionError(f'{path}: no such checkpoint (neither a file, a directory, '
                          f'nor a prefix with {os.path.basename(path)}.index)')
  if not os.path.isdir(path):
    raise ConversionError(f'{path}: not a TF checkpoint (expected a prefix whose '
                          '.index file exists, or a directory)')
  saved_model_variables = os.path.join(path, 'variables', 'variables')
  if os.path.isfile(saved_model_variables + '.index'):
    return saved_model_variables
  if os.path.isfile(os.path.join(path, 'variables.index')):
    return os.path.join(path, 'variables')
  if os.path.isfile(os.path.join(path, 'checkpoint')):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    latest = tf.train.latest_checkpoint(path)
    if latest and os.path.isfile(latest + '.index'):
      return latest
  indexes = sorted(f for f in os.listdir(path) if f.endswith('.index'))
  if len(indexes) == 1:
    return os.path.join(path, indexes[0][:-len('.index')])
  if indexes:
    raise ConversionError(f'{path}: several checkpoints ({", ".join(indexes)}); '
                          'pass the prefix of one')
  raise ConversionError(f'{path}: no TF checkpoint in this directory (no *.index, '
                        'no `checkpoint` file, no variables/variables.index)')


def read_checkpoint(path: str) -> Dict[str, np.ndarray]:
  """All variables of the TF checkpoint at `path` (see `resolve_checkpoint_prefix`)."""
  prefix = resolve_checkpoint_prefix(path)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    reader = tf.train.load_checkpoint(prefix)
    keys = reader.get_variable_to_shape_map()
    return {key: reader.get_tensor(key) for key in keys
            if key not in _IGNORED_KEYS}
  except (tf.errors.OpError, ValueError) as e:
    message = getattr(e, 'message', None) or str(e)
    raise ConversionError(f'{prefix}: cannot read the TF checkpoint: '
                          f'{message.strip().splitlines()[0]}') from e


def convert_checkpoint(path: str, config: EnformerConfig
                       ) -> Tuple[hk.Params, hk.State]:
  """Reads a TF/Sonnet Enformer checkpoint into Haiku (params, state) for `config`.

  Args:
    path: a `tf.train.Checkpoint(module=model)` prefix or its directory, or the
      directory / `variables/` / `variables/variables` of a `tf.saved_model.save`.
    config: the model the checkpoint holds, e.g. `config.seed_config(85)`; any input
      length whose head size matches the checkpoint's.

  Returns:
    (params, state) for `model.make_model(config).apply`.

  Raises:
    ConversionError: unreadable or missing path, or variables that do not fit the
      model (names, shapes and, for the head, the input lengths that would fit).
  """
  prefix = resolve_checkpoint_prefix(path)
  variables = read_checkpoint(prefix)
  try:
    return convert_variables(variables, config)
  except ConversionError as e:
    raise ConversionError(f'{prefix}: {e}') from e
