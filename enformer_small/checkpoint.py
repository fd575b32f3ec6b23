"""Checkpoints: one `.npz` file per checkpoint, written atomically, read without pickle.

Format (`FORMAT`), an uncompressed NumPy `.npz` (a zip of `.npy` members):

  params/<i>      one array per Haiku parameter (i = 0, 1, ... in sorted order)
  state/<i>       one array per BatchNorm state entry
  opt_state/<i>   one array per optax state leaf (flattened in `jax.tree_util` order)
  rng             uint32 key data of the training RNG (optional)
  __metadata__    uint8 bytes of a UTF-8 JSON object:
                    format, model_config (the `EnformerConfig` fields), epoch, step,
                    metrics (a list of per-epoch dicts), extra (e.g. the training flags),
                    names: {"params": [[module, name], ...], "state": [...],
                            "opt_state": [jax keystr path, ...]}

Array members are numbered and their Haiku (module, name) or optax paths live in the
metadata, so no separator can clash with a module name. Everything loads with
`np.load(allow_pickle=False)`: a checkpoint cannot run code. The optimizer state comes
back as its leaves; pass `opt_state_template` (e.g. `optimizer.init(params)`) to
`load_checkpoint` to get the optax pytree back, each leaf checked against the template's
path and shape (and cast to its dtype).

Writing: to a temporary file in the destination directory, flushed and fsynced, then
`os.replace`d onto the final name (and the directory fsynced), so a reader sees either the
old checkpoint or the new one, never a partial file, even if the writer is killed.

Reading: anything wrong with the file (missing, truncated, corrupt zip or CRC, missing
members, metadata of another format) raises `CheckpointError` naming the file.

A run directory holds `checkpoint_epoch_NNNN.npz` (the last few epochs) and
`checkpoint_best.npz`; `latest_checkpoint` finds the newest epoch checkpoint.
"""

import dataclasses
import json
import os
import re
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from enformer_small import files
from enformer_small import plasmid
from enformer_small.config import EnformerConfig

FORMAT = 'enformer_small-checkpoint-v1'
METADATA_KEY = '__metadata__'
EPOCH_PATTERN = re.compile(r'^checkpoint_epoch_(\d+)\.npz$')
BEST_NAME = 'checkpoint_best.npz'


class CheckpointError(Exception):
  """A checkpoint that cannot be read or written; the message names the file."""


class OptimizerMismatchError(CheckpointError):
  """A whole checkpoint whose optimizer state is not the given optimizer's."""

  def __init__(self, path: str, message: str):
    super().__init__(f'{path}: {message}')
    self.path = path


def model_config_to_dict(config: EnformerConfig) -> Dict[str, Any]:
  """JSON-ready fields of an EnformerConfig (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def model_config_from_dict(fields: Mapping[str, Any]) -> EnformerConfig:
  """Inverse of `model_config_to_dict`; unknown fields are an error."""
  known = {f.name for f in dataclasses.fields(EnformerConfig)}
  unknown = sorted(set(fields) - known)
  if unknown:
    raise ValueError(f'unknown EnformerConfig fields {unknown}')
  fields = dict(fields)
  if 'heads' in fields:
    fields['heads'] = tuple((str(name), int(n)) for name, n in fields['heads'])
  return EnformerConfig(**fields)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """What a checkpoint holds (arrays as numpy, on the host).

  Attributes:
    path: the file it was read from.
    params, state: Haiku parameters and BatchNorm state, {module: {name: array}}.
    model_config: the model the parameters belong to.
    opt_state: the optax state (a pytree when a template was given to
      `load_checkpoint`, else the list of its leaves), or None if not saved.
    rng: uint32 key data of the training RNG, or None.
    epoch: completed epochs; step: completed train steps.
    metrics: per-epoch metric dicts so far.
    extra: anything else the writer recorded (training flags, crop_start, the
      recipe, ...).
    train_params, train_state: the parameters and BatchNorm state training goes on
      from, where they differ from `params` / `state` (what is evaluated: e.g. a
      Polyak average of the parameters, re-estimated BatchNorm averages); else None.
  """
  path: str
  params: Dict[str, Dict[str, np.ndarray]]
  state: Dict[str, Dict[str, np.ndarray]]
  model_config: EnformerConfig
  opt_state: Any = None
  rng: Optional[np.ndarray] = None
  epoch: int = 0
  step: int = 0
  metrics: Tuple[Dict[str, Any], ...] = ()
  extra: Dict[str, Any] = dataclasses.field(default_factory=dict)
  train_params: Optional[Dict[str, Dict[str, np.ndarray]]] = None
  train_state: Optional[Dict[str, Dict[str, np.ndarray]]] = None

  @property
  def crop_start(self) -> int:
    """First position of the model's window in the 110 bp encoding: as recorded by
    training, else the seed's 3:2 split (`plasmid.default_window_start`: 15 for 85 bp).

    With a plasmid context (`plasmid_context` > 0) it counts in the rows extended by
    that many plasmid bases on each side (`plasmid.add_context`).
    """
    if 'crop_start' in self.extra:
      return int(self.extra['crop_start'])
    return plasmid.default_window_start(self.model_config.input_length,
                                        self.plasmid_context)

  @property
  def plasmid_context(self) -> int:
    """Plasmid bases the model's rows carry on each side of the construct (0: none)."""
    return int(self.extra.get('plasmid_context', 0))

  @property
  def recipe(self) -> Dict[str, Any]:
    """The training recipe's fields as recorded (empty for converted checkpoints)."""
    return dict(self.extra.get('recipe') or {})


