"""Multi-process training on JAX's own runtime (jax.distributed): the settings, the
cluster detection, the launch scripts, and the collectives of a run as one process sees
them. The runs of several processes on localhost are in test_slow_multihost.py.
"""

import contextlib
import os
import pathlib
import re
import socket
import subprocess
import sys

from absl import flags
import numpy as np
import pytest

from enformer_small import distributed
from experiments import train as train_lib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
LAUNCH_DIR = REPO_ROOT / 'launch'
PYTHON = sys.executable
SLURM_ENV = dict(SLURM_JOB_ID='42', SLURM_STEP_NODELIST='node[001-002]', SLURM_NTASKS='2',
                 SLURM_PROCID='1', SLURM_LOCALID='0')
CLUSTER_ENV_VARS = tuple(SLURM_ENV) + (
    'OMPI_MCA_orte_hnp_uri', 'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES',
    'TPU_PROCESS_ADDRESSES', 'MEGASCALE_COORDINATOR_ADDRESS', 'JAX_COORDINATOR_ADDRESS')


@contextlib.contextmanager
def held_coordinator_address():
  """'127.0.0.1:PORT' on a port held for the whole test.

  The port stays bound here with SO_REUSEPORT, which the coordinator's gRPC server
  sets too: the coordinator can bind it, while the kernel hands it to no one else and
  any other bind without SO_REUSEPORT fails, so nothing can take it between the choice
  and the coordinator's start (as a port merely found free and released could be).
  """
  with socket.socket() as held:
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    held.bind(('127.0.0.1', 0))
    yield f'127.0.0.1:{held.getsockname()[1]}'


def test_the_held_port_refuses_other_binds():
  with held_coordinator_address() as address, socket.socket() as other:
    with pytest.raises(OSError):
      other.bind(('127.0.0.1', int(address.rsplit(':', 1)[1])))


