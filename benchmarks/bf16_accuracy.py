r"""What bfloat16 compute (`--compute_dtype bfloat16`) does to the seed model's outputs.

With the seed's TF checkpoint from the shared fixtures (converted), predicts the fixture
batch and --rows random sequences in float32 and in bfloat16 (float32 parameters and
normalisation, bfloat16 activations and matmuls: `model.mixed_precision`), and prints
the absolute differences, beside float32's own difference from TF's outputs. Also one
train step (no dropout) from the same state in each dtype: loss and gradient agreement.

  python benchmarks/bf16_accuracy.py
"""

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

FIXTURES = os.path.join(os.path.dirname(REPO), 'shared', 'fixtures', 'seed_sonnet_85bp')


def _diff(a, b):
  import numpy as np
  d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
  return f'max {d.max():.2e}, mean {d.mean():.2e}'


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--rows', type=int, default=1024)
  args = parser.parse_args()
  import jax.numpy as jnp
  import numpy as np
  from enformer_small import config as config_lib
  from enformer_small import convert
  from enformer_small import training

  cfg = config_lib.seed_config(85)
  params, state = convert.convert_checkpoint(os.path.join(FIXTURES, 'checkpoint', 'ckpt'),
                                             cfg)
  cases = np.load(os.path.join(FIXTURES, 'cases.npz'))
  rng = np.random.default_rng(0)
  random_x = np.eye(4, dtype=np.float32)[rng.integers(0, 4, (args.rows, 85))]
  rep = training.replicate
  preds = {}
  for dtype in ('float32', 'bfloat16'):
    step = training.make_eval_step(cfg, compute_dtype=jnp.dtype(dtype))
    preds[dtype] = [np.asarray(step(rep(params), rep(state), x[None]))[0, :, 0]
                    for x in (cases['x'], random_x)]
  print(f'fixture batch ({len(cases["x"])} rows): float32 vs TF '
        f'{_diff(preds["float32"][0], cases["eval_out"][:, 0])}; bfloat16 vs float32 '
        f'{_diff(preds["bfloat16"][0], preds["float32"][0])}')
  spread = preds['float32'][1].std()
  print(f'{args.rows} random rows: bfloat16 vs float32 '
        f'{_diff(preds["bfloat16"][1], preds["float32"][1])} (predictions std '
        f'{spread:.3f})')
  _train_step_agreement(cfg, params, state, random_x, rng)


def _train_step_agreement(cfg, params, state, x, rng):
  """Loss and gradients of one dropout-free train step in each dtype."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from enformer_small import model as model_lib
  from enformer_small import training
  cfg = cfg.without_dropout()
  model = training.make_model(cfg)
  y = jnp.asarray(rng.uniform(0, 17, (len(x), 1)), jnp.float32)

  def loss(p, dtype):
    with model_lib.mixed_precision(dtype):
      out, _ = model.apply(p, state, None, jnp.asarray(x, dtype), is_training=True)
    return training.poisson_loss(out['yeast'].astype(jnp.float32), y)

  got = {d: jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, jnp.dtype(d))
         for d in ('float32', 'bfloat16')}
  g32 = np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(got['float32'][1])])
  g16 = np.concatenate([np.ravel(g) for g in jax.tree_util.tree_leaves(got['bfloat16'][1])])
  cos = float(g32 @ g16 / np.linalg.norm(g32) / np.linalg.norm(g16))
  rel = float(np.linalg.norm(g16 - g32) / np.linalg.norm(g32))
  print(f'train step (no dropout, {len(x)} rows): loss float32 {float(got["float32"][0]):.6f}'
        f' bfloat16 {float(got["bfloat16"][0]):.6f}; gradient cosine {cos:.5f}, relative '
        f'error {rel:.2e}')


if __name__ == '__main__':
  main()
