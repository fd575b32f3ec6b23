"""Entry points (`python -m experiments.<command>`); the library is enformer_small."""

import sys

# Started as a command (`python -m experiments.X`: runpy sets argv[0] to '-m' while it
# imports the package): Ctrl-C is honoured from the first import on.
if sys.argv[:1] == ['-m']:
  from experiments import _interrupt
  _interrupt.install()
