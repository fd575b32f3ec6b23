"""Joining the processes of a multi-host job with JAX's own runtime.

One process per host (or per GPU, if launched that way) runs the same program;
`initialize` connects them through `jax.distributed.initialize`, after which
`jax.devices()` lists the devices of every process, `jax.local_devices()` this
process's, and a `jax.pmap`ped step spans all of them (its `lax.pmean`s average
over every device of every process). Each process then feeds only its local
devices (`dataset.train_batches(..., process_index, process_count)`).

How the processes find each other, in order:
  1. Explicit values (`DistributedConfig.coordinator_address`, `num_processes`,
     `process_id`): passed to `jax.distributed.initialize` as they are. A
     value left unset is filled in from the cluster environment (2.) if there
     is one, else it is an error. `num_processes=1` means a single process:
     nothing is initialized and no environment is detected.
  2. Nothing set: JAX's own detection (`jax.distributed.initialize()` without
     arguments), when the environment says this is one process of several:
       SLURM:    inside `srun` with SLURM_JOB_ID, SLURM_STEP_NODELIST,
                 SLURM_PROCID, SLURM_LOCALID set and SLURM_NTASKS > 1. The
                 coordinator is the step's first node, port
                 61440 + SLURM_JOB_ID % 4096 (JAX_COORDINATOR_PORT overrides).
       Open MPI: OMPI_MCA_orte_hnp_uri set and OMPI_COMM_WORLD_SIZE > 1.
       TPU:      a Cloud TPU VM (libtpu and TPU chips present; JAX asks the
                 VM's metadata server for the workers of the pod slice), or
                 TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES (GKE) or
                 MEGASCALE_COORDINATOR_ADDRESS (multislice) in the environment.
  3. Otherwise: a single process; `initialize` does nothing.

GPU devices: under SLURM (and Open MPI) JAX makes each process see one GPU,
number SLURM_LOCALID, unless `local_device_ids` says otherwise. That suits one
task per GPU; with one task per node owning all its GPUs, pass
`local_device_ids=(0, ..., gpus_per_node - 1)`.

Failures. The coordination service (on process 0) gets a heartbeat from every
process; a process that dies (crash, OOM kill, lost node) misses them and
after `heartbeat_timeout` seconds every other process is terminated with
"Terminating process because the JAX distributed service detected fatal
errors ... another task died" rather than waiting forever in a collective. A
process that ends with a Python error waits at JAX's exit barrier for the
others for at most `shutdown_timeout` seconds; when they do not come (they are
blocked in a collective) the barrier fails and every process is terminated the
same way. A process that never joins makes the others fail after
`initialization_timeout` seconds. So with the defaults a failure ends the whole
job within about a minute, with exit statuses != 0.

CPU devices (tests, debugging on one machine): cross-process collectives use
gloo over TCP (`cpu_collectives`).

`initialize` must run before anything touches a JAX device or backend
(`jax.devices()`, creating an array, ...); JAX refuses otherwise.
"""

import dataclasses
import importlib.util
import json
import logging
import os
import zlib
from typing import Any, Mapping, Optional, Tuple

import jax
import numpy as np

from enformer_small.settings import setting

log = logging.getLogger(__name__)

CPU_COLLECTIVES = ('gloo', 'mpi')

_INITIALIZED_AS: Optional[str] = None  # What `initialize` returned, once it joined.


