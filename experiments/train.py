r"""Trains the seed's reduced Enformer on DREAM data (pmapped over the local devices).

  python -m experiments.train --flagfile=small.flags     # the seed's recipe, real data
  python -m experiments.train --flagfile=demo.flags      # synthetic, ~10 min on 2 cores
  python -m experiments.train --flagfile=demo.flags --resume   # continue a killed run

The recipe (small.flags): the seed model at 85 bp (X[:, 15:100] of the 110 bp encoding),
Keras' Poisson loss, optax SGD (learning rate 0.01, momentum 0.9, nothing else), global
batch 10,000, 10,000 held-out rows, shifts -1/0/+1 in 'expand' mode (every training row at
every shift, every epoch), up to 300 epochs, evaluation after every epoch, the epoch with
the best held-out Pearson kept.

A run directory (--run_dir) receives, from process 0 only:
  metrics.jsonl              one JSON object per epoch: train and held-out loss, MSE, MAE,
                             Pearson, Spearman, seq/s, seconds (rewritten each epoch)
  pearson.png                train and held-out Pearson per epoch (the seed's Figure 2)
  checkpoint_epoch_NNNN.npz  the last --keep_checkpoints epochs (see checkpoint.py)
  checkpoint_best.npz        the epoch with the best held-out Pearson so far
  train_config.json          the flags of the run

Train correlations are computed from the predictions the train steps make anyway
(training mode: dropout on, BatchNorm on batch statistics, parameters moving during the
epoch), as Keras reports training metrics; they cost nothing extra but sit below what the
final parameters would score in eval mode. Held-out metrics are eval mode, shift 0.

Reproducibility: parameters start from --seed; the data order, shifts and flips of
epoch e depend only on (--seed, e). A run resumed from the checkpoint of epoch k
(--resume) repeats exactly what the uninterrupted run computes from epoch k + 1 on; work
since the last checkpoint (a partial epoch) is done again. A NaN or inf loss stops the
run (exit status 1) before anything of its epoch is written, naming the epoch and step;
earlier checkpoints stay as they are.

Multi-host (launch/README.md): one process per host on JAX's runtime, found from SLURM or
TPU pod environments or given by --coordinator_address, --num_processes, --process_id.
Each process builds the same global batches and feeds its devices its own slice; the
step averages over all devices; held-out predictions are gathered and scored once; only
process 0 writes files; every process reads the same checkpoint when resuming (a shared
file system) and they check that they agree on flags, data and starting point.
"""

import dataclasses
import json
import logging
import math
import os
import sys
import time
import zlib
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments import _runtime

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import config as config_lib
from enformer_small import distributed
from enformer_small import dream_data
from enformer_small import metrics as metrics_lib
from enformer_small import training

FLAGS = flags.FLAGS

DATA_URL = 'https://zenodo.org/records/10633252'
METRICS_FILE = 'metrics.jsonl'
PLOT_FILE = 'pearson.png'
CONFIG_FILE = 'train_config.json'

# Fields of TrainConfig that may differ between the processes of a multi-host job
# (paths; the data are compared by content).
PER_PROCESS_FIELDS = frozenset({'run_dir', 'train_file', 'synthetic_dir',
                                'data_cache_dir'})

