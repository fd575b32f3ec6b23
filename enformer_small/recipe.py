"""Training recipes: optimizer, schedule, augmentation, averaging, loss (no flags here).

`Recipe()` is the seed's recipe and builds exactly the seed's optimizer
(`optax.sgd(0.01, momentum=0.9)`, no schedule, clipping, decay or averaging); every other
field is an option for data sets far smaller than the challenge's 6.7 M rows, where a
constant-rate SGD recipe built for 300 epochs is the wrong tool.

Everything here is a function of the recipe and the global step, so that a run resumed
from a checkpoint (which holds the optimizer state, step count included) continues the
schedule exactly where it stopped.

The soft-bin targets follow the DREAM 2022 winner, LegNet (Penzar et al., Bioinformatics
2023; autosome-ru/LegNet): 18 expression bins 0..17, the target distribution of a
measured value y the mass that a normal distribution with mean y + 0.5 and standard
deviation 0.5 puts on the intervals (-inf, 1], (1, 2], ..., (16, 17], (17, inf); a
Kullback-Leibler loss (batch mean) against the softmax of the head's 18 logits; the
prediction the expectation sum_k k * softmax_k.
"""

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax

from enformer_small import model as model_lib
from enformer_small import plasmid
from enformer_small import settings
from enformer_small import window_average
from enformer_small.settings import setting

OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('constant', 'warmup_cosine', 'one_cycle')
LOSSES = ('poisson', 'mse', 'soft_bin')
# LegNet's bins: the challenge's expression values are 0..17.
NUM_SOFT_BINS = 18
# Parameters with this name are weight matrices / kernels (hk.Linear, hk.Conv1D); all
# others (biases, BatchNorm and LayerNorm scales and offsets, the attention's relative
# position biases) are left out of weight decay.
DECAYED_PARAM_NAME = 'w'


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How a model is trained, apart from the model, the data and the batch geometry.

  Each field is a setting (its help is the flag's). Beyond the help: a 'one_cycle'
  schedule rises as a cosine from peak / one_cycle_div_factor to the peak over
  one_cycle_pct_start of the steps, then falls as a cosine to that start /
  one_cycle_final_div_factor (PyTorch's OneCycleLR, as LegNet used it); AdamW's decay is
  scaled by the learning rate (PyTorch's convention) and masked by `decay_mask`; the EMA
  is ema <- decay * ema + (1 - decay) * params from the initial parameters; BatchNorm
  recalibration takes the mean of the batch statistics (the averages collected under
  dropout do not fit eval mode); frozen parts get zero updates
  (`optax.multi_transform`).
  """
  optimizer: str = setting(
      'sgd', "sgd (with --momentum; the seed's), adam or adamw.", choices=OPTIMIZERS)
  learning_rate: float = setting(0.01, 'Learning rate; with a --schedule, its peak.')
  momentum: float = setting(0.9, 'SGD momentum.')
  b1: float = setting(0.9, 'Adam / AdamW first-moment decay.')
  b2: float = setting(0.999, 'Adam / AdamW second-moment decay.')
  eps: float = setting(1e-8, 'Adam / AdamW epsilon.')
  weight_decay: float = setting(
      0.0, 'AdamW decoupled weight decay, on weight matrices only (not on biases or '
      'BatchNorm / LayerNorm scales and offsets).')
  clip_global_norm: float = setting(
      0.0, 'Clip gradients to this global norm; 0: no clipping.')
  schedule: str = setting(
      'constant', "Learning rate over the --num_epochs of the run: constant (the "
      "seed's), warmup_cosine (linear warmup, cosine decay) or one_cycle (PyTorch's "
      'OneCycleLR, cosine).', choices=SCHEDULES)
  warmup_fraction: float = setting(
      0.1, 'warmup_cosine: share of the steps spent warming up from 0.')
  end_lr_fraction: float = setting(
      0.0, 'warmup_cosine: final learning rate as a fraction of the peak.')
  one_cycle_pct_start: float = setting(
      0.3, 'one_cycle: share of the steps spent rising to the peak.')
  one_cycle_div_factor: float = setting(
      25.0, 'one_cycle: the start is the peak divided by this.')
  one_cycle_final_div_factor: float = setting(
      1e4, 'one_cycle: the end is the start divided by this.')
  ema_decay: float = setting(
      0.0, 'Polyak (EMA) averaging of the parameters after every step, used for '
      'evaluation, the best epoch and checkpoints; 0: off.')
  reverse_complement: bool = setting(
      False, 'Training: reverse-complement each example with probability 1/2.')
  eval_reverse_complement: bool = setting(
      False, 'Evaluation (and every command that predicts with the checkpoint, by '
      'default): average the predictions for both strands.')
  eval_shifts: Tuple[int, ...] = setting(
      (), 'Evaluation (and every command that predicts with the checkpoint, by '
      'default): average the predictions of the windows at these shifts (bp, e.g. '
      '-10,-5,0,5,10; both strands of each with --eval_reverse_complement), which must '
      'stay within the rows (--plasmid_context); none: the unshifted window.')
  plasmid_context: int = setting(
      0, 'Bases of the real plasmid added on each side of the 110 bp construct '
      f'(0..{plasmid.MAX_CONTEXT}), for longer --input_length or wider --shifts; 0: '
      'none.')
  bn_recalibration_batches: int = setting(
      0, 'Before each evaluation, re-estimate the BatchNorm averages on this many '
      'training batches in training mode without dropout; 0: off.')
  early_stopping_patience: int = setting(
      0, 'Stop after this many epochs without a better held-out Pearson; 0: never.')
  loss: str = setting(
      'poisson', "poisson (Keras'; the seed's), mse, or soft_bin (LegNet's soft-bin "
      'targets over 18 bins with a KL loss; the model gets an 18-bin head and predicts '
      'the expectation).', choices=LOSSES)
  soft_bin_sigma: float = setting(
      0.5, 'soft_bin: standard deviation of the target distribution.')
  freeze: Tuple[str, ...] = setting(
      (), 'Parts that never change, as paths below enformer/~/: trunk, trunk/~/stem, '
      'trunk/~/conv_tower, trunk/~/transformer, ...; their BatchNorms run in eval mode.')
  head_learning_rate: float = setting(
      0.0, "The heads' own learning rate (peak); 0: --learning_rate.")
  head_only_fraction: float = setting(
      0.0, 'Two-phase fine-tuning: only the heads train over this share of the steps, '
      'then everything.')

  def __post_init__(self):
    object.__setattr__(self, 'freeze', tuple(self.freeze))
    object.__setattr__(self, 'eval_shifts', window_average.normalise_shifts(self.eval_shifts))
    settings.check_choices(self)
    if self.weight_decay and self.optimizer != 'adamw':
      raise ValueError(f'weight_decay ({self.weight_decay}) needs optimizer adamw '
                       f'(decoupled decay); got {self.optimizer!r}')
    checks = (
        ('learning_rate', self.learning_rate > 0), ('ema_decay', 0 <= self.ema_decay < 1),
        ('weight_decay', self.weight_decay >= 0),
        ('clip_global_norm', self.clip_global_norm >= 0),
        ('warmup_fraction', 0 <= self.warmup_fraction < 1),
        ('one_cycle_pct_start', 0 < self.one_cycle_pct_start < 1),
        ('plasmid_context', self.plasmid_context >= 0),
        ('bn_recalibration_batches', self.bn_recalibration_batches >= 0),
        ('early_stopping_patience', self.early_stopping_patience >= 0),
        ('soft_bin_sigma', self.soft_bin_sigma > 0),
        ('head_learning_rate', self.head_learning_rate >= 0),
        ('head_only_fraction', 0 <= self.head_only_fraction < 1))
    bad = [name for name, ok in checks if not ok]
    if bad:
      raise ValueError('out of range: ' + ', '.join(
          f'{name}={getattr(self, name)!r}' for name in bad))

  @property
  def uses_schedule_length(self) -> bool:
    """Whether the learning rate depends on the total number of steps."""
    return self.schedule != 'constant' or self.head_only_fraction > 0

  @property
  def uses_parameter_groups(self) -> bool:
    """Whether parts of the model are trained differently (`parameter_groups`)."""
    return bool(self.freeze or self.head_learning_rate or self.head_only_fraction)


def learning_rate_schedule(recipe: Recipe, total_steps: int) -> Callable[[Any], Any]:
  """The learning rate as a function of the step count (0-based), over `total_steps`."""
  lr = recipe.learning_rate
  if recipe.schedule == 'constant':
    return optax.constant_schedule(lr)
  if total_steps < 1:
    raise ValueError(f'a {recipe.schedule} schedule needs total_steps >= 1, got '
                     f'{total_steps}')
  if recipe.schedule == 'warmup_cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr,
        warmup_steps=int(round(recipe.warmup_fraction * total_steps)),
        decay_steps=total_steps, end_value=lr * recipe.end_lr_fraction)
  return optax.cosine_onecycle_schedule(
      transition_steps=total_steps, peak_value=lr,
      pct_start=recipe.one_cycle_pct_start, div_factor=recipe.one_cycle_div_factor,
      final_div_factor=recipe.one_cycle_final_div_factor)


def decay_mask(params: Any) -> Any:
  """True for the parameters weight decay applies to: weight matrices only.

  params: a Haiku parameter tree {module: {name: array}}.
  """
  return {module: {name: name == DECAYED_PARAM_NAME for name in values}
          for module, values in params.items()}


class EmaState(NamedTuple):
  """The state of `with_parameter_ema`: the inner optimizer's and the running average."""
  inner: optax.OptState
  ema: Any


def with_parameter_ema(inner: optax.GradientTransformation, decay: float,
                       exact_when_equal: bool = False) -> optax.GradientTransformation:
  """`inner`, also keeping an exponential moving average of the updated parameters.

  Must come last: the average is of `params + updates`, the parameters the step
  produces. Kept in the optimizer state, so that checkpoints and resuming carry it.
  exact_when_equal: where the average equals the parameter it stays as it is (the
  formula can round it off by an ulp), so the average of a frozen parameter is exactly
  that parameter.
  """
  def init(params):
    return EmaState(inner=inner.init(params),
                    ema=jax.tree_util.tree_map(jnp.asarray, params))

  def update(updates, state, params=None):
    updates, inner_state = inner.update(updates, state.inner, params)
    new_params = optax.apply_updates(params, updates)
    def average(e, p):
      mixed = decay * e + (1.0 - decay) * p
      return jnp.where(e == p, e, mixed) if exact_when_equal else mixed
    ema = jax.tree_util.tree_map(average, state.ema, new_params)
    return updates, EmaState(inner=inner_state, ema=ema)

  return optax.GradientTransformation(init, update)


def ema_params(opt_state: Any) -> Optional[Any]:
  """The parameter average held by a `with_parameter_ema` state, else None."""
  return opt_state.ema if isinstance(opt_state, EmaState) else None


HEAD_PREFIX = 'enformer/~/head_'
FROZEN, HEAD, TRUNK = 'frozen', 'head', 'trunk'


def parameter_group(module: str, freeze: Sequence[str]) -> str:
  """FROZEN, HEAD or TRUNK (everything else) for a Haiku module name."""
  if model_lib.is_frozen(module, tuple(freeze)):
    return FROZEN
  return HEAD if module.startswith(HEAD_PREFIX) else TRUNK


def parameter_groups(recipe: Recipe,
                     total_steps: int) -> optax.GradientTransformation:
  """Frozen parts get zero updates, heads their own rate, the trunk waits for phase 2.

  Each group has its own copy of the recipe's optimizer (its own moments); a zero
  update leaves a parameter bit for bit as it was.
  """
  head_recipe = (dataclasses.replace(recipe, learning_rate=recipe.head_learning_rate)
                 if recipe.head_learning_rate else recipe)
  trunk = _base_optimizer(recipe, total_steps)
  if recipe.head_only_fraction:
    first = int(round(recipe.head_only_fraction * total_steps))
    # After the optimizer, so that its weight decay waits too.
    trunk = optax.chain(trunk, optax.scale_by_schedule(
        lambda count: jnp.where(count < first, 0.0, 1.0)))

  def labels(params):
    return {module: {name: parameter_group(module, recipe.freeze) for name in values}
            for module, values in params.items()}
  return optax.multi_transform(
      {FROZEN: optax.set_to_zero(), HEAD: _base_optimizer(head_recipe, total_steps),
       TRUNK: trunk}, labels)


def _base_optimizer(recipe: Recipe, total_steps: int) -> optax.GradientTransformation:
  lr = (recipe.learning_rate if recipe.schedule == 'constant' else
        learning_rate_schedule(recipe, total_steps))
  if recipe.optimizer == 'sgd':
    # A float rate (not a constant schedule): the seed's exact optimizer state.
    optimizer = optax.sgd(lr, momentum=recipe.momentum)
  elif recipe.optimizer == 'adam':
    optimizer = optax.adam(lr, b1=recipe.b1, b2=recipe.b2, eps=recipe.eps)
  else:
    optimizer = optax.adamw(lr, b1=recipe.b1, b2=recipe.b2, eps=recipe.eps,
                            weight_decay=recipe.weight_decay, mask=decay_mask)
  return optimizer


def make_optimizer(recipe: Recipe = Recipe(),
                   total_steps: int = 0) -> optax.GradientTransformation:
  """The recipe's optax optimizer; `Recipe()` gives `optax.sgd(0.01, momentum=0.9)`.

  Args:
    recipe: the recipe.
    total_steps: steps of the whole run (the schedule's length); only schedules other
      than 'constant' and the two-phase recipe use it.
  """
  optimizer = (parameter_groups(recipe, total_steps) if recipe.uses_parameter_groups
               else _base_optimizer(recipe, total_steps))
  if recipe.clip_global_norm > 0:
    optimizer = optax.chain(optax.clip_by_global_norm(recipe.clip_global_norm),
                            optimizer)
  if recipe.ema_decay > 0:
    optimizer = with_parameter_ema(optimizer, recipe.ema_decay,
                                   exact_when_equal=recipe.uses_parameter_groups)
  return optimizer


# ---------------------------------------------------------------------------
# Soft-bin targets (LegNet).


def soft_bin_targets(values: jnp.ndarray, sigma: float = 0.5,
                     num_bins: int = NUM_SOFT_BINS) -> jnp.ndarray:
  """[...] expression values -> [..., num_bins] target distributions.

  Bin k (0 <= k < num_bins) gets the mass of N(value + 0.5, sigma^2) on (k, k + 1],
  the first bin everything below 1 and the last everything above num_bins - 1.
  """
  edges = jnp.arange(1, num_bins, dtype=jnp.float32)
  cdf = jax.scipy.stats.norm.cdf(
      (edges - (values[..., None].astype(jnp.float32) + 0.5)) / sigma)
  zeros = jnp.zeros(cdf.shape[:-1] + (1,), cdf.dtype)
  ones = jnp.ones(cdf.shape[:-1] + (1,), cdf.dtype)
  cumulative = jnp.concatenate([zeros, cdf, ones], axis=-1)
  return cumulative[..., 1:] - cumulative[..., :-1]


def soft_bin_loss(logits: jnp.ndarray, targets: jnp.ndarray,
                  sigma: float = 0.5) -> jnp.ndarray:
  """KL(target distribution || softmax(logits)), summed over bins, batch mean.

  logits: [B, num_bins]; targets: [B, 1] or [B] expression values.
  """
  p = soft_bin_targets(jnp.reshape(targets, (-1,)), sigma, logits.shape[-1])
  log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  kl = jax.scipy.special.xlogy(p, p) - p * log_q
  return jnp.sum(kl) / logits.shape[0]


# ---------------------------------------------------------------------------
# Early stopping.


def epochs_since_best(holdout_pearsons: Sequence[Optional[float]]) -> int:
  """Epochs completed after the best one (the first best; non-finite never best)."""
  best_index, best = -1, -math.inf
  for i, value in enumerate(holdout_pearsons):
    if value is not None and math.isfinite(value) and value > best:
      best_index, best = i, value
  return len(holdout_pearsons) - 1 - best_index


def should_stop(holdout_pearsons: Sequence[Optional[float]], patience: int) -> bool:
  """Whether `patience` epochs in a row have not improved the best held-out Pearson."""
  return patience > 0 and bool(holdout_pearsons) and (
      epochs_since_best(holdout_pearsons) >= patience)


def fields_as_dict(recipe: Recipe) -> dict:
  return dataclasses.asdict(recipe)


def from_fields(fields: Any) -> Recipe:
  """A Recipe from any mapping or object holding (at least) its fields."""
  get = fields.get if hasattr(fields, 'get') else (lambda k, d: getattr(fields, k, d))
  defaults = Recipe()
  return Recipe(**{f.name: get(f.name, getattr(defaults, f.name))
                   for f in dataclasses.fields(Recipe)})


RECIPE_FIELDS: Tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Recipe))