# ---------------------------------------------------------------------------
# Flattening.


def _flatten_haiku(tree: Mapping[str, Mapping[str, Any]], prefix: str
                   ) -> Tuple[Dict[str, np.ndarray], List[List[str]]]:
  arrays, names = {}, []
  for module in sorted(tree):
    for name in sorted(tree[module]):
      arrays[f'{prefix}/{len(names)}'] = np.asarray(tree[module][name])
      names.append([module, name])
  return arrays, names


def _unflatten_haiku(arrays: Mapping[str, np.ndarray], names: Sequence[Sequence[str]],
                     prefix: str) -> Dict[str, Dict[str, np.ndarray]]:
  tree: Dict[str, Dict[str, np.ndarray]] = {}
  for i, (module, name) in enumerate(names):
    tree.setdefault(module, {})[name] = arrays[f'{prefix}/{i}']
  return tree


def _flatten_opt_state(opt_state: Any) -> Tuple[Dict[str, np.ndarray], List[str]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(opt_state)
  arrays, names = {}, []
  for i, (path, leaf) in enumerate(leaves):
    arrays[f'opt_state/{i}'] = np.asarray(leaf)
    names.append(jax.tree_util.keystr(path))
  return arrays, names


def _restore_opt_state(path: str, leaves: Sequence[np.ndarray], names: Sequence[str],
                       template: Any) -> Any:
  """Puts saved leaves into the structure of `template`, checking each one."""
  template_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
  template_names = [jax.tree_util.keystr(p) for p, _ in template_leaves]
  if template_names != list(names):
    missing = sorted(set(template_names) - set(names))
    unexpected = sorted(set(names) - set(template_names))
    raise OptimizerMismatchError(
        path, f'optimizer state does not match the optimizer: missing '
        f'{missing[:5]}, unexpected {unexpected[:5]} (was it written with another '
        'optimizer?)')
  restored = []
  for name, saved, (_, like) in zip(names, leaves, template_leaves):
    # `like` may be an array or a jax.ShapeDtypeStruct (from jax.eval_shape).
    shape, dtype = tuple(np.shape(like)), np.dtype(like.dtype)
    if saved.shape != shape:
      raise OptimizerMismatchError(path, f'optimizer state {name} has shape '
                                   f'{saved.shape}, the optimizer expects {shape}')
    restored.append(saved.astype(dtype, copy=False))
  return jax.tree_util.tree_unflatten(treedef, restored)


def _to_host(tree: Any) -> Any:
  """Device arrays -> numpy (fetches once, in parallel)."""
  return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def _rng_data(rng: Any) -> np.ndarray:
  if rng is None:
    return None
  if hasattr(rng, 'dtype') and jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return np.asarray(jax.device_get(rng))


# ---------------------------------------------------------------------------
# Writing.


def pack_checkpoint(*, params: Any, state: Any, model_config: EnformerConfig,
                    opt_state: Any = None, rng: Any = None, epoch: int = 0,
                    step: int = 0, metrics: Sequence[Mapping[str, Any]] = (),
                    extra: Optional[Mapping[str, Any]] = None,
                    train_params: Any = None, train_state: Any = None,
                    ) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """The numbered host arrays and the JSON metadata of a checkpoint (see `FORMAT`).

  Both writers (this module's `.npz` and `checkpointer`'s orbax directories) store
  exactly these, so both read back through `unpack_checkpoint`.
  """
  arrays, param_names = _flatten_haiku(_to_host(params), 'params')
  state_arrays, state_names = _flatten_haiku(_to_host(state), 'state')
  arrays.update(state_arrays)
  resume_names = {}
  for prefix, tree in (('train_params', train_params), ('train_state', train_state)):
    if tree is not None:
      tree_arrays, resume_names[prefix] = _flatten_haiku(_to_host(tree), prefix)
      arrays.update(tree_arrays)
  opt_names = None
  if opt_state is not None:
    opt_arrays, opt_names = _flatten_opt_state(_to_host(opt_state))
    arrays.update(opt_arrays)
  rng = _rng_data(rng)
  if rng is not None:
    arrays['rng'] = rng
  metadata = dict(
      format=FORMAT,
      model_config=model_config_to_dict(model_config),
      epoch=int(epoch), step=int(step),
      metrics=list(metrics), extra=dict(extra or {}),
      names=dict(params=param_names, state=state_names, opt_state=opt_names,
                 **resume_names))
  return arrays, metadata


def metadata_json(path: str, metadata: Mapping[str, Any]) -> str:
  """`metadata` as JSON text (NaN allowed); CheckpointError naming `path` if it is not
  JSON-serialisable."""
  try:
    return json.dumps(metadata, allow_nan=True)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f'{path}: metadata is not JSON-serialisable: {e}') from e


