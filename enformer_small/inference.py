"""The one inference path: sequences -> rows -> windows -> averaged predictions.

Every command that predicts with a checkpoint (predict, variant effects, attributions and
those built on them) and held-out evaluation in training go through `predict_rows`, the
way the checkpoint records:

- `Layout`: how a sequence becomes a row. DREAM rows: the seed's 110 bp encoding (A, C,
  G, T any case -> 0..3, anything else N; the 3' end truncated or padded with N to 110),
  with the recorded plasmid context on each side. A table run: its sequence length, and
  with its pad policy (a fixed-length table refuses other lengths).
- `window_average.Windows`: the window [start, start + L) the model reads, the shifts and
  strands averaged (the recipe's `eval_shifts` and `eval_reverse_complement`).
- the eval-mode forward (`model.predictions_fn`: a soft-bin head's expectation), pmapped
  over the local devices, in batches; one pass over the rows per window, averaged in
  float64 (`window_average.average`).

Explicit overrides (`InferenceOptions`) change the shifts, strands, heads, batch size or
CPU arrangement; nothing else differs between commands. Gradient attributions need one
differentiable function of the sequence: `Predictor.scorer` averages the same windows on
the device (float32), so its value equals `predict`'s to float32 rounding.
"""

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from enformer_small import attribution
from enformer_small import checkpoint as checkpoint_lib
from enformer_small import checkpointer
from enformer_small import distributed
from enformer_small import dream_data
from enformer_small import model as model_lib
from enformer_small import plasmid
from enformer_small import tables
from enformer_small import train_config as train_config_lib
from enformer_small import training
from enformer_small import window_average
from enformer_small.config import EnformerConfig
from enformer_small.settings import setting

Progress = Optional[Callable[[int], None]]


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
  """Overrides of what a checkpoint records (None: as recorded)."""
  eval_shifts: Optional[Tuple[int, ...]] = setting(
      None, 'Average the predictions of the windows shifted by each of these bp (e.g. '
      '-10,-5,0,5,10; both strands of each with reverse-complement averaging); default: '
      "as the checkpoint's training evaluated (its --eval_shifts); 0: the unshifted "
      'window only.')
  reverse_complement_average: Optional[bool] = setting(
      None, 'Average with the prediction for the reverse complement (default: as the '
      "checkpoint's training evaluated, --eval_reverse_complement).")
  heads: Tuple[str, ...] = setting((), 'Heads to predict (default: all).')
  batch_size: int = setting(1000, 'Rows (sequences or mutants) per forward pass.')
  fast_cpu: Optional[bool] = setting(
      None, 'CPU speed: the model arranged for XLA:CPU (enformer_small/fast_cpu.py); the '
      'same function, rounded otherwise. Default: as the checkpoint was trained '
      '(its --fast_cpu), so that it predicts what its training evaluated.')

  def __post_init__(self):
    if self.eval_shifts is not None:
      object.__setattr__(self, 'eval_shifts',
                         window_average.normalise_shifts(self.eval_shifts))
    object.__setattr__(self, 'heads', tuple(self.heads))
    if self.batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {self.batch_size}')


# ---------------------------------------------------------------------------
# Rows.


@dataclasses.dataclass(frozen=True)
class Encoded:
  """Sequences as codes: uint8 [N, length], and how many did not fit the length."""
  codes: np.ndarray
  num_padded: int = 0
  num_truncated: int = 0
  num_with_n: int = 0


