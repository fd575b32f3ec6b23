"""Shared fixtures: where the real DREAM data and the seed's reference outputs live."""

import os
import pathlib

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
  if config.getoption('--runslow'):
    return
  skip_slow = pytest.mark.skip(reason='slow tier: run with --runslow')
  for item in items:
    if 'slow' in item.keywords:
      item.add_marker(skip_slow)


def _require(path: pathlib.Path, what: str) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f'{path} not found: {what} lives in ../shared beside the repository '
                'in this workplace only')
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
