"""Pure functions around `Enformer`: init, apply, eval-mode predictions, parameter counts."""

import contextlib
import functools
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import haiku as hk
import jax
import jax.numpy as jnp
import jmp
import numpy as np

from enformer_small import enformer
from enformer_small import fast_cpu as fast_cpu_lib
from enformer_small.config import EnformerConfig


ROOT = 'enformer/~/'


def make_model(config: EnformerConfig,
               cross_replica_axis: Optional[str] = None,
               frozen: Tuple[str, ...] = (),
               fast_cpu: bool = False) -> hk.TransformedWithState:
  """`init(rng, inputs, is_training)` / `apply(params, state, rng, inputs, is_training)`.

  Initialise with `is_training=True`: Haiku's BatchNorm creates its moving averages only
  on a training-mode call. `frozen`: module paths (`is_frozen`) whose BatchNorms run in
  eval mode even in training: a frozen part normalises with the averages it was trained
  with, and never moves them. `fast_cpu`: the model arranged for XLA:CPU
  (`fast_cpu.py`), the same function rounded otherwise.
  """
  def forward(inputs, is_training):
    module = enformer.Enformer(config, cross_replica_axis=cross_replica_axis)
    # The scope is read while `init` / `apply` trace the modules.
    with fast_cpu_lib.scope(fast_cpu):
      if not frozen:
        return module(inputs, is_training=is_training)
      with hk.intercept_methods(_frozen_batch_norm_interceptor(frozen)):
        return module(inputs, is_training=is_training)
  return hk.transform_with_state(forward)


def is_frozen(module_name: str, frozen: Tuple[str, ...]) -> bool:
  """Whether a Haiku module lies in one of the `frozen` parts.

  Parts are paths below the root, as the parameters name them without `enformer/~/`:
  'trunk' (all of it), 'trunk/~/stem', 'trunk/~/conv_tower', 'trunk/~/transformer', ...
  """
  if not module_name.startswith(ROOT):
    return False
  path = module_name[len(ROOT):]
  return any(path == part or path.startswith(part + '/') for part in frozen)


def parts(config: EnformerConfig) -> Tuple[str, ...]:
  """Every path `is_frozen` accepts: each module below the root and each of its
  enclosing paths ('trunk', 'trunk/~/stem', ...), sorted."""
  params, state = param_shapes(config)
  found = set()
  for module in list(params) + list(state):
    if not module.startswith(ROOT):
      continue
    steps = module[len(ROOT):].split('/~/')
    found.update('/~/'.join(steps[:i]) for i in range(1, len(steps) + 1))
  return tuple(sorted(found))


def check_parts(config: EnformerConfig, names: Sequence[str]) -> None:
  """Raises ValueError naming the parts of `names` the model does not have."""
  known = parts(config)
  unknown = [name for name in names if name not in known]
  if unknown:
    top = sorted({p for p in known if p.count('/~/') <= 1})
    raise ValueError(f'no such part of the model: {", ".join(unknown)}; parts are paths '
                     f'below enformer/~/, e.g. {", ".join(top)}')


def _frozen_batch_norm_interceptor(frozen: Tuple[str, ...]):
  def interceptor(method, args, kwargs, context):
    if (isinstance(context.module, hk.BatchNorm) and context.method_name == '__call__'
        and is_frozen(context.module.module_name, frozen)):
      kwargs = dict(kwargs, is_training=False)
    return method(*args, **kwargs)
  return interceptor


def init(config: EnformerConfig, rng: jax.Array, batch_size: int = 1
         ) -> Tuple[hk.Params, hk.State]:
  """Fresh parameters and BatchNorm state for inputs [batch_size, input_length, 4]."""
  dummy = jnp.zeros((batch_size, config.input_length, 4), jnp.float32)
  # Jitted: op-by-op initialisation of the ~70 modules takes tens of seconds on CPU.
  return jax.jit(lambda rng: make_model(config).init(rng, dummy, is_training=True))(rng)


def param_shapes(config: EnformerConfig) -> Tuple[hk.Params, hk.State]:
  """Shapes of params and state without allocating them (jax.eval_shape)."""
  return jax.eval_shape(lambda rng: init(config, rng), jax.random.PRNGKey(0))


def count_params(params: hk.Params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree_util.tree_leaves(params)))


