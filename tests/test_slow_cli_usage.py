"""Slow tier of the usage errors: every entry point on the command line."""

import pytest

from test_cli_usage import BAD_INPUT, ENTRY_POINTS, check_bad_input, check_stray_flagfile


@pytest.mark.parametrize('entry_point', ENTRY_POINTS)
def test_stray_flagfile_prints_two_lines_not_the_help(entry_point):
  """`python -m experiments.train demo.flags`: the error and the hint, exit status 1."""
  check_stray_flagfile(entry_point)


@pytest.mark.parametrize('module, args, message',
                         [case for case in BAD_INPUT if case[0] == 'experiments.convert'])
def test_bad_input_of_convert_is_one_error_line(module, args, message):
  check_bad_input(module, args, message)
