"""Process set-up and command line shared by the entry points (not library code)."""

import functools
import logging
import os
import shlex
import sys
from typing import Any, Callable, List, Sequence, Tuple

from absl import app
from absl import flags

JEMALLOC = '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2'


def reexec_with_jemalloc() -> None:
  """Restarts this command with jemalloc preloaded, when it is installed.

  On the 2-core VMs this project is developed on, glibc's allocator made XLA's CPU
  training erratic and several times slower; jemalloc fixed it. The allocator must be
  chosen before the process starts, hence the re-exec. Set ENFORMER_SMALL_NO_JEMALLOC=1
  to keep glibc's allocator.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  if (os.environ.get('ENFORMER_SMALL_NO_JEMALLOC') or not os.path.exists(JEMALLOC)
      or 'jemalloc' in os.environ.get('LD_PRELOAD', '')):
    return
  env = dict(os.environ)
  env['LD_PRELOAD'] = ':'.join(p for p in (JEMALLOC, env.get('LD_PRELOAD')) if p)
  main = sys.modules['__main__']
  module = getattr(main.__spec__, 'name', None) if main.__spec__ else None
  argv = ([sys.executable, '-m', module] if module else [sys.executable, sys.argv[0]])
  os.execve(sys.executable, argv + sys.argv[1:], env)


def run(main: Callable[[List[str]], Any]) -> None:
  """absl's `app.run(main)`, with usage errors in two lines instead of the whole help.

  absl answers an argument it cannot use, such as a flagfile given without
  `--flagfile=` (`python -m experiments.train demo.flags`), with the module's full
  help and the error as its last line, where a user reading from the top misses it.
  Here stray positional arguments and `app.UsageError`s raised by `main` print
  `error: ...` and a `hint: ...` to stderr and exit with status 1 (the status absl
  gives them).
  """
  app.run(functools.partial(_main_without_help, main), flags_parser=_parse_flags)


def command(run: Callable[[], Any], errors: Tuple[type, ...],
            hint: Callable[[BaseException], str] = lambda error: ''
            ) -> Callable[[List[str]], Any]:
  """The `main` of an entry point for `run` above: `run()` through `report_errors`.

  It takes no positional arguments: `run` refuses them while parsing the flags.
  """
  def main(argv_unused: List[str]) -> None:
    # absl shows INFO records; jax's probing of absent backends is not news.
    logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
    show_library_log()
    # Nothing returned: absl's app.run would print it and exit with status 1.
    report_errors(run, errors, hint)
  return main


def report_errors(run: Callable[[], Any], errors: Tuple[type, ...],
                  hint: Callable[[BaseException], str] = lambda error: '',
                  describe: Callable[[BaseException], str] = str) -> Any:
  """`run()`, with each of `errors` (bad input) ended as one `error:` line, status 1,
  and Ctrl-C as one line, status 130.

  `hint(error)` is appended to the line: what the command knows about the cause that
  the library raising the error does not (e.g. a default path that exists only beside
  this repository); `describe(error)` is the message (default its text). In a
  multi-process job the lines name the process.
  """
  from enformer_small import train_errors
  try:
    return run()
  except errors as e:
    fail(f'{one_line(describe(e))}{hint(e)}')
  except train_errors.Interrupted as e:
    exit_interrupted(str(e))
  except KeyboardInterrupt:
    exit_interrupted('interrupted')


def fail(message: str) -> None:
  """Prints `error: message` (naming the process in a multi-process job), exits 1."""
  if not message.startswith('error:'):
    message = f'error: {message}'
  print(_process_label() + message, file=sys.stderr)
  sys.exit(1)


def exit_interrupted(line: str) -> None:
  """Prints the one line and exits with 130 (128 + SIGINT) at once.

  Every file is written whole or not at all, so nothing is left to clean up; skipping
  the interpreter's teardown (TensorFlow's and JAX's threads) keeps the exit immediate.
  """
  print(_process_label() + line, file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(130)


def _process_label() -> str:
  if 'jax' not in sys.modules:
    return ''
  from enformer_small import distributed
  return distributed.process_label()


class _LineHandler(logging.Handler):
  """The library's records as plain lines: INFO to stdout (through tqdm, so a progress
  bar is not broken), WARNING and above to stderr as `warning: ...`."""

  def emit(self, record: logging.LogRecord) -> None:
    line = record.getMessage()
    if record.levelno >= logging.WARNING:
      print(f'{_process_label()}warning: {line}', file=sys.stderr, flush=True)
      return
    try:
      import tqdm
      tqdm.tqdm.write(line, file=sys.stdout)
    except ImportError:
      print(line)
    sys.stdout.flush()


def show_library_log(enabled: bool = True) -> None:
  """Shows the library's log lines (`enformer_small.*` loggers) plainly, not in absl's
  format; `enabled` False (e.g. processes other than 0) shows none."""
  logger = logging.getLogger('enformer_small')
  logger.handlers[:] = [_LineHandler()] if enabled else [logging.NullHandler()]
  logger.setLevel(logging.INFO)
  logger.propagate = False


def progress_bars(enabled: bool, unit: str = 'seq'):
  """A factory `(total, description) -> tqdm bar` on stderr, or None when `enabled` is
  False or stderr is not a terminal."""
  if not (enabled and sys.stderr.isatty()):
    return None
  import tqdm

  def make(total: int, description: str = ''):
    return tqdm.tqdm(total=total, desc=description or None, unit=unit, unit_scale=True,
                     dynamic_ncols=True, leave=False, file=sys.stderr)
  return make


def one_line(message: str) -> str:
  """A multi-line error (a heading, then indented items) on one line.

  Scripts and logs read the error as the last line of stderr; a message over several
  lines would leave its heading out of that line.
  """
  lines = [line.strip() for line in message.splitlines() if line.strip()]
  return ' '.join(line if line.endswith(':') or i + 1 == len(lines) else line + ';'
                  for i, line in enumerate(lines))


def usage_error_lines(args: Sequence[str]) -> Tuple[str, str]:
  """The error and hint lines for positional arguments, which no entry point takes."""
  flagfiles = [a for a in args if _looks_like_flagfile(a)]
  words = ' '.join(shlex.quote(a) for a in args)
  error = f'error: unexpected argument{"s" if len(args) > 1 else ""}: {words}'
  if flagfiles:
    hint = ('hint: a flagfile is given as '
            + ' '.join(f'--flagfile={shlex.quote(f)}' for f in flagfiles))
  else:
    hint = 'hint: this command takes only flags (--name=value); --helpshort lists them'
  return error, hint


def _looks_like_flagfile(arg: str) -> bool:
  """A `.flags` name, or a file whose first line that is not a comment is a flag."""
  if arg.endswith('.flags'):
    return True
  try:
    with open(arg, 'r', encoding='utf-8', errors='replace') as f:
      head = f.read(4096)
  except OSError:
    return False
  for line in head.splitlines():
    line = line.strip()
    if line and not line.startswith('#'):
      return line.startswith('--')
  return False


def positional_arguments(args: Sequence[str],
                         flag_values: flags.FlagValues = flags.FLAGS) -> List[str]:
  """The arguments absl will leave over: neither a flag nor the value of the one before.

  Found before absl parses, because absl checks required flags first, and a stray
  argument is often the value of the flag it then reports missing.
  """
  stray, takes_value = [], False
  for i, arg in enumerate(args):
    if takes_value:
      takes_value = False
    elif arg == '--':
      return stray + list(args[i + 1:])
    elif arg.startswith('-') and arg != '-':
      name, equals, _ = arg.lstrip('-').partition('=')
      takes_value = not equals and _takes_value(name, flag_values)
    else:
      stray.append(arg)
  return stray


def _takes_value(name: str, flag_values: flags.FlagValues) -> bool:
  if name in ('flagfile', 'undefok'):
    return True
  for candidate in (name, name[2:] if name.startswith('no') else None):
    if candidate and candidate in flag_values:
      return not flag_values[candidate].boolean
  return False  # Unknown: absl reports it.


def _refuse(args: Sequence[str]) -> None:
  print('\n'.join(usage_error_lines(args)), file=sys.stderr)
  sys.exit(1)


def _parse_flags(argv: List[str]) -> List[str]:
  stray = positional_arguments(argv[1:])
  if stray:
    _refuse(stray)
  args = app.parse_flags_with_usage(argv)
  if len(args) > 1:  # From a flagfile: absl passes on its lines that are not flags.
    _refuse(args[1:])
  return args


def _main_without_help(main: Callable[[List[str]], Any], argv: List[str]) -> Any:
  try:
    return main(argv)
  except app.UsageError as e:
    print(f'error: {e}\nhint: --helpshort lists the flags', file=sys.stderr)
    sys.exit(e.exitcode)
