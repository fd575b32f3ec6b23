"""Test-time averaging: one prediction per row from several windows of it (no flags here).

A row's prediction is the mean of the model's predictions over the windows the recipe
names: every shift of `Recipe.eval_shifts` (none: the single unshifted window) on the
forward strand, and with `Recipe.eval_reverse_complement` on the reverse complement as
well. Shifted windows are cut from the same rows as the unshifted one (for DREAM rows
those extended by the plasmid context), so a shift must keep the window inside them
(`check_shifts`).

Held-out evaluation in training and `experiments.predict` both average through `average`:
one pass over the rows per window, the same passes in the same order, so a checkpoint
predicts what its training evaluated.
"""

import dataclasses
from typing import Callable, Sequence, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Windows:
  """The windows averaged per row.

  shifts: window shifts in bp (positive: towards the 3' end); empty: the unshifted
    window only, as before test-time shifts existed.
  reverse_complement: also each window's reverse complement.
  """
  shifts: Tuple[int, ...] = ()
  reverse_complement: bool = False

  def __post_init__(self):
    object.__setattr__(self, 'shifts', normalise_shifts(self.shifts))

  @property
  def passes(self) -> Tuple[Tuple[int, bool], ...]:
    """(shift, reverse_complement) of each pass, in the order they are summed."""
    strands = (False, True) if self.reverse_complement else (False,)
    return tuple((shift, reverse) for shift in (self.shifts or (0,))
                 for reverse in strands)


def normalise_shifts(shifts: Sequence[int]) -> Tuple[int, ...]:
  """A tuple of distinct ints; a repeated shift would weigh its window twice."""
  shifts = tuple(int(s) for s in shifts)
  if len(set(shifts)) != len(shifts):
    raise ValueError(f'eval_shifts must be distinct, got {shifts}')
  return shifts


def of_recipe(recipe) -> Windows:
  """The windows a `recipe.Recipe` (or a checkpoint's recorded recipe dict) averages."""
  get = recipe.get if hasattr(recipe, 'get') else (lambda k, d: getattr(recipe, k, d))
  return Windows(shifts=tuple(get('eval_shifts', ()) or ()),
                 reverse_complement=bool(get('eval_reverse_complement', False)))


def check_shifts(shifts: Sequence[int], start: int, length: int,
                 row_length: int) -> None:
  """Raises ValueError unless every window [start + s, start + s + length) lies in rows
  of `row_length` codes (with a plasmid context C, the 110 bp construct and C bases of
  plasmid on each side: a centred 110 bp window then needs C >= |s|)."""
  bad = [s for s in shifts if start + s < 0 or start + s + length > row_length]
  if bad:
    raise ValueError(
        f'eval shifts {tuple(bad)} move the {length} bp window [{start}:{start + length}] '
        f'outside the {row_length} bp rows it is cut from: use smaller shifts or, for '
        f'DREAM rows, a larger plasmid context')


def average(predict_pass: Callable[[int, bool], np.ndarray],
            windows: Windows) -> np.ndarray:
  """float32 mean over `windows.passes` of `predict_pass(shift, reverse)`.

  predict_pass returns one prediction per row (in the same row order every pass). For a
  soft-bin head these are expectations over the bins (`model.head_predictions`), so the
  mean is of expectations, not of the bin distributions; for a linear read-out of the
  probabilities the two are the same number.
  Summed in float64: for the two strands this is bit for bit the float32 (a + b) / 2 that
  evaluation used before shifts existed, and one pass comes back unchanged.
  """
  total = None
  for shift, reverse in windows.passes:
    predictions = np.asarray(predict_pass(shift, reverse), np.float64)
    total = predictions if total is None else total + predictions
  return (total / len(windows.passes)).astype(np.float32)