def subprocess_env(cpu_devices: int) -> dict:
  """A clean environment: CPU only, `cpu_devices` devices, no cluster variables."""
  env = {k: v for k, v in os.environ.items() if k not in CLUSTER_ENV_VARS}
  env.update(PYTHONPATH=os.pathsep.join([str(REPO_ROOT), env.get('PYTHONPATH', '')]),
             JAX_PLATFORMS='cpu', TF_CPP_MIN_LOG_LEVEL='3', TF_ENABLE_ONEDNN_OPTS='0',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={cpu_devices}')
  return env


@pytest.fixture
def no_cluster_env(monkeypatch):
  for name in CLUSTER_ENV_VARS:
    monkeypatch.delenv(name, raising=False)


# ---------------------------------------------------------------------------
# Settings and detection (no processes started).


@pytest.mark.parametrize('fields, words', [
    (dict(coordinator_address='localhost'), 'host:port'),
    (dict(num_processes=0), 'num_processes'),
    (dict(num_processes=2, process_id=2), 'process_id'),
    (dict(process_id=-1), 'process_id'),
    (dict(cpu_collectives='nccl'), 'cpu_collectives'),
    (dict(heartbeat_timeout=0), 'heartbeat_timeout'),
])
def test_bad_settings_are_refused_naming_the_setting(fields, words):
  with pytest.raises(distributed.DistributedError, match=words):
    distributed.DistributedConfig(**fields)


def test_cluster_environments_are_detected_from_their_variables():
  """SLURM inside srun with > 1 task; Open MPI with > 1 rank; TPU pod variables."""
  assert distributed.detect_cluster({}) is None
  assert distributed.detect_cluster(SLURM_ENV) == 'slurm'
  assert distributed.detect_cluster(dict(SLURM_ENV, SLURM_NTASKS='1')) is None
  no_step = {k: v for k, v in SLURM_ENV.items() if k != 'SLURM_STEP_NODELIST'}
  assert distributed.detect_cluster(no_step) is None  # sbatch script, not srun
  assert distributed.detect_cluster(
      dict(OMPI_MCA_orte_hnp_uri='1.2.3.4:5', OMPI_COMM_WORLD_SIZE='4')) == 'ompi'
  assert distributed.detect_cluster(dict(TPU_WORKER_HOSTNAMES='w0,w1')) == 'tpu'
  assert distributed.detect_cluster(dict(MEGASCALE_COORDINATOR_ADDRESS='w0')) == 'tpu'


def test_a_single_process_initializes_nothing(no_cluster_env):
  assert distributed.initialize(distributed.DistributedConfig()) is None
  assert distributed.initialize(distributed.DistributedConfig(num_processes=1)) is None
  import jax
  assert not jax.distributed.is_initialized()


def test_incomplete_explicit_settings_say_what_is_missing(no_cluster_env):
  with pytest.raises(distributed.DistributedError, match='coordinator_address'):
    distributed.initialize(distributed.DistributedConfig(num_processes=2, process_id=0))


def test_initializing_after_jax_started_is_refused_with_a_clear_error(no_cluster_env):
  import jax
  jax.devices()  # The backend is up: too late to join other processes.
  with pytest.raises(distributed.DistributedError, match='before anything uses JAX'):
    distributed.initialize(distributed.DistributedConfig(
        coordinator_address='127.0.0.1:1', num_processes=2, process_id=0))
  assert not jax.distributed.is_initialized()


def _train_arguments(path: pathlib.Path) -> str:
  """What a launch script writes after `experiments.train` (continuations joined)."""
  text = path.read_text().replace('\\\n', ' ')
  parts = [line.split('experiments.train', 1)[1] for line in text.splitlines()
           if 'experiments.train' in line and not line.lstrip().startswith('#')]
  assert parts, f'{path} runs no experiments.train'
  return ' '.join(parts)


@pytest.mark.parametrize('name', ['slurm_multinode_gpu.sbatch', 'tpu_pod.sh'])
def test_launch_scripts_are_valid_bash_and_pass_only_real_train_flags(name):
  path = LAUNCH_DIR / name
  subprocess.run(['bash', '-n', str(path)], check=True)
  values = flags.FlagValues()
  train_lib.define_flags(values)
  arguments = _train_arguments(path)
  used = set(re.findall(r'--([a-z_]+)=', arguments))
  used |= set(re.findall(r'--(resume)\b', arguments))
  assert {'flagfile', 'run_dir', 'resume'} <= used
  unknown = sorted(f for f in used - {'flagfile'} if f not in values)
  assert not unknown, f'{name} passes unknown flags {unknown}'


# ---------------------------------------------------------------------------
# The collectives of a run, seen from process 1 of 2 (JAX's collectives stubbed).


@pytest.fixture
def process_1_of_2(monkeypatch):
  """jax.process_count() 2 and jax.process_index() 1; process_allgather stacks this
  process's value with `others[0]`'s (set by the test) as process 0's."""
  from jax.experimental import multihost_utils
  others = []
  monkeypatch.setattr(distributed.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(distributed.jax, 'process_index', lambda: 1)
  monkeypatch.setattr(multihost_utils, 'process_allgather',
                      lambda x: np.stack([others[0], np.asarray(x)]))
  return others


def test_gathered_batches_are_in_one_process_order_and_each_keeps_its_part(
    process_1_of_2):
  """Process p holds columns [p*B, (p+1)*B) of each global batch: gathered, the rows
  come in the order one process would see them; `local_part` gives each its own."""
  mine = np.arange(6).reshape(3, 2) + 100  # 3 batches of 2 rows: process 1's halves
  process_1_of_2.append(np.arange(6).reshape(3, 2))
  gathered = distributed.gather_batches(mine)
  np.testing.assert_array_equal(
      gathered, [0, 1, 100, 101, 2, 3, 102, 103, 4, 5, 104, 105])
  np.testing.assert_array_equal(np.stack(distributed.local_part(gathered, 3)), mine)
  targets = np.stack([mine, -mine], axis=-1)  # [3, 2, 2 targets]
  process_1_of_2[0] = np.stack([process_1_of_2[0], -process_1_of_2[0]], axis=-1)
  per_target = distributed.gather_batches(targets, per_target=True)
  np.testing.assert_array_equal(per_target[:, 0], gathered)
  np.testing.assert_array_equal(per_target[:, 1], -gathered)
  np.testing.assert_array_equal(np.stack(distributed.local_part(per_target, 3)), targets)


def test_disagreements_name_the_value_of_each_process(process_1_of_2):
  process_1_of_2.append(np.array([7, 5], np.int32))  # flags, start_step of process 0
  assert distributed.disagreements(start_step=6, flags=7) == [
      'start_step (process 0: 5, process 1: 6)']
  assert distributed.disagreements(start_step=5, flags=7) == []


def test_one_process_agrees_with_itself_without_collectives():
  assert distributed.disagreements(flags=1, data=2) == []
  assert distributed.broadcast_flag(True) is True
  x = np.arange(8).reshape(2, 4)
  np.testing.assert_array_equal(distributed.gather_batches(x), np.arange(8))
  assert [p.tolist() for p in distributed.local_part(np.arange(8), 2)] == [
      [0, 1, 2, 3], [4, 5, 6, 7]]
  value = {'b': [1, 2], 'a': 'x'}
  assert distributed.fingerprint(value) == distributed.fingerprint(dict(reversed(
      list(value.items()))))
  assert 0 <= distributed.fingerprint(value) < 2 ** 31
  assert distributed.fingerprint(value) != distributed.fingerprint({'b': [2, 1], 'a': 'x'})