class DistributedError(RuntimeError):
  """Inconsistent or incomplete multi-process settings; the message says which."""


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
  """How this process joins a multi-process job (all None: detect or run alone).

  Attributes:
    coordinator_address: 'host:port' of process 0, where it runs the
      coordination service; the same on every process.
    num_processes: processes in the job; 1 = a single process.
    process_id: this process, 0 .. num_processes - 1 (0 is the coordinator and
      the one that writes files).
    local_device_ids: accelerator ids this process drives (GPUs: CUDA ordinals);
      None: JAX's default (see the module docstring for SLURM).
    cpu_collectives: cross-process collectives of the CPU backend: 'gloo'
      (TCP, no extra software), 'mpi', or None for JAX's default.
    initialization_timeout: seconds to wait for every process to join.
    heartbeat_timeout: seconds without a heartbeat after which a process counts
      as dead and the job is ended.
    shutdown_timeout: seconds an exiting process waits at the exit barrier for
      the others before the job is ended.
  """
  coordinator_address: Optional[str] = setting(
      None, 'Multi-process: host:port of process 0, the same for every process.')
  num_processes: Optional[int] = setting(None, 'Multi-process: number of processes.')
  process_id: Optional[int] = setting(
      None, 'Multi-process: this process, 0..num_processes-1 (0 writes the files).')
  local_device_ids: Optional[Tuple[int, ...]] = setting(
      None, 'GPUs this process drives, e.g. 0,1,2,3,4,5,6,7 (default: all; under '
      'SLURM, JAX gives each task one GPU).')
  cpu_collectives: Optional[str] = 'gloo'
  initialization_timeout: int = 300
  heartbeat_timeout: int = 30
  shutdown_timeout: int = 60

  def __post_init__(self):
    if self.local_device_ids is not None:
      object.__setattr__(self, 'local_device_ids',
                         tuple(int(i) for i in self.local_device_ids))
    if self.coordinator_address is not None and (
        ':' not in self.coordinator_address or
        not self.coordinator_address.rsplit(':', 1)[1].isdigit()):
      raise DistributedError(f'coordinator_address must be host:port, got '
                             f'{self.coordinator_address!r}')
    if self.num_processes is not None and self.num_processes < 1:
      raise DistributedError(f'num_processes must be >= 1, got {self.num_processes}')
    if self.process_id is not None:
      if self.process_id < 0 or (self.num_processes is not None and
                                 self.process_id >= self.num_processes):
        raise DistributedError(
            f'process_id must lie in [0, num_processes), got process_id='
            f'{self.process_id}, num_processes={self.num_processes}')
    if self.cpu_collectives is not None and self.cpu_collectives not in CPU_COLLECTIVES:
      raise DistributedError(f'cpu_collectives must be one of {CPU_COLLECTIVES} or '
                             f'None, got {self.cpu_collectives!r}')
    for name in ('initialization_timeout', 'heartbeat_timeout', 'shutdown_timeout'):
      if getattr(self, name) < 1:
        raise DistributedError(f'{name} must be >= 1 second, got {getattr(self, name)}')

  @property
  def is_explicit(self) -> bool:
    """Whether any of coordinator_address, num_processes, process_id is set."""
    return any(v is not None for v in
               (self.coordinator_address, self.num_processes, self.process_id))


def _int_env(environ: Mapping[str, str], name: str) -> int:
  try:
    return int(environ.get(name, ''))
  except ValueError:
    return 0


def _on_cloud_tpu_vm() -> bool:
  """Whether `import jax` found libtpu and TPU chips (JAX's own test, kept by jax)."""
  if importlib.util.find_spec('libtpu') is None:
    return False
  try:
    from jax._src import cloud_tpu_init  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  return bool(getattr(cloud_tpu_init, 'running_in_cloud_tpu_vm', False))


def detect_cluster(environ: Optional[Mapping[str, str]] = None) -> Optional[str]:
  """'slurm', 'ompi' or 'tpu' when the environment runs several processes, else None.

  Args:
    environ: the environment to read (default os.environ); the TPU VM check
      also looks at the hardware.
  """
  env = os.environ if environ is None else environ
  slurm = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
           'SLURM_LOCALID')
  if all(name in env for name in slurm) and _int_env(env, 'SLURM_NTASKS') > 1:
    return 'slurm'
  if 'OMPI_MCA_orte_hnp_uri' in env and _int_env(env, 'OMPI_COMM_WORLD_SIZE') > 1:
    return 'ompi'
  if any(env.get(name) for name in ('TPU_WORKER_HOSTNAMES', 'TPU_PROCESS_ADDRESSES',
                                    'MEGASCALE_COORDINATOR_ADDRESS')):
    return 'tpu'
  if environ is None and _on_cloud_tpu_vm():
    return 'tpu'
  return None


