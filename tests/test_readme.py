"""README.md as a new user meets it: its Python blocks run as written after the demo,
the outputs its commands state are where git ignores them, its commands parse, and the
demo's time is stated in one place."""

import ast
import glob
import json
import math
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from enformer_small import checkpoint
from enformer_small import dream_data
from enformer_small import model
from enformer_small import synthetic
from enformer_small import train_data

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (REPO_ROOT / 'README.md').read_text()

# A number of minutes: "8 minutes", "~10 min", "11 min 9 s", "10-12 minutes".
MINUTES = re.compile(r'\d[\d.,]*\s*(?:(?:-|to)\s*\d[\d.,]*\s*)?(?:min|mins|minutes?)\b',
                     re.IGNORECASE)
DEMO_TIME = '**Demo time:**'


def code_blocks(language):
  return re.findall(rf'^```{language}\n(.*?)^```', README, re.MULTILINE | re.DOTALL)


PYTHON_BLOCKS = code_blocks('python')


from seed_steps import seed_start  # pytest puts tests/ on the path
from test_train_cli import parse_flagfile


def demo_checkpoint(config, data):
  """A checkpoint of the demo's model, as train writes it, with parameters moved off
  their initial values and BatchNorm averages filled by training-mode calls on the
  demo's data (training it for real is the demo's minutes, not a test's seconds).

  The initial values of the seed at 85 bp are those the step tests start from
  (seed_steps.py): the model's initialisation compiles for seconds, once."""
  model_config = config.model_config()
  if model_config.input_length == 85:
    _, _, seed = seed_start()
    params, state = seed.params, seed.state
  else:
    params, state = model.init(model_config, jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda p: np.asarray(p) + 0.05 * rng.standard_normal(p.shape).astype(np.float32),
      params)
  forward = model.make_model(model_config)
  update = jax.jit(lambda p, s, x: forward.apply(p, s, None, x, is_training=True)[1])
  start, length = config.window_start, config.input_length
  for i in range(3):
    codes = np.asarray(data.codes[i * 64:(i + 1) * 64, start:start + length])
    state = update(params, state, dream_data.one_hot(codes))
  return dict(params=params, state=jax.device_get(state), model_config=model_config,
              epoch=config.num_epochs, extra=dict(crop_start=config.window_start))


@pytest.fixture(scope='module')
def after_the_demo(tmp_path_factory):
  """A directory laid out as the repository is after the demo: the demo's synthetic data
  and best checkpoint where demo.flags puts them, and ../shared beside it when the
  data kept there exist. Its own data cache, never the user's."""
  root = tmp_path_factory.mktemp('readme')
  repo = root / 'repo'
  config = parse_flagfile('demo.flags')
  data_path = repo / train_data.synthetic_path(config)
  data_path.parent.mkdir(parents=True)
  synthetic.write_synthetic_file(str(data_path), synthetic.SyntheticConfig(
      num_rows=config.synthetic_rows, seed=config.synthetic_seed))
  cache = root / 'cache'
  data = dream_data.read_dream_file(str(data_path), cache_dir=str(cache))
  checkpoint.save_checkpoint(
      repo / checkpoint.best_checkpoint_path(config.run_dir),
      **demo_checkpoint(config, data))
  shared = REPO_ROOT.parent / 'shared'
  if shared.exists():
    (root / 'shared').symlink_to(shared, target_is_directory=True)
  return dict(repo=repo, cache=cache, config=config)


def claimed_outputs(code):
  """The comment of each top-level `print(...)` line: what the README says it prints."""
  return [line.partition('  # ')[2].strip() for line in code.splitlines()
          if line.startswith('print(')]


def test_the_first_python_block_loads_the_checkpoint_the_demo_wrote():
  config = parse_flagfile('demo.flags')
  first = PYTHON_BLOCKS[0]
  best = checkpoint.best_checkpoint_path(config.run_dir)
  assert f"checkpoint.load_checkpoint('{best}')" in first
  assert f"read_dream_file('{train_data.synthetic_path(config)}')" in first
  # The held-out rows are those of the demo's split.
  assert (f'holdout_split(len(data), {config.num_holdout}, seed={config.split_seed})'
          in first)


@pytest.mark.parametrize('index', range(len(PYTHON_BLOCKS)))
def test_python_block_runs_as_written_after_the_demo(index, after_the_demo, monkeypatch,
                                                      capsys):
  code = PYTHON_BLOCKS[index]
  repo = after_the_demo['repo']
  for path in re.findall(r"'(\.\./shared/[^']+)'", code):
    if not glob.glob(f'{repo / path}*'):  # a file, or a TF checkpoint's prefix
      pytest.skip(f'{REPO_ROOT.parent / path[3:]} not found: the block reads ../shared, '
                  'beside the repository (not distributed with it)')
  monkeypatch.chdir(repo)
  monkeypatch.setenv('ENFORMER_SMALL_CACHE', str(after_the_demo['cache']))
  exec(compile(code, f'README.md python block {index + 1}', 'exec'),
       {'__name__': '__readme__'})
  printed = capsys.readouterr().out.splitlines()
  claims = claimed_outputs(code)
  assert len(printed) == len(claims), printed
  for line, claim in zip(printed, claims):
    number = re.match(r'(\d+)\b', claim)
    bound = re.match(r'below (\S+)$', claim)
    if number:
      assert line == number[1]
    elif bound:
      assert float(line) < float(bound[1])
  if index == 0:
    config = after_the_demo['config']
    start, length = config.window_start, config.input_length
    assert printed[0].endswith(f'{length} bp window [{start}:{start + length}] of 110')
    pearson = float(printed[1].rpartition(' ')[2])
    assert math.isfinite(pearson) and -1 <= pearson <= 1


