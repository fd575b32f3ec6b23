"""Recipes in the training loop: the seed's step unchanged, and what a run of the
real_6370.flags-like recipe (tests/conftest.py's `tiny_run`: plasmid context, shifts,
both strands, soft-bin head, EMA, BatchNorm recalibration) saves and predicts.

Every option together through train / resume / predict (whole runs of their own) is
in test_slow_train_recipes.py; the command line's Ctrl-C in test_slow_train_cli.py.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from enformer_small import checkpoint
from enformer_small import checkpointer
from enformer_small import dream_data
from enformer_small import inference
from enformer_small import metrics as metrics_lib
from enformer_small import run_files
from enformer_small import train_data
from enformer_small import training
from enformer_small.model import make_model
from seed_steps import seed_start, seed_train_step

HEAD = 'enformer/~/head_yeast/~/output'


def _seed_train_step(model_config, optimizer, axis_name=training.AXIS_NAME):
  """The seed's train step as it stood before recipes existed (frozen here as the
  specification of the default): Poisson loss, pmean'd gradients, optax update."""
  model = make_model(model_config, cross_replica_axis=axis_name)

  def loss_fn(params, state, rng, inputs, targets):
    outputs, new_state = model.apply(params, state, rng, inputs, is_training=True)
    predictions = outputs['yeast'].astype(jnp.float32)
    return training.poisson_loss(predictions, targets), (new_state, predictions)

  def train_step(train_state, batch):
    rng, step_rng = jax.random.split(train_state.rng)
    step_rng = jax.random.fold_in(step_rng, jax.lax.axis_index(axis_name))
    inputs = batch['inputs'].astype(jnp.float32)
    targets = batch['targets'].astype(jnp.float32)
    grads, (new_state, predictions) = jax.grad(loss_fn, has_aux=True)(
        train_state.params, train_state.state, step_rng, inputs, targets)
    grads = jax.lax.pmean(grads, axis_name)
    updates, opt_state = optimizer.update(grads, train_state.opt_state,
                                          train_state.params)
    params = optax.apply_updates(train_state.params, updates)
    loss = training.poisson_loss(predictions, targets)
    err = predictions - targets
    metrics = jax.lax.pmean({'loss': loss, 'mse': jnp.mean(err**2),
                             'mae': jnp.mean(jnp.abs(err))}, axis_name)
    metrics['predictions'] = predictions[..., 0]
    metrics['targets'] = targets[..., 0]
    return training.TrainState(params=params, state=new_state, opt_state=opt_state,
                               rng=rng, step=train_state.step + 1), metrics

  return jax.pmap(train_step, axis_name=axis_name)


def test_default_recipe_steps_are_the_seeds_bit_for_bit():
  """Two steps (dropout on) with Recipe()'s optimizer through make_train_step: the same
  parameters, BatchNorm state, momentum, key and metrics as the frozen seed step.

  Two steps, not one: the second is the first to apply momentum and a key split from
  a key the step itself returned. The start (the seed at 85 bp from PRNGKey(0)) and
  make_train_step's compiled step are shared with test_training (seed_steps.py)."""
  model_config, _, start = seed_start()
  d = jax.local_device_count()
  rng = np.random.default_rng(0)
  batches = [training.shard_batch({
      'inputs': np.eye(4, dtype=np.uint8)[rng.integers(0, 4, (d, 8, 85))],
      'targets': rng.uniform(0, 17, (d, 8, 1)).astype(np.float32)}) for _ in range(2)]
  results = []
  for step in (seed_train_step(),
               _seed_train_step(model_config, optax.sgd(0.01, momentum=0.9))):
    state, outputs = training.replicate(start), []
    for batch in batches:
      state, metrics = step(state, batch)
      outputs.append(metrics)
    results.append(jax.device_get((state, outputs)))
  ours, seed = results
  assert jax.tree_util.tree_structure(ours) == jax.tree_util.tree_structure(seed)
  for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(seed)):
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------
# tiny_run: the real_6370.flags-like recipe, one epoch.


def test_checkpoints_hold_the_evaluated_and_the_training_variables(tiny_run):
  """Params are the Polyak average (what was evaluated), train_params what training
  continues from; state the recalibrated BatchNorm averages; the recipe, the plasmid
  context and the window are recorded; the model has the 18-bin head."""
  config, result = tiny_run
  ckpt = checkpointer.Checkpointer(config.run_dir).restore_latest().checkpoint
  assert ckpt.epoch == 1
  final = result.train_state
  for module, values in final.params.items():
    for name, value in values.items():
      np.testing.assert_array_equal(ckpt.train_params[module][name], value)
      np.testing.assert_array_equal(ckpt.params[module][name],
                                    final.opt_state.ema[module][name])
  assert not np.array_equal(ckpt.params[HEAD]['w'], ckpt.train_params[HEAD]['w'])
  average = 'enformer/~/trunk/~/stem/~/pointwise_conv_block/~/batch_norm/~/mean_ema'
  assert not np.array_equal(ckpt.state[average]['average'],
                            ckpt.train_state[average]['average'])
  assert ckpt.recipe['loss'] == 'soft_bin' and ckpt.recipe['eval_reverse_complement']
  assert ckpt.recipe['eval_shifts'] == [-2, 0, 2]
  assert ckpt.plasmid_context == 10 and ckpt.crop_start == 10
  assert ckpt.model_config.head_kind == 'soft_bins'


def test_train_config_json_records_what_was_used(tiny_run):
  """The flags with what they resolved to: the file read, the window in the rows of
  110 bp + 2 x 10 bp of plasmid, the parameters of the 110 bp model with its 18-bin
  head (1,995,809 + 17 x (768 + 1)), the steps."""
  config, _ = tiny_run
  used = json.loads((pathlib.Path(config.run_dir) / run_files.CONFIG_FILE).read_text())
  assert used['train_file'] == train_data.synthetic_path(config)
  assert used['crop_start'] == 10 and used['plasmid_context'] == 10
  assert used['resolved']['parameters'] == 2_008_882
  assert used['resolved']['steps_per_epoch'] == 15
  assert used['resolved']['window'] == [10, 120]
  assert used['resolved']['train_rows'] == 500


def test_predict_applies_the_recorded_inference_settings(tiny_run):
  """The checkpoint's predictor on the held-out rows with no options reproduces the
  held-out Pearson training recorded for the best epoch (plasmid context, soft-bin
  expectation, shift and strand averaging all applied); forcing single-strand or
  unshifted prediction changes it."""
  config, result = tiny_run
  data = dream_data.read_dream_file(train_data.synthetic_path(config),
                                    cache_dir=config.data_cache_dir)
  _, holdout = dream_data.holdout_split(len(data), config.num_holdout, config.split_seed)
  best = checkpoint.load_checkpoint(checkpoint.best_checkpoint_path(config.run_dir))
  record = result.history[best.epoch - 1]
  codes = data.codes[holdout]

  def predict(**options):
    predictor = inference.from_checkpoint(best, inference.InferenceOptions(**options))
    return predictor.predict_codes(codes, batch_size=64)[:, 0]

  pred = predict()
  r = metrics_lib.pearson_r(pred, data.expression[holdout])
  assert r == pytest.approx(record['holdout']['pearson'], abs=1e-5)
  one_strand = predict(reverse_complement_average=False)
  assert not np.allclose(one_strand, pred)
  unshifted = predict(eval_shifts=())
  assert not np.allclose(unshifted, pred)