def save_checkpoint(path: str, **fields: Any) -> str:
  """Writes a checkpoint to one `.npz` file atomically; returns `path`.

  Args:
    path: destination file (`.npz`); its directory is created if needed.
    **fields: those of `pack_checkpoint`:
      params, state: Haiku params and state ({module: {name: array}}), unreplicated,
        numpy or jax arrays.
      model_config: the EnformerConfig of the model.
      opt_state: optax state (any pytree of arrays), or None.
      rng: a jax PRNG key (raw uint32 or typed), or None.
      epoch, step: completed epochs and train steps.
      metrics: per-epoch metric dicts (JSON-serialisable).
      extra: JSON-serialisable extras (training flags, crop_start, ...).
      train_params, train_state: what training continues from when it is not
        `params` / `state` (see `Checkpoint`), or None.
  Raises:
    CheckpointError: metadata that is not JSON-serialisable, or the write failed.
  """
  arrays, metadata = pack_checkpoint(**fields)
  text = metadata_json(path, metadata)
  arrays[METADATA_KEY] = np.frombuffer(text.encode('utf-8'), np.uint8)
  try:
    files.atomic_write(path, lambda f: np.savez(f, **arrays))
  except OSError as e:
    raise CheckpointError(f'{path}: could not write the checkpoint: {e}') from e
  return os.fspath(path)


# ---------------------------------------------------------------------------
# Reading.


