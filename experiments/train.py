r"""Trains the seed's reduced Enformer on DREAM data or a table (pmapped over the devices).

  python -m experiments.train --flagfile=small.flags     # the seed's recipe, real data
  python -m experiments.train --flagfile=demo.flags      # synthetic; its time: README.md
  python -m experiments.train --flagfile=demo.flags --resume   # continue a killed run

The recipe (small.flags): the seed model at 85 bp (X[:, 15:100] of the 110 bp encoding),
Keras' Poisson loss, optax SGD (learning rate 0.01, momentum 0.9, nothing else), global
batch 10,000, 10,000 held-out rows, shifts -1/0/+1 in 'expand' mode (every training row at
every shift, every epoch), up to 300 epochs, evaluation after every epoch, the epoch with
the best held-out Pearson kept.

Every flag is a setting of `enformer_small.train_config.TrainConfig` (with the recipe's,
`recipe.Recipe`), `trainer.RunOptions` or `distributed.DistributedConfig`: `--helpfull`
lists them with their help. The run itself is `enformer_small.trainer.train`, whose
docstring says what a run directory receives, how resuming and Ctrl-C work, and what a
multi-host job does (launch/README.md).

Exit status: 0 done, 1 an error (one `error:` line), 130 Ctrl-C (one line naming the
last checkpoint).
"""

import logging
import os
import sys

from absl import flags
from absl import logging as absl_logging

from experiments import _flags
from experiments import _runtime

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
  """One flag per setting of the run's configuration, plus --progress."""
  from enformer_small import distributed
  from enformer_small import train_config
  from enformer_small import trainer
  _flags.define(train_config.TrainConfig, flag_values)
  _flags.define(trainer.RunOptions, flag_values)
  flags.DEFINE_bool('progress', True,
                    'Progress bar with throughput (only on a terminal).',
                    flag_values=flag_values)
  # Multi-process jobs (launch/README.md); under SLURM and on TPU pods JAX reads these
  # from the environment.
  _flags.define(distributed.DistributedConfig, flag_values)


def config_from_flags(flag_values: flags.FlagValues = FLAGS):
  from enformer_small import train_config
  return _flags.parse(train_config.TrainConfig, flag_values)


def options_from_flags(flag_values: flags.FlagValues = FLAGS):
  from enformer_small import trainer
  return _flags.parse(trainer.RunOptions, flag_values)


def distributed_config_from_flags(flag_values: flags.FlagValues = FLAGS):
  from enformer_small import distributed
  try:
    return _flags.parse(distributed.DistributedConfig, flag_values)
  except ValueError as e:
    raise distributed.DistributedError(str(e)) from None


def _quiet_abandoned_reads() -> None:
  """Silences what orbax's reads of a damaged checkpoint leave behind.

  Its first error ends the read and closes its event loop; tensorstore's other reads
  finish later and asyncio reports each (a traceback at exit). The warning line
  already names the checkpoint and why it was skipped.
  """
  logging.getLogger('asyncio').setLevel(logging.CRITICAL)
  report = sys.unraisablehook

  def hook(unraisable):
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
      report(unraisable)

  sys.unraisablehook = hook


class _WithoutOrbaxInfo(logging.Filter):
  """Drops orbax's INFO records (a dozen per save: renames, timings, syncs), which
  absl's handler would print, and the tracebacks of its errors: the run logs its own
  line per save, and one line when a save fails."""

  def filter(self, record: logging.LogRecord) -> bool:
    if f'{os.sep}orbax{os.sep}' not in record.pathname:
      return True
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    return record.levelno >= logging.WARNING


def _errors():
  from enformer_small import checkpoint
  from enformer_small import dream_data
  from enformer_small import train_errors
  from enformer_small import warm_start
  return (train_errors.TrainingError, dream_data.DreamDataError,
          checkpoint.CheckpointError, warm_start.WarmStartError)


def _describe(error: BaseException, run_dir: str) -> str:
  if isinstance(error, OSError):  # A disk filling up or a directory removed mid-run.
    return (f'{error.filename or run_dir}: {error.strerror or error}. Files are written '
            'whole or not at all: fix the cause and run again (--resume continues from '
            'the last checkpoint).')
  return str(error)


def run() -> None:
  import jax
  from enformer_small import distributed
  from enformer_small import train_data
  from enformer_small import trainer
  # Before anything touches JAX: join the other processes, if any.
  try:
    distributed.initialize(distributed_config_from_flags())
  except distributed.DistributedError as e:
    _runtime.fail(str(e))
  try:
    config, options = config_from_flags(), options_from_flags()
  except ValueError as e:
    _runtime.fail(f'bad flags: {e}')
  # Before TensorFlow is imported: a missing file is reported at once.
  if (config.synthetic_rows <= 0 and not config.table_file and
      not os.path.exists(config.train_file)):
    _runtime.fail(train_data.missing_train_file_message(config.train_file))
  _runtime.show_library_log(jax.process_index() == 0)
  progress = _runtime.progress_bars(FLAGS.progress)
  _runtime.report_errors(
      lambda: trainer.train(config, options, progress=progress),
      _errors() + (OSError,), hint=lambda e: '', describe=lambda e: _describe(
          e, config.run_dir))


def main(argv_unused) -> None:
  # absl shows INFO records; jax's probing of absent backends is not news.
  logging.getLogger('jax._src.xla_bridge').setLevel(logging.WARNING)
  absl_logging.get_absl_handler().addFilter(_WithoutOrbaxInfo())
  _quiet_abandoned_reads()
  try:
    run()
  except KeyboardInterrupt:
    _runtime.exit_interrupted('interrupted before training started')


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  _runtime.run(main)
