"""TensorBoard event files: scalars written during training and read back.

The writer is TensorBoard's own (`tensorboard.summary.writer`), which needs neither
TensorFlow nor a running TensorBoard; files land as `events.out.tfevents.*` in the run
directory, so `tensorboard --logdir RUN_DIR` shows them. The reader is TensorBoard's
event accumulator, the one its server uses.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Mapping, Tuple

EVENT_FILE_PREFIX = 'events.out.tfevents.'


def flatten_scalars(record: Mapping[str, Any], prefix: str = '') -> Dict[str, float]:
  """Nested numbers as 'outer/inner' tags: {'holdout': {'pearson': .5}} ->
  {'holdout/pearson': .5}. Non-numbers (strings, lists, None) are left out."""
  out: Dict[str, float] = {}
  for key, value in record.items():
    tag = f'{prefix}{key}'
    if isinstance(value, Mapping):
      out.update(flatten_scalars(value, tag + '/'))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out[tag] = float(value)
  return out


class ScalarWriter:
  """Appends scalars to one event file in `log_dir` (created if missing).

  Non-finite values are written as they are (TensorBoard shows them as gaps); a value
  is only flushed to disk by `flush` or `close`, or every `flush_secs` in the
  background, as TensorBoard's writer does.
  """

  def __init__(self, log_dir: str, flush_secs: float = 30.0):
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer import event_file_writer
    self._event_pb2 = event_pb2
    self._writer = event_file_writer.EventFileWriter(log_dir, flush_secs=flush_secs)
    self.log_dir = log_dir

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Writes each tag's value at `step` (one event)."""
    from tensorboard.compat.proto import summary_pb2
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in values.items()])
    self._writer.add_event(self._event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=summary))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()

  def __enter__(self) -> 'ScalarWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_scalars(log_dir: str) -> Dict[str, List[Tuple[int, float]]]:
  """Every scalar in the event files of `log_dir`: {tag: [(step, value), ...]} in
  file order, as TensorBoard itself reads them."""
  from tensorboard.backend.event_processing import event_accumulator
  accumulator = event_accumulator.EventAccumulator(
      log_dir, size_guidance={event_accumulator.SCALARS: 0})
  accumulator.Reload()
  return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
          for tag in accumulator.Tags()['scalars']}

