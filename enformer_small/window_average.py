"""Which windows of a row a model reads, and how their predictions average (numpy only).

A model of input length L reads the window [start, start + L) of a row (the 110 bp DREAM
encoding, with the plasmid context on each side when the recipe adds it, or a table's
encoding). A row's prediction is the mean of the model's predictions over the windows the
recipe names: every shift of `Recipe.eval_shifts` (none: the unshifted window alone) on
the forward strand, and with `Recipe.eval_reverse_complement` on the reverse complement as
well. Shifted windows are cut from the same rows as the unshifted one, so a shift must
keep the window inside them (`Windows.check`).

`average` is the one place predictions of several windows are combined: held-out
evaluation in training, `experiments.predict` and every command built on
`inference.Predictor` go through it, one pass over the rows per window, the same passes
in the same order, so a checkpoint predicts what its training evaluated.
"""

import dataclasses
from typing import Callable, Sequence, Tuple

import numpy as np

from enformer_small.dream_data import PAD_CODE


@dataclasses.dataclass(frozen=True)
class Windows:
  """The windows averaged per row.

  start: first position of the unshifted window in the row.
  length: L, the model's input length.
  shifts: window shifts in bp (positive: towards the 3' end); empty: the unshifted
    window only.
  reverse_complement: also each window's reverse complement.
  """
  start: int
  length: int
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

  def span(self) -> Tuple[int, int]:
    """[lo, hi): the positions of the row some window reads."""
    shifts = self.shifts or (0,)
    return self.start + min(shifts), self.start + max(shifts) + self.length

  def check(self, row_length: int) -> None:
    """Raises ValueError unless every window lies in rows of `row_length` codes (with a
    plasmid context C, the 110 bp construct and C bases of plasmid on each side: a
    centred 110 bp window then needs C >= |s|)."""
    bad = [s for s in (self.shifts or (0,))
           if self.start + s < 0 or self.start + s + self.length > row_length]
    if bad:
      raise ValueError(
          f'eval shifts {tuple(bad)} move the {self.length} bp window [{self.start}:'
          f'{self.start + self.length}] outside the {row_length} bp rows it is cut from: '
          'use smaller shifts or, for DREAM rows, a larger plasmid context')

  def cut(self, rows: np.ndarray, shift: int, reverse: bool) -> np.ndarray:
    """uint8 [N, L]: the window at `shift` of rows uint8 [N, W], reverse-complemented
    (read backwards, 3 - c swapping A<->T and C<->G, N kept) if `reverse`."""
    lo = self.start + shift
    window = rows[:, lo:lo + self.length]
    if not reverse:
      return window
    backwards = window[:, ::-1]
    return np.where(backwards < PAD_CODE, 3 - backwards, backwards).astype(np.uint8)


def normalise_shifts(shifts: Sequence[int]) -> Tuple[int, ...]:
  """A tuple of distinct ints; a repeated shift would weigh its window twice."""
  shifts = tuple(int(s) for s in shifts)
  if len(set(shifts)) != len(shifts):
    raise ValueError(f'eval_shifts must be distinct, got {shifts}')
  return shifts


def of_recipe(recipe, start: int, length: int) -> Windows:
  """The windows a `recipe.Recipe` (or a checkpoint's recorded recipe dict) averages."""
  get = recipe.get if hasattr(recipe, 'get') else (lambda k, d: getattr(recipe, k, d))
  return Windows(start=start, length=length,
                 shifts=tuple(get('eval_shifts', ()) or ()),
                 reverse_complement=bool(get('eval_reverse_complement', False)))


def average(predict_pass: Callable[[int, bool], np.ndarray],
            windows: Windows) -> np.ndarray:
  """float32 mean over `windows.passes` of `predict_pass(shift, reverse)`.

  predict_pass returns one prediction per row (in the same row order every pass). For a
  soft-bin head these are expectations over the bins (`model.head_predictions`), so the
  mean is of expectations, not of the bin distributions; for a linear read-out of the
  probabilities the two are the same number.
  Summed in float64: for the two strands this is bit for bit the float32 (a + b) / 2, and
  one pass comes back unchanged.
  """
  total = None
  for shift, reverse in windows.passes:
    predictions = np.asarray(predict_pass(shift, reverse), np.float64)
    total = predictions if total is None else total + predictions
  return (total / len(windows.passes)).astype(np.float32)
