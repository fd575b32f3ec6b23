"""Shared fixtures and the two tiers.

Default tier (`pytest -q tests`): every module, in a few minutes. Slow tier
(`pytest -q tests --runslow`): also the files named `test_slow_*.py` (whole trainings,
command-line and multi-process runs) and any test marked `@pytest.mark.slow`.
"""

import os
import pathlib
import subprocess
import sys

# Quiet TensorFlow before any test imports it.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / 'shared'


def pytest_addoption(parser):
  parser.addoption('--runslow', action='store_true', default=False,
                   help='also run the opt-in slow tier (@pytest.mark.slow)')


def pytest_collection_modifyitems(config, items):
  for item in items:
    if item.path.name.startswith('test_slow_'):
      item.add_marker(pytest.mark.slow)
  if config.getoption('--runslow'):
    return
  skip_slow = pytest.mark.skip(reason='slow tier: run with --runslow')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip_slow)


def _require(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f'{path} not found: {what} is kept beside the repository in '
                '../shared (data and reference outputs, not distributed with it)')
  return path


@pytest.fixture(scope='session')
def shared_dir() -> pathlib.Path:
  """../shared/data/dream: the real DREAM 2022 data (never copied into the repo)."""
  return _require(SHARED_DIR / 'data' / 'dream', 'the real DREAM data')


@pytest.fixture(scope='session')
def seed_fixtures_dir() -> pathlib.Path:
  """../shared/fixtures/seed_sonnet_85bp: outputs of the seed's own TF/Sonnet code."""
  return _require(SHARED_DIR / 'fixtures' / 'seed_sonnet_85bp',
                  "the seed's TF/Sonnet reference outputs")


# ---------------------------------------------------------------------------
# One tiny run of the library's trainer, shared by the default tier.

TINY_RUN = dict(
    synthetic_rows=600, synthetic_seed=0, num_holdout=100, batch_size=32,
    eval_batch_size=64, num_epochs=1, input_length=110, plasmid_context=10,
    crop_start=-1, shifts=(-3, -2, -1, 0, 1, 2, 3), shift_mode='random',
    reverse_complement=True, eval_reverse_complement=True, eval_shifts=(-2, 0, 2),
    loss='soft_bin', optimizer='adamw', learning_rate=0.002, weight_decay=0.01,
    ema_decay=0.9, bn_recalibration_batches=2, keep_checkpoints=2)


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory):
  """A real_6370.flags-like run (plasmid context, shifts, both strands, soft-bin head,
  EMA, BatchNorm recalibration) of one epoch on 600 synthetic rows, through the library
  (`trainer.train`): (config, result). Its run directory holds checkpoint_best.npz."""
  from enformer_small import trainer
  from enformer_small.train_config import TrainConfig
  root = tmp_path_factory.mktemp('tiny_run')
  config = TrainConfig(run_dir=str(root / 'run'), synthetic_dir=str(root / 'data'),
                       data_cache_dir=str(root / 'cache'), **TINY_RUN)
  result = trainer.train(config, trainer.RunOptions(log_every_steps=0))
  return config, result


@pytest.fixture(scope='session')
def demo_checkpoint(tmp_path_factory) -> str:
  """The demo's best checkpoint (slow tier): ENFORMER_SMALL_ATTRIBUTION_CHECKPOINT if set,
  else `experiments.train --flagfile=demo.flags` run once, unchanged (~8-11 min on 2 CPU
  cores), for every test that needs a model trained as the demo trains."""
  given = os.environ.get('ENFORMER_SMALL_ATTRIBUTION_CHECKPOINT')
  if given:
    return given
  run_dir = tmp_path_factory.mktemp('demo')
  subprocess.run([sys.executable, '-m', 'experiments.train', '--flagfile=demo.flags',
                  f'--run_dir={run_dir}', f'--synthetic_dir={run_dir}/data',
                  '--noprogress'], cwd=REPO_ROOT, check=True)
  return str(run_dir / 'checkpoint_best.npz')
