"""Predicted effects of sequence edits: pairs of sequences and tables of edits.

An effect is prediction(alt) - prediction(ref), both predicted by the one inference
path (`inference.Predictor`: the checkpoint's encoding, plasmid context, windows, shifts
and strands), so `ref_prediction` is what `experiments.predict` writes for the ref
sequence. Each distinct encoded sequence is predicted once, however many pairs share it
(e.g. the SNVs of one reference).

Inputs (plain or gzip, tab-separated, no quoting; lines starting with '#' and a first
line naming the columns are skipped; every other line must parse, and a bad one is an
error naming the file and the line):

  pairs   `ref_sequence<TAB>alt_sequence`, or `name<TAB>ref_sequence<TAB>alt_sequence`
          (any edit: the two sequences may differ anywhere, in any length).
  edits   `sequence<TAB>position<TAB>ref<TAB>alt`: position is 1-based in the sequence
          as written (VCF's convention), ref the bases expected there (checked: a
          mismatch is an error), alt what replaces them; `-` is the empty string, so
          `5 - T` inserts T before base 5 and `5 AC -` deletes bases 5-6.

VCF and FASTA reference input is not offered: the model reads 80 bp random inserts in a
fixed plasmid context (the DREAM constructs), and a genomic variant has no such
construct until a window and flanks are chosen, which is an experiment design, not a
file format. A VCF whose CHROM names a sequence converts to the edits table with
`bcftools query -f '%CHROM\\t%POS\\t%REF\\t%ALT\\n'` and a lookup of the sequence.
"""

import dataclasses
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from enformer_small import dream_data
from enformer_small import ensemble as ensemble_lib
from enformer_small import textfiles

Progress = Optional[Callable[[int], None]]

EDIT_COLUMNS = ('sequence', 'position', 'ref', 'alt')
PAIR_COLUMNS = ('ref_sequence', 'alt_sequence')
EMPTY = '-'
# What an edit may write: the bases and N (any other letter would be read as N).
EDIT_BASES = 'ACGTN'


class VariantInputError(ValueError):
  """A pairs or edits file that cannot be used; the message names the file (and line)."""


@dataclasses.dataclass(frozen=True)
class Edit:
  """One edit of one sequence (see the module docstring for the conventions)."""
  sequence: str
  position: int
  ref: str
  alt: str

  def apply(self) -> str:
    """The edited sequence."""
    at = self.position - 1
    return self.sequence[:at] + self.alt + self.sequence[at + len(self.ref):]


@dataclasses.dataclass(frozen=True)
class Effects:
  """Predictions of the ref and alt sequences, float32 [N, T] each (T: the targets): of
  several checkpoints, the members' means.

  window_changed: bool [N], whether any window a model reads differs between ref and
  alt (an edit outside them has effect 0 by construction).
  member_effects: float32 [K, N, T], each member's alt - ref.
  """
  ref: np.ndarray
  alt: np.ndarray
  window_changed: np.ndarray
  targets: Tuple[str, ...]
  member_effects: Optional[np.ndarray] = None

  @property
  def effect(self) -> np.ndarray:
    """float32 [N, T]: alt - ref."""
    return self.alt - self.ref

  @property
  def effect_spread(self) -> np.ndarray:
    """float32 [N, T]: the sd of the effect across members (0 for one)."""
    if self.member_effects is None:
      return np.zeros_like(self.ref)
    return ensemble_lib.Predictions(self.member_effects).spread


def _as_ensemble(model) -> ensemble_lib.Ensemble:
  """A Predictor as an ensemble of one; an Ensemble as it is."""
  if isinstance(model, ensemble_lib.Ensemble):
    return model
  return ensemble_lib.Ensemble((model,))


def predict_sequences(model, sequences: Sequence[str], *,
                      progress: Progress = None) -> np.ndarray:
  """float32 [K, N, T]: each member's predictions (an `inference.Predictor` is one
  member), each distinct encoding predicted once."""
  model = _as_ensemble(model)
  codes = model.layout.encode(sequences).codes
  if codes.shape[0] == 0:
    return np.zeros((model.size, 0, len(model.targets)), np.float32)
  unique, inverse = np.unique(codes, axis=0, return_inverse=True)
  return model.predict_codes(unique, progress=progress).members[:, inverse.reshape(-1)]


def pair_effects(model, refs: Sequence[str], alts: Sequence[str], *,
                 progress: Progress = None) -> Effects:
  """Effects alt - ref of N pairs of sequences (any edit) by an `inference.Predictor`
  or an `ensemble.Ensemble`: the members' mean, and each member's effect."""
  if len(refs) != len(alts):
    raise ValueError(f'{len(refs)} ref and {len(alts)} alt sequences')
  model = _as_ensemble(model)
  both = predict_sequences(model, list(refs) + list(alts), progress=progress)
  n = len(refs)
  read = model.covered()
  changed = (model.layout.encode(refs).codes[:, read] !=
             model.layout.encode(alts).codes[:, read]).any(axis=1)
  ref, alt = ensemble_lib.Predictions(both[:, :n]), ensemble_lib.Predictions(both[:, n:])
  return Effects(ref.mean, alt.mean, changed, model.targets,
                 member_effects=both[:, n:] - both[:, :n])


def edit_effects(model, edits: Sequence[Edit], *,
                 progress: Progress = None) -> Effects:
  """Effects of edits: each edited sequence against its unedited one."""
  return pair_effects(model, [e.sequence for e in edits], [e.apply() for e in edits],
                      progress=progress)


# ---------------------------------------------------------------------------
# Reading.


def _is_sequence(text: str) -> bool:
  return bool(text) and text.isascii() and text.isalpha()


