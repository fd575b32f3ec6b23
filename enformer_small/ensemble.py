"""Several checkpoints as one model: every member predicts through the one inference path.

An ensemble's prediction of a sequence is the mean of its members' predictions, each
made as that member's checkpoint records (`inference.Predictor`); its spread is their
standard deviation across members (ddof 1; 0 for one member). Members must read the
same inputs (`inference.Layout`) and predict the same targets; their windows, shifts
and strands may differ. A single checkpoint is an ensemble of one, so every command
takes one or several.

Members are named on the command line as a comma list, a file listing them (one path a
line, '#' comments, paths relative to the file), or both mixed.
"""

import dataclasses
import os
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import checkpointer
from enformer_small import inference

Progress = Optional[Any]


class EnsembleError(ValueError):
  """Members that cannot be used together, or a member list that cannot be read."""


@dataclasses.dataclass(frozen=True)
class Predictions:
  """members: float32 [K, N, T]; mean and spread (sd across members) [N, T]."""
  members: np.ndarray

  @property
  def mean(self) -> np.ndarray:
    return _mean(self.members)

  @property
  def spread(self) -> np.ndarray:
    return _spread(self.members)


def _mean(members: np.ndarray) -> np.ndarray:
  """float32 mean over the member axis, summed in float64 (one member: unchanged)."""
  return np.mean(np.asarray(members, np.float64), axis=0).astype(np.float32)


def _spread(members: np.ndarray) -> np.ndarray:
  """float32 sd over the member axis (ddof 1); zeros for one member."""
  if members.shape[0] < 2:
    return np.zeros(members.shape[1:], np.float32)
  return np.std(np.asarray(members, np.float64), axis=0, ddof=1).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Ensemble:
  """Members (`inference.Predictor`s) that read the same inputs and predict the same
  targets; `checkpoints` are what they were read from."""
  members: Tuple[inference.Predictor, ...]
  checkpoints: Tuple[checkpoint_lib.Checkpoint, ...] = ()

  def __post_init__(self):
    check_compatible(self.members)

  @property
  def layout(self) -> inference.Layout:
    return self.members[0].layout

  @property
  def targets(self) -> Tuple[str, ...]:
    return self.members[0].targets

  @property
  def size(self) -> int:
    return len(self.members)

  @property
  def passes(self) -> int:
    """Forward passes per row over all members."""
    return sum(len(m.windows.passes) for m in self.members)

  def covered(self) -> np.ndarray:
    """bool [layout.length]: positions some window of some member reads."""
    return np.any([m.covered() for m in self.members], axis=0)

  def predict_codes(self, codes: np.ndarray, *, progress=None,
                    batch_size: Optional[int] = None) -> Predictions:
    """Every member's predictions of sequence codes uint8 [N, layout.length]."""
    return Predictions(np.stack([
        m.predict_codes(codes, progress=progress, batch_size=batch_size)
        for m in self.members]))

  def predict(self, sequences: Sequence[str], **kwargs) -> Predictions:
    return self.predict_codes(self.layout.encode(sequences).codes, **kwargs)


def check_compatible(members: Sequence[inference.Predictor]) -> None:
  """Raises EnsembleError unless the members read the same inputs and predict the
  same targets."""
  if not members:
    raise EnsembleError('an ensemble needs at least one checkpoint')
  first = members[0]
  for member in members[1:]:
    if member.layout != first.layout:
      raise EnsembleError(
          f'{member.source} reads other inputs than {first.source}: '
          f'{_layout_text(member.layout)} against {_layout_text(first.layout)}')
    if member.targets != first.targets:
      raise EnsembleError(f'{member.source} predicts {", ".join(member.targets)}; '
                          f'{first.source} predicts {", ".join(first.targets)}')


def _layout_text(layout: inference.Layout) -> str:
  if layout.table is not None:
    return (f'a table of {layout.length} bp sequences ({layout.table.sequence_column}, '
            f'{"padded" if layout.table.pad else "fixed length"})')
  return (f'110 bp DREAM rows with {layout.context} bp of plasmid context'
          if layout.context else '110 bp DREAM rows')


def member_paths(spec: str) -> List[str]:
  """The checkpoint paths of a comma list whose items are checkpoints or files listing
  them (one a line; '#' comments; paths relative to the list file)."""
  paths = []
  for item in (part.strip() for part in spec.split(',')):
    if not item:
      continue
    if _is_list_file(item):
      paths.extend(_read_list(item))
    else:
      paths.append(item)
  if not paths:
    raise EnsembleError(f'no checkpoint named in {spec!r}')
  return paths


def _is_list_file(path: str) -> bool:
  """A text file (not a zip archive such as an .npz checkpoint, not a directory)."""
  if not os.path.isfile(path) or path.endswith('.npz'):
    return False
  with open(path, 'rb') as f:
    return f.read(4) != b'PK\x03\x04'


def _read_list(path: str) -> List[str]:
  base = os.path.dirname(path)
  try:
    with open(path, 'r', encoding='utf-8') as f:
      lines = f.read().splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise EnsembleError(f'{path}: cannot read the list of checkpoints: {e}') from None
  found = [line.split('#', 1)[0].strip() for line in lines]
  found = [os.path.join(base, p) if not os.path.isabs(p) else p for p in found if p]
  if not found:
    raise EnsembleError(f'{path}: lists no checkpoint (one path a line)')
  return found


def load(spec: str, options: inference.InferenceOptions = inference.InferenceOptions()
         ) -> Ensemble:
  """The ensemble of the checkpoints `spec` names (`member_paths`), each read as its
  checkpoint records, with `options` applied to every member."""
  checkpoints = tuple(checkpointer.load_any(p) for p in member_paths(spec))
  members = tuple(inference.from_checkpoint(c, options) for c in checkpoints)
  return Ensemble(members, checkpoints)


def describe(ensemble: Ensemble) -> str:
  """One line: the members and how each reads its inputs."""
  if ensemble.size == 1:
    return inference.describe(ensemble.members[0])
  kinds = sorted({inference.describe(m) for m in ensemble.members})
  return f'ensemble of {ensemble.size} checkpoints: ' + '; '.join(kinds)