@dataclasses.dataclass(frozen=True)
class Rows:
  """An input file's rows: sequences as written, their codes (without context) and
  the measured values ([N], or [N, T] of a table; None when the file has none)."""
  sequences: Sequence[str]
  codes: np.ndarray
  measured: Optional[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Layout:
  """How sequences become the rows windows are cut from.

  length: codes of a sequence's encoding (110 for DREAM rows).
  context: plasmid bases on each side of a DREAM row (`plasmid.add_context`).
  table: a table run's columns and length policy; None for DREAM rows.
  """
  length: int = dream_data.SEQUENCE_LENGTH
  context: int = 0
  table: Optional[tables.TableSpec] = None

  @property
  def row_length(self) -> int:
    return self.length + 2 * self.context

  @property
  def fixed_length(self) -> bool:
    """Whether sequences of another length are refused (a table without padding)."""
    return self.table is not None and not self.table.pad

  def encode(self, sequences: Sequence[str]) -> Encoded:
    """The sequences' codes at `length`; ValueError naming the first sequence of another
    length when the layout is fixed-length."""
    lengths = np.array([len(s) for s in sequences], np.int64)
    if self.fixed_length and np.any(lengths != self.length):
      i = int(np.flatnonzero(lengths != self.length)[0])
      raise ValueError(f'sequence {i + 1} has {lengths[i]} bp; the model was trained on '
                       f'a table of {self.length} bp sequences without padding')
    codes = dream_data.encode_sequences(list(sequences), self.length)
    has_n = (codes[:, :] == dream_data.PAD_CODE) & (
        np.arange(self.length)[None] < lengths[:, None])
    return Encoded(codes, int(np.sum(lengths < self.length)),
                   int(np.sum(lengths > self.length)), int(np.sum(has_n.any(axis=1))))

  def fit_note(self, sequences: Sequence[str]) -> str:
    """How many sequences this layout pads, truncates or reads N in ('' if none)."""
    lengths = np.array([len(s) for s in sequences], np.int64)
    counts = ((int(np.sum(lengths < self.length)), f"padded at the 3' end with N to "
               f'{self.length} bp'),
              (int(np.sum(lengths > self.length)), f"truncated at the 3' end to "
               f'{self.length} bp'),
              (sum(1 for s in sequences if set(s.upper()) - set('ACGT')),
               'holding N or other letters (read as N)'))
    return '; '.join(f'{n:,} sequence(s) {what}' for n, what in counts if n)

  def rows(self, codes: np.ndarray) -> np.ndarray:
    """uint8 [N, length] codes -> [N, row_length] rows (the plasmid context added)."""
    codes = np.asarray(codes, np.uint8)
    if codes.ndim != 2 or codes.shape[1] != self.length:
      raise ValueError(f'codes must be [N, {self.length}], got {codes.shape}')
    return plasmid.add_context(codes, self.context) if self.context else codes

  def read(self, path: str) -> Rows:
    """An input file in this layout, by the training's reader of it: a table in the
    training's columns (targets optional), else DREAM rows `sequence[<TAB>value]`."""
    if self.table is not None:
      data = tables.read_table(path, self.table, for_prediction=True)
      return Rows(data.sequences, data.codes, data.expression)
    table = dream_data.read_dream_table(path, values_optional=True, allow_negative=True)
    return Rows(table.sequences, table.codes, table.values)


def trained_table(ckpt: checkpoint_lib.Checkpoint) -> Optional[tables.TableSpec]:
  """The layout of the table the checkpoint was trained on; None for DREAM rows."""
  used = ckpt.extra.get('train_config') or {}
  if not used.get('table_file'):
    return None
  return tables.TableSpec(target_columns=used['target_columns'],
                          sequence_column=used['sequence_column'],
                          length=used['sequence_length'], pad=used['pad_sequences'])


def layout_of(ckpt: checkpoint_lib.Checkpoint) -> Layout:
  """The rows the checkpoint's training cut its windows from."""
  spec = trained_table(ckpt)
  if spec is not None:
    return Layout(length=spec.length, table=spec)
  return Layout(context=ckpt.plasmid_context)


# ---------------------------------------------------------------------------
# The passes.


@functools.lru_cache(maxsize=None)
def enformer_apply(config: EnformerConfig, heads: Tuple[str, ...], fast_cpu: bool = False):
  """`apply((params, state), x [B, L, 4]) -> [B, T]`: `model.predictions_fn` with the
  variables as one argument (the form `Predictor` and `attribution.Scorer` take)."""
  predictions = model_lib.predictions_fn(config, heads, 'float32', fast_cpu)
  return lambda variables, x: predictions(variables[0], variables[1], x)


@functools.lru_cache(maxsize=None)
def _pmapped(apply):
  return jax.pmap(apply, axis_name=training.AXIS_NAME)


def _global_batches(indices: np.ndarray, batch_size: int) -> np.ndarray:
  """This process's columns of each global batch of `indices`, -1 where padded."""
  count, index = jax.process_count(), jax.process_index()
  num_batches = -(-len(indices) // batch_size)
  padded = np.full(num_batches * batch_size, -1, np.int64)
  padded[:len(indices)] = indices
  local = batch_size // count
  return padded.reshape(num_batches, batch_size)[:, index * local:(index + 1) * local]


def predict_rows(forward: Callable, rows: np.ndarray, windows: window_average.Windows,
                 *, batch_size: int, indices: Optional[np.ndarray] = None,
                 progress: Progress = None) -> np.ndarray:
  """float32 [n, T]: the windows' averaged eval-mode predictions of rows[indices].

  Args:
    forward: `inputs uint8 [D, B, L, 4] (on the local devices) -> [D, B, T]`, a pmapped
      step with its variables bound (e.g. `eval_step`'s with params and state).
    rows: uint8 [N, W] rows (context included).
    windows: the windows averaged.
    batch_size: rows per global batch, a multiple of the device count over all
      processes; the last batch is padded with N rows and the padding dropped.
    indices: rows to predict, in order (default all). With several processes each
      predicts its columns of every global batch and they are gathered.
    progress: called with the number of rows done after each batch of each pass.
  """
  rows = np.asarray(rows)
  indices = np.arange(rows.shape[0]) if indices is None else np.asarray(indices)
  shards = jax.process_count() * jax.local_device_count()
  if batch_size % shards:
    raise ValueError(f'batch_size ({batch_size}) must be a multiple of the {shards} '
                     'devices')
  columns = _global_batches(indices, batch_size)

  def one_pass(shift: int, reverse: bool) -> np.ndarray:
    out, pending = [], None
    for batch_rows in columns:
      valid = batch_rows >= 0
      codes = windows.cut(rows[np.maximum(batch_rows, 0)], shift, reverse)
      codes = np.where(valid[:, None], codes, dream_data.PAD_CODE).astype(np.uint8)
      inputs = dream_data.one_hot(codes, np.uint8).reshape(
          (jax.local_device_count(), -1) + codes.shape[1:] + (4,))
      result = forward(training.shard_batch(inputs))  # Dispatched only.
      if pending is not None:
        out.append(_fetch(*pending))
      pending = (result, valid, progress)
    if pending is not None:
      out.append(_fetch(*pending))
    gathered = distributed.gather_batches(np.stack(out), per_target=True)
    return gathered[:len(indices)]

  return window_average.average(one_pass, windows)


def _fetch(result: Any, valid: np.ndarray, progress: Progress) -> np.ndarray:
  values = np.asarray(result)
  if progress:
    progress(int(valid.sum()))
  return values.reshape(valid.shape[0], -1)


# ---------------------------------------------------------------------------
# A checkpoint's predictor.


def target_names(ckpt_or_config: Any, heads: Tuple[str, ...]) -> Tuple[str, ...]:
  """Names of the T outputs: a table run's target columns, else the head name (one
  output) or 'head/i'."""
  config = getattr(ckpt_or_config, 'model_config', ckpt_or_config)
  spec = trained_table(ckpt_or_config) if hasattr(ckpt_or_config, 'extra') else None
  if spec is not None and heads == ('yeast',):
    return spec.target_columns
  names = []
  for head in heads:
    n = model_lib.num_outputs(config, head)
    names += [head] if n == 1 else [f'{head}/{i}' for i in range(n)]
  return tuple(names)


@dataclasses.dataclass(frozen=True)
class Predictor:
  """A model and the way its checkpoint reads sequences.

  Attributes:
    apply: `apply(variables, x [B, L, 4]) -> [B, T]`, eval mode, pure and hashable
      (compilations are cached per `apply`: build it once per model kind, as
      `enformer_apply` does).
    variables: what `apply` reads (host arrays), e.g. (params, state).
    layout: how sequences become rows.
    windows: the windows averaged per row.
    targets: the names of the T outputs.
    batch_size: rows per forward pass.
    source: where it was read from (a checkpoint path), for messages.
  """
  apply: Callable[[Any, jax.Array], jax.Array]
  variables: Any
  layout: Layout
  windows: window_average.Windows
  targets: Tuple[str, ...] = ('yeast',)
  batch_size: int = 1000
  source: str = ''

  @functools.cached_property
  def _forward(self) -> Callable:
    step, variables = _pmapped(self.apply), training.replicate(self.variables)
    return lambda inputs: step(variables, inputs)

  def predict_rows(self, rows: np.ndarray, *, progress: Progress = None,
                   batch_size: Optional[int] = None) -> np.ndarray:
    """float32 [N, T] of rows uint8 [N, row_length] (`Layout.rows`).

    Rows run in padded batches of `batch_size` whatever their number: XLA's rounding
    depends on the batch shape, so a sequence gets the same bits from every command
    that uses the same `batch_size` (a server answering single sequences trades this
    for latency with a small --batch_size).
    """
    shards = jax.local_device_count()
    size = -(-(batch_size or self.batch_size) // shards) * shards
    return predict_rows(self._forward, rows, self.windows, batch_size=size,
                        progress=progress)

  def predict_codes(self, codes: np.ndarray, **kwargs) -> np.ndarray:
    """float32 [N, T] of sequence codes uint8 [N, layout.length]."""
    return self.predict_rows(self.layout.rows(codes), **kwargs)

  def predict(self, sequences: Sequence[str], **kwargs) -> np.ndarray:
    """float32 [N, T] of sequences (encoded by `layout`)."""
    return self.predict_codes(self.layout.encode(sequences).codes, **kwargs)

  def covered(self) -> np.ndarray:
    """bool [layout.length]: the sequence positions some window reads."""
    lo, hi = self.windows.span()
    position = np.arange(self.layout.length) + self.layout.context
    return (position >= lo) & (position < hi)

  def scorer(self):
    """An `attribution.Scorer` of one-hot sequences [B, layout.length, 4]: the mean over
    the windows, on the device (differentiable; float32, so equal to `predict` to
    rounding)."""
    apply = _averaged_apply(self.apply, self.windows, self.layout.context)
    return attribution.Scorer(apply, self.variables, self.layout.length, self.targets)


@functools.lru_cache(maxsize=None)
def _averaged_apply(apply: Callable, windows: window_average.Windows, context: int):
  """(variables, x [B, S, 4]) -> [B, T]: mean over the windows of x with its context."""
  if context:
    left, right = (dream_data.one_hot(c) for c in plasmid.context_codes(context))

  def averaged(variables, x):
    x = x.astype(jnp.float32)
    if context:
      batch = x.shape[0]
      x = jnp.concatenate([jnp.broadcast_to(left, (batch,) + left.shape), x,
                           jnp.broadcast_to(right, (batch,) + right.shape)], axis=1)
    total = 0.0
    for shift, reverse in windows.passes:
      lo = windows.start + shift
      window = x[:, lo:lo + windows.length]
      if reverse:
        window = attribution.reverse_complement(window)
      total = total + apply(variables, window)
    return total / len(windows.passes)
  return averaged


def trained_fast_cpu(ckpt: checkpoint_lib.Checkpoint) -> bool:
  """Whether the checkpoint's training ran the model arranged for XLA:CPU (its
  --fast_cpu; what runs that predate the setting ran, `train_config.PREDATED`)."""
  saved = ckpt.extra.get('train_config') or {}
  return bool(saved.get('fast_cpu', train_config_lib.PREDATED['fast_cpu']))


def from_checkpoint(ckpt: checkpoint_lib.Checkpoint,
                    options: InferenceOptions = InferenceOptions()) -> Predictor:
  """The checkpoint's predictor: its layout, window, shifts and strands, unless
  `options` override them. Raises ValueError for shifts outside the rows or unknown
  heads."""
  layout = layout_of(ckpt)
  recorded = window_average.of_recipe(ckpt.recipe, ckpt.crop_start,
                                      ckpt.model_config.input_length)
  windows = window_average.Windows(
      start=recorded.start, length=recorded.length,
      shifts=recorded.shifts if options.eval_shifts is None else options.eval_shifts,
      reverse_complement=(recorded.reverse_complement
                          if options.reverse_complement_average is None
                          else options.reverse_complement_average))
  windows.check(layout.row_length)
  heads = model_lib.head_names(ckpt.model_config, options.heads or None)
  fast_cpu = trained_fast_cpu(ckpt) if options.fast_cpu is None else options.fast_cpu
  return Predictor(enformer_apply(ckpt.model_config, heads, fast_cpu),
                   (ckpt.params, ckpt.state), layout, windows,
                   targets=target_names(ckpt, heads), batch_size=options.batch_size,
                   source=ckpt.path)


def model_predictor(config: EnformerConfig, params: Any, state: Any, *,
                    heads: Sequence[str] = (), reverse_complement: bool = False,
                    fast_cpu: bool = False, batch_size: int = 1000) -> Predictor:
  """A bare model's predictor: sequences encoded at its input length, one window
  (the whole input), both strands averaged if `reverse_complement`."""
  heads = model_lib.head_names(config, heads or None)
  windows = window_average.Windows(0, config.input_length,
                                   reverse_complement=reverse_complement)
  return Predictor(enformer_apply(config, heads, fast_cpu), (params, state),
                   Layout(length=config.input_length), windows,
                   targets=target_names(config, heads), batch_size=batch_size)


def load(path: str, options: InferenceOptions = InferenceOptions()) -> Predictor:
  """`from_checkpoint` of the checkpoint file at `path`."""
  return from_checkpoint(checkpointer.load_any(path), options)


def describe(predictor: Predictor) -> str:
  """One line: the model, its window in the rows, the averaging."""
  w, layout = predictor.windows, predictor.layout
  parts = ((['reverse-complement'] if w.reverse_complement else []) +
           ([f'shift ({",".join(str(s) for s in w.shifts)})'] if w.shifts else []))
  return (f'{w.length} bp model (window [{w.start}:{w.start + w.length}] of '
          f'{layout.row_length}' + (f', {layout.context} bp plasmid context each side'
                                    if layout.context else '') + ')'
          + (f' with {" and ".join(parts)} averaging' if parts else ''))