# Fields of TrainConfig that may change when a run is resumed: they do not change what
# is computed (or only extend it, num_epochs).
RESUMABLE_CHANGES = frozenset({
    'run_dir', 'train_file', 'num_epochs', 'keep_checkpoints', 'eval_batch_size',
    'data_cache_dir', 'synthetic_dir', 'debug_nan_at_step'})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that defines a training run (one field per flag of the same name)."""
  train_file: str = 'data/train_sequences.txt'
  run_dir: str = 'runs/small'
  synthetic_rows: int = 0
  synthetic_seed: int = 0
  synthetic_dir: str = 'runs/demo_data'
  data_cache_dir: Optional[str] = None
  input_length: int = 85
  dropout: bool = True               # False: config.without_dropout()
  crop_start: int = -1               # -1: checkpoint.default_crop_start(input_length)
  shifts: Tuple[int, ...] = (-1, 0, 1)
  shift_mode: str = 'expand'
  num_holdout: int = 10_000
  split_seed: int = 0
  batch_size: int = 10_000           # global: over all devices of all processes
  eval_batch_size: int = 1000        # rounded up to a multiple of the device count
  learning_rate: float = 0.01
  momentum: float = 0.9
  num_epochs: int = 300
  seed: int = 0
  compute_dtype: str = 'float32'
  keep_checkpoints: int = 3
  debug_nan_at_step: int = -1        # tests only: NaN targets at this global step

  def __post_init__(self):
    object.__setattr__(self, 'shifts', tuple(int(s) for s in self.shifts))

  @property
  def window_start(self) -> int:
    return (self.crop_start if self.crop_start >= 0 else
            checkpoint_lib.default_crop_start(self.input_length))

  def to_json_dict(self) -> Dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(self)))


class TrainingError(Exception):
  """A run that cannot start or go on; the message says why and what to do."""


class NonFiniteError(TrainingError):
  """NaN or inf in the loss, the held-out predictions or the parameters."""


@dataclasses.dataclass
class TrainResult:
  """What `train` did.

  train_state: the unreplicated final TrainState (numpy).
  history: one metrics dict per completed epoch (resumed epochs included).
  best_epoch, best_pearson: the epoch with the best held-out Pearson.
  noise_ceiling: held-out Pearson of the noise-free with the measured expression
    (synthetic data only, else None).
  """
  train_state: training.TrainState
  history: List[Dict[str, Any]]
  best_epoch: int
  best_pearson: float
  noise_ceiling: Optional[float]
  run_dir: str


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
                                one_hot_dtype=np.dtype(INPUT_DTYPE).name)


def _shard_count() -> int:
  return jax.process_count() * jax.local_device_count()


def _gather_batches(x: np.ndarray) -> np.ndarray:
  """This process's [batches, B] slices of global batches -> [batches * G] over all.

  Process p holds columns [p*B, (p+1)*B) of each global batch (dataset.py), so the
  result is in the order a single process would see.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    x = np.swapaxes(np.asarray(multihost_utils.process_allgather(x)), 0, 1)
  return x.reshape(-1)


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