@contextlib.contextmanager
def mixed_precision(compute_dtype: Any) -> Iterator[None]:
  """Within: float32 params, `compute_dtype` activations (GPU/TPU mixed precision).

  BatchNorm and LayerNorm keep float32 (their statistics lose too much in bfloat16).
  Haiku's policies are global, keyed by module class, so they are pushed only while a
  step is traced: steps of different dtypes built in one process (and any `init` or
  `predict_fn` between them) never see each other's policy.
  """
  compute = jnp.dtype(compute_dtype)
  if compute == jnp.float32:
    yield
    return
  policy = jmp.Policy(param_dtype=jnp.float32, compute_dtype=compute,
                      output_dtype=jnp.float32)
  # Normalise in float32, hand `compute` on to the next layer (as Haiku's ImageNet
  # example does): a float32 output would meet bfloat16 weights in the next conv.
  full = jmp.get_policy('float32').with_output_dtype(compute)
  with hk.mixed_precision.push_policy(enformer.Enformer, policy), \
      hk.mixed_precision.push_policy(hk.BatchNorm, full), \
      hk.mixed_precision.push_policy(hk.LayerNorm, full):
    yield


def soft_bin_expectation(logits: jnp.ndarray) -> jnp.ndarray:
  """[..., num_bins] logits -> [..., 1]: sum_k k * softmax_k (bins 0..num_bins-1)."""
  bins = jnp.arange(logits.shape[-1], dtype=jnp.float32)
  probabilities = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.sum(probabilities * bins, axis=-1, keepdims=True)


def head_predictions(config: EnformerConfig, output: jnp.ndarray) -> jnp.ndarray:
  """A head's output [B, C] -> predictions [B, C] (soft-bin heads: [B, 1], the expectation)."""
  if config.head_kind == 'soft_bins':
    return soft_bin_expectation(output)
  return output


def num_outputs(config: EnformerConfig, head: str = 'yeast') -> int:
  """Predictions per sequence: one of a soft-bin head, else one per channel."""
  return 1 if config.head_kind == 'soft_bins' else config.head_channels[head]


def head_names(config: EnformerConfig, heads: Optional[Sequence[str]] = None
               ) -> Tuple[str, ...]:
  """`heads` checked against the model's (default: all of them, in config order)."""
  heads = tuple(heads) if heads else tuple(name for name, _ in config.heads)
  unknown = sorted(set(heads) - set(config.head_channels))
  if unknown:
    raise ValueError(f'unknown head(s) {unknown}; the model has '
                     f'{[name for name, _ in config.heads]}')
  return heads


@functools.lru_cache(maxsize=None)
def predictions_fn(config: EnformerConfig, heads: Tuple[str, ...] = ('yeast',),
                   compute_dtype: str = 'float32', fast_cpu: bool = False
                   ) -> Callable[[hk.Params, hk.State, jax.Array], jax.Array]:
  """Eval-mode `(params, state, inputs [B, L, 4]) -> float32 [B, T]` (not compiled).

  The one eval-mode forward of the project: T outputs, the `heads`' predictions
  (`head_predictions`: a soft-bin head's expectation) flattened and concatenated in that
  order. Inputs of any dtype (e.g. uint8 one-hot) are cast to `compute_dtype`. Cached,
  so that every caller with the same arguments shares one function and its compilations.
  fast_cpu: arranged for XLA:CPU (`fast_cpu.py`), the same function rounded otherwise.
  """
  model = make_model(config, fast_cpu=fast_cpu)

  def predictions(params, state, inputs):
    with mixed_precision(compute_dtype):
      outputs, _ = model.apply(params, state, None, inputs.astype(compute_dtype),
                               is_training=False)
    return jnp.concatenate(
        [head_predictions(config, outputs[h].astype(jnp.float32)).reshape(
            inputs.shape[0], -1) for h in heads], axis=1)
  return predictions


def predict_fn(config: EnformerConfig, head: str = 'yeast', fast_cpu: bool = False):
  """jit-compiled eval-mode forward: (params, state, inputs [B, L, 4]) -> [B, T].

  Predictions, not logits: a soft-bin head gives its expectation ([B, 1]). fast_cpu:
  arranged for XLA:CPU (`fast_cpu.py`), the same function rounded otherwise.
  """
  return jax.jit(predictions_fn(config, (head,), fast_cpu=fast_cpu))
