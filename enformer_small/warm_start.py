"""Warm start: a fresh model takes the trunk (and what fits of the heads) of another.

The source is this project's checkpoint (`.npz`, `checkpoint.save_checkpoint`: the
evaluated parameters and BatchNorm state, i.e. the Polyak average and re-estimated
averages where the run used them) or a TF/Sonnet checkpoint of the seed
(`convert.py`), whatever its input length and head size.

Every trunk array (parameters and BatchNorm state) must exist in the source with the
same shape and is copied bit for bit: a trunk that does not fit is another
architecture, an error. A head module is copied only if all of its arrays fit; else it
keeps its fresh initialisation, whole, and the report says why: another input length
changes the flattened head's input (85 bp: 3 tokens x 192 = 576, 110 bp: 768), other
targets change its output.
"""

import dataclasses
import os
import re
import zipfile
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import recipe as recipe_lib
from enformer_small.config import EnformerConfig

Tree = Mapping[str, Mapping[str, Any]]


class WarmStartError(ValueError):
  """A source that cannot initialise the model; the message names the file."""


@dataclasses.dataclass(frozen=True)
class WarmStartReport:
  """What `merge` did.

  loaded: modules copied from the source; reinitialised: (head module, why) kept
  fresh; unused: source modules the model has not (e.g. another head).
  """
  source: str
  loaded: Tuple[str, ...]
  reinitialised: Tuple[Tuple[str, str], ...]
  unused: Tuple[str, ...]

  def lines(self) -> List[str]:
    heads = [m for m in self.loaded if m.startswith(recipe_lib.HEAD_PREFIX)]
    out = [f'warm start from {self.source}: {len(self.loaded) - len(heads)} trunk '
           f'module(s) loaded (parameters and BatchNorm averages, bit for bit)'
           + (f', head kept: {", ".join(heads)}' if heads else '')]
    out += [f'warm start: head {module} re-initialised ({why})'
            for module, why in self.reinitialised]
    if self.unused:
      out.append(f'warm start: not used from the source: {", ".join(self.unused)}')
    return out


def _shape(x: Any) -> Tuple[int, ...]:
  return tuple(np.shape(x))


def _misfit(module: str, target: Tree, source: Tree) -> str:
  """Why `source[module]` cannot replace `target[module]`; '' when it can."""
  if module not in source:
    return 'not in the source'
  problems = [f'{name}: source {list(_shape(source[module].get(name)))}, model '
              f'{list(_shape(value))}' if name in source[module] else f'{name} missing'
              for name, value in target[module].items()
              if name not in source[module] or
              _shape(source[module][name]) != _shape(value)]
  return '; '.join(problems)


def _merge_tree(target: Tree, source: Tree, path: str, what: str):
  merged: Dict[str, Dict[str, Any]] = {}
  loaded, reinitialised = [], []
  for module, values in target.items():
    why = _misfit(module, target, source)
    if not why:
      merged[module] = {name: np.asarray(source[module][name]).astype(
          np.asarray(value).dtype, copy=False) for name, value in values.items()}
      loaded.append(module)
    elif module.startswith(recipe_lib.HEAD_PREFIX):
      merged[module] = dict(values)
      reinitialised.append((module, why))
    else:
      raise WarmStartError(f'{path}: the trunk does not fit this model ({what} of '
                           f'{module}: {why}); warm start needs the same architecture')
  return merged, loaded, reinitialised


def merge(params: Tree, state: Tree, source_params: Tree, source_state: Tree,
          source: str = '') -> Tuple[Dict, Dict, WarmStartReport]:
  """(params, state) with every array that fits taken from the source (see module doc).

  Raises:
    WarmStartError: a trunk array missing from the source or of another shape.
  """
  new_params, loaded, reinit = _merge_tree(params, source_params, source, 'parameters')
  new_state, state_loaded, state_reinit = _merge_tree(state, source_state, source,
                                                      'BatchNorm state')
  # A head whose parameters were re-initialised has no state; the reverse cannot be.
  del state_loaded, state_reinit
  unused = sorted(set(source_params) - set(params))
  return new_params, new_state, WarmStartReport(
      source=source, loaded=tuple(loaded), reinitialised=tuple(reinit),
      unused=tuple(unused))


def _tf_source_config(variables: Mapping[str, np.ndarray],
                      config: EnformerConfig) -> EnformerConfig:
  """`config` with the heads and an input length that fit a TF checkpoint's heads."""
  from enformer_small import convert
  heads, length = [], config.input_length
  for key, value in sorted(variables.items()):
    found = re.match(r'(?:.*/)?_heads/([^/]+)/.*\bw(?:/\.ATTRIBUTES/VARIABLE_VALUE)?$',
                     key)
    if not found or np.ndim(value) != 2:
      continue
    heads.append((found.group(1), int(value.shape[-1])))
    channels = convert.final_channels(config)
    if config.head_flatten and value.shape[0] % channels == 0:
      ranges = convert.lengths_with_tokens(config, value.shape[0] // channels)
      if ranges and not any(a <= length <= b for a, b in ranges):
        length = ranges[0][0]
  return dataclasses.replace(config, heads=tuple(heads) or config.heads,
                             input_length=length)


def read_source(path: str, config: EnformerConfig) -> Tuple[Tree, Tree]:
  """(params, state) of a `.npz` or a TF/Sonnet checkpoint, for `config`'s trunk.

  Raises:
    WarmStartError: unreadable or missing path.
  """
  if path.endswith('.npz') or (os.path.isfile(path) and
                               zipfile.is_zipfile(path)):
    try:
      ckpt = checkpoint_lib.load_checkpoint(path)
    except checkpoint_lib.CheckpointError as e:
      raise WarmStartError(str(e)) from None
    return ckpt.params, ckpt.state
  from enformer_small import convert
  try:
    variables = convert.read_checkpoint(path)
    return convert.convert_variables(variables, _tf_source_config(variables, config))
  except convert.ConversionError as e:
    raise WarmStartError(f'{path}: {e}') from None
