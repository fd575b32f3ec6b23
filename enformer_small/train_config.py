"""What defines a training run: `TrainConfig`, one setting (and flag) per field.

The recipe's fields (optimizer, learning rate, schedule, augmentation, loss, ...) come
from `recipe.Recipe`; the fields here say what is trained on, the model's window, the
batch geometry and where the run's files go. `small.flags` holds the seed's values.
"""

import dataclasses
import json
from typing import Any, Dict, Optional, Tuple

from enformer_small import config as config_lib
from enformer_small import dream_data
from enformer_small import plasmid
from enformer_small import recipe as recipe_lib
from enformer_small import tables
from enformer_small import window_average
from enformer_small.settings import setting

COMPUTE_DTYPES = ('float32', 'bfloat16')
SHIFT_MODES = ('expand', 'random')

# Fields that may differ between the processes of a multi-host job (paths; the data
# are compared by content).
PER_PROCESS_FIELDS = frozenset({'run_dir', 'train_file', 'synthetic_dir',
                                'data_cache_dir', 'table_file', 'init_checkpoint'})

# What a checkpoint that predates a field ran with (not the field's default today).
PREDATED = {'fast_cpu': False}

# Fields that may change when a run is resumed: they do not change what is computed (or
# only extend it, num_epochs, unless a schedule spans the run).
RESUMABLE_CHANGES = frozenset({
    'run_dir', 'train_file', 'num_epochs', 'keep_checkpoints', 'eval_batch_size',
    'data_cache_dir', 'synthetic_dir', 'table_file', 'init_checkpoint'})


