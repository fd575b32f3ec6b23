"""A training run's checkpoints: one object saves and restores them (as BYOL's).

Layout of a run directory:

  checkpoints/<global step>/   the saves of the last `keep` epoch ends, and the newest
                               save if it is within an epoch (an older one within an
                               epoch is superseded), written by orbax
                               (`orbax.checkpoint.CheckpointManager`):
      arrays/                  the numbered arrays of `checkpoint.pack_checkpoint`
                               (params, BatchNorm state, what training goes on from,
                               optimizer leaves, rng), and within an epoch the training
                               predictions and targets so far, in orbax's standard
                               (tensorstore) format
      meta/                    JSON: `pack_checkpoint`'s metadata (config, names of the
                               arrays, epoch, step, metrics, extras), the position in the
                               epoch, and a CRC-32 of every array
  checkpoint_best.npz          the best epoch as one pickle-free file
                               (`checkpoint.save_checkpoint`), which predict, attribute,
                               variant_effects and convert read

Nothing is pickled: orbax writes arrays through tensorstore and the metadata as JSON.

Orbax commits a save by renaming its temporary directory, so a killed write leaves no
step directory behind, only a temporary one, which `remove_temporaries` deletes (with the
`.npz` writer's `.<name>.*.tmp` files). Orbax does not notice every damaged file:
tensorstore checksums its b-tree nodes but not the chunks of large arrays, where a
flipped byte reads back as wrong numbers without an error (a test shows it). So the
metadata carries a CRC-32 of every array, checked on restore. `restore_latest` skips a
damaged or unreadable checkpoint, saying which and why, moves it aside into
`damaged_checkpoints/` and goes on with the next older one.

In a multi-host job only process 0 calls `save` (the arrays are host copies, the same
on every process), and orbax runs on each process as if it were alone: no barrier waits
for processes that save nothing, or that read another number of checkpoints.
"""

import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import time
import zlib
from typing import Any, Callable, Dict, List, Optional

import jax
import numpy as np

from enformer_small import checkpoint as checkpoint_lib

log = logging.getLogger(__name__)

CHECKPOINT_DIR = 'checkpoints'
DAMAGED_DIR = 'damaged_checkpoints'
PROGRESS_KEYS = ('progress/predictions', 'progress/targets')
# Temporary files of `files.atomic_write` ('.<final name>.<random>.tmp') and the
# temporary directories of orbax ('<step>.orbax-checkpoint-tmp-<time>').
_NPZ_TEMPORARY = re.compile(r'^\..+\.tmp$')
_ORBAX_TEMPORARY = re.compile(r'\.orbax-checkpoint-tmp')


@dataclasses.dataclass(frozen=True)
class EpochProgress:
  """How far the epoch in progress had got when it was saved.

  steps: its train steps done.
  predictions, targets: the training-mode predictions of those steps and their targets,
    [steps * global batch], in the order a single process sees them.
  seconds: the training time they took.
  """
  steps: int
  predictions: np.ndarray
  targets: np.ndarray
  seconds: float


@dataclasses.dataclass(frozen=True)
class Restored:
  """A checkpoint read back; `progress` is None for one written at an epoch's end."""
  checkpoint: checkpoint_lib.Checkpoint
  progress: Optional[EpochProgress]


def _crc(array: np.ndarray) -> int:
  # dtype and shape count too: the same bytes read as another array are damage.
  header = zlib.crc32(f'{array.dtype.str}{array.shape}'.encode())
  return zlib.crc32(np.ascontiguousarray(array).tobytes(), header)


