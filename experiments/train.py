r"""Trains the seed's reduced Enformer on DREAM data (pmapped over the local devices).

  python -m experiments.train --flagfile=small.flags     # the seed's recipe, real data
  python -m experiments.train --flagfile=demo.flags      # synthetic; its time: README.md
  python -m experiments.train --flagfile=demo.flags --resume   # continue a killed run

The recipe (small.flags): the seed model at 85 bp (X[:, 15:100] of the 110 bp encoding),
Keras' Poisson loss, optax SGD (learning rate 0.01, momentum 0.9, nothing else), global
batch 10,000, 10,000 held-out rows, shifts -1/0/+1 in 'expand' mode (every training row at
every shift, every epoch), up to 300 epochs, evaluation after every epoch, the epoch with
the best held-out Pearson kept.

Other recipes (`enformer_small.recipe.Recipe`, one flag per field, all off by default):
Adam / AdamW with decoupled weight decay (--optimizer, --weight_decay), gradient
clipping (--clip_global_norm), learning-rate schedules over the whole run (--schedule
warmup_cosine | one_cycle), Polyak averaging of the parameters (--ema_decay),
reverse-complement augmentation (--reverse_complement) and averaging in evaluation and
prediction (--eval_reverse_complement; over shifted windows too: --eval_shifts), windows reaching into the real plasmid around
the construct (--plasmid_context with longer --input_length or wider --shifts),
BatchNorm averages re-estimated without dropout before each evaluation
(--bn_recalibration_batches), early stopping (--early_stopping_patience), and MSE or
LegNet's soft-bin targets (--loss=mse | soft_bin; soft_bin trains the seed model with an
18-bin head, 2,005,426 parameters at 85 bp).

Own data and a head start (README.md, "Your own data and a head start"): --table_file
with --target_columns (one model output per target, held-out metrics per target),
--init_checkpoint (the trunk of a trained or converted model; the head where it fits),
--freeze, --head_learning_rate and --head_only_fraction (a two-phase recipe).

A run directory (--run_dir) receives, from process 0 only:
  metrics.jsonl              one JSON object per epoch: train and held-out loss, MSE, MAE,
                             Pearson, Spearman, learning rate, seq/s, seconds
  pearson.png                train and held-out Pearson per epoch (the seed's Figure 2)
  events.out.tfevents.*      TensorBoard (`tensorboard --logdir RUN_DIR`): every
                             per-epoch metric above ('holdout/pearson', ...) at the
                             epoch's last global step, and the step loss, learning rate
                             and seq/s ('step/...') every --tensorboard_every_steps steps
  checkpoints/<step>/        orbax saves under their global step: at the end of every
                             epoch and every --save_every_minutes within one: those of
                             the last --keep_checkpoints epoch ends and the newest save
                             (see checkpointer.py)
  checkpoint_best.npz        the epoch with the best held-out Pearson so far, one
                             pickle-free file (what predict and the others read)
  train_config.json          the flags of the run, with what they resolved to (the file
                             actually read, the window, the model, steps per epoch)
  damaged_checkpoints/       saves --resume found damaged and skipped (with a warning)

Checkpoints hold what is evaluated (with --ema_decay the parameter average, with
--bn_recalibration_batches the re-estimated BatchNorm averages), what training goes on
from, the recipe, and the window; experiments.predict applies the recorded inference
settings (reverse-complement and shift averaging, plasmid context, soft-bin
expectation).

Train correlations are computed from the predictions the train steps make anyway
(training mode: dropout on, BatchNorm on batch statistics, parameters moving during the
epoch), as Keras reports training metrics; they cost nothing extra but sit below what the
final parameters would score in eval mode. Held-out metrics are eval mode, shift 0 (or
the mean over --eval_shifts).

Reproducibility: parameters start from --seed; the data order, shifts and flips of
epoch e depend only on (--seed, e); the learning rate depends only on the step. A run
resumed (--resume) from its newest checkpoint, at an epoch's end or within one, repeats
bit for bit what the uninterrupted run computes from the next step on, the resumed
epoch's metrics included (a save within an epoch holds its training predictions so
far); only the steps since that checkpoint are done again. A damaged or unreadable
newest checkpoint is skipped with a warning naming it and why, for the newest whole one.
A NaN or inf loss stops the run (exit status 1) before anything after the last
checkpoint is written, naming the epoch and step; earlier checkpoints stay as they are.
Ctrl-C stops it (exit status 130) with one line naming the last checkpoint; files are
written whole or not at all, and what a killed write leaves is removed on the next
start.

Multi-host (launch/README.md): one process per host on JAX's runtime, found from SLURM or
TPU pod environments or given by --coordinator_address, --num_processes, --process_id.
Each process builds the same global batches and feeds its devices its own slice; the
step averages over all devices; held-out predictions are gathered and scored once; only
process 0 writes files; every process reads the same checkpoint when resuming (a shared
file system) and they check that they agree on flags, data and starting point.
"""

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
import zlib
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from absl import flags
from absl import logging as absl_logging
import jax
import jax.numpy as jnp
import numpy as np

from experiments import _runtime

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import checkpointer as checkpointer_lib
from enformer_small import config as config_lib
from enformer_small import distributed
from enformer_small import dream_data
from enformer_small import files
from enformer_small import metrics as metrics_lib
from enformer_small import model as model_lib
from enformer_small import plasmid
from enformer_small import recipe as recipe_lib
from enformer_small import summaries
from enformer_small import training
from enformer_small import window_average

FLAGS = flags.FLAGS

DATA_URL = 'https://zenodo.org/records/10633252'
METRICS_FILE = 'metrics.jsonl'
PLOT_FILE = 'pearson.png'
CONFIG_FILE = 'train_config.json'

# Fields of TrainConfig that may differ between the processes of a multi-host job
# (paths; the data are compared by content).
PER_PROCESS_FIELDS = frozenset({'run_dir', 'train_file', 'synthetic_dir',
                                'data_cache_dir', 'table_file', 'init_checkpoint'})

# Fields of TrainConfig that may change when a run is resumed: they do not change what
# is computed (or only extend it, num_epochs, unless a schedule spans the run).
RESUMABLE_CHANGES = frozenset({
    'run_dir', 'train_file', 'num_epochs', 'keep_checkpoints', 'eval_batch_size',
    'data_cache_dir', 'synthetic_dir', 'table_file',
    'init_checkpoint'})


@dataclasses.dataclass(frozen=True)
class TrainConfig(recipe_lib.Recipe):
  """Everything that defines a training run (one field per flag of the same name).

  The recipe's fields (optimizer, learning_rate, momentum, schedule, ...) come from
  `recipe.Recipe`; `recipe` gives them back as one.
  """
  train_file: str = 'data/train_sequences.txt'
  run_dir: str = 'runs/small'
  synthetic_rows: int = 0
  synthetic_seed: int = 0
  synthetic_dir: str = 'runs/demo_data'
  data_cache_dir: Optional[str] = None
  input_length: int = 85
  dropout: bool = True               # False: config.without_dropout()
  crop_start: int = -1               # -1: plasmid.default_window_start(input_length, ...)
  shifts: Tuple[int, ...] = (-1, 0, 1)
  shift_mode: str = 'expand'
  num_holdout: int = 10_000
  split_seed: int = 0
  batch_size: int = 10_000           # global: over all devices of all processes
  eval_batch_size: int = 1000        # rounded up to a multiple of the device count
  num_epochs: int = 300
  seed: int = 0
  compute_dtype: str = 'float32'
  fast_cpu: bool = False             # CPU speed; not bit-identical (fast_cpu.py)
  keep_checkpoints: int = 3
  # Own data (tables.py): used instead of the DREAM file when table_file is set.
  table_file: str = ''
  sequence_column: str = 'sequence'
  target_columns: Tuple[str, ...] = ()
  sequence_length: int = 0
  pad_sequences: bool = False
  init_checkpoint: str = ''          # warm start (warm_start.py) of a new run

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, 'shifts', tuple(int(s) for s in self.shifts))
    object.__setattr__(self, 'target_columns', tuple(self.target_columns))
    if self.table_file:
      if not self.target_columns or self.sequence_length < 1:
        raise ValueError('--table_file needs --target_columns and --sequence_length')
      if self.plasmid_context:
        raise ValueError('--plasmid_context applies to DREAM rows, not to a table')
      if self.loss == 'soft_bin' and len(self.target_columns) > 1:
        raise ValueError('--loss=soft_bin predicts one target; use poisson or mse '
                         f'for {len(self.target_columns)} target columns')
    if self.eval_shifts:
      window_average.check_shifts(self.eval_shifts, self.window_start,
                                  self.input_length, self.row_length)

  @property
  def table_spec(self):
    from enformer_small import tables
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

  def to_json_dict(self) -> Dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(self)))


class TrainingError(Exception):
  """A run that cannot start or go on; the message says why and what to do."""


class NonFiniteError(TrainingError):
  """NaN or inf in the loss, the held-out predictions or the parameters."""


class Interrupted(Exception):
  """Ctrl-C (SIGINT); the message is the one line to print."""


