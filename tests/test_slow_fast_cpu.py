"""Slow tier: the seed model with `fast_cpu` against the default, up to rounding: the
train step, the eval and BatchNorm-statistics steps, attributions and predict_fn."""

import jax
import numpy as np
import pytest

from enformer_small import attribution
from enformer_small import config as config_lib
from enformer_small import inference
from enformer_small import model as model_lib
from enformer_small import training
from seed_steps import seed_start


def test_fast_cpu_train_step_is_the_default_step_up_to_rounding():
  """Same state, batch and dropout masks: the loss and the parameter update agree to
  float32 rounding. The fast_cpu step holds one more while loop per residual (stem
  1, tower 4, transformer 2 x 4) and per dropout (5 per transformer layer, 1 in
  final_pointwise); the default step none of them."""
  model_config, _, host_start = seed_start()  # The seed at 85 bp from PRNGKey(0).
  optimizer = training.make_optimizer()
  start = training.replicate(host_start)
  d = jax.local_device_count()
  rng = np.random.default_rng(0)
  batch = training.shard_batch({
      'inputs': np.eye(4, dtype=np.uint8)[rng.integers(0, 4, (d, 16, 85))],
      'targets': rng.uniform(0, 17, (d, 16, 1)).astype(np.float32)})
  updates, losses, loops = {}, {}, {}
  for once in (False, True):
    step = training.make_train_step(model_config, optimizer, donate=False,
                                    fast_cpu=once)
    compiled = step.lower(start, batch).compile()  # Compiled once: counted and run.
    loops[once] = compiled.as_text().count(' while(')
    after, metrics = compiled(start, batch)
    losses[once] = float(metrics['loss'][0])
    updates[once] = np.concatenate([np.ravel(a - b) for a, b in zip(
        jax.tree_util.tree_leaves(after.params), jax.tree_util.tree_leaves(start.params))])
  assert loops[True] - loops[False] == (1 + 4 + 2 * 4) + (5 * 4 + 1)
  assert losses[True] == pytest.approx(losses[False], rel=1e-6)
  scale = np.abs(updates[False]).max()
  np.testing.assert_allclose(updates[True], updates[False], rtol=0, atol=1e-4 * scale)


@pytest.fixture(scope='module')
def attention_at_work():
  """The seed config, replicated params, fresh state, the state of this batch's
  BatchNorm statistics, and the batch, under which the relative logits reach the
  predictions: fresh attention output layers are zero (each block starts as the
  identity), so they get weights; fresh BatchNorm averages (0 and 1) overflow the eval
  outputs, so the tests take this batch's statistics."""
  model_config = config_lib.seed_config(85)
  params, state = model_lib.init(model_config, jax.random.PRNGKey(1))
  noise = np.random.default_rng(2)
  params = {module: {name: value + 0.05 * noise.standard_normal(value.shape).astype(
      value.dtype) if 'embedding_layer' in module else value
                     for name, value in leaves.items()}
            for module, leaves in params.items()}
  inputs = training.shard_batch(np.eye(4, dtype=np.float32)[
      np.random.default_rng(1).integers(0, 4, (jax.local_device_count(), 32, 85))])
  params, state = training.replicate(params), training.replicate(state)
  stats = training.make_batch_stats_step(model_config)(params, state, inputs)
  return model_config, params, state, stats, inputs


def test_fast_cpu_eval_step_predicts_as_the_default_up_to_rounding(attention_at_work):
  """The eval step's predictions (relative logits with their operands in the other
  order) and the BatchNorm statistics step agree with the default's to float32
  rounding."""
  model_config, params, fresh_state, stats, inputs = attention_at_work
  fast_stats = training.make_batch_stats_step(model_config, fast_cpu=True)(
      params, fresh_state, inputs)
  for a, b in zip(jax.tree_util.tree_leaves(fast_stats), jax.tree_util.tree_leaves(stats)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  out = {}
  for fast in (False, True):
    step = training.make_eval_step(model_config, fast_cpu=fast)
    out[fast] = np.asarray(step(params, stats, inputs))
  assert np.std(out[False]) > 0.05  # The predictions depend on the input.
  np.testing.assert_allclose(out[True], out[False], rtol=1e-5, atol=1e-6)


def test_fast_cpu_attributions_are_the_defaults_up_to_rounding(attention_at_work):
  """A predictor with fast_cpu=True (`attribute --fast_cpu`, `variant_effects
  --fast_cpu`): ISM effects and gradient x input (the backward pass through the
  residuals' loops) agree with the default predictor's to float32 rounding, and so does
  `model.predict_fn(fast_cpu=True)`."""
  model_config, params, _, stats, inputs = attention_at_work
  params, state = jax.tree_util.tree_map(lambda a: a[0], (params, stats))
  x = np.asarray(inputs[0, :2])
  got = {}
  for fast in (False, True):
    predictor = inference.model_predictor(model_config, params, state, fast_cpu=fast)
    got[fast] = (attribution.ism(predictor, x, batch_size=256),
                 attribution.gradient_x_input(predictor.scorer(), x),
                 np.asarray(model_lib.predict_fn(model_config, fast_cpu=fast)(
                     params, state, x)))
  for fast_value, default in zip(got[True], got[False]):
    assert np.abs(default).max() > 1e-3  # Not all zero: the comparison has teeth.
    np.testing.assert_allclose(fast_value, default, rtol=0,
                               atol=1e-5 * np.abs(default).max())
