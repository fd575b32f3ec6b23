r"""What a checkpoint costs: seconds to save and restore, bytes on disk.

The seed model's train state (SGD with momentum, as small.flags trains it) saved by the
run's `Checkpointer` (orbax) at an epoch's end and within an epoch (with the epoch's
training predictions so far: --progress_rows of them, half a seed epoch by default), and
as the single-file export (`checkpoint_best.npz`).

  python benchmarks/bench_checkpoint.py --repeats 5
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from enformer_small import checkpoint as checkpoint_lib  # noqa: E402
from enformer_small import checkpointer as checkpointer_lib  # noqa: E402
from enformer_small import config as config_lib  # noqa: E402
from enformer_small import recipe as recipe_lib  # noqa: E402
from enformer_small import training  # noqa: E402


def _size(path: str) -> int:
  if os.path.isfile(path):
    return os.path.getsize(path)
  return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
             for f in files)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--progress_rows', type=int, default=10_000_000)
  args = parser.parse_args()

  model_config = config_lib.seed_config(85)
  optimizer = recipe_lib.make_optimizer(recipe_lib.Recipe(), total_steps=1)
  host = jax.device_get(training.init_train_state(model_config, optimizer,
                                                  jax.random.PRNGKey(0)))
  fields = dict(params=host.params, state=host.state, model_config=model_config,
                opt_state=host.opt_state, rng=host.rng, epoch=1, metrics=[])
  rng = np.random.default_rng(0)
  progress = checkpointer_lib.EpochProgress(
      steps=args.progress_rows // 10_000,
      predictions=rng.random(args.progress_rows, np.float32),
      targets=rng.random(args.progress_rows, np.float32), seconds=1.0)
  with tempfile.TemporaryDirectory() as tmp:
    saver = checkpointer_lib.Checkpointer(tmp, keep=args.repeats * 2 + 1)
    saver.save(step=1, **fields)  # Orbax's first save pays for its imports.
    steps = iter(range(2, 10**6))  # Orbax saves only steps after its latest.
    rows = []
    for name, kwargs in (('epoch end (orbax)', {}),
                         (f'within an epoch, {args.progress_rows:,} predictions (orbax)',
                          dict(progress=progress))):
      save_s, read_s, path = [], [], None
      for _ in range(args.repeats):
        started = time.perf_counter()
        path = saver.save(step=next(steps), **kwargs, **fields)
        save_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        saver.read(path)
        read_s.append(time.perf_counter() - started)
      rows.append((name, statistics.median(save_s), statistics.median(read_s),
                   _size(path)))
    save_s, read_s = [], []
    npz = os.path.join(tmp, 'checkpoint_best.npz')
    for _ in range(args.repeats):
      started = time.perf_counter()
      checkpoint_lib.save_checkpoint(npz, step=1, **fields)
      save_s.append(time.perf_counter() - started)
      started = time.perf_counter()
      checkpoint_lib.load_checkpoint(npz)
      read_s.append(time.perf_counter() - started)
    rows.append(('single-file export (.npz)', statistics.median(save_s),
                 statistics.median(read_s), _size(npz)))
    saver.close()
  print('| checkpoint | save s | read s | size MB |\n| --- | ---: | ---: | ---: |')
  for name, save, read, size in rows:
    print(f'| {name} | {save:.3f} | {read:.3f} | {size / 1e6:.1f} |')


if __name__ == '__main__':
  main()
