"""Usage errors of the entry points: one error line and a hint, never the whole help.

Every entry point goes through `_runtime.run` (checked here on its source); the stray
argument is checked in this process and on the command line for `score`; every entry
point on the command line, and convert's bad input, are in test_slow_cli_usage.py.
"""

import os
import pathlib
import subprocess
import sys

from absl import flags
import pytest

from experiments import _runtime

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
# Every command of experiments/: each goes through _runtime.run.
ENTRY_POINTS = sorted(p.stem for p in (REPO_ROOT / 'experiments').glob('[!_]*.py')
                      if "if __name__ == '__main__':" in p.read_text())


def run_module(module, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', TF_ENABLE_ONEDNN_OPTS='0')
  env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), env.get('PYTHONPATH', '')])
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_a_flagfile_without_its_flag_gets_the_flag_as_hint():
  assert _runtime.usage_error_lines(['demo.flags']) == (
      'error: unexpected argument: demo.flags',
      'hint: a flagfile is given as --flagfile=demo.flags')


def test_a_file_of_flags_under_another_name_is_a_flagfile_too(tmp_path):
  path = tmp_path / 'my run.cfg'
  path.write_text('# comment\n\n--num_epochs=3\n')
  assert _runtime.usage_error_lines([str(path), 'extra']) == (
      f"error: unexpected arguments: '{path}' extra",
      f"hint: a flagfile is given as --flagfile='{path}'")


@pytest.mark.parametrize('content', ['ACGT\t1.5\n', '# only a comment\n', None])
def test_other_arguments_get_the_general_hint(tmp_path, content):
  path = tmp_path / 'input.txt'
  if content is not None:
    path.write_text(content)
  assert _runtime.usage_error_lines([str(path)]) == (
      f'error: unexpected argument: {path}',
      'hint: this command takes only flags (--name=value); --helpshort lists them')


def test_the_entry_points_are_found():
  assert {'train', 'predict', 'score', 'convert', 'prepare_data',
          'make_synthetic_data'} <= set(ENTRY_POINTS)


def test_every_entry_point_runs_through_runtime():
  """So each parses its arguments with `_runtime._parse_flags` (tested below) and
  reports usage errors with `_runtime._main_without_help`."""
  for entry_point in ENTRY_POINTS:
    text = (REPO_ROOT / 'experiments' / f'{entry_point}.py').read_text()
    main_block = text[text.index("if __name__ == '__main__':"):]
    assert '_runtime.run(main)' in main_block, entry_point


def test_stray_flagfile_prints_two_lines_not_the_help_in_process(capsys):
  """`python -m experiments.train demo.flags`: the error and the hint, exit status 1,
  before absl would print the help."""
  with pytest.raises(SystemExit) as info:
    _runtime._parse_flags(['prog', 'demo.flags'])  # pylint: disable=protected-access
  assert info.value.code == 1
  out, err = capsys.readouterr()
  assert out == ''
  assert err.splitlines() == ['error: unexpected argument: demo.flags',
                              'hint: a flagfile is given as --flagfile=demo.flags']


def check_stray_flagfile(entry_point):
  result = run_module(f'experiments.{entry_point}', 'demo.flags')
  assert result.returncode == 1
  assert result.stdout == ''
  assert result.stderr.splitlines() == [
      'error: unexpected argument: demo.flags',
      'hint: a flagfile is given as --flagfile=demo.flags']


def test_stray_flagfile_prints_two_lines_not_the_help():
  """`python -m experiments.score demo.flags` (the other entry points: slow tier)."""
  check_stray_flagfile('score')


def test_usage_error_raised_by_main_is_one_line_and_a_hint(tmp_path):
  result = run_module('experiments.make_synthetic_data',
                      f'--output={tmp_path / "x.txt"}', '--rows=-3')
  assert result.returncode == 1
  assert result.stdout == ''
  assert result.stderr.splitlines() == ['error: num_rows must be >= 0, got -3',
                                        'hint: --helpshort lists the flags']
  assert not (tmp_path / 'x.txt').exists()


def test_help_is_still_there_when_asked_for():
  result = run_module('experiments.score', '--helpshort')
  assert 'Scores' in result.stdout or 'score' in result.stdout
  assert '--predictions' in result.stdout


def test_positional_arguments_are_those_absl_leaves_over():
  values = flags.FlagValues()
  flags.DEFINE_string('input', None, '', flag_values=values)
  flags.DEFINE_bool('resume', False, '', flag_values=values)
  def scan(*args):
    return _runtime.positional_arguments(args, values)
  assert scan('--input', 'a.txt', '--resume', 'demo.flags') == ['demo.flags']
  assert scan('--input=a.txt', 'b.txt', '--noresume', 'c') == ['b.txt', 'c']
  assert scan('--flagfile', 'demo.flags', '-input', '-') == []  # '-' is the value
  assert scan('--resume', '--', '--input', 'x') == ['--input', 'x']
  assert scan('--unknown', 'x') == ['x']  # absl reports the unknown flag itself
  for args in (['--input', 'a.txt', 'b'], ['--input=a.txt', 'b', '--resume', '--', 'c']):
    assert scan(*args) == values(['prog', *args])[1:]


def test_a_line_of_a_flagfile_that_is_not_a_flag_is_refused_too(tmp_path):
  flagfile = tmp_path / 'run.flags'
  flagfile.write_text('--predictions=x.tsv\nstray words\n')
  result = run_module('experiments.score', f'--flagfile={flagfile}')
  assert result.returncode == 1
  assert result.stderr.splitlines()[0] == "error: unexpected argument: 'stray words'"


# ---------------------------------------------------------------------------
# Bad input: _runtime.report_errors, the one error reporter of the entry points.


def test_report_errors_prints_one_line_with_the_hint_and_exits_1(capsys):
  def fail():
    raise ValueError('ckpt.npz: 2 problems:\n  a is missing\n  b has shape (3,)')

  with pytest.raises(SystemExit) as info:
    _runtime.report_errors(fail, (ValueError,), hint=lambda e: ' (hint)')
  assert info.value.code == 1
  assert capsys.readouterr().err == (
      'error: ckpt.npz: 2 problems: a is missing; b has shape (3,) (hint)\n')


def test_report_errors_returns_the_result_and_lets_other_errors_through():
  assert _runtime.report_errors(lambda: 7, (ValueError,)) == 7
  with pytest.raises(KeyError):
    _runtime.report_errors(lambda: {}['x'], (ValueError,))


BAD_INPUT = [
    ('experiments.score', [], 'error: --predictions is required'),
    ('experiments.convert', ['--output=x.npz'],
     'error: --checkpoint and --output are required'),
    ('experiments.prepare_data', ['--input=no_such_file.txt', '--nouse_cache'],
     "error: no_such_file.txt: no such file; expected a DREAM file "
     "'sequence<TAB>expression'"),
]


@pytest.mark.parametrize('module, args, message',
                         [case for case in BAD_INPUT if case[0] != 'experiments.convert'])
def test_bad_input_of_score_and_prepare_data_is_one_error_line(module, args, message):
  """(convert, which loads TensorFlow first: slow tier)"""
  check_bad_input(module, args, message)


def check_bad_input(module, args, message):
  result = run_module(module, *args)
  assert result.returncode == 1
  assert result.stderr.splitlines() == [message]