def load_checkpoint(path: str, opt_state_template: Any = None) -> Checkpoint:
  """Reads a checkpoint written by `save_checkpoint`.

  Args:
    path: the `.npz` file.
    opt_state_template: a pytree with the optimizer state's structure (e.g.
      `optimizer.init(params)`, or its `jax.eval_shape`); with it `opt_state` comes
      back as that pytree, without it as the list of saved leaves.
  Raises:
    CheckpointError: missing, truncated or corrupt file, or one of another format;
      the message names the file.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise CheckpointError(f'{path}: no such checkpoint file')
  # np.load falls back to unpickling anything that is not a zip (and then blames
  # "pickled data"), so tell a truncated or foreign file apart first.
  if not zipfile.is_zipfile(path):
    raise CheckpointError(f'{path}: not a readable checkpoint: not a zip archive '
                          '(truncated, empty, or another kind of file)')
  try:
    with np.load(path, allow_pickle=False) as npz:
      # Reading every member checks each one's CRC: a corrupt file fails here.
      arrays = {key: npz[key] for key in npz.files}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile,
          zipfile.LargeZipFile) as e:
    raise CheckpointError(f'{path}: not a readable checkpoint (truncated or corrupt?): '
                          f'{type(e).__name__}: {e}') from e
  if METADATA_KEY not in arrays:
    raise CheckpointError(f'{path}: not an enformer_small checkpoint (no {METADATA_KEY} '
                          'entry)')
  try:
    metadata = json.loads(arrays.pop(METADATA_KEY).tobytes().decode('utf-8'))
  except (UnicodeDecodeError, ValueError) as e:
    raise CheckpointError(f'{path}: unreadable metadata: {e}') from e
  return unpack_checkpoint(path, arrays, metadata, opt_state_template)


def unpack_checkpoint(path: str, arrays: Dict[str, np.ndarray], metadata: Any,
                      opt_state_template: Any = None) -> Checkpoint:
  """The Checkpoint of `pack_checkpoint`'s arrays and metadata, read from `path`.

  Raises:
    CheckpointError: metadata of another format, missing or inconsistent arrays.
  """
  if not isinstance(metadata, dict) or metadata.get('format') != FORMAT:
    found = metadata.get('format') if isinstance(metadata, dict) else None
    raise CheckpointError(f'{path}: checkpoint format {found!r}, expected {FORMAT!r}')
  try:
    names = metadata['names']
    params = _unflatten_haiku(arrays, names['params'], 'params')
    state = _unflatten_haiku(arrays, names['state'], 'state')
    model_config = model_config_from_dict(metadata['model_config'])
    resume_trees = {prefix: (_unflatten_haiku(arrays, names[prefix], prefix)
                             if names.get(prefix) is not None else None)
                    for prefix in ('train_params', 'train_state')}
    opt_state = None
    if names.get('opt_state') is not None:
      leaves = [arrays[f'opt_state/{i}'] for i in range(len(names['opt_state']))]
      opt_state = (leaves if opt_state_template is None else
                   _restore_opt_state(path, leaves, names['opt_state'],
                                      opt_state_template))
  except CheckpointError:
    raise
  except (KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f'{path}: incomplete or inconsistent checkpoint: '
                          f'{type(e).__name__}: {e}') from e
  return Checkpoint(
      path=path, params=params, state=state, model_config=model_config,
      opt_state=opt_state, rng=arrays.get('rng'), epoch=int(metadata['epoch']),
      step=int(metadata['step']), metrics=tuple(metadata.get('metrics', ())),
      extra=dict(metadata.get('extra') or {}), **resume_trees)


# ---------------------------------------------------------------------------
# Run directories.


def epoch_checkpoint_path(directory: str, epoch: int) -> str:
  return os.path.join(directory, f'checkpoint_epoch_{epoch:04d}.npz')


def best_checkpoint_path(directory: str) -> str:
  return os.path.join(directory, BEST_NAME)


def epoch_checkpoints(directory: str) -> List[Tuple[int, str]]:
  """(epoch, path) of the epoch checkpoints in `directory`, oldest first."""
  if not os.path.isdir(directory):
    return []
  found = []
  for name in os.listdir(directory):
    match = EPOCH_PATTERN.match(name)
    if match:
      found.append((int(match.group(1)), os.path.join(directory, name)))
  return sorted(found)


def latest_checkpoint(directory: str) -> Optional[str]:
  """Path of the newest epoch checkpoint in `directory`, or None."""
  found = epoch_checkpoints(directory)
  return found[-1][1] if found else None


def prune_checkpoints(directory: str, keep: int) -> List[str]:
  """Deletes all but the newest `keep` epoch checkpoints; returns the deleted paths.

  `checkpoint_best.npz` is never touched. keep <= 0 keeps everything.
  """
  if keep <= 0:
    return []
  doomed = [path for _, path in epoch_checkpoints(directory)[:-keep]]
  for path in doomed:
    os.remove(path)
  return doomed
