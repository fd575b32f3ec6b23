"""Runs an entry point of experiments/ in this process: its flags on absl's FLAGS.

Each command defines its flags on the global `flags.FLAGS` (`define_flags()`), and
several define the same names (--checkpoint, --batch_size, ...), so they cannot all be
defined at once in one test process. `command_flags` sets aside every flag that is not
absl's own, defines the command's, parses the arguments, and afterwards removes the
command's flags and puts the others back.
"""

import contextlib

from absl import flags


def _absl_flag(values: flags.FlagValues, name: str) -> bool:
  module = values.find_module_defining_flag(name) or ''
  return module == 'absl' or module.startswith('absl.')


@contextlib.contextmanager
def command_flags(module, *args: str):
  """`module.define_flags()` and `--flag=value` arguments `args` parsed, for the
  duration of the block (which calls e.g. `module.run()` or `module.main([...])`)."""
  values = flags.FLAGS
  registry = values._flags()  # pylint: disable=protected-access
  saved = dict(registry)
  for name in list(registry):
    if not _absl_flag(values, name):
      del registry[name]
  try:
    module.define_flags()
    values(['prog', *args])
    yield values
  finally:
    registry.clear()
    registry.update(saved)


def run(module, *args: str):
  """`module.run()` with its flags parsed from `args`: what the command returns."""
  with command_flags(module, *args):
    return module.run()