@dataclasses.dataclass(frozen=True)
class TrainConfig(recipe_lib.Recipe):
  """Everything that defines a training run (one flag per field, of the same name)."""
  train_file: str = setting(
      'data/train_sequences.txt', 'DREAM training file (`sequence<TAB>expression`), '
      "e.g. the challenge's train_sequences.txt.")
  run_dir: str = setting('runs/small', 'Where checkpoints and metrics go.')
  synthetic_rows: int = setting(
      0, 'If > 0, train on this many rows of built-in synthetic data (generated into '
      '--synthetic_dir on first use) instead of --train_file.')
  synthetic_seed: int = setting(0, 'Seed of the synthetic data.')
  synthetic_dir: str = setting('runs/demo_data', 'Cache of synthetic files.')
  data_cache_dir: Optional[str] = setting(
      None, 'Cache of encoded DREAM files (default $ENFORMER_SMALL_CACHE or '
      '~/.cache/enformer_small).')
  input_length: int = setting(85, 'Model input length in bp.')
  dropout: bool = setting(
      True, "The seed's dropout (0.4 in the transformer, 0.05 at the end); --nodropout "
      'sets every rate to zero.')
  crop_start: int = setting(
      -1, 'First position of the window in the 110 bp encoding (with '
      '--plasmid_context=C: in the rows of C plasmid bases, the 110 bp, C plasmid '
      'bases); -1: C + (110 - input_length) * 3 // 5, i.e. 15 for 85 bp without context '
      '(the seed).')
  shifts: Tuple[int, ...] = setting((-1, 0, 1), 'Window shifts in training.')
  shift_mode: str = setting(
      'expand', 'expand: every row at every shift each epoch (the seed); random: every '
      'row once at a random shift.', choices=SHIFT_MODES)
  num_holdout: int = setting(10_000, 'Held-out rows.')
  split_seed: int = setting(0, 'Seed of the held-out split.')
  batch_size: int = setting(10_000, 'Global batch size (all devices, all processes).')
  eval_batch_size: int = setting(
      1000, 'Evaluation batch size (rounded up to a multiple of the device count).')
  num_epochs: int = setting(300, 'Epochs to train (in all).')
  seed: int = setting(0, 'Seed of the parameters and the data order.')
  compute_dtype: str = setting(
      'float32', 'Activation dtype (parameters stay float32).', choices=COMPUTE_DTYPES)
  fast_cpu: bool = setting(
      True, 'CPU speed: the train, eval and BatchNorm-statistics steps arranged for '
      'XLA:CPU (residual gradients and dropout masks computed once, relative logits '
      'without a transpose; measured 3-20% faster on 2 cores, never slower); the same '
      'function rounded otherwise, so --nofast_cpu gives the seed\'s step bit for bit '
      '(small.flags and the recipes built on it set it). On a GPU both compile to the '
      'same step.')
  keep_checkpoints: int = setting(
      3, 'Epoch-end saves kept in --run_dir/checkpoints, besides the newest save within '
      'an epoch (the best epoch is kept apart); 0: all.')
  table_file: str = setting(
      '', 'Train on this table (tab- or comma-separated, plain or gzip, a header naming '
      'the columns) instead of --train_file.')
  sequence_column: str = setting('sequence', '--table_file: the column of DNA sequences.')
  target_columns: Tuple[str, ...] = setting(
      (), '--table_file: the target columns, one model output each.')
  sequence_length: int = setting(
      0, '--table_file: bp per row; every sequence must have it unless --pad_sequences.')
  pad_sequences: bool = setting(
      False, "--table_file: pad shorter sequences at the 3' end with N and truncate "
      "longer ones at the 3' end to --sequence_length.")
  init_checkpoint: str = setting(
      '', "Warm start a new run: the trunk (and BatchNorm averages) from this project's "
      '.npz checkpoint or a TF/Sonnet checkpoint; the head where its shape fits, else '
      're-initialised (logged).')

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, 'shifts', tuple(int(s) for s in self.shifts))
    object.__setattr__(self, 'target_columns', tuple(self.target_columns))
    small = [f'{name}={getattr(self, name)}' for name in
             ('batch_size', 'eval_batch_size', 'num_epochs', 'input_length')
             if getattr(self, name) < 1]
    if small:
      raise ValueError(f'must be at least 1: {", ".join(small)}')
    if self.table_file:
      if not self.target_columns or self.sequence_length < 1:
        raise ValueError('--table_file needs --target_columns and --sequence_length')
      if self.plasmid_context:
        raise ValueError('--plasmid_context applies to DREAM rows, not to a table')
      if self.loss == 'soft_bin' and len(self.target_columns) > 1:
        raise ValueError('--loss=soft_bin predicts one target; use poisson or mse '
                         f'for {len(self.target_columns)} target columns')
      _ = self.table_spec  # Columns named twice are an error here, not when reading.
    if self.eval_shifts:
      self.eval_windows.check(self.row_length)

  @property
  def table_spec(self) -> tables.TableSpec:
    return tables.TableSpec(target_columns=self.target_columns,
                            sequence_column=self.sequence_column,
                            length=self.sequence_length, pad=self.pad_sequences)

  @property
  def recipe(self) -> recipe_lib.Recipe:
    return recipe_lib.from_fields(self)

  @property
  def row_length(self) -> int:
    """Codes per row the windows are cut from: the construct and its plasmid context."""
    if self.table_file:
      return self.sequence_length
    return dream_data.SEQUENCE_LENGTH + 2 * self.plasmid_context

  @property
  def window_start(self) -> int:
    """First position of the unshifted window in a row of `row_length` codes."""
    if self.crop_start >= 0:
      return self.crop_start
    if self.table_file:  # Centred; shifts move it either way.
      return (self.sequence_length - self.input_length) // 2
    return plasmid.default_window_start(self.input_length, self.plasmid_context)

  @property
  def eval_windows(self) -> window_average.Windows:
    """The windows evaluation (and prediction with the checkpoint) averages."""
    return window_average.of_recipe(self, self.window_start, self.input_length)

  @property
  def num_targets(self) -> int:
    return max(1, len(self.target_columns))

  def model_config(self) -> config_lib.EnformerConfig:
    """The seed model at --input_length, without dropout or with the soft-bin head."""
    model_config = config_lib.seed_config(self.input_length)
    if not self.dropout:
      model_config = model_config.without_dropout()
    if self.loss == 'soft_bin':
      model_config = model_config.with_soft_bin_head(recipe_lib.NUM_SOFT_BINS)
    if len(self.target_columns) > 1:
      model_config = model_config.with_outputs(len(self.target_columns))
    return model_config

  def to_json_dict(self) -> Dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(self)))


def window_error(config: TrainConfig) -> Optional[str]:
  """Why the shifted training windows do not fit the rows, or None."""
  context = (f' with {config.plasmid_context} bp of plasmid on each side'
             if config.plasmid_context else '')
  advice = ('change --crop_start, --shifts, --input_length or --plasmid_context (e.g. '
            '--shifts=0 for 110 bp)')
  try:
    start = config.window_start
  except ValueError as e:
    return f'{e}: {advice}'
  lo = start + min(config.shifts)
  hi = start + max(config.shifts) + config.input_length
  if lo < 0 or hi > config.row_length:
    return (f'the window [{start} + s, {start} + s + {config.input_length}) for shifts '
            f'{config.shifts} spans [{lo}, {hi}), outside the {config.row_length} bp '
            f'rows ({dream_data.SEQUENCE_LENGTH} bp{context}): {advice}')
  return None