def _data_lines(path: str, columns: Tuple[str, ...]) -> List[Tuple[int, List[str]]]:
  """(line number, fields) of every data line; comments and a header line dropped."""
  if not os.path.exists(path):
    raise VariantInputError(f'{path}: no such file')
  try:
    text = textfiles.read_bytes(path).decode('utf-8-sig')
  except (OSError, UnicodeDecodeError, textfiles.CorruptGzipError) as e:
    raise VariantInputError(f'{path}: cannot read: {e}') from e
  rows = []
  for number, line in enumerate(textfiles.split_lines(text), start=1):
    if line.startswith('#'):
      continue
    fields = [f.strip() for f in line.split('\t')]
    named = [f.lower() for f in fields[-len(columns):]]
    if not rows and tuple(named) == columns:
      continue
    rows.append((number, fields))
  if not rows:
    raise VariantInputError(f'{path}: no data lines')
  return rows


def _check_sequence(path: str, number: int, what: str, text: str) -> str:
  if not _is_sequence(text):
    raise VariantInputError(f'{path}:{number}: {what} {text[:40]!r} is not a sequence '
                            '(letters only, e.g. ACGTN)')
  return text


def read_pairs(path: str) -> Tuple[List[str], List[str], List[str]]:
  """(names, refs, alts) of a pairs file; names are the line numbers when not given."""
  names, refs, alts = [], [], []
  width = None
  for number, fields in _data_lines(path, PAIR_COLUMNS):
    if len(fields) not in (2, 3) or (width and len(fields) != width):
      raise VariantInputError(
          f'{path}:{number}: expected "[name<TAB>]ref_sequence<TAB>alt_sequence"'
          + (f' with {width} fields as the first line' if width else '')
          + f', got {len(fields)} field(s)')
    width = len(fields)
    names.append(fields[0] if width == 3 else str(number))
    refs.append(_check_sequence(path, number, 'ref sequence', fields[-2]))
    alts.append(_check_sequence(path, number, 'alt sequence', fields[-1]))
  return names, refs, alts


def parse_edit(path: str, number: int, fields: Sequence[str]) -> Edit:
  """One checked edit from the fields of line `number` of `path`."""
  if len(fields) != 4:
    raise VariantInputError(f'{path}:{number}: expected "sequence<TAB>position<TAB>ref'
                            f'<TAB>alt", got {len(fields)} field(s)')
  sequence, position, ref, alt = fields
  _check_sequence(path, number, 'sequence', sequence)
  try:
    position = int(position)
  except ValueError:
    raise VariantInputError(f'{path}:{number}: position {position!r} is not a whole '
                            'number') from None
  ref, alt = ('' if a == EMPTY else a for a in (ref, alt))
  for what, value in (('ref', ref), ('alt', alt)):
    if value and not set(value.upper()) <= set(EDIT_BASES):
      raise VariantInputError(f'{path}:{number}: {what} {value!r} is not bases '
                              f'({", ".join(EDIT_BASES)}) or {EMPTY!r}')
  if not ref and not alt:
    raise VariantInputError(f'{path}:{number}: ref and alt are both empty')
  last = len(sequence) + (1 if not ref else 0)
  if not 1 <= position <= last or position - 1 + len(ref) > len(sequence):
    raise VariantInputError(f'{path}:{number}: position {position} (ref {ref or EMPTY}) '
                            f'outside the {len(sequence)} bp sequence')
  found = sequence[position - 1:position - 1 + len(ref)]
  if found.upper() != ref.upper():
    raise VariantInputError(f'{path}:{number}: ref {ref!r} does not match the sequence, '
                            f'which has {found!r} at position {position}')
  return Edit(sequence, position, ref, alt)


def read_edits(path: str) -> List[Edit]:
  """The checked edits of an edits file."""
  return [parse_edit(path, number, fields)
          for number, fields in _data_lines(path, EDIT_COLUMNS)]


def _read_fasta(path: str, lines: List[str]) -> Tuple[List[str], List[str]]:
  names, sequences = [], []
  for number, line in enumerate(lines, start=1):
    if line.startswith('>'):
      names.append(line[1:].split()[0] if line[1:].strip() else str(number))
      sequences.append('')
    elif line.strip():
      sequences[-1] += _check_sequence(path, number, 'sequence', line.strip())
  empty = [name for name, seq in zip(names, sequences) if not seq]
  if empty:
    raise VariantInputError(f'{path}: FASTA record {empty[0]!r} has no sequence')
  return names, sequences


def read_sequences(path: str) -> Tuple[List[str], List[str]]:
  """(names, sequences) of a FASTA file, or of a DREAM file: `sequence<TAB>value`
  or bare sequences, one per line.

  FASTA when the first line starts with '>'; a record's sequence may span lines. Names
  are the FASTA titles (up to the first space), else the line numbers. Anything else is
  read by the one reader of the DREAM layout (`dream_data.read_dream_table`, values
  optional and allowed negative; the values are not used), with its policies and its
  `path:line: ` messages.
  """
  try:
    data = textfiles.read_bytes(path)
  except (OSError, textfiles.CorruptGzipError):
    data = b''  # Not FASTA, then: the DREAM reader says why, as for every file.
  if not data.removeprefix(b'\xef\xbb\xbf').startswith(b'>'):
    try:
      table = dream_data.read_dream_table(path, values_optional=True,
                                          allow_negative=True)
    except dream_data.DreamDataError as e:
      raise VariantInputError(str(e)) from None
    lines = range(table.first_line, table.first_line + len(table))
    return [str(line) for line in lines], list(table.sequences)
  try:
    return _read_fasta(path, textfiles.split_lines(data.decode('utf-8-sig')))
  except UnicodeDecodeError as e:
    raise VariantInputError(f'{path}: cannot read: {e}') from e