def summarise(pred: np.ndarray, target: np.ndarray) -> Dict[str, float]:
  """loss (Poisson), mse, mae, pearson, spearman and n of predictions vs targets."""
  out = {'loss': poisson_loss_np(pred, target)}
  out.update(metrics_lib.regression_metrics(pred, target))
  out['n'] = int(pred.shape[0])
  return out


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
  now = config.to_json_dict()
  diffs = [f'--{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}' for k in now
           if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]
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
  checkpoint_lib.atomic_write(path, lambda f: f.write(text.encode('utf-8')))
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
  checkpoint_lib.atomic_write(path, lambda f: fig.savefig(f, format='png'))
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


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          progress: bool = False, verbose: bool = True) -> TrainResult:
  """Runs (or resumes) training; see the module docstring.

  Raises:
    TrainingError: missing data, a run directory in the way, flags that do not match
      the checkpoint being resumed. NonFiniteError: NaN/inf loss or parameters.
    dream_data.DreamDataError, checkpoint_lib.CheckpointError: bad files.
  """
  is_writer = jax.process_index() == 0
  log = _Printer(verbose and is_writer)
  run_dir = config.run_dir
  latest = checkpoint_lib.latest_checkpoint(run_dir)
  if latest and not resume and not overwrite:
    raise TrainingError(
        f'{run_dir} already holds checkpoints (latest {latest}). Pass --resume to '
        f'continue that run, --overwrite to start afresh (its checkpoints are '
        f'deleted), or choose another --run_dir.')
  lo = config.window_start + min(config.shifts)
  hi = config.window_start + max(config.shifts) + config.input_length
  if lo < 0 or hi > dream_data.SEQUENCE_LENGTH:
    raise TrainingError(
        f'the window [{config.window_start} + s, {config.window_start} + s + '
        f'{config.input_length}) for shifts {config.shifts} spans [{lo}, {hi}), outside '
        f'the {dream_data.SEQUENCE_LENGTH} bp encoding: change --crop_start, --shifts '
        'or --input_length (e.g. --shifts=0 for 110 bp)')
  from enformer_small import dataset  # TensorFlow takes seconds to import.

  # Data and split.
  path = train_file_path(config)
  if config.synthetic_rows > 0:
    path = ensure_synthetic_file(config, log)
  if not os.path.exists(path):
    raise TrainingError(missing_train_file_message(path))
  started = time.perf_counter()
  data = dream_data.read_dream_file(path, cache_dir=config.data_cache_dir)
  train_rows, holdout_rows = dream_data.holdout_split(len(data), config.num_holdout,
                                                      config.split_seed)
  if len(holdout_rows) == 0:
    raise TrainingError('--num_holdout must be positive: the best epoch is chosen by '
                        'held-out Pearson')
  noise_ceiling = holdout_noise_ceiling(config, data, holdout_rows)
  log(f'data: {path}: {len(data):,} rows ({len(train_rows):,} train, '
      f'{len(holdout_rows):,} held out) read in {time.perf_counter() - started:.1f} s'
      + (f'; held-out noise ceiling {noise_ceiling:.4f}' if noise_ceiling else ''))
  data_id = dict(source=path, num_rows=len(data),
                 content_hash=getattr(data.report, 'content_hash', None) or None)

  # Model, optimizer, pipeline.
  model_config = config_lib.seed_config(config.input_length)
  if not config.dropout:
    model_config = model_config.without_dropout()
  optimizer = training.make_optimizer(config.learning_rate, config.momentum)
  pipeline = _pipeline_config(config)
  shards = _shard_count()
  if config.batch_size % shards:
    raise TrainingError(f'--batch_size={config.batch_size} must be divisible by the '
                        f'{shards} devices; e.g. {config.batch_size // shards * shards}')
  eval_batch_size = -(-config.eval_batch_size // shards) * shards
  steps_per_epoch = dataset.num_train_batches(len(train_rows), config.batch_size,
                                              pipeline)
  if steps_per_epoch == 0:
    raise TrainingError(
        f'{len(train_rows):,} training rows x {pipeline.examples_per_row} shift(s) '
        f'hold no full batch of {config.batch_size}: lower --batch_size')

  # Start or resume.
  history: List[Dict[str, Any]] = []
  if resume and latest:
    template = jax.eval_shape(lambda: training.init_train_state(
        model_config, optimizer, jax.random.PRNGKey(0)).opt_state)
    ckpt = checkpoint_lib.load_checkpoint(latest, opt_state_template=template)
    _check_resume_config(ckpt.extra.get('train_config', {}), config, latest)
    saved_data = ckpt.extra.get('data', {})
    if (saved_data.get('content_hash') and data_id['content_hash'] and
        saved_data['content_hash'] != data_id['content_hash']):
      raise TrainingError(
          f'cannot resume from {latest}: it was trained on another file '
          f'({saved_data.get("source")}, {saved_data.get("num_rows")} rows) than {path}')
    host_state = training.TrainState(
        params=ckpt.params, state=ckpt.state, opt_state=ckpt.opt_state,
        rng=np.asarray(ckpt.rng), step=np.asarray(ckpt.step, np.int32))
    history = [dict(r) for r in ckpt.metrics]
    start_epoch = ckpt.epoch
    log(f'resuming from {latest}: epoch {start_epoch}, step {ckpt.step}')
  else:
    if resume:
      log(f'no checkpoint in {run_dir}: starting a new run')
    if latest and overwrite and is_writer:
      for _, old in checkpoint_lib.epoch_checkpoints(run_dir):
        os.remove(old)
      best_path = checkpoint_lib.best_checkpoint_path(run_dir)
      if os.path.exists(best_path):
        os.remove(best_path)
    host_state = jax.device_get(training.init_train_state(
        model_config, optimizer, jax.random.PRNGKey(config.seed)))
    start_epoch = 0
  _check_processes_agree(
      flags=_fingerprint({k: v for k, v in config.to_json_dict().items()
                          if k not in PER_PROCESS_FIELDS}),
      data=_fingerprint([data_id['content_hash'], data_id['num_rows']]),
      start_epoch=start_epoch, start_step=int(host_state.step))
  if is_writer:
    os.makedirs(run_dir, exist_ok=True)
    checkpoint_lib.atomic_write(
        os.path.join(run_dir, CONFIG_FILE),
        lambda f: f.write(json.dumps(config.to_json_dict(), indent=1).encode()))
  best_epoch, best_pearson = _best_of(history)

  # Steps, compiled ahead of the loop so that epoch timings exclude compilation.
  devices = jax.local_device_count()
  local_batch = config.batch_size // jax.process_count()
  compute_dtype = jnp.dtype(config.compute_dtype)
  train_state = training.replicate(host_state)
  example = training.shard_batch({
      'inputs': np.zeros((devices, local_batch // devices, config.input_length, 4),
                         INPUT_DTYPE),
      'targets': np.zeros((devices, local_batch // devices, 1), np.float32)})
  local_eval = eval_batch_size // jax.process_count()
  eval_inputs = training.shard_batch(np.zeros(
      (devices, local_eval // devices, config.input_length, 4), INPUT_DTYPE))
  step_key = (model_config, config.learning_rate, config.momentum, compute_dtype.name)
  t0 = time.perf_counter()
  train_step = _compiled('train', step_key, lambda: training.make_train_step(
      model_config, optimizer, compute_dtype=compute_dtype, return_predictions=True),
                         train_state, example)
  eval_step = _compiled('eval', step_key, lambda: training.make_eval_step(
      model_config, compute_dtype=compute_dtype),
                        train_state.params, train_state.state, eval_inputs)
  log(f'model: seed Enformer at {config.input_length} bp'
      f'{"" if config.dropout else " without dropout"} (window '
      f'[{config.window_start}:{config.window_start + config.input_length}] of 110), '
      f'{devices} device(s) x {jax.process_count()} process(es), global batch '
      f'{config.batch_size}, {steps_per_epoch} steps/epoch; compiled in '
      f'{time.perf_counter() - t0:.1f} s')

  def evaluate(params, state) -> Tuple[np.ndarray, np.ndarray, float]:
    t = time.perf_counter()
    preds, targets, masks = [], [], []
    for batch in dataset.eval_batches(
        data, holdout_rows, global_batch_size=eval_batch_size,
        local_device_count=devices, process_index=jax.process_index(),
        process_count=jax.process_count(), config=pipeline):
      out = np.asarray(eval_step(params, state, training.shard_batch(batch['inputs'])))
      preds.append(out.reshape(-1))
      targets.append(batch['targets'].reshape(-1))
      masks.append(batch['mask'].reshape(-1))
    # Padding is dropped after the gather: processes hold different numbers of rows.
    preds, targets, masks = (_gather_batches(np.stack(x)) for x in (preds, targets, masks))
    return preds[masks], targets[masks], time.perf_counter() - t

  def save(path, host, epoch, extra_best=None):
    checkpoint_lib.save_checkpoint(
        path, params=host.params, state=host.state, model_config=model_config,
        opt_state=host.opt_state, rng=host.rng, epoch=epoch, step=int(host.step),
        metrics=history, extra=dict(train_config=config.to_json_dict(),
                                    crop_start=config.window_start, data=data_id,
                                    best_epoch=extra_best))

  title = (f'{os.path.basename(os.path.normpath(run_dir))}: '
           f'{len(train_rows):,} train rows, batch {config.batch_size}')
  for epoch in range(start_epoch, config.num_epochs):
    number = epoch + 1
    t_epoch = time.perf_counter()
    batches = dataset.train_batches(
        data, train_rows, global_batch_size=config.batch_size,
        local_device_count=devices, process_index=jax.process_index(),
        process_count=jax.process_count(), config=pipeline, seed=config.seed,
        epoch=epoch)
    bar = _progress_bar(progress and is_writer, steps_per_epoch * config.batch_size,
                        f'epoch {number}/{config.num_epochs}')
    preds, targets = [], []
    pending = None

    def consume(pending):
      metrics, step_in_epoch = pending
      metrics = jax.device_get(metrics)
      loss = float(np.asarray(metrics['loss'])[0])
      if not math.isfinite(loss):
        raise NonFiniteError(
            f'training stopped: the loss became {loss} in epoch {number}, step '
            f'{step_in_epoch + 1} of {steps_per_epoch} (global step '
            f'{epoch * steps_per_epoch + step_in_epoch + 1}). Nothing of this epoch '
            f'was saved; ' + _last_good(run_dir))
      preds.append(np.asarray(metrics['predictions']).reshape(-1))
      targets.append(np.asarray(metrics['targets']).reshape(-1))
      if bar is not None:
        bar.update(config.batch_size)
        bar.set_postfix(loss=f'{loss:.4f}', refresh=False)

    if epoch * steps_per_epoch <= config.debug_nan_at_step < number * steps_per_epoch:
      batches = _with_nan_targets(batches, config.debug_nan_at_step -
                                  epoch * steps_per_epoch)
    t_train = time.perf_counter()
    try:
      for i, device_batch in enumerate(training.prefetch_to_device(batches,
                                                                   DEVICE_PREFETCH)):
        train_state, metrics = train_step(train_state, device_batch)
        if pending is not None:
          consume(pending)  # The previous step's, while this one runs.
        pending = (metrics, i)
      consume(pending)
    finally:
      if bar is not None:
        bar.close()
    jax.block_until_ready(train_state)
    train_seconds = time.perf_counter() - t_train
    train_pred, train_target = _gather_batches(np.stack(preds)), _gather_batches(
        np.stack(targets))

    holdout_pred, holdout_target, eval_seconds = evaluate(train_state.params,
                                                         train_state.state)
    host = training.unreplicate(train_state)
    if not (np.all(np.isfinite(holdout_pred)) and _all_finite(host.params)):
      raise NonFiniteError(
          f'training stopped: non-finite parameters or held-out predictions after epoch '
          f'{number} (step {int(host.step)}). Nothing of this epoch was saved; '
          + _last_good(run_dir))
    record = dict(
        epoch=number, step=int(host.step),
        train=summarise(train_pred, train_target),
        holdout=summarise(holdout_pred, holdout_target),
        train_seq_per_s=len(train_pred) / train_seconds,
        eval_seq_per_s=len(holdout_pred) / eval_seconds,
        train_seconds=train_seconds, eval_seconds=eval_seconds,
        epoch_seconds=time.perf_counter() - t_epoch)
    is_best = (math.isfinite(record['holdout']['pearson']) and
               record['holdout']['pearson'] > best_pearson)
    if is_best:
      best_epoch, best_pearson = number, record['holdout']['pearson']
    record['best_epoch'] = best_epoch
    history.append(record)

    if is_writer:
      if is_best:
        save(checkpoint_lib.best_checkpoint_path(run_dir), host, number, best_epoch)
      save(checkpoint_lib.epoch_checkpoint_path(run_dir, number), host, number,
           best_epoch)
      checkpoint_lib.prune_checkpoints(run_dir, config.keep_checkpoints)
      write_metrics_file(run_dir, history)
      plot_history(run_dir, history, noise_ceiling, title)
    tr, ho = record['train'], record['holdout']
    log(f'epoch {number}/{config.num_epochs}: train loss {tr["loss"]:.4f} r '
        f'{tr["pearson"]:.4f} | held-out loss {ho["loss"]:.4f} mse {ho["mse"]:.3f} '
        f'mae {ho["mae"]:.3f} r {ho["pearson"]:.4f} rho {ho["spearman"]:.4f} | '
        f'{record["train_seq_per_s"]:.0f} seq/s, {record["epoch_seconds"]:.0f} s'
        + (' [best]' if is_best else ''))

  log(f'done: best epoch {best_epoch} with held-out Pearson {best_pearson:.4f}'
      + (f' (noise ceiling {noise_ceiling:.4f})' if noise_ceiling else '')
      + f'; {checkpoint_lib.best_checkpoint_path(run_dir)}')
  return TrainResult(train_state=training.unreplicate(train_state), history=history,
                     best_epoch=best_epoch, best_pearson=best_pearson,
                     noise_ceiling=noise_ceiling, run_dir=run_dir)


def _with_nan_targets(batches, index: int):
  """`batches` with NaN targets in batch `index` (tests of the NaN guard)."""
  for i, batch in enumerate(batches):
    if i == index:
      batch = dict(batch, targets=np.full_like(batch['targets'], np.nan))
    yield batch


def _last_good(run_dir: str) -> str:
  latest = checkpoint_lib.latest_checkpoint(run_dir)
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
                       'First position of the window in the 110 bp encoding; -1: '
                       '(110 - input_length) * 3 // 5, i.e. 15 for 85 bp (the seed).',
                       **fv)
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
  flags.DEFINE_float('learning_rate', d.learning_rate, 'SGD learning rate.', **fv)
  flags.DEFINE_float('momentum', d.momentum, 'SGD momentum.', **fv)
  flags.DEFINE_integer('num_epochs', d.num_epochs, 'Epochs to train (in all).', **fv)
  flags.DEFINE_integer('seed', d.seed, 'Seed of the parameters and the data order.', **fv)
  flags.DEFINE_enum('compute_dtype', d.compute_dtype, ['float32', 'bfloat16'],
                    'Activation dtype (parameters stay float32).', **fv)
  flags.DEFINE_integer('keep_checkpoints', d.keep_checkpoints,
                       'Epoch checkpoints kept (the best one is kept apart); 0: all.',
                       **fv)
  flags.DEFINE_integer('debug_nan_at_step', d.debug_nan_at_step,
                       'Testing only: NaN targets at this 0-based global step.', **fv)
  flags.DEFINE_bool('resume', False, 'Continue from the latest checkpoint in --run_dir.',
                    **fv)
  flags.DEFINE_bool('overwrite', False,
                    'Start afresh in a --run_dir that holds checkpoints (deletes them).',
                    **fv)
  flags.DEFINE_bool('progress', True,
                    'Progress bar with throughput (only on a terminal).', **fv)
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


def config_from_flags(flag_values: flags.FlagValues = FLAGS) -> TrainConfig:
  fields = {f.name: flag_values[f.name].value for f in dataclasses.fields(TrainConfig)}
  fields['shifts'] = tuple(int(s) for s in fields['shifts'])
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


def _fail(message: str) -> None:
  """Prints an error (naming the process in a multi-process job) and exits with 1."""
  if not message.startswith('error:'):
    message = f'error: {message}'
  print(distributed.process_label() + message, file=sys.stderr)
  sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # absl shows INFO records; jax's probing of absent backends is not news.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  # Before anything touches JAX: join the other processes, if any.
  try:
    distributed.initialize(distributed_config_from_flags())
  except distributed.DistributedError as e:
    _fail(str(e))
  config = config_from_flags()
  # Before TensorFlow is imported: a missing file is reported at once.
  if config.synthetic_rows <= 0 and not os.path.exists(config.train_file):
    _fail(missing_train_file_message(config.train_file))
  try:
    train(config, resume=FLAGS.resume, overwrite=FLAGS.overwrite,
          progress=FLAGS.progress and sys.stderr.isatty())
  except (TrainingError, dream_data.DreamDataError,
          checkpoint_lib.CheckpointError) as e:
    _fail(str(e))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  app.run(main)
