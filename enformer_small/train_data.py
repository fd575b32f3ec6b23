"""A run's data: the training file (or the demo's synthetic one, or a table) and its split."""

import dataclasses
import logging
import os
import time
from typing import Any, Dict, Optional

import numpy as np

from enformer_small import dream_data
from enformer_small import metrics as metrics_lib
from enformer_small import plasmid
from enformer_small.train_config import TrainConfig
from enformer_small.train_errors import TrainingError

DATA_URL = 'https://zenodo.org/records/10633252'
log = logging.getLogger(__name__)


class DataError(TrainingError):
  """Training data that cannot be used; the message says why and what to do."""


@dataclasses.dataclass
class RunData:
  """The training file and its split.

  rows: what the pipeline reads: the file's codes and expression, with the plasmid
    context on each side when the recipe asks for it.
  """
  path: str
  rows: Any
  train_rows: np.ndarray
  holdout_rows: np.ndarray
  noise_ceiling: Optional[float]
  data_id: Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ContextRows:
  """Codes with the plasmid context on each side, and the rows' expression."""
  codes: np.ndarray
  expression: Optional[np.ndarray]


def synthetic_path(config: TrainConfig) -> str:
  return os.path.join(config.synthetic_dir, f'synthetic_{config.synthetic_rows}rows_'
                      f'seed{config.synthetic_seed}.txt')


def _synthetic_config(config: TrainConfig):
  from enformer_small import synthetic  # numpy only, but only the demo needs it.
  return synthetic.SyntheticConfig(num_rows=config.synthetic_rows,
                                   seed=config.synthetic_seed)


def ensure_synthetic_file(config: TrainConfig) -> str:
  """Generates the demo's synthetic training file on first use; returns its path."""
  from enformer_small import synthetic
  path = synthetic_path(config)
  if not os.path.exists(path):
    log.info('generating %s synthetic rows (seed %d) into %s ...',
             f'{config.synthetic_rows:,}', config.synthetic_seed, path)
    # A private temporary name, moved into place: concurrent processes or a kill
    # never leave a half-written file under the final name.
    tmp = f'{path}.{os.getpid()}.tmp'
    try:
      report = synthetic.write_synthetic_file(tmp, _synthetic_config(config))
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    log.info('  %s rows in %.1f s; noise ceiling (Pearson of noise-free vs measured, '
             'all rows) %.4f', f'{report.rows:,}', report.seconds,
             report.noise_ceiling_pearson)
  return path


def train_file_path(config: TrainConfig) -> str:
  if config.table_file:
    return config.table_file
  return synthetic_path(config) if config.synthetic_rows > 0 else config.train_file


def missing_train_file_message(path: str) -> str:
  return (
      f'error: training file {path} not found.\n'
      f'  Get the challenge data from Zenodo record 10633252 ({DATA_URL}), file '
      f'train_sequences.txt, and pass its path with --train_file=PATH (small.flags '
      f'expects data/train_sequences.txt).\n'
      f'  Or run the demo on built-in synthetic data instead:\n'
      f'    python -m experiments.train --flagfile=demo.flags')


def holdout_noise_ceiling(config: TrainConfig, data: dream_data.DreamData,
                          holdout: np.ndarray) -> Optional[float]:
  """Pearson of the synthetic truth with the measured held-out expression."""
  if config.synthetic_rows <= 0:
    return None
  from enformer_small import synthetic
  noise_free = synthetic.generate(_synthetic_config(config)).noise_free
  return metrics_lib.pearson_r(noise_free[holdout], data.expression[holdout])


def check_holdout(path: str, num_rows: int, num_holdout: int) -> None:
  """Both parts of the split must be non-empty: the best epoch is chosen by held-out
  Pearson, and training needs rows."""
  if num_holdout <= 0:
    raise DataError('--num_holdout must be positive: the best epoch is chosen by '
                    'held-out Pearson')
  if num_rows < 2:
    raise DataError(f'{path} has {num_rows} row(s): training needs at least 2 (one to '
                    'train on, one held out).')
  if num_holdout >= num_rows:
    raise DataError(
        f'{path} has {num_rows:,} row(s): --num_holdout={num_holdout:,} leaves none to '
        f'train on. Hold out fewer rows (at least 1 and fewer than {num_rows:,}) or use '
        f'a larger file.')


def with_plasmid_context(data: Any, context: int) -> Any:
  """`data` with `context` plasmid bases on each side of every row (`plasmid`)."""
  if context == 0:
    return data
  return ContextRows(codes=plasmid.add_context(data.codes, context),
                     expression=data.expression)


def load_data(config: TrainConfig) -> RunData:
  """Reads (or first generates) the training file and splits off the held-out rows."""
  path = train_file_path(config)
  if config.synthetic_rows > 0 and not config.table_file:
    path = ensure_synthetic_file(config)
  if not config.table_file and not os.path.exists(path):
    raise DataError(missing_train_file_message(path))
  started = time.perf_counter()
  if config.table_file:
    from enformer_small import tables
    data = tables.read_table(path, config.table_spec, cache_dir=config.data_cache_dir)
  else:
    data = dream_data.read_dream_file(path, cache_dir=config.data_cache_dir)
  check_holdout(path, len(data), config.num_holdout)
  train_rows, holdout_rows = dream_data.holdout_split(len(data), config.num_holdout,
                                                      config.split_seed)
  noise_ceiling = (None if config.table_file else
                   holdout_noise_ceiling(config, data, holdout_rows))
  log.info('data: %s: %s rows (%s train, %s held out) read in %.1f s%s', path,
           f'{len(data):,}', f'{len(train_rows):,}', f'{len(holdout_rows):,}',
           time.perf_counter() - started,
           f'; held-out noise ceiling {noise_ceiling:.4f}' if noise_ceiling else '')
  data_id = dict(source=path, num_rows=len(data), content_hash=(
      getattr(data, 'content_hash', None) or
      getattr(getattr(data, 'report', None), 'content_hash', None) or None))
  return RunData(path=path, rows=with_plasmid_context(data, config.plasmid_context),
                 train_rows=train_rows, holdout_rows=holdout_rows,
                 noise_ceiling=noise_ceiling, data_id=data_id)
