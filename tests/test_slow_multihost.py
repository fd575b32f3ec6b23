"""Slow tier: multi-process training on JAX's own runtime (jax.distributed), on localhost.

The rules: P processes x D devices train exactly like 1 process x P*D devices on the
same global batches (parameters, BatchNorm state, optimizer state, held-out metrics);
the held-out set is scored exactly once; only process 0 writes files; a process that
fails ends the whole job within a bounded time instead of leaving the others hanging.

The processes run on CPU devices and talk through gloo over TCP on a free local port.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from enformer_small import checkpointer
from enformer_small import dream_data
from enformer_small import run_files
from enformer_small import train_data
from enformer_small.train_config import TrainConfig
from test_multihost import held_coordinator_address, subprocess_env

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
PYTHON = sys.executable


# ---------------------------------------------------------------------------
# End to end: `python -m experiments.train`, 2 processes x 1 device vs 1 x 2 devices.

# 80 rows: 60 train x 3 shifts = 11 global batches of 16 (8 per device); 20 held out in
# 2 evaluation batches of 16, the second padded so that process 1's half of it is empty.
TINY_RUN = ('--synthetic_rows=80', '--num_holdout=20', '--batch_size=16',
            '--eval_batch_size=16', '--num_epochs=1', '--seed=3', '--progress=false')


def _train_command(run_dir, data_dir, *extra, nan_at_step=None):
  """experiments.train on the tiny run; with `nan_at_step`, through tests/nan_targets.py
  (NaN targets at that global step)."""
  command = (['-m', 'experiments.train'] if nan_at_step is None else
             [str(REPO_ROOT / 'tests' / 'nan_targets.py'), str(nan_at_step)])
  return [PYTHON, *command, *TINY_RUN, f'--run_dir={run_dir}',
          f'--synthetic_dir={data_dir}', f'--data_cache_dir={data_dir}/cache', *extra]


def _wait(procs, timeout):
  deadline = time.monotonic() + timeout
  outputs = []
  for proc in procs:
    try:
      out, _ = proc.communicate(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
    outputs.append(out)
  return outputs


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The same tiny run as 1 process x 2 devices and as 2 processes x 1 device, at once.

  Process 1 is given its own --run_dir, which must stay absent: only process 0 writes.
  """
  tmp = tmp_path_factory.mktemp('multihost')
  data = tmp / 'data'
  # The synthetic file and its encoding first, so that the concurrent runs only read.
  config = TrainConfig(synthetic_rows=80, synthetic_dir=str(data))
  dream_data.read_dream_file(train_data.ensure_synthetic_file(config),
                             cache_dir=data / 'cache')
  with held_coordinator_address() as address:
    procs = [subprocess.Popen(
        _train_command(tmp / 'one', data), cwd=REPO_ROOT, env=subprocess_env(2),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    for pid, run_dir in ((0, tmp / 'two'), (1, tmp / 'two_process1')):
      procs.append(subprocess.Popen(
          _train_command(run_dir, data, f'--coordinator_address={address}',
                         '--num_processes=2', f'--process_id={pid}'),
          cwd=REPO_ROOT, env=subprocess_env(1), stdout=subprocess.PIPE,
          stderr=subprocess.STDOUT, text=True))
    outputs = _wait(procs, timeout=600)
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out
  return dict(tmp=tmp, outputs=outputs)


def _final(run_dir):
  restored = checkpointer.Checkpointer(run_dir).restore_latest()
  assert restored.checkpoint.epoch == 1
  return restored.checkpoint


def _leaves(tree):
  if isinstance(tree, dict):
    return {f'{k}/{name}': v for k in sorted(tree) for name, v in _leaves(tree[k]).items()}
  return {'': np.asarray(tree)}


def _max_difference(a, b):
  a, b = _leaves(a), _leaves(b)
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def test_two_processes_train_like_one_process_with_as_many_devices(runs):
  """Same global batches, gradients and BatchNorm statistics averaged over all devices:
  the same parameters, BatchNorm moving averages and momentum after 11 steps."""
  one, two = _final(runs['tmp'] / 'one'), _final(runs['tmp'] / 'two')
  assert one.step == two.step == 11
  assert _max_difference(one.params, two.params) < 1e-5
  assert _max_difference(one.state, two.state) < 1e-5
  for a, b in zip(one.opt_state, two.opt_state):
    np.testing.assert_allclose(a, b, atol=1e-5)
  np.testing.assert_array_equal(one.rng, two.rng)
  assert 'x 2 process(es)' in runs['outputs'][1]
  assert '2 device(s) x 1 process(es)' in runs['outputs'][0]


def test_held_out_set_is_scored_once_with_the_single_process_metrics(runs):
  """20 held-out rows, padded to 32 slots split over 2 processes, counted once."""
  one, two = (json.loads((runs['tmp'] / name / run_files.METRICS_FILE).read_text())
              for name in ('one', 'two'))
  assert one['holdout']['n'] == two['holdout']['n'] == 20
  assert one['train']['n'] == two['train']['n'] == 11 * 16
  for split in ('holdout', 'train'):
    for key in ('loss', 'mse', 'mae', 'pearson', 'spearman'):
      assert two[split][key] == pytest.approx(one[split][key], rel=1e-5, abs=1e-6), (
          split, key)


def test_only_process_0_writes(runs):
  """Process 1 had its own --run_dir: nothing may appear there; process 0's run
  directory holds what a single-process run writes."""
  tmp = runs['tmp']
  assert not (tmp / 'two_process1').exists()

  def kinds(run_dir):  # TensorBoard's event files are named by time, host and pid.
    return sorted(re.sub(r'^events\.out\.tfevents\..*', 'events.out.tfevents.*', p.name)
                  for p in run_dir.iterdir())
  assert kinds(tmp / 'two') == kinds(tmp / 'one')
  assert 'events.out.tfevents.*' in kinds(tmp / 'two')
  assert sorted(os.listdir(tmp / 'two' / 'checkpoints')) == ['11']
  # Log lines come from process 0 only.
  assert 'epoch 1/1' in runs['outputs'][1] and 'epoch 1/1' not in runs['outputs'][2]


# ---------------------------------------------------------------------------
# A failing process ends the job.

_FAILING_JOB = textwrap.dedent('''
    import os, signal, sys, time
    import numpy as np
    from enformer_small import distributed
    process_id, address, how = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    distributed.initialize(distributed.DistributedConfig(
        coordinator_address=address, num_processes=2, process_id=process_id,
        initialization_timeout=60, heartbeat_timeout=5, shutdown_timeout=5))
    import jax
    step = jax.pmap(lambda x: jax.lax.psum(x, 'devices'), axis_name='devices')
    for i in range(100_000):
      if process_id == 1 and i == 3:
        if how == 'error':
          raise RuntimeError('process 1 fails on purpose')
        os.kill(os.getpid(), signal.SIGKILL)
      assert float(np.asarray(step(np.ones((1,), np.float32)))[0]) == 2.0
      time.sleep(0.02)
    ''')


@pytest.mark.parametrize('how', ['error', 'crash'])
def test_a_failing_process_ends_the_whole_job_promptly(how):
  """Process 1 raises (or is killed) after 3 collective steps; process 0, blocked in
  the next collective, is terminated by JAX's coordination service with a message
  pointing at the other task: non-zero exit within seconds (5 s timeouts here, 30/60 s
  by default), never a hang."""
  started = time.monotonic()
  with held_coordinator_address() as address:
    procs = [subprocess.Popen([PYTHON, '-c', _FAILING_JOB, str(pid), address, how],
                              cwd=REPO_ROOT, env=subprocess_env(1),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for pid in (0, 1)]
    outputs = _wait(procs, timeout=120)
  seconds = time.monotonic() - started
  assert procs[1].returncode != 0
  assert procs[0].returncode != 0, outputs[0]
  assert seconds < 60
  assert 'detected fatal errors' in outputs[0] and 'another task died' in outputs[0]
  if how == 'error':
    assert 'process 1 fails on purpose' in outputs[1]


# ---------------------------------------------------------------------------
# Resuming, and the real entry point's failure path.


def _run_two_processes(tmp, run_dirs, *extra, train_files=(None, None), also=(),
                       nan_at_step=None):
  """Runs the two processes of a job (and the commands `also`, at the same time) to
  the end; returns (processes, outputs), the job's two first."""
  with held_coordinator_address() as address:
    procs = _start_two_processes(address, tmp, run_dirs, *extra, train_files=train_files,
                                 nan_at_step=nan_at_step)
    procs += [subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(2),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
              for command in also]
    return procs, _wait(procs, timeout=600)


def _start_two_processes(address, tmp, run_dirs, *extra, train_files=(None, None),
                         nan_at_step=None):
  procs = []
  for pid, (run_dir, train_file) in enumerate(zip(run_dirs, train_files)):
    more = [f'--train_file={train_file}', '--synthetic_rows=0'] if train_file else []
    procs.append(subprocess.Popen(
        _train_command(run_dir, tmp / 'data', f'--coordinator_address={address}',
                       '--num_processes=2', f'--process_id={pid}', *extra, *more,
                       nan_at_step=nan_at_step),
        cwd=REPO_ROOT, env=subprocess_env(1), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True))
  return procs


def test_every_process_resumes_from_the_same_checkpoint(runs):
  """Epoch 2 resumed from epoch 1's checkpoint by 2 processes equals epoch 2 resumed by
  1 process x 2 devices. Processes that would start from different checkpoints (here:
  process 1 given a run directory without one) refuse to start, all of them."""
  tmp = runs['tmp']
  procs, outputs = _run_two_processes(tmp, (tmp / 'two', tmp / 'two_process1'),
                                      '--resume', '--num_epochs=2')
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 1, out
    assert 'disagree on start_epoch (process 0: 1, process 1: 0)' in out, out
  assert not (tmp / 'two_process1').exists()

  procs, outputs = _run_two_processes(
      tmp, (tmp / 'two', tmp / 'two'), '--resume', '--num_epochs=2',
      also=[_train_command(tmp / 'one', tmp / 'data', '--resume', '--num_epochs=2')])
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out
  assert 'resuming from' in outputs[0]
  one, two = (checkpointer.Checkpointer(tmp / n).restore_latest().checkpoint
              for n in ('one', 'two'))
  assert one.epoch == two.epoch == 2
  assert one.step == two.step == 22
  assert _max_difference(one.params, two.params) < 1e-5
  assert _max_difference(one.state, two.state) < 1e-5


def test_training_job_ends_when_one_process_cannot_start(tmp_path, runs):
  """Process 1 cannot read its training file: it says so, naming itself, and the whole
  job ends with errors within JAX's default time limits (60 s exit barrier)."""
  missing = tmp_path / 'missing.txt'
  started = time.monotonic()
  procs, outputs = _run_two_processes(runs['tmp'], (tmp_path / 'run', tmp_path / 'run'),
                                      train_files=(None, missing))
  seconds = time.monotonic() - started
  assert procs[1].returncode != 0 and procs[0].returncode != 0
  assert f'[process 1 of 2] error: training file {missing} not found' in outputs[1]
  assert 'another task died' in outputs[0]
  assert seconds < 180


def _without_timings(record):
  return {k: v for k, v in record.items() if 'second' not in k and 'per_s' not in k}


def test_two_processes_save_within_the_epoch_and_resume_from_it(runs):
  """2 processes saving after every step, stopped by NaN targets at step 8 of 11 after
  the save of step 7 (process 0's clock decides for both; only process 0 writes);
  resumed by 2 processes, the epoch ends as the uninterrupted 2-process run's, bit for
  bit (parameters, BatchNorm state, optimizer state, rng, metrics)."""
  tmp = runs['tmp']
  run_dirs = (tmp / 'within', tmp / 'within_process1')
  _, outputs = _run_two_processes(tmp, run_dirs, '--save_every_minutes=1e-9',
                                  nan_at_step=7)
  for out in outputs:
    assert 'the loss became nan in epoch 1, step 8 of 11' in out, out
  assert checkpointer.Checkpointer(run_dirs[0]).steps() == [7]  # The newest only.
  assert not run_dirs[1].exists()

  # Resuming, every process reads the run directory (a shared file system).
  procs, outputs = _run_two_processes(tmp, (run_dirs[0], run_dirs[0]), '--resume')
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out
  assert 'resuming from' in outputs[0] and 'step 7 (7 of the 11 steps' in outputs[0]
  saved = checkpointer.Checkpointer(run_dirs[0]).restore_latest().checkpoint
  straight = checkpointer.Checkpointer(tmp / 'two').read(
      str(tmp / 'two' / 'checkpoints' / '11')).checkpoint
  assert saved.step == straight.step == 11
  for name in ('params', 'state', 'train_params', 'train_state'):
    a, b = _leaves(getattr(saved, name) or {}), _leaves(getattr(straight, name) or {})
    assert a.keys() == b.keys(), name
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=f'{name} {key}')
  for a, b in zip(saved.opt_state, straight.opt_state):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(saved.rng, straight.rng)
  assert ([_without_timings(r) for r in saved.metrics] ==
          [_without_timings(straight.metrics[0])])