def initialize(config: DistributedConfig = DistributedConfig()) -> Optional[str]:
  """Joins this process to its job (see the module docstring); call it first.

  Returns:
    How the job was set up: 'explicit', 'slurm', 'ompi' or 'tpu'; None for a
    single process (nothing was done). A second call returns the first one's
    answer without doing anything.
  Raises:
    DistributedError: explicit values that are incomplete with no cluster
      environment to fill them in, or a JAX backend already initialized.
  """
  global _INITIALIZED_AS
  if jax.distributed.is_initialized():
    return _INITIALIZED_AS or 'explicit'
  if config.num_processes == 1:
    return None
  cluster = detect_cluster()
  if not config.is_explicit and cluster is None:
    return None
  coordinator = config.coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS')
  missing = [name for name, value in (('coordinator_address', coordinator),
                                      ('num_processes', config.num_processes),
                                      ('process_id', config.process_id))
             if value is None]
  if missing and cluster is None:
    raise DistributedError(
        f'multi-process settings are incomplete: {", ".join(missing)} not set, and '
        'no SLURM, Open MPI or TPU environment to take them from. Give every '
        'process the same coordinator address (host:port of process 0) and '
        'process count, and its own process id.')
  if config.cpu_collectives is not None:
    jax.config.update('jax_cpu_collectives_implementation', config.cpu_collectives)
  how = 'explicit' if config.is_explicit else cluster
  log.info('joining a multi-process JAX job (%s settings; coordinator %s); waiting '
               'up to %d s for every process', how, coordinator or 'from the environment',
               config.initialization_timeout)
  try:
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address,
        num_processes=config.num_processes,
        process_id=config.process_id,
        local_device_ids=(list(config.local_device_ids)
                          if config.local_device_ids is not None else None),
        initialization_timeout=config.initialization_timeout,
        heartbeat_timeout_seconds=config.heartbeat_timeout,
        shutdown_timeout_seconds=config.shutdown_timeout)
  except RuntimeError as e:
    if 'must be called before' in str(e):
      raise DistributedError(
          'distributed.initialize must run before anything uses JAX devices '
          f'(jax.devices(), creating arrays, ...): {e}') from e
    raise
  _INITIALIZED_AS = how
  return how


def process_label() -> str:
  """'[process i of n] ' after `initialize` joined a multi-process job, else ''.

  For error messages: read from JAX's distributed client state, not from a device
  backend, so it answers at once even when the other processes are gone.
  """
  if not jax.distributed.is_initialized():
    return ''
  try:
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
    state = jax_distributed.global_state
    return f'[process {state.process_id} of {state.num_processes}] '
  except (ImportError, AttributeError):
    return '[one process of several] '


# ---------------------------------------------------------------------------
# Collectives of a run (no-ops in a single process).


def gather_batches(x: np.ndarray, per_target: bool = False) -> np.ndarray:
  """This process's [batches, B] slices of global batches -> [batches * G] over all.

  Process p holds columns [p*B, (p+1)*B) of each global batch (dataset.py), so the
  result is in the order a single process would see. per_target: a last axis of
  targets rides along ([batches, B, T] -> [batches * G, T]).
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    x = np.swapaxes(np.asarray(multihost_utils.process_allgather(x)), 0, 1)
  return x.reshape((-1,) + (x.shape[-1:] if per_target else ()))


def local_part(gathered: np.ndarray, steps: int) -> list:
  """This process's part of each step of `gather_batches`' result, per step."""
  per_step = gathered.reshape((steps, jax.process_count(), -1) + gathered.shape[1:])
  return list(per_step[:, jax.process_index()])


def fingerprint(value: Any) -> int:
  """A JSON-serialisable value as an int32-range checksum (for `check_agree`)."""
  return zlib.crc32(json.dumps(value, sort_keys=True).encode()) & 0x7fffffff


def disagreements(**values: int) -> list:
  """The names (with each process's value) on which the processes disagree.

  Every process must call it with the same names (int32-range values).
  """
  if jax.process_count() == 1:
    return []
  from jax.experimental import multihost_utils
  names = sorted(values)
  table = np.asarray(multihost_utils.process_allgather(
      np.array([values[name] for name in names], np.int32)))  # [processes, names]
  return [f'{name} ({", ".join(f"process {p}: {v}" for p, v in enumerate(table[:, i]))})'
          for i, name in enumerate(names) if np.any(table[:, i] != table[0, i])]


def broadcast_flag(value: bool) -> bool:
  """Process 0's `value` on every process (a collective: all must call it)."""
  if jax.process_count() == 1:
    return bool(value)
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(value)))
