"""What XLA reaches on this CPU on a large float32 matrix product: the ceiling that the
train step's share of "this CPU's peak" is measured against.

A datasheet peak needs the clock the cores actually run at, which a VM does not tell
(this project's 2-core EPYC reports 2.6 GHz and runs its vector units faster). A square
GEMM of 1,024-2,048 is what XLA:CPU does best, so its rate is the most any step of
this model could reach. Printed per size: GFLOP/s (median and best of --repeats runs of
>= --min_seconds), on all cores and pinned to one (a child process), so that the
scaling over cores shows whether the VM's cores are real ones.

  python benchmarks/gemm_ceiling.py
  python benchmarks/bench_model.py --modes train --batches 256 --peak_gflops <median>

On CPU the script re-executes itself with jemalloc preloaded, as the entry points do.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments import _runtime  # pylint: disable=g-import-not-at-top


def gemm_rates(n: int, repeats: int, min_seconds: float) -> list:
  """GFLOP/s of jitted float32 [n, n] @ [n, n], one figure per repeat."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  rng = np.random.default_rng(0)
  a, b = (jnp.asarray(rng.standard_normal((n, n)), jnp.float32) for _ in range(2))
  product = jax.jit(jnp.matmul)
  product(a, b).block_until_ready()
  rates = []
  for _ in range(repeats):
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < min_seconds:
      product(a, b).block_until_ready()
      done += 1
    rates.append(2 * n**3 * done / (time.perf_counter() - started) / 1e9)
  return rates


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sizes', default='1024,2048')
  parser.add_argument('--repeats', type=int, default=5)
  parser.add_argument('--min_seconds', type=float, default=2.0)
  parser.add_argument('--one_core', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.one_core:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
  else:
    _runtime.reexec_with_jemalloc()
  cores = len(os.sched_getaffinity(0))
  for n in map(int, args.sizes.split(',')):
    rates = gemm_rates(n, args.repeats, args.min_seconds)
    print(f'float32 GEMM {n:5d}: {statistics.median(rates):6.1f} GFLOP/s median, '
          f'{max(rates):6.1f} best ({cores} core{"s" if cores > 1 else ""})', flush=True)
  if not args.one_core and cores > 1:
    subprocess.run([sys.executable, os.path.abspath(__file__), '--one_core',
                    '--sizes', args.sizes, '--repeats', str(args.repeats),
                    '--min_seconds', str(args.min_seconds)], check=True)


if __name__ == '__main__':
  main()