@dataclasses.dataclass
class TrainResult:
  """What `train` did.

  train_state: the unreplicated final TrainState (numpy).
  history: one metrics dict per completed epoch (resumed epochs included).
  best_epoch, best_pearson: the epoch with the best held-out Pearson.
  noise_ceiling: held-out Pearson of the noise-free with the measured expression
    (synthetic data only, else None).
  stopped_early: whether --early_stopping_patience ended the run.
  """
  train_state: training.TrainState
  history: List[Dict[str, Any]]
  best_epoch: int
  best_pearson: float
  noise_ceiling: Optional[float]
  run_dir: str
  stopped_early: bool = False


# ---------------------------------------------------------------------------
# Data.


def synthetic_path(config: TrainConfig) -> str:
  return os.path.join(config.synthetic_dir, f'synthetic_{config.synthetic_rows}rows_'
                      f'seed{config.synthetic_seed}.txt')


def _synthetic_config(config: TrainConfig):
  from enformer_small import synthetic  # numpy only, but only the demo needs it.
  return synthetic.SyntheticConfig(num_rows=config.synthetic_rows,
                                   seed=config.synthetic_seed)


def ensure_synthetic_file(config: TrainConfig, log: Callable[[str], None]) -> str:
  """Generates the demo's synthetic training file on first use; returns its path."""
  from enformer_small import synthetic
  path = synthetic_path(config)
  if not os.path.exists(path):
    log(f'generating {config.synthetic_rows:,} synthetic rows (seed '
        f'{config.synthetic_seed}) into {path} ...')
    # A private temporary name, moved into place: concurrent processes or a kill
    # never leave a half-written file under the final name.
    tmp = f'{path}.{os.getpid()}.tmp'
    try:
      report = synthetic.write_synthetic_file(tmp, _synthetic_config(config))
      os.replace(tmp, path)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)
    log(f'  {report.rows:,} rows in {report.seconds:.1f} s; noise ceiling (Pearson '
        f'of noise-free vs measured, all rows) {report.noise_ceiling_pearson:.4f}')
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


# ---------------------------------------------------------------------------
# Compiled steps, cached so that runs in one process (tests) compile once.

_COMPILED: Dict[Any, Any] = {}


def _compiled(kind: str, key: Tuple, build: Callable[[], Any], *args) -> Any:
  """The AOT-compiled `build()(*args)` for these shapes, made once per process.

  With several processes, the pmapped function itself, compiled by one call on copies
  of `args` (an AOT-compiled pmap takes global arrays, not each process's own).
  """
  shapes = tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree_util.tree_leaves(args))
  cache_key = (kind, key, shapes, jax.local_device_count(), jax.process_count())
  if cache_key not in _COMPILED:
    if jax.process_count() == 1:
      _COMPILED[cache_key] = build().lower(*args).compile()
    else:
      step = build()
      jax.block_until_ready(step(*jax.tree_util.tree_map(np.asarray, args)))
      _COMPILED[cache_key] = step
  return _COMPILED[cache_key]


# The one-hot inputs travel as uint8: exact in any compute dtype (the step casts on the
# device) and a quarter of float32's host-to-device bytes.
INPUT_DTYPE = np.uint8
# Batches on their way to the devices while a step runs (training.prefetch_to_device).
DEVICE_PREFETCH = 2


def _pipeline_config(config: TrainConfig):
  from enformer_small import dataset  # TensorFlow: only once training really starts.
  return dataset.PipelineConfig(crop_start=config.window_start,
                                crop_length=config.input_length, shifts=config.shifts,
                                shift_mode=config.shift_mode,
                                reverse_complement=config.reverse_complement,
                                one_hot_dtype=np.dtype(INPUT_DTYPE).name)


def _shard_count() -> int:
  return jax.process_count() * jax.local_device_count()


def _gather_batches(x: np.ndarray, per_target: bool = False) -> np.ndarray:
  """This process's [batches, B] slices of global batches -> [batches * G] over all.

  Process p holds columns [p*B, (p+1)*B) of each global batch (dataset.py), so the
  result is in the order a single process would see. per_target: a last axis of
  targets rides along ([batches, B, T] -> [batches * G, T]).
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    x = np.swapaxes(np.asarray(multihost_utils.process_allgather(x)), 0, 1)
  return x.reshape((-1,) + (x.shape[-1:] if per_target else ()))


def _check_processes_agree(**values: int) -> None:
  """Raises TrainingError unless every process has the same values (int32 range)."""
  if jax.process_count() == 1:
    return
  from jax.experimental import multihost_utils
  names = sorted(values)
  table = np.asarray(multihost_utils.process_allgather(
      np.array([values[name] for name in names], np.int32)))  # [processes, names]
  differ = [f'{name} ({", ".join(f"process {p}: {v}" for p, v in enumerate(table[:, i]))})'
            for i, name in enumerate(names) if np.any(table[:, i] != table[0, i])]
  if differ:
    raise TrainingError(
        f'the {jax.process_count()} processes disagree on {"; ".join(differ)}. Start '
        'every process with the same flags and data, and a --run_dir on a file system '
        'all of them see (they resume from the same checkpoint).')


def _fingerprint(value: Any) -> int:
  return zlib.crc32(json.dumps(value, sort_keys=True).encode()) & 0x7fffffff


def poisson_loss_np(pred: np.ndarray, target: np.ndarray) -> float:
  """training.poisson_loss in numpy (float64): mean(pred - y log(pred + 1e-7))."""
  pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
  return float(np.mean(pred - target * np.log(pred + training.POISSON_EPSILON)))


def summarise(pred: np.ndarray, target: np.ndarray,
              loss: str = 'poisson') -> Dict[str, float]:
  """loss, mse, mae, pearson, spearman and n of predictions vs targets.

  loss: the recipe's loss, of the predictions: Poisson or MSE. The soft-bin loss needs
  the bins' logits, which are not kept: no 'loss' then.
  """
  out = metrics_lib.regression_metrics(pred, target)
  if loss == 'poisson':
    out = dict(loss=poisson_loss_np(pred, target), **out)
  elif loss == 'mse':
    out = dict(loss=out['mse'], **out)
  out['n'] = int(pred.shape[0])
  return out


def summarise_targets(pred: np.ndarray, target: np.ndarray,
                      config: TrainConfig) -> Dict[str, Any]:
  """`summarise` of one target; of several, the mean over targets of each metric (the
  best epoch is the best mean Pearson) and each target's own under 'per_target'."""
  if pred.ndim == 1:
    return summarise(pred, target, config.loss)
  per_target = {name: summarise(pred[:, i], target[:, i], config.loss)
                for i, name in enumerate(config.target_columns)}
  first = next(iter(per_target.values()))
  out = {key: float(np.mean([m[key] for m in per_target.values()]))
         for key in first if key != 'n'}
  return dict(out, n=first['n'], per_target=per_target)


# ---------------------------------------------------------------------------
# The run.


class _Printer:
  """Prints lines without breaking a tqdm bar."""

  def __init__(self, enabled: bool):
    self.enabled = enabled

  def __call__(self, line: str) -> None:
    if not self.enabled:
      return
    try:
      import tqdm
      tqdm.tqdm.write(line, file=sys.stdout)
    except ImportError:
      print(line)
    sys.stdout.flush()


def _check_resume_config(saved: Dict[str, Any], config: TrainConfig, path: str) -> None:
  """Raises TrainingError unless `config` may continue the run that saved `saved`.

  Fields a checkpoint predates count as their defaults (what its run used).
  """
  now, defaults = config.to_json_dict(), TrainConfig().to_json_dict()
  diffs = [f'--{k}: checkpoint {saved.get(k, defaults[k])!r}, now {now[k]!r}'
           for k in now if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != now[k]]
  if config.recipe.uses_schedule_length and saved.get('num_epochs') != now['num_epochs']:
    diffs.append(f'--num_epochs: checkpoint {saved.get("num_epochs")!r}, now '
                 f'{now["num_epochs"]!r} (the --schedule={config.schedule} learning '
                 'rate spans the whole run)')
  if diffs:
    raise TrainingError(
        f'cannot resume from {path}: the flags differ from the run that wrote it '
        f'({"; ".join(diffs)}). Use the same flags, or start a new --run_dir.')

def _best_of(history: Sequence[Dict[str, Any]]) -> Tuple[int, float]:
  best_epoch, best = 0, -math.inf
  for record in history:
    value = record['holdout']['pearson']
    if value is not None and math.isfinite(value) and value > best:
      best_epoch, best = record['epoch'], value
  return best_epoch, best


def write_metrics_file(run_dir: str, history: Sequence[Dict[str, Any]]) -> str:
  path = os.path.join(run_dir, METRICS_FILE)
  text = ''.join(json.dumps(record) + '\n' for record in history)
  files.atomic_write(path, lambda f: f.write(text.encode('utf-8')))
  return path