# ---------------------------------------------------------------------------
# Commands.


def readme_commands():
  """(module, args) of every `python -m experiments.X ...` in the README's bash blocks."""
  commands = []
  for block in code_blocks('bash'):
    for line in block.replace('\\\n', ' ').splitlines():
      if line.lstrip().startswith('#'):
        continue
      for part in line.split('&&'):
        words = shlex.split(part)
        if '-m' in words and words[words.index('-m') + 1].startswith('experiments.'):
          at = words.index('-m') + 1
          commands.append((words[at], words[at + 1:]))
  return commands


COMMANDS = readme_commands()


def flag_values(args):
  """{name: value} of `--name=value` and `--name value` arguments."""
  found, i = {}, 0
  while i < len(args):
    name, equals, value = args[i][2:].partition('=')
    if not equals and i + 1 < len(args) and not args[i + 1].startswith('--'):
      value, i = args[i + 1], i + 1
    found[name] = value
    i += 1
  return found


def written_paths(module, args):
  """The paths a README command writes, as its flags (and flagfile) name them."""
  values = flag_values(args)
  paths = [v for k, v in values.items() if k.startswith('output')]
  if module == 'experiments.train':
    config = parse_flagfile(values['flagfile'])
    paths += [config.run_dir] + ([config.synthetic_dir] if config.synthetic_rows else [])
  return paths


def test_readme_commands_are_found():
  modules = {module for module, _ in COMMANDS}
  assert {'experiments.train', 'experiments.predict', 'experiments.score',
          'experiments.convert', 'experiments.prepare_data',
          'experiments.make_synthetic_data'} <= modules
  assert ('experiments.train', ['--flagfile=demo.flags']) in COMMANDS


@pytest.mark.parametrize('module, args', COMMANDS)
def test_readme_command_writes_only_where_git_ignores(module, args):
  if shutil.which('git') is None or not (REPO_ROOT / '.git').exists():
    pytest.skip('not a git checkout: nothing to ignore against')
  for path in written_paths(module, args):
    assert not os.path.isabs(path) and not path.startswith('..'), path
    assert path.startswith(('runs/', 'data/')), path
    result = subprocess.run(['git', 'check-ignore', '-q', '--no-index', path],
                            cwd=REPO_ROOT)
    assert result.returncode == 0, f'{path} is not ignored by .gitignore'


# Each module's flags defined (as `python -m MODULE` defines them, on absl's global FLAGS),
# then each of its argument lists parsed: '' where it parses, else the error. One
# module after the other in one process: the flags a module defined are removed before
# the next one's (their names overlap).
_PARSE_PROGRAM = """
import importlib
import json
import sys
from absl import app, flags, logging
FLAGS = flags.FLAGS
errors = {}
for module_name, argvs in json.loads(sys.argv[1]).items():
  before = set(FLAGS)
  module = importlib.import_module(module_name)
  getattr(module, 'define_flags', lambda: None)()
  for args in argvs:
    FLAGS.unparse_flags()
    try:
      FLAGS(['prog'] + args)
      errors.setdefault(module_name, []).append('')
    except Exception as e:  # absl's flags.Error: unknown flag, bad value, no flagfile.
      errors.setdefault(module_name, []).append(f'{type(e).__name__}: {e}')
  for name in set(FLAGS) - before:
    delattr(FLAGS, name)
print(json.dumps(errors))
"""


@pytest.fixture(scope='module')
def parse_errors():
  """{(module, args): '' or why it does not parse} of every README command."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), env.get('PYTHONPATH', '')])
  by_module = {}
  for module, args in COMMANDS:
    by_module.setdefault(module, []).append(args)
  result = subprocess.run([sys.executable, '-c', _PARSE_PROGRAM, json.dumps(by_module)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  found = json.loads(result.stdout.splitlines()[-1])
  return {(module, tuple(args)): error for module, argvs in by_module.items()
          for args, error in zip(argvs, found[module])}


@pytest.mark.parametrize('module, args', COMMANDS)
def test_readme_command_parses(module, args, parse_errors):
  """Every flag of the command exists and takes its value (nothing runs)."""
  error = parse_errors[module, tuple(args)]
  assert not error, error


# ---------------------------------------------------------------------------
# The demo's time.


def test_demo_time_is_stated_once_in_the_readme_and_demo_flags_points_there():
  lines = README.splitlines()
  assert sum(line.startswith(DEMO_TIME) for line in lines) == 1
  with_minutes = [line for line in lines if MINUTES.search(line)]
  assert all(line.startswith(DEMO_TIME) for line in with_minutes), with_minutes
  header = []
  for line in (REPO_ROOT / 'demo.flags').read_text().splitlines():
    if not line.startswith('#'):
      break
    header.append(line)
  header = '\n'.join(header)
  assert not MINUTES.search(header), header
  assert 'README.md' in header and 'Demo time' in header


def test_train_help_points_to_the_readme_for_the_demo_time():
  tree = ast.parse((REPO_ROOT / 'experiments' / 'train.py').read_text())
  doc = ast.get_docstring(tree)
  demo_lines = [line for line in doc.splitlines() if '--flagfile=demo.flags' in line]
  assert demo_lines
  assert not any(MINUTES.search(line) for line in demo_lines), demo_lines
  assert 'README' in demo_lines[0]
