"""Why a training run could not start or go on (the messages say what to do)."""


class TrainingError(Exception):
  """A run that cannot start or go on; the message says why and what to do."""


class NonFiniteError(TrainingError):
  """NaN or inf in the loss, the held-out predictions or the parameters."""


class Interrupted(Exception):
  """Ctrl-C (SIGINT); the message is the one line to print."""