def _nest(arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
  """{'params/0': a, 'rng': r} -> {'params': {'0': a}, 'rng': r}: orbax's tree."""
  tree: Dict[str, Any] = {}
  for key, value in arrays.items():
    group, _, index = key.partition('/')
    if index:
      tree.setdefault(group, {})[index] = value
    else:
      tree[group] = value
  return tree


def _flat(tree: Dict[str, Any]) -> Dict[str, np.ndarray]:
  arrays = {}
  for group, value in tree.items():
    if isinstance(value, dict):
      arrays.update({f'{group}/{index}': np.asarray(v) for index, v in value.items()})
    else:
      arrays[group] = np.asarray(value)
  return arrays


def remove_temporaries(run_dir: str) -> List[str]:
  """Deletes what killed writes left in `run_dir`; returns the paths removed.

  Only call it while no other process writes into `run_dir` (process 0, at the start).
  """
  removed = []
  checkpoints = os.path.join(run_dir, CHECKPOINT_DIR)
  for directory, pattern in ((run_dir, _NPZ_TEMPORARY), (checkpoints, _ORBAX_TEMPORARY)):
    if not os.path.isdir(directory):
      continue
    for name in sorted(os.listdir(directory)):
      path = os.path.join(directory, name)
      if pattern.search(name):
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        removed.append(path)
  return removed


class Checkpointer:
  """Saves and restores the checkpoints of one run directory (see the module docstring).

  Attributes:
    run_dir: the run directory.
    keep: epoch-end saves kept in `checkpoints/` (the newest), besides the newest save
      within an epoch; 0 keeps all.
  """

  def __init__(self, run_dir: str, keep: int = 3):
    self.run_dir = os.fspath(run_dir)
    self.keep = keep
    self.directory = os.path.join(self.run_dir, CHECKPOINT_DIR)
    self._manager = None
    self._at_epoch_end = {}  # step -> whether its save is of an epoch's end.

  def _open(self):
    """The orbax manager, made on first use: a run that never saves creates nothing."""
    if self._manager is None:
      import orbax.checkpoint as ocp  # Seconds to import; only runs that save need it.
      # Orbax leaves making the directory to us when it runs on one process alone.
      os.makedirs(self.directory, exist_ok=True)
      options = ocp.CheckpointManagerOptions(
          # Retention is `_prune`'s: orbax's would count saves within epochs too.
          max_to_keep=None, create=False, cleanup_tmp_directories=True,
          multiprocessing_options=_alone(),
          # Synchronous: a save is whole once `save` returns, so Ctrl-C, deferred
          # while it runs, never leaves one half written.
          enable_async_checkpointing=False)
      self._manager = ocp.CheckpointManager(os.path.abspath(self.directory),
                                            options=options)
    return self._manager

  def path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def steps(self) -> List[int]:
    """Global steps of the saves in `checkpoints/`, oldest first.

    Read from the directory names: looking needs no orbax manager (which makes the
    directory). Orbax names a step's directory only once its save is complete.
    """
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())

  def latest(self) -> Optional[str]:
    """The newest save (or, in a run directory of the earlier format, the newest
    `checkpoint_epoch_NNNN.npz`), or None."""
    steps = self.steps()
    return self.path(steps[-1]) if steps else checkpoint_lib.latest_checkpoint(
        self.run_dir)

  def save(self, *, progress: Optional[EpochProgress] = None, **fields: Any) -> str:
    """Saves a checkpoint under its global step (`fields['step']`); returns its path.

    Call it on process 0 only.

    Args:
      progress: within an epoch, how far it got; None at an epoch's end.
      **fields: those of `checkpoint.pack_checkpoint`; `epoch` counts completed epochs.
    Raises:
      CheckpointError: metadata that is not JSON-serialisable, or the write failed.
    """
    import orbax.checkpoint as ocp
    arrays, metadata = checkpoint_lib.pack_checkpoint(**fields)
    if progress is not None:
      arrays.update(zip(PROGRESS_KEYS, (np.asarray(progress.predictions, np.float32),
                                        np.asarray(progress.targets, np.float32))))
      metadata['progress'] = dict(steps=int(progress.steps),
                                  seconds=float(progress.seconds))
    metadata['crc32'] = {key: _crc(a) for key, a in arrays.items()}
    step, path = int(metadata['step']), self.path(int(metadata['step']))
    checkpoint_lib.metadata_json(path, metadata)  # Fails here rather than in orbax.
    try:
      saved = self._open().save(step, args=ocp.args.Composite(
          arrays=ocp.args.StandardSave(_nest(arrays)), meta=ocp.args.JsonSave(metadata)))
      self._manager.wait_until_finished()
    except (OSError, ValueError) as e:
      full = isinstance(e, OSError) and e.errno == errno.ENOSPC
      raise checkpoint_lib.CheckpointError(
          f'{path}: could not write the checkpoint ({_first_line(e)}): '
          + ('the disk is full; free space' if full else 'fix the cause')
          + ', then --resume continues from the last checkpoint') from e
    if not saved:  # Orbax declines, without an error, a step not after its newest.
      raise checkpoint_lib.CheckpointError(
          f'{path}: not saved: {self.path(self.steps()[-1])} is of a later step')
    self._at_epoch_end[step] = progress is None
    self._prune()
    return path

  def _prune(self) -> None:
    """Deletes all but the saves of the last `keep` epoch ends and the newest save."""
    if not self.keep:
      return
    steps = self.steps()
    ends = [step for step in steps if self._is_epoch_end(step)]
    kept = set(ends[-self.keep:]) | set(steps[-1:])
    for step in steps:
      if step not in kept:
        self._manager.delete(step)

  def _is_epoch_end(self, step: int) -> bool:
    """From the save's metadata; one that cannot be read counts as within an epoch, so
    that it never displaces an epoch end (restoring would skip it anyway)."""
    if step not in self._at_epoch_end:
      try:
        with open(os.path.join(self.path(step), 'meta', 'metadata'), 'rb') as f:
          self._at_epoch_end[step] = json.load(f).get('progress') is None
      except (OSError, ValueError, AttributeError):
        self._at_epoch_end[step] = False
    return self._at_epoch_end[step]

  def read(self, path: str, opt_state_template: Any = None) -> Restored:
    """Reads and verifies one checkpoint: a save in `checkpoints/` or an `.npz` file.

    Raises:
      OptimizerMismatchError: a whole checkpoint of another optimizer.
      CheckpointError: anything else unreadable; the message names `path`.
    """
    if path.endswith('.npz'):
      return Restored(checkpoint_lib.load_checkpoint(path, opt_state_template), None)
    import orbax.checkpoint as ocp
    try:
      with ocp.Checkpointer(ocp.CompositeCheckpointHandler(),
                            multiprocessing_options=_alone()) as reader:
        restored = reader.restore(os.path.abspath(path), args=ocp.args.Composite(
            arrays=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
      arrays, metadata = _flat(dict(restored['arrays'])), dict(restored['meta'])
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and tensorstore raise many kinds (ValueError, OSError, their own) for a
      # missing, truncated or garbled file; all of them mean this save is unreadable.
      raise checkpoint_lib.CheckpointError(
          f'{path}: unreadable ({type(e).__name__}: {_first_line(e)})') from e
    expected = metadata.get('crc32') or {}
    damaged = sorted(key for key, crc in expected.items()
                     if key not in arrays or _crc(arrays[key]) != crc)
    if not expected or damaged:
      raise checkpoint_lib.CheckpointError(
          f'{path}: damaged (CRC-32 mismatch in {", ".join(damaged[:3]) or "metadata"})')
    progress = metadata.get('progress')
    if progress is not None:
      progress = EpochProgress(steps=int(progress['steps']),
                               predictions=arrays.pop(PROGRESS_KEYS[0]),
                               targets=arrays.pop(PROGRESS_KEYS[1]),
                               seconds=float(progress['seconds']))
    ckpt = checkpoint_lib.unpack_checkpoint(path, arrays, metadata, opt_state_template)
    return Restored(checkpoint=ckpt, progress=progress)

  def restore_latest(self, opt_state_template: Any = None,
                     on_damaged: Callable[[str], None] = lambda message: None
                     ) -> Optional[Restored]:
    """The newest checkpoint that reads back whole, or None if there is none.

    A damaged or unreadable one is reported to `on_damaged` (one line naming it, why,
    and where it was moved) and skipped. Checkpoints of the earlier format
    (`checkpoint_epoch_NNNN.npz`) count as older than any save in `checkpoints/`.

    Args:
      opt_state_template: see `checkpoint.load_checkpoint`.
    Raises:
      OptimizerMismatchError: the newest whole checkpoint is of another optimizer (not
        damage: older ones would not match either).
    """
    candidates = [self.path(step) for step in reversed(self.steps())]
    candidates += [path for _, path in
                   reversed(checkpoint_lib.epoch_checkpoints(self.run_dir))]
    for path in candidates:
      try:
        return self.read(path, opt_state_template)
      except checkpoint_lib.OptimizerMismatchError:
        raise
      except checkpoint_lib.CheckpointError as e:
        on_damaged(f'{e}; {self._move_aside(path)}')
    return None

  def _move_aside(self, path: str) -> str:
    """Moves a damaged checkpoint out of the way: a new save may need its step, and
    retention would count it."""
    if jax.process_index() != 0:
      return 'skipped'
    target = os.path.join(self.run_dir, DAMAGED_DIR,
                          f'{os.path.basename(path)}.{time.time_ns()}')
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(path, target)
    if self._manager is not None:
      self._manager.reload()
    return f'moved to {target}'

  def delete_all(self) -> None:
    """Removes every checkpoint of the run, in either format, the best one and the
    damaged ones included."""
    self.close()
    for directory in (self.directory, os.path.join(self.run_dir, DAMAGED_DIR)):
      if os.path.isdir(directory):
        shutil.rmtree(directory)
    for _, path in checkpoint_lib.epoch_checkpoints(self.run_dir):
      os.remove(path)
    best = checkpoint_lib.best_checkpoint_path(self.run_dir)
    if os.path.exists(best):
      os.remove(best)

  def export_best(self, **fields: Any) -> str:
    """Writes `checkpoint_best.npz` (process 0 only; see `checkpoint.save_checkpoint`)."""
    return checkpoint_lib.save_checkpoint(
        checkpoint_lib.best_checkpoint_path(self.run_dir), **fields)

  def close(self) -> None:
    if self._manager is not None:
      self._manager.close()
      self._manager = None


def _alone():
  """Orbax's options for this process by itself (see the module docstring)."""
  import orbax.checkpoint as ocp
  me = jax.process_index()
  return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return text.splitlines()[0][:300] if text else type(error).__name__


def load_any(path: str) -> checkpoint_lib.Checkpoint:
  """The checkpoint a user names: an `.npz` file, a run directory (its best model,
  `checkpoint_best.npz`, said in the log) or one of its `checkpoints/<step>` saves.

  Raises:
    CheckpointError: anything else, saying which path to give.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    return checkpoint_lib.load_checkpoint(path)
  best = checkpoint_lib.best_checkpoint_path(path)
  if os.path.isfile(best):
    log.info('%s is a run directory: using its best model, %s', path, best)
    return checkpoint_lib.load_checkpoint(best)
  if os.path.isdir(os.path.join(path, 'meta')) and os.path.isdir(os.path.join(path, 'arrays')):
    return Checkpointer(os.path.dirname(os.path.dirname(os.path.abspath(path)))).read(
        path).checkpoint
  steps = sorted((int(n) for n in os.listdir(path) if n.isdigit()), reverse=True)
  hint = (f' (it holds saves: give one of them, e.g. {os.path.join(path, str(steps[0]))})'
          if steps else '')
  raise checkpoint_lib.CheckpointError(
      f'{path} is a directory without {checkpoint_lib.BEST_NAME}{hint}; give a .npz '
      'checkpoint, a run directory, or one of its checkpoints/<step> directories')