def plot_history(run_dir: str, history: Sequence[Dict[str, Any]],
                 noise_ceiling: Optional[float] = None, title: str = '') -> str:
  """Train and held-out Pearson per epoch, as the seed's Figure 2 (PNG)."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import matplotlib.ticker
  epochs = [r['epoch'] for r in history]
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  ax.plot(epochs, [r['train']['pearson'] for r in history], 'o-', ms=3,
          label='train (training mode, during the epoch)')
  ax.plot(epochs, [r['holdout']['pearson'] for r in history], 's-', ms=3,
          label='held-out')
  best_epoch, best = _best_of(history)
  if best_epoch:
    ax.axvline(best_epoch, color='grey', ls=':', lw=1,
               label=f'best epoch {best_epoch} (r = {best:.3f})')
  if noise_ceiling is not None:
    ax.axhline(noise_ceiling, color='k', ls='--', lw=1,
               label=f'noise ceiling {noise_ceiling:.3f}')
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel('epoch')
  ax.set_ylabel('Pearson r')
  ax.set_title(title or 'Pearson r per epoch')
  ax.grid(alpha=0.3)
  ax.legend(loc='lower right', fontsize=8)
  fig.tight_layout()
  path = os.path.join(run_dir, PLOT_FILE)
  files.atomic_write(path, lambda f: fig.savefig(f, format='png'))
  plt.close(fig)
  return path


def _progress_bar(enabled: bool, total: int, desc: str):
  if not enabled:
    return None
  import tqdm
  return tqdm.tqdm(total=total, desc=desc, unit='seq', unit_scale=True,
                   dynamic_ncols=True, leave=False, file=sys.stderr)


def _all_finite(tree: Any) -> bool:
  return all(bool(np.all(np.isfinite(np.asarray(x))))
             for x in jax.tree_util.tree_leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))

# ---------------------------------------------------------------------------
# The run, in the order it happens: data and split, the plan, start or resume, the
# compiled steps; then per epoch: train, evaluate, checkpoint.


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


def load_data(config: TrainConfig, log: Callable[[str], None]) -> RunData:
  """Reads (or first generates) the training file and splits off the held-out rows."""
  from enformer_small import dataset  # TensorFlow takes seconds to import.
  path = train_file_path(config)
  if config.synthetic_rows > 0 and not config.table_file:
    path = ensure_synthetic_file(config, log)
  if not config.table_file and not os.path.exists(path):
    raise TrainingError(missing_train_file_message(path))
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
  log(f'data: {path}: {len(data):,} rows ({len(train_rows):,} train, '
      f'{len(holdout_rows):,} held out) read in {time.perf_counter() - started:.1f} s'
      + (f'; held-out noise ceiling {noise_ceiling:.4f}' if noise_ceiling else ''))
  data_id = dict(source=path, num_rows=len(data), content_hash=(
      getattr(data, 'content_hash', None) or
      getattr(getattr(data, 'report', None), 'content_hash', None) or None))
  return RunData(path=path, rows=dataset.with_plasmid_context(data, config.plasmid_context),
                 train_rows=train_rows, holdout_rows=holdout_rows,
                 noise_ceiling=noise_ceiling, data_id=data_id)


def check_holdout(path: str, num_rows: int, num_holdout: int) -> None:
  """Both parts of the split must be non-empty: the best epoch is chosen by held-out
  Pearson, and training needs rows."""
  if num_holdout <= 0:
    raise TrainingError('--num_holdout must be positive: the best epoch is chosen by '
                        'held-out Pearson')
  if num_rows < 2:
    raise TrainingError(
        f'{path} has {num_rows} row(s): training needs at least 2 (one to train on, '
        f'one held out).')
  if num_holdout >= num_rows:
    raise TrainingError(
        f'{path} has {num_rows:,} row(s): --num_holdout={num_holdout:,} leaves none to '
        f'train on. Hold out fewer rows (at least 1 and fewer than {num_rows:,}) or use '
        f'a larger file.')


def check_run_dir_writable(run_dir: str) -> None:
  """Fails before data loading and compilation, not at the first save, where the run
  directory cannot be created or written."""
  try:
    os.makedirs(run_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=run_dir, prefix='.write_test_'):
      pass
  except OSError as e:
    raise TrainingError(
        f'cannot write to the run directory {run_dir}: {e.strerror or e}. Make it '
        f'writable, or choose another --run_dir.') from None


def model_config_for(config: TrainConfig) -> config_lib.EnformerConfig:
  """The seed model at --input_length, without dropout or with the soft-bin head."""
  model_config = config_lib.seed_config(config.input_length)
  if not config.dropout:
    model_config = model_config.without_dropout()
  if config.loss == 'soft_bin':
    model_config = model_config.with_soft_bin_head(recipe_lib.NUM_SOFT_BINS)
  if len(config.target_columns) > 1:
    model_config = model_config.with_outputs(len(config.target_columns))
  return model_config


def check_window(config: TrainConfig) -> None:
  """Raises TrainingError unless every shifted window lies within the rows."""
  context = (f' with {config.plasmid_context} bp of plasmid on each side'
             if config.plasmid_context else '')
  advice = ('change --crop_start, --shifts, --input_length or --plasmid_context (e.g. '
            '--shifts=0 for 110 bp)')
  try:
    start = config.window_start
  except ValueError as e:
    raise TrainingError(f'{e}: {advice}') from None
  lo = start + min(config.shifts)
  hi = start + max(config.shifts) + config.input_length
  if lo < 0 or hi > config.row_length:
    raise TrainingError(
        f'the window [{start} + s, {start} + s + {config.input_length}) for shifts '
        f'{config.shifts} spans [{lo}, {hi}), outside the {config.row_length} bp rows '
        f'({dream_data.SEQUENCE_LENGTH} bp{context}): {advice}')


@dataclasses.dataclass(frozen=True)
class Plan:
  """What the flags and the data size make of a run."""
  model_config: config_lib.EnformerConfig
  optimizer: Any                # optax.GradientTransformation
  pipeline: Any                 # dataset.PipelineConfig
  eval_batch_size: int          # a multiple of the device count
  steps_per_epoch: int
  total_steps: int              # the schedule's length


def make_plan(config: TrainConfig, num_train_rows: int) -> Plan:
  from enformer_small import dataset
  shards = _shard_count()
  if config.batch_size % shards:
    raise TrainingError(f'--batch_size={config.batch_size} must be divisible by the '
                        f'{shards} devices; e.g. {config.batch_size // shards * shards}')
  pipeline = _pipeline_config(config)
  steps_per_epoch = dataset.num_train_batches(num_train_rows, config.batch_size, pipeline)
  if steps_per_epoch == 0:
    raise TrainingError(
        f'{num_train_rows:,} training rows x {pipeline.examples_per_row} shift(s) '
        f'hold no full batch of {config.batch_size}: lower --batch_size')
  total_steps = steps_per_epoch * config.num_epochs
  return Plan(model_config=model_config_for(config),
              optimizer=recipe_lib.make_optimizer(config.recipe, total_steps),
              pipeline=pipeline,
              eval_batch_size=-(-config.eval_batch_size // shards) * shards,
              steps_per_epoch=steps_per_epoch, total_steps=total_steps)


def _load_for_resume(checkpointer: checkpointer_lib.Checkpointer, config: TrainConfig,
                     template: Any, warn: Callable[[str], None]
                     ) -> Optional[checkpointer_lib.Restored]:
  """The newest whole checkpoint with its optimizer state, after checking the flags
  match; damaged ones are skipped with a warning."""
  try:
    restored = checkpointer.restore_latest(
        template, on_damaged=lambda why: warn(f'skipping a damaged checkpoint: {why}'))
  except checkpoint_lib.OptimizerMismatchError as e:
    # Another recipe makes another optimizer state: name the flags, not the leaves.
    saved = checkpointer.read(e.path).checkpoint.extra.get('train_config', {})
    _check_resume_config(saved, config, e.path)
    raise
  if restored is not None:
    ckpt = restored.checkpoint
    _check_resume_config(ckpt.extra.get('train_config', {}), config, ckpt.path)
  return restored


def _fresh_start(config: TrainConfig, plan: Plan) -> training.TrainState:
  return jax.device_get(training.init_train_state(
      plan.model_config, plan.optimizer, jax.random.PRNGKey(config.seed)))


def start_or_resume(config: TrainConfig, plan: Plan, run_data: RunData,
                    checkpointer: checkpointer_lib.Checkpointer, *, resume: bool,
                    overwrite: bool, log: Callable[[str], None],
                    warn: Callable[[str], None]):
  """Where the run starts: (host TrainState, the history so far, the epochs done, how
  far the next epoch had got: an EpochProgress, or None to start it afresh)."""
  if jax.process_index() == 0:
    for path in checkpointer_lib.remove_temporaries(config.run_dir):
      log(f'removed {path}, left by a write that was killed')
  latest = checkpointer.latest()
  if not (resume and latest):
    if resume:
      log(f'no checkpoint in {config.run_dir}: starting a new run')
    if latest and overwrite and jax.process_index() == 0:
      checkpointer.delete_all()
      # The old run's TensorBoard curves would run on into the new run's.
      for name in os.listdir(config.run_dir):
        if name.startswith(summaries.EVENT_FILE_PREFIX):
          os.remove(os.path.join(config.run_dir, name))
    host_state = _fresh_start(config, plan)
    if config.init_checkpoint:
      host_state = warm_start(config, plan, host_state, log)
    return host_state, [], 0, None
  template = jax.eval_shape(lambda: training.init_train_state(
      plan.model_config, plan.optimizer, jax.random.PRNGKey(0)).opt_state)
  restored = _load_for_resume(checkpointer, config, template, warn)
  if restored is None:
    raise TrainingError(
        f'cannot resume: no checkpoint in {config.run_dir} reads back whole (see the '
        'warnings above). Start afresh with --overwrite, or choose another --run_dir.')
  ckpt = restored.checkpoint
  saved_data, data_id = ckpt.extra.get('data', {}), run_data.data_id
  if (saved_data.get('content_hash') and data_id['content_hash'] and
      saved_data['content_hash'] != data_id['content_hash']):
    raise TrainingError(
        f'cannot resume from {ckpt.path}: it was trained on another file '
        f'({saved_data.get("source")}, {saved_data.get("num_rows")} rows) than '
        f'{run_data.path}')
  host_state = training.TrainState(
      params=ckpt.params if ckpt.train_params is None else ckpt.train_params,
      state=ckpt.state if ckpt.train_state is None else ckpt.train_state,
      opt_state=ckpt.opt_state, rng=np.asarray(ckpt.rng),
      step=np.asarray(ckpt.step, np.int32))
  within = (f' ({restored.progress.steps} of the {plan.steps_per_epoch} steps of epoch '
            f'{ckpt.epoch + 1} done)' if restored.progress else '')
  log(f'resuming from {ckpt.path}: epoch {ckpt.epoch}, step {ckpt.step}{within}')
  return host_state, [dict(r) for r in ckpt.metrics], ckpt.epoch, restored.progress


def warm_start(config: TrainConfig, plan: Plan, host_state: training.TrainState,
               log: Callable[[str], None]) -> training.TrainState:
  """The fresh state with what fits of --init_checkpoint, its optimizer state new."""
  from enformer_small import warm_start as warm_start_lib
  source_params, source_state = warm_start_lib.read_source(config.init_checkpoint,
                                                           plan.model_config)
  params, state, report = warm_start_lib.merge(
      host_state.params, host_state.state, source_params, source_state,
      source=config.init_checkpoint)
  for line in report.lines():
    log(line)
  return host_state._replace(params=params, state=state,
                             opt_state=jax.device_get(plan.optimizer.init(params)))


def describe_model(config: TrainConfig, model_config, num_params: int) -> str:
  head = (f', soft-bin head ({recipe_lib.NUM_SOFT_BINS} bins)'
          if model_config.head_kind == 'soft_bins' else '')
  outputs = model_lib.num_outputs(model_config)
  if outputs > 1:
    head += f', {outputs} outputs ({", ".join(config.target_columns)})'
  if config.freeze:
    head += f', frozen: {", ".join(config.freeze)}'

  return (f'seed Enformer at {config.input_length} bp'
          f'{"" if config.dropout else " without dropout"}{head}, {num_params:,} '
          'parameters')


def write_config_file(config: TrainConfig, run_data: RunData, plan: Plan,
                      num_params: int) -> str:
  """train_config.json: the flags, with what was actually used in their place."""
  used = config.to_json_dict()
  used.update(train_file=run_data.path, crop_start=config.window_start)
  used['resolved'] = dict(
      data=run_data.data_id, train_rows=len(run_data.train_rows),
      holdout_rows=len(run_data.holdout_rows),
      model=describe_model(config, plan.model_config, num_params),
      parameters=num_params, row_length=config.row_length,
      window=[config.window_start, config.window_start + config.input_length],
      steps_per_epoch=plan.steps_per_epoch, total_steps=plan.total_steps,
      devices=jax.device_count(), processes=jax.process_count())
  path = os.path.join(config.run_dir, CONFIG_FILE)
  files.atomic_write(path, lambda f: f.write(json.dumps(used, indent=1).encode()))
  return path


@dataclasses.dataclass(frozen=True)
class Steps:
  """The compiled pmapped steps; batch_stats only with BatchNorm recalibration."""
  train: Any
  eval: Any
  batch_stats: Any = None


def build_steps(config: TrainConfig, plan: Plan, train_state: training.TrainState
                ) -> Steps:
  """Compiles the steps ahead of the loop, so that epoch timings exclude compiling."""
  devices = jax.local_device_count()
  per_device = config.batch_size // jax.process_count() // devices
  per_device_eval = plan.eval_batch_size // jax.process_count() // devices
  dtype = jnp.dtype(config.compute_dtype)
  example = training.shard_batch({
      'inputs': np.zeros((devices, per_device, config.input_length, 4), INPUT_DTYPE),
      'targets': np.zeros((devices, per_device, max(1, len(config.target_columns))),
                          np.float32)})
  eval_inputs = training.shard_batch(np.zeros(
      (devices, per_device_eval, config.input_length, 4), INPUT_DTYPE))
  key = (plan.model_config, dtype.name, config.fast_cpu)
  train_step = _compiled(
      'train', key + (config.recipe, plan.total_steps),
      lambda: training.make_train_step(
          plan.model_config, plan.optimizer, compute_dtype=dtype, return_predictions=True,
          loss=config.loss, soft_bin_sigma=config.soft_bin_sigma, frozen=config.freeze,
          fast_cpu=config.fast_cpu),
      train_state, example)
  eval_step = _compiled('eval', key, lambda: training.make_eval_step(
      plan.model_config, compute_dtype=dtype, fast_cpu=config.fast_cpu), train_state.params,
                        train_state.state, eval_inputs)
  batch_stats = None
  if config.bn_recalibration_batches:
    batch_stats = _compiled('batch_stats', key + (config.freeze,),
                            lambda: training.make_batch_stats_step(
        plan.model_config, compute_dtype=dtype, frozen=config.freeze,
        fast_cpu=config.fast_cpu), train_state.params,
                            train_state.state, example['inputs'])
  return Steps(train=train_step, eval=eval_step, batch_stats=batch_stats)


@dataclasses.dataclass
class Position:
  """Where the run is (1-based epoch in progress, global steps done), and whether Ctrl-C
  asked it to stop: for Ctrl-C."""
  epoch: int = 0
  step: int = 0
  stop_requested: bool = False

  def check_stop(self) -> None:
    """Raises KeyboardInterrupt if Ctrl-C was pressed: called between steps."""
    if self.stop_requested:
      raise KeyboardInterrupt


class SaveClock:
  """When to save within an epoch: every `minutes` (<= 0: never), by process 0's clock.

  Every process takes part in a save (orbax's barriers, the gathered predictions), so
  with several they all follow process 0's decision. Its broadcast waits for every
  process and so stops a step from overlapping the next: it is asked at most every
  `MAX_STEPS_BETWEEN_ASKS` steps and at most ~50 times an epoch (a short epoch is
  asked at every step), the same steps on every process. A save is that much late.
  """
  MAX_STEPS_BETWEEN_ASKS = 20

  def __init__(self, minutes: float = 0.0):
    self.seconds = minutes * 60
    self.reset()

  def reset(self) -> None:
    self.last = time.monotonic()

  def due(self, step: int, steps_per_epoch: int) -> bool:
    """Whether to save after `step` (0-based, within the epoch); called by every
    process after each step."""
    if self.seconds <= 0:
      return False
    if jax.process_count() == 1:
      return time.monotonic() - self.last >= self.seconds
    between = max(1, min(self.MAX_STEPS_BETWEEN_ASKS, steps_per_epoch // 50))
    if (step + 1) % between:
      return False
    from jax.experimental import multihost_utils
    due = time.monotonic() - self.last >= self.seconds
    return bool(multihost_utils.broadcast_one_to_all(np.int32(due)))


@dataclasses.dataclass
class Run:
  """What every per-epoch function needs.

  history: the records of the completed epochs (the list `_train` appends to).
  tensorboard: process 0's event file writer, else None.
  """
  config: TrainConfig
  data: RunData
  plan: Plan
  steps: Steps
  log: Callable[[str], None]
  is_writer: bool
  checkpointer: checkpointer_lib.Checkpointer
  history: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
  save_clock: SaveClock = dataclasses.field(default_factory=SaveClock)
  tensorboard: Optional[summaries.ScalarWriter] = None
  tensorboard_every_steps: int = 0
  progress: bool = False
  log_every_steps: int = 0
  where: Position = dataclasses.field(default_factory=Position)


def _epoch_batches(run: Run, epoch: int, start_step: int = 0
                   ) -> Iterator[Dict[str, np.ndarray]]:
  from enformer_small import dataset
  return dataset.train_batches(
      run.data.rows, run.data.train_rows, global_batch_size=run.config.batch_size,
      local_device_count=jax.local_device_count(), process_index=jax.process_index(),
      process_count=jax.process_count(), config=run.plan.pipeline, seed=run.config.seed,
      epoch=epoch, start_step=start_step)


def _local_steps(gathered: np.ndarray, steps: int) -> List[np.ndarray]:
  """This process's part of each step of `_gather_batches`' result, per step."""
  per_step = gathered.reshape((steps, jax.process_count(), -1) + gathered.shape[1:])
  return list(per_step[:, jax.process_index()])


def _per_row(x: Any, config: TrainConfig) -> np.ndarray:
  """Device values [D, B(, T)] -> [D * B(, T)]: one row per example, T targets kept."""
  x = np.asarray(x)
  return x.reshape((-1,) + (x.shape[-1:] if len(config.target_columns) > 1 else ()))


class _StepTracker:
  """Takes each step's metrics: stops on a non-finite loss, keeps the predictions,
  moves the progress bar or, off a terminal, logs a line every --log_every_steps."""

  def __init__(self, run: Run, epoch: int,
               resumed: Optional[checkpointer_lib.EpochProgress] = None):
    self.run, self.epoch = run, epoch
    self.preds: List[np.ndarray] = []
    self.targets: List[np.ndarray] = []
    self.seconds_before = 0.0
    if resumed is not None:  # The steps done before the epoch was saved.
      self.preds = _local_steps(resumed.predictions, resumed.steps)
      self.targets = _local_steps(resumed.targets, resumed.steps)
      self.seconds_before = resumed.seconds
    self.first = len(self.preds)
    self.started = time.perf_counter()
    self.mark = (self.started, run.where.step)  # TensorBoard's seq/s: since the last
    config = run.config
    self.schedule = recipe_lib.learning_rate_schedule(config.recipe, run.plan.total_steps)
    self.bar = _progress_bar(run.progress and run.is_writer,
                             run.plan.steps_per_epoch * config.batch_size,
                             f'epoch {epoch + 1}/{config.num_epochs}')
    if self.bar is not None:
      self.bar.update(self.first * config.batch_size)

  def seconds(self) -> float:
    """Training time of the epoch so far, before a resume included."""
    return self.seconds_before + time.perf_counter() - self.started

  def add(self, metrics: Any, step_in_epoch: int) -> None:
    run, config, steps = self.run, self.run.config, self.run.plan.steps_per_epoch
    metrics = jax.device_get(metrics)
    loss = float(np.asarray(metrics['loss'])[0])
    done = step_in_epoch + 1
    if not math.isfinite(loss):
      raise NonFiniteError(
          f'training stopped: the loss became {loss} in epoch {self.epoch + 1}, step '
          f'{done} of {steps} (global step {self.epoch * steps + done}). Nothing since '
          f'the last checkpoint was saved; ' + _last_good(config.run_dir))
    run.where.step = self.epoch * steps + done
    self.preds.append(_per_row(metrics['predictions'], run.config))
    self.targets.append(_per_row(metrics['targets'], run.config))
    if self.bar is not None:
      self.bar.update(config.batch_size)
      self.bar.set_postfix(loss=f'{loss:.4f}', refresh=False)
    elif run.log_every_steps > 0 and done % run.log_every_steps == 0:
      rate = ((done - self.first) * config.batch_size /
              (time.perf_counter() - self.started))
      run.log(f'epoch {self.epoch + 1}/{config.num_epochs} step {done}/{steps} (global '
              f'{run.where.step}): {config.loss} loss {loss:.4f}, {rate:.0f} seq/s')
    every = run.tensorboard_every_steps
    if run.tensorboard is not None and every > 0 and run.where.step % every == 0:
      self._summarise(loss)

  def _summarise(self, loss: float) -> None:
    """TensorBoard: the step's loss, learning rate, and seq/s since the last values."""
    now, step = time.perf_counter(), self.run.where.step
    (then, before), self.mark = self.mark, (now, step)
    self.run.tensorboard.scalars(step, {
        'step/loss': loss,
        'step/learning_rate': float(self.schedule(max(step - 1, 0))),
        'step/seq_per_s': (step - before) * self.run.config.batch_size / (now - then)})

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()

  def gathered(self) -> Tuple[np.ndarray, np.ndarray]:
    multi = len(self.run.config.target_columns) > 1
    return (_gather_batches(np.stack(self.preds), multi),
            _gather_batches(np.stack(self.targets), multi))


def train_epoch(run: Run, train_state: training.TrainState, epoch: int,
                resumed: Optional[checkpointer_lib.EpochProgress] = None):
  """Trains epoch `epoch` (0-based), from where `resumed` left it if given; saves
  within it when `run.save_clock` says so.

  Returns:
    (train_state, training-mode predictions [n], their targets [n], seconds).
  """
  steps = run.plan.steps_per_epoch
  first = resumed.steps if resumed else 0
  batches = _epoch_batches(run, epoch, first)
  tracker = _StepTracker(run, epoch, resumed)
  pending = None
  try:
    for i, device_batch in enumerate(
        training.prefetch_to_device(batches, DEVICE_PREFETCH), first):
      run.where.check_stop()
      train_state, metrics = run.steps.train(train_state, device_batch)
      if pending is not None:
        tracker.add(*pending)  # The previous step's, while this one runs.
      pending = (metrics, i)
      if i + 1 < steps and run.save_clock.due(i, steps):
        tracker.add(*pending)  # A save holds whole steps: this one's metrics too.
        pending = None
        save_within_epoch(run, train_state, epoch, tracker)
    if pending is not None:
      tracker.add(*pending)
  finally:
    tracker.close()
  jax.block_until_ready(train_state)
  return (train_state,) + tracker.gathered() + (tracker.seconds(),)


def save_within_epoch(run: Run, train_state: training.TrainState, epoch: int,
                      tracker: _StepTracker) -> None:
  """Saves the run in the middle of epoch `epoch` after the steps `tracker` holds, with
  their predictions, so that a resumed epoch scores as an uninterrupted one."""
  host = training.unreplicate(train_state)
  if not _all_finite(host.params):
    raise NonFiniteError(
        f'training stopped: non-finite parameters in epoch {epoch + 1} after step '
        f'{len(tracker.preds)} (global step {int(host.step)}). Nothing since the last '
        'checkpoint was saved; ' + _last_good(run.config.run_dir))
  preds, targets = tracker.gathered()  # A collective: every process takes part.
  run.save_clock.reset()
  if not run.is_writer:
    return
  progress = checkpointer_lib.EpochProgress(
      steps=len(tracker.preds), predictions=preds, targets=targets,
      seconds=tracker.seconds())
  path = run.checkpointer.save(
      progress=progress, params=host.params, state=host.state,
      model_config=run.plan.model_config, opt_state=host.opt_state, rng=host.rng,
      epoch=epoch, step=int(host.step), metrics=run.history,
      extra=_checkpoint_extra(run, _best_of(run.history)[0]))
  run.log(f'saved {path} (step {progress.steps} of {run.plan.steps_per_epoch} of epoch '
          f'{epoch + 1})')


def eval_variables(run: Run, train_state: training.TrainState, epoch: int):
  """The replicated (params, state) to evaluate and keep: the Polyak average of the
  parameters with --ema_decay, BatchNorm averages re-estimated on the epoch's first
  --bn_recalibration_batches training batches (training mode, no dropout)."""
  params = recipe_lib.ema_params(train_state.opt_state)
  if params is None:
    params = train_state.params
  state = train_state.state
  if run.config.bn_recalibration_batches:
    batches = itertools.islice(_epoch_batches(run, epoch),
                               run.config.bn_recalibration_batches)
    state = training.recalibrate_batch_norm(
        run.steps.batch_stats, params, state,
        (training.shard_batch(b['inputs']) for b in batches), frozen=run.config.freeze)
  return params, state


def _holdout_pass(run: Run, params, state, shift: int, reverse: bool):
  from enformer_small import dataset
  preds, targets, masks = [], [], []
  for batch in dataset.eval_batches(
      run.data.rows, run.data.holdout_rows, global_batch_size=run.plan.eval_batch_size,
      local_device_count=jax.local_device_count(), process_index=jax.process_index(),
      process_count=jax.process_count(), config=run.plan.pipeline, shift=shift,
      reverse_complement=reverse):
    out = np.asarray(run.steps.eval(params, state, training.shard_batch(batch['inputs'])))
    preds.append(_per_row(out, run.config))
    targets.append(_per_row(batch['targets'], run.config))
    masks.append(batch['mask'].reshape(-1))
  # Padding is dropped after the gather: processes hold different numbers of rows.
  multi = len(run.config.target_columns) > 1
  preds, targets = (_gather_batches(np.stack(x), multi) for x in (preds, targets))
  masks = _gather_batches(np.stack(masks))
  return preds[masks], targets[masks]


def evaluate(run: Run, params, state) -> Tuple[np.ndarray, np.ndarray, float]:
  """Held-out predictions (eval mode; the mean over the windows of --eval_shifts and,
  with --eval_reverse_complement, both strands: `window_average.average`, as
  experiments.predict), their targets, and the seconds it took."""
  started = time.perf_counter()
  targets = []

  def predict_pass(shift: int, reverse: bool) -> np.ndarray:
    preds, pass_targets = _holdout_pass(run, params, state, shift, reverse)
    targets.append(pass_targets)
    return preds

  preds = window_average.average(predict_pass, window_average.of_recipe(run.config))
  return preds, targets[0], time.perf_counter() - started


def run_epoch(run: Run, train_state: training.TrainState, epoch: int,
              resumed: Optional[checkpointer_lib.EpochProgress] = None):
  """Trains (from where `resumed` left it, if given) and evaluates one epoch.

  Returns:
    (train_state, the epoch's metrics record, host TrainState, evaluated) where
    evaluated = (params, state) on the host, each None where it is the training one.
  """
  started = time.perf_counter()
  train_state, train_pred, train_target, train_seconds = train_epoch(
      run, train_state, epoch, resumed)
  params, state = eval_variables(run, train_state, epoch)
  holdout_pred, holdout_target, eval_seconds = evaluate(run, params, state)
  host = training.unreplicate(train_state)
  evaluated = (None if params is train_state.params else training.unreplicate(params),
               None if state is train_state.state else training.unreplicate(state))
  if not (np.all(np.isfinite(holdout_pred)) and _all_finite(host.params) and
          _all_finite(evaluated)):
    raise NonFiniteError(
        f'training stopped: non-finite parameters or held-out predictions after epoch '
        f'{epoch + 1} (step {int(host.step)}). Nothing of this epoch was saved; '
        + _last_good(run.config.run_dir))
  schedule = recipe_lib.learning_rate_schedule(run.config.recipe, run.plan.total_steps)
  record = dict(
      epoch=epoch + 1, step=int(host.step),
      train=summarise_targets(train_pred, train_target, run.config),
      holdout=summarise_targets(holdout_pred, holdout_target, run.config),
      learning_rate=float(schedule(max(int(host.step) - 1, 0))),
      train_seq_per_s=len(train_pred) / train_seconds,
      eval_seq_per_s=len(holdout_pred) / eval_seconds,
      train_seconds=train_seconds, eval_seconds=eval_seconds,
      epoch_seconds=time.perf_counter() - started)
  return train_state, record, host, evaluated


@contextlib.contextmanager
def _ctrl_c_between_steps(where: Position):
  """Within: Ctrl-C asks the run to stop at the next step (`Position.check_stop`).

  A KeyboardInterrupt raised wherever the main thread happens to be (inside tf.data,
  a device transfer or a checkpoint write) could leave those half done or hang their
  teardown; a request checked between steps cannot. A second Ctrl-C stops at once.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def request(*_):
    if where.stop_requested:
      raise KeyboardInterrupt
    where.stop_requested = True

  previous = signal.signal(signal.SIGINT, request)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)


def _checkpoint_extra(run: Run, best_epoch: int) -> Dict[str, Any]:
  """What a checkpoint records besides the arrays: the flags, window, recipe, data."""
  config = run.config
  return dict(train_config=config.to_json_dict(), crop_start=config.window_start,
              plasmid_context=config.plasmid_context,
              recipe=recipe_lib.fields_as_dict(config.recipe), data=run.data.data_id,
              best_epoch=best_epoch)


def save_epoch(run: Run, host: training.TrainState, evaluated, history, is_best: bool,
               best_epoch: int) -> None:
  """Writes the epoch's checkpoint, the best one, the metrics, the plot and the epoch's
  TensorBoard scalars (process 0)."""
  run.save_clock.reset()
  if not run.is_writer:
    return
  config, number = run.config, history[-1]['epoch']
  params, state = evaluated
  fields = dict(
      params=host.params if params is None else params,
      state=host.state if state is None else state, model_config=run.plan.model_config,
      opt_state=host.opt_state, rng=host.rng, epoch=number, step=int(host.step),
      metrics=history, extra=_checkpoint_extra(run, best_epoch),
      train_params=None if params is None else host.params,
      train_state=None if state is None else host.state)
  # Ctrl-C waits for these files: it is checked between steps (`_ctrl_c_between_steps`).
  if is_best:
    run.checkpointer.export_best(**fields)
  run.checkpointer.save(**fields)
  title = (f'{os.path.basename(os.path.normpath(config.run_dir))}: '
           f'{len(run.data.train_rows):,} train rows, batch {config.batch_size}')
  write_metrics_file(config.run_dir, history)
  plot_history(config.run_dir, history, run.data.noise_ceiling, title)
  if run.tensorboard is not None:
    run.tensorboard.scalars(int(host.step), summaries.flatten_scalars(history[-1]))
    run.tensorboard.flush()


def _epoch_line(record: Dict[str, Any], num_epochs: int, is_best: bool) -> str:
  tr, ho = record['train'], record['holdout']
  loss = lambda m: f' loss {m["loss"]:.4f}' if 'loss' in m else ''
  per_target = ''.join(f' {name} {m["pearson"]:.4f}'
                       for name, m in ho.get('per_target', {}).items())
  return (f'epoch {record["epoch"]}/{num_epochs}: train{loss(tr)} r '
          f'{tr["pearson"]:.4f} | held-out{loss(ho)} mse {ho["mse"]:.3f} '
          f'mae {ho["mae"]:.3f} r {ho["pearson"]:.4f} rho {ho["spearman"]:.4f}'
          + (f' (r per target:{per_target})' if per_target else '') +
          f' | {record["train_seq_per_s"]:.0f} seq/s, {record["epoch_seconds"]:.0f} s'
          + (' [best]' if is_best else ''))


def _holdout_pearsons(history: Sequence[Dict[str, Any]]) -> List[Optional[float]]:
  return [r['holdout']['pearson'] for r in history]


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          progress: bool = False, verbose: bool = True, log_every_steps: int = 0,
          save_every_minutes: float = 30.0,
          tensorboard_every_steps: int = 10) -> TrainResult:
  """Runs (or resumes) training; see the module docstring.

  save_every_minutes: also save within an epoch this often (<= 0: at epoch ends only).
  tensorboard_every_steps: TensorBoard's step loss, learning rate and seq/s every this
    many global steps (<= 0: per-epoch scalars only).

  Raises:
    TrainingError: missing data, a run directory in the way, flags that do not match
      the checkpoint being resumed. NonFiniteError: NaN/inf loss or parameters.
    Interrupted: Ctrl-C; its message names the epoch, step and last checkpoint.
    dream_data.DreamDataError, checkpoint_lib.CheckpointError: bad files.
  """
  latest = checkpointer_lib.Checkpointer(config.run_dir).latest()
  if latest and not resume and not overwrite:
    raise TrainingError(
        f'{config.run_dir} already holds checkpoints (latest {latest}). Pass --resume '
        f'to continue that run, --overwrite to start afresh (its checkpoints are '
        f'deleted), or choose another --run_dir.')
  check_window(config)
  if jax.process_index() == 0:
    check_run_dir_writable(config.run_dir)
  where = Position()
  options = dict(progress=progress, log_every_steps=log_every_steps,
                 save_clock=SaveClock(save_every_minutes),
                 tensorboard_every_steps=tensorboard_every_steps, where=where)
  try:
    with _ctrl_c_between_steps(where):
      return _train(config, resume=resume, overwrite=overwrite, verbose=verbose,
                    options=options)
  except KeyboardInterrupt:
    last = checkpointer_lib.Checkpointer(config.run_dir).latest()
    at = (f'at epoch {where.epoch}, step {where.step}' if where.epoch else
          'before training started')
    raise Interrupted(
        f'interrupted {at}; ' +
        (f'the last checkpoint is {last}; --resume continues' if last else
         'no checkpoint was written yet; run again to start over')) from None


def _train(config: TrainConfig, *, resume: bool, overwrite: bool, verbose: bool,
           options: Dict[str, Any]) -> TrainResult:
  """Sets the run up (`options`: the `Run` fields `train` chose), then trains."""
  is_writer = jax.process_index() == 0
  log = _Printer(verbose and is_writer)

  def warn(line: str) -> None:
    if is_writer:
      print(f'{distributed.process_label()}warning: {line}', file=sys.stderr, flush=True)

  run_data = load_data(config, log)
  plan = make_plan(config, len(run_data.train_rows))
  checkpointer = checkpointer_lib.Checkpointer(config.run_dir, config.keep_checkpoints)
  host_state, history, start_epoch, resumed = start_or_resume(
      config, plan, run_data, checkpointer, resume=resume, overwrite=overwrite, log=log,
      warn=warn)
  where = options['where']
  where.epoch, where.step = start_epoch + 1, int(host_state.step)
  _check_processes_agree(
      flags=_fingerprint({k: v for k, v in config.to_json_dict().items()
                          if k not in PER_PROCESS_FIELDS}),
      data=_fingerprint([run_data.data_id['content_hash'], run_data.data_id['num_rows']]),
      start_epoch=start_epoch, start_step=int(host_state.step))
  num_params = model_lib.count_params(host_state.params)
  if is_writer:
    write_config_file(config, run_data, plan, num_params)
  train_state = training.replicate(host_state)
  started = time.perf_counter()
  run = Run(config=config, data=run_data, plan=plan,
            steps=build_steps(config, plan, train_state), log=log, is_writer=is_writer,
            checkpointer=checkpointer, history=history,
            tensorboard=summaries.ScalarWriter(config.run_dir) if is_writer else None,
            **options)
  log(f'model: {describe_model(config, plan.model_config, num_params)} (window '
      f'[{config.window_start}:{config.window_start + config.input_length}] of '
      f'{config.row_length}), {jax.local_device_count()} device(s) x '
      f'{jax.process_count()} process(es), global batch {config.batch_size}, '
      f'{plan.steps_per_epoch} steps/epoch; compiled in '
      f'{time.perf_counter() - started:.1f} s')
  try:
    return _run_epochs(run, train_state, start_epoch, resumed)
  finally:
    checkpointer.close()
    if run.tensorboard is not None:
      run.tensorboard.close()


def _run_epochs(run: Run, train_state: training.TrainState, start_epoch: int,
                resumed: Optional[checkpointer_lib.EpochProgress]) -> TrainResult:
  """Epochs from `start_epoch` (0-based; the first from `resumed`, if given) on."""
  config, history, log = run.config, run.history, run.log
  best_epoch, best_pearson = _best_of(history)
  patience = config.early_stopping_patience
  stopped = recipe_lib.should_stop(_holdout_pearsons(history), patience)
  for epoch in range(start_epoch, config.num_epochs):
    if stopped:
      break
    run.where.epoch = epoch + 1
    run.where.check_stop()
    train_state, record, host, evaluated = run_epoch(run, train_state, epoch, resumed)
    resumed = None
    pearson = record['holdout']['pearson']
    is_best = math.isfinite(pearson) and pearson > best_pearson
    if is_best:
      best_epoch, best_pearson = epoch + 1, pearson
    record['best_epoch'] = best_epoch
    history.append(record)
    save_epoch(run, host, evaluated, history, is_best, best_epoch)
    log(_epoch_line(record, config.num_epochs, is_best))
    stopped = recipe_lib.should_stop(_holdout_pearsons(history), patience)
    if stopped:
      log(f'early stop: {patience} epoch(s) without a better held-out Pearson')
  log(f'done: best epoch {best_epoch} with held-out Pearson {best_pearson:.4f}'
      + (f' (noise ceiling {run.data.noise_ceiling:.4f})' if run.data.noise_ceiling
         else '') + f'; {checkpoint_lib.best_checkpoint_path(config.run_dir)}')
  return TrainResult(train_state=training.unreplicate(train_state), history=history,
                     best_epoch=best_epoch, best_pearson=best_pearson,
                     noise_ceiling=run.data.noise_ceiling, run_dir=config.run_dir,
                     stopped_early=stopped)


def _last_good(run_dir: str) -> str:
  latest = checkpointer_lib.Checkpointer(run_dir).latest()
  if latest is None:
    return 'no checkpoint had been written yet.'
  return (f'the last good checkpoint is {latest}; lower --learning_rate or check the '
          'data, then start a new --run_dir or --resume.')


# ---------------------------------------------------------------------------
# Command line.


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Defines the flags (one per TrainConfig field, plus how to run)."""
  d = TrainConfig()
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('train_file', d.train_file,
                      'DREAM training file (`sequence<TAB>expression`), e.g. the '
                      "challenge's train_sequences.txt.", **fv)
  flags.DEFINE_string('run_dir', d.run_dir, 'Where checkpoints and metrics go.', **fv)
  flags.DEFINE_integer('synthetic_rows', d.synthetic_rows,
                       'If > 0, train on this many rows of built-in synthetic data '
                       '(generated into --synthetic_dir on first use) instead of '
                       '--train_file.', **fv)
  flags.DEFINE_integer('synthetic_seed', d.synthetic_seed,
                       'Seed of the synthetic data.', **fv)
  flags.DEFINE_string('synthetic_dir', d.synthetic_dir, 'Cache of synthetic files.', **fv)
  flags.DEFINE_string('data_cache_dir', d.data_cache_dir,
                      'Cache of encoded DREAM files (default $ENFORMER_SMALL_CACHE or '
                      '~/.cache/enformer_small).', **fv)
  flags.DEFINE_integer('input_length', d.input_length, 'Model input length in bp.', **fv)
  flags.DEFINE_bool('dropout', d.dropout,
                    "The seed's dropout (0.4 in the transformer, 0.05 at the end); "
                    '--nodropout sets every rate to zero.', **fv)
  flags.DEFINE_integer('crop_start', d.crop_start,
                       'First position of the window in the 110 bp encoding (with '
                       '--plasmid_context=C: in the rows of C plasmid bases, the 110 bp, '
                       'C plasmid bases); -1: C + (110 - input_length) * 3 // 5, i.e. 15 '
                       'for 85 bp without context (the seed).', **fv)
  flags.DEFINE_list('shifts', [str(s) for s in d.shifts], 'Window shifts in training.',
                    **fv)
  flags.DEFINE_enum('shift_mode', d.shift_mode, ['expand', 'random'],
                    "expand: every row at every shift each epoch (the seed); random: "
                    'every row once at a random shift.', **fv)
  flags.DEFINE_integer('num_holdout', d.num_holdout, 'Held-out rows.', **fv)
  flags.DEFINE_integer('split_seed', d.split_seed, 'Seed of the held-out split.', **fv)
  flags.DEFINE_integer('batch_size', d.batch_size,
                       'Global batch size (all devices, all processes).', **fv)
  flags.DEFINE_integer('eval_batch_size', d.eval_batch_size, 'Evaluation batch size.',
                       **fv)
  flags.DEFINE_integer('num_epochs', d.num_epochs, 'Epochs to train (in all).', **fv)
  flags.DEFINE_integer('seed', d.seed, 'Seed of the parameters and the data order.', **fv)
  flags.DEFINE_enum('compute_dtype', d.compute_dtype, ['float32', 'bfloat16'],
                    'Activation dtype (parameters stay float32).', **fv)
  flags.DEFINE_bool('fast_cpu', d.fast_cpu,
                    'CPU speed: the train, eval and BatchNorm-statistics steps arranged '
                    'for XLA:CPU (residual gradients and dropout masks computed once, '
                    'relative logits without a transpose; ~20% faster train step at batch '
                    '256 on 2 cores); the same function, rounded otherwise, so not '
                    'bit-identical to the default.',
                    **fv)
  flags.DEFINE_integer('keep_checkpoints', d.keep_checkpoints,
                       'Epoch-end saves kept in --run_dir/checkpoints, besides the '
                       'newest save within an epoch (the best epoch is kept apart); '
                       '0: all.', **fv)
  define_own_data_flags(flag_values)
  define_recipe_flags(flag_values)
  flags.DEFINE_bool('resume', False, 'Continue from the latest checkpoint in --run_dir.',
                    **fv)
  flags.DEFINE_bool('overwrite', False,
                    'Start afresh in a --run_dir that holds checkpoints (deletes them).',
                    **fv)
  flags.DEFINE_float('save_every_minutes', 30.0,
                     'Also save within an epoch this often, so that --resume continues '
                     'at the next step; 0: at the end of each epoch only.', **fv)
  flags.DEFINE_integer('tensorboard_every_steps', 10,
                       'TensorBoard event files in --run_dir: the step loss, learning '
                       'rate and seq/s every this many steps (and every per-epoch '
                       'metric); 0: the per-epoch metrics only.', **fv)
  flags.DEFINE_bool('progress', True,
                    'Progress bar with throughput (only on a terminal).', **fv)
  flags.DEFINE_integer('log_every_steps', 100,
                       'Without a progress bar (output not a terminal, or '
                       '--noprogress): a line with epoch, step, loss and seq/s every '
                       'this many steps; 0: none.', **fv)
  # Multi-process jobs (launch/README.md); under SLURM and on TPU pods JAX reads these
  # from the environment.
  flags.DEFINE_string('coordinator_address', None,
                      'Multi-process: host:port of process 0, the same for every '
                      'process.', **fv)
  flags.DEFINE_integer('num_processes', None, 'Multi-process: number of processes.', **fv)
  flags.DEFINE_integer('process_id', None,
                       'Multi-process: this process, 0..num_processes-1 (0 writes the '
                       'files).', **fv)
  flags.DEFINE_list('local_device_ids', None,
                    'GPUs this process drives, e.g. 0,1,2,3,4,5,6,7 (default: all; under '
                    'SLURM, JAX gives each task one GPU).', **fv)


def define_own_data_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """Own tables (tables.py) and warm starts (warm_start.py)."""
  d = TrainConfig()
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('table_file', d.table_file,
                      'Train on this table (tab- or comma-separated, plain or gzip, a '
                      'header naming the columns) instead of --train_file.', **fv)
  flags.DEFINE_string('sequence_column', d.sequence_column,
                      '--table_file: the column of DNA sequences.', **fv)
  flags.DEFINE_list('target_columns', list(d.target_columns),
                    '--table_file: the target columns, one model output each.', **fv)
  flags.DEFINE_integer('sequence_length', d.sequence_length,
                       '--table_file: bp per row; every sequence must have it unless '
                       '--pad_sequences.', **fv)
  flags.DEFINE_bool('pad_sequences', d.pad_sequences,
                    "--table_file: pad shorter sequences at the 3' end with N and "
                    "truncate longer ones at the 3' end to --sequence_length.", **fv)
  flags.DEFINE_string('init_checkpoint', d.init_checkpoint,
                      'Warm start a new run: the trunk (and BatchNorm averages) from '
                      "this project's .npz checkpoint or a TF/Sonnet checkpoint; the "
                      'head where its shape fits, else re-initialised (logged).', **fv)


def define_recipe_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """One flag per field of recipe.Recipe (see its docstring); defaults are the seed's."""
  d = recipe_lib.Recipe()
  fv = dict(flag_values=flag_values)
  flags.DEFINE_enum('optimizer', d.optimizer, list(recipe_lib.OPTIMIZERS),
                    "sgd (with --momentum; the seed's), adam or adamw.", **fv)
  flags.DEFINE_float('learning_rate', d.learning_rate,
                     'Learning rate; with a --schedule, its peak.', **fv)
  flags.DEFINE_float('momentum', d.momentum, 'SGD momentum.', **fv)
  flags.DEFINE_float('b1', d.b1, 'Adam / AdamW first-moment decay.', **fv)
  flags.DEFINE_float('b2', d.b2, 'Adam / AdamW second-moment decay.', **fv)
  flags.DEFINE_float('eps', d.eps, 'Adam / AdamW epsilon.', **fv)
  flags.DEFINE_float('weight_decay', d.weight_decay,
                     'AdamW decoupled weight decay, on weight matrices only (not on '
                     'biases or BatchNorm / LayerNorm scales and offsets).', **fv)
  flags.DEFINE_float('clip_global_norm', d.clip_global_norm,
                     'Clip gradients to this global norm; 0: no clipping.', **fv)
  flags.DEFINE_enum('schedule', d.schedule, list(recipe_lib.SCHEDULES),
                    'Learning rate over the --num_epochs of the run: constant (the '
                    "seed's), warmup_cosine (linear warmup, cosine decay) or one_cycle "
                    "(PyTorch's OneCycleLR, cosine).", **fv)
  flags.DEFINE_float('warmup_fraction', d.warmup_fraction,
                     'warmup_cosine: share of the steps spent warming up from 0.', **fv)
  flags.DEFINE_float('end_lr_fraction', d.end_lr_fraction,
                     'warmup_cosine: final learning rate as a fraction of the peak.', **fv)
  flags.DEFINE_float('one_cycle_pct_start', d.one_cycle_pct_start,
                     'one_cycle: share of the steps spent rising to the peak.', **fv)
  flags.DEFINE_float('one_cycle_div_factor', d.one_cycle_div_factor,
                     'one_cycle: the start is the peak divided by this.', **fv)
  flags.DEFINE_float('one_cycle_final_div_factor', d.one_cycle_final_div_factor,
                     'one_cycle: the end is the start divided by this.', **fv)
  flags.DEFINE_float('ema_decay', d.ema_decay,
                     'Polyak (EMA) averaging of the parameters after every step, used '
                     'for evaluation, the best epoch and checkpoints; 0: off.', **fv)
  flags.DEFINE_bool('reverse_complement', d.reverse_complement,
                    'Training: reverse-complement each example with probability 1/2.',
                    **fv)
  flags.DEFINE_bool('eval_reverse_complement', d.eval_reverse_complement,
                    'Evaluation (and experiments.predict by default): average the '
                    'predictions for both strands.', **fv)
  flags.DEFINE_list('eval_shifts', list(map(str, d.eval_shifts)),
                    'Evaluation (and experiments.predict by default): average the '
                    'predictions of the windows at these shifts (bp, e.g. '
                    '-10,-5,0,5,10; both strands of each with --eval_reverse_complement), '
                    'which must stay within the rows (--plasmid_context); none: the '
                    'unshifted window.', **fv)
  flags.DEFINE_integer('plasmid_context', d.plasmid_context,
                       'Bases of the real plasmid added on each side of the 110 bp '
                       f'construct (0..{plasmid.MAX_CONTEXT}), for longer '
                       '--input_length or wider --shifts; 0: none.', **fv)
  flags.DEFINE_integer('bn_recalibration_batches', d.bn_recalibration_batches,
                       'Before each evaluation, re-estimate the BatchNorm averages on '
                       'this many training batches in training mode without dropout; '
                       '0: off.', **fv)
  flags.DEFINE_integer('early_stopping_patience', d.early_stopping_patience,
                       'Stop after this many epochs without a better held-out Pearson; '
                       '0: never.', **fv)
  flags.DEFINE_enum('loss', d.loss, list(recipe_lib.LOSSES),
                    "poisson (Keras'; the seed's), mse, or soft_bin (LegNet's soft-bin "
                    'targets over 18 bins with a KL loss; the model gets an 18-bin head '
                    'and predicts the expectation).', **fv)
  flags.DEFINE_float('soft_bin_sigma', d.soft_bin_sigma,
                     'soft_bin: standard deviation of the target distribution.', **fv)
  flags.DEFINE_list('freeze', list(d.freeze),
                    'Parts that never change, as paths below enformer/~/: trunk, '
                    'trunk/~/stem, trunk/~/conv_tower, trunk/~/transformer, ...; their '
                    'BatchNorms run in eval mode.', **fv)
  flags.DEFINE_float('head_learning_rate', d.head_learning_rate,
                     "The heads' own learning rate (peak); 0: --learning_rate.", **fv)
  flags.DEFINE_float('head_only_fraction', d.head_only_fraction,
                     'Two-phase fine-tuning: only the heads train over this share of '
                     'the steps, then everything.', **fv)


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> TrainConfig:
  fields = {f.name: flag_values[f.name].value for f in dataclasses.fields(TrainConfig)}
  for name in ('shifts', 'eval_shifts'):
    fields[name] = tuple(int(s) for s in fields[name] or ())
  for name in ('freeze', 'target_columns'):
    fields[name] = tuple(fields[name] or ())
  return TrainConfig(**fields)


def distributed_config_from_flags(
    flag_values: flags.FlagValues = FLAGS) -> distributed.DistributedConfig:
  ids = flag_values.local_device_ids
  try:
    ids = None if ids is None else tuple(int(i) for i in ids)
  except ValueError:
    raise distributed.DistributedError(
        f'--local_device_ids must be integers, e.g. 0,1,2,3, got {",".join(ids)}')
  return distributed.DistributedConfig(
      coordinator_address=flag_values.coordinator_address,
      num_processes=flag_values.num_processes, process_id=flag_values.process_id,
      local_device_ids=ids)


def warm_start_error() -> type:
  from enformer_small import warm_start as warm_start_lib
  return warm_start_lib.WarmStartError


def _fail(message: str) -> None:
  """Prints an error (naming the process in a multi-process job) and exits with 1."""
  if not message.startswith('error:'):
    message = f'error: {message}'
  print(distributed.process_label() + message, file=sys.stderr)
  sys.exit(1)


def _exit_interrupted(line: str) -> None:
  """Prints the one line and exits with 130 (128 + SIGINT) at once.

  Every file is written whole or not at all (atomic writes, Ctrl-C deferred while an
  epoch's files are written), so nothing is left to clean up; skipping the interpreter's
  teardown (TensorFlow's and JAX's threads) keeps the exit immediate.
  """
  print(distributed.process_label() + line, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(130)


def _quiet_abandoned_reads() -> None:
  """Silences what orbax's reads of a damaged checkpoint leave behind.

  Its first error ends the read and closes its event loop; tensorstore's other reads
  finish later and asyncio reports each (a traceback at exit). The warning line
  already names the checkpoint and why it was skipped.
  """
  logging.getLogger('asyncio').setLevel(logging.CRITICAL)
  report = sys.unraisablehook

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      report(unraisable)

  sys.unraisablehook = hook


class _WithoutOrbaxInfo(logging.Filter):
  """Drops orbax's INFO records (a dozen per save: renames, timings, syncs), which
  absl's handler would print; the run prints its own line per save."""

  def filter(self, record: logging.LogRecord) -> bool:
    return (record.levelno >= logging.WARNING or
            f'{os.sep}orbax{os.sep}' not in record.pathname)


def main(argv_unused):
  # absl shows INFO records; jax's probing of absent backends is not news.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  absl_logging.get_absl_handler().addFilter(_WithoutOrbaxInfo())
  _quiet_abandoned_reads()
  # Before anything touches JAX: join the other processes, if any.
  try:
    distributed.initialize(distributed_config_from_flags())
  except distributed.DistributedError as e:
    _fail(str(e))
  try:
    config = config_from_flags()
  except ValueError as e:
    _fail(f'bad flags: {e}')
  # Before TensorFlow is imported: a missing file is reported at once.
  if (config.synthetic_rows <= 0 and not config.table_file and
      not os.path.exists(config.train_file)):
    _fail(missing_train_file_message(config.train_file))
  progress = FLAGS.progress and sys.stderr.isatty()
  try:
    train(config, resume=FLAGS.resume, overwrite=FLAGS.overwrite, progress=progress,
          log_every_steps=0 if progress else FLAGS.log_every_steps,
          save_every_minutes=FLAGS.save_every_minutes,
          tensorboard_every_steps=FLAGS.tensorboard_every_steps)
  except (TrainingError, dream_data.DreamDataError,
          checkpoint_lib.CheckpointError, warm_start_error()) as e:
    _fail(str(e))
  except OSError as e:  # A disk filling up or a directory removed during the run.
    _fail(f'{e.filename or config.run_dir}: {e.strerror or e}. Files are written whole '
          f'or not at all: fix the cause and run again (--resume continues from the last '
          f'checkpoint).')
  except (Interrupted, KeyboardInterrupt) as e:
    _exit_interrupted(str(e) if isinstance(e, Interrupted) else
                      'interrupted before training started')


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  _runtime.run(main)
