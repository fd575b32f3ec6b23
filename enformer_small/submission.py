"""Prediction files: the DREAM submission formats and tables of predictions.

  TSV     `sequence<TAB>prediction` in input order (the final-phase submission), or for
          a table run its header and one column per target, a table the training
          reader reads back
  JSON    `{"row": prediction}` for the rows named by an indices file (the leaderboard
          submission, e.g. public_leaderboard/sample_submission.json)

Each value is the shortest text that reads back as the same float32.
"""

import json
from typing import List, Sequence

import numpy as np

from enformer_small import files


class IndicesError(ValueError):
  """An indices file that cannot be used; the message names it."""


def read_indices(path: str, num_rows: int) -> List[int]:
  """Row indices named by a JSON file: a dict's keys or a list's items.

  Keys "alt,ref" (pair subsets of the public leaderboard) name both rows. Duplicates are
  dropped, first occurrence kept.
  """
  try:
    with open(path, 'r', encoding='utf-8') as f:
      payload = json.load(f)
  except FileNotFoundError:
    raise IndicesError(f'{path}: no such indices file') from None
  except (OSError, ValueError) as e:
    raise IndicesError(f'{path}: not valid JSON: {e}') from e
  items = list(payload.keys()) if isinstance(payload, dict) else payload
  if not isinstance(items, list):
    raise IndicesError(f'{path}: expected a JSON object or list of row indices')
  indices, seen = [], set()
  for item in items:
    for part in str(item).split(','):
      try:
        index = int(part)
      except ValueError:
        raise IndicesError(f'{path}: {item!r} is not a row index') from None
      if not 0 <= index < num_rows:
        raise IndicesError(f'{path}: row {index} outside the {num_rows} input rows')
      if index not in seen:
        seen.add(index)
        indices.append(index)
  return indices


def tsv_text(sequences: Sequence[str], columns: np.ndarray,
             header: Sequence[str] = ()) -> str:
  """Rows `sequence<TAB>value[<TAB>...]` after the `header` names, if any; columns
  [N] or [N, C], each value the shortest text that reads back as the same float32."""
  columns = np.asarray(columns, np.float32).reshape(len(sequences), -1)
  lines = ['\t'.join(header)] if header else []
  lines += ['\t'.join([s] + [str(v) for v in row]) for s, row in zip(sequences, columns)]
  return ''.join(line + '\n' for line in lines)


def write_tsv(path: str, sequences: Sequence[str], columns: np.ndarray,
              header: Sequence[str] = ()) -> None:
  text = tsv_text(sequences, columns, header)
  files.atomic_write(path, lambda f: f.write(text.encode('utf-8')))


def write_json(path: str, indices: Sequence[int], predictions: np.ndarray) -> None:
  # float(str(float32)): JSON then holds the float32's shortest text.
  payload = {str(i): float(str(np.float32(predictions[i]))) for i in indices}
  text = json.dumps(payload)
  files.atomic_write(path, lambda f: f.write(text.encode('utf-8')))
