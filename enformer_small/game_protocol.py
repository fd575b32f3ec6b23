"""GAME's protocol, model-free: its request schema, errors and wire formats.

GAME, the Genomic API for Model Evaluation (de Boer lab; github.com/de-Boer-Lab/
Genomic-API-for-Model-Evaluation, docs/source/API/), has evaluators ask predictors for
predictions over HTTP: `GET /formats` (the wire formats a predictor reads and writes),
`GET /help` and `POST /predict`, whose body names a `readout` ('point', 'track' or
'interaction_matrix'), `prediction_tasks` (each a `name`, `type`, `cell_type`, `species`
and optional `scale`), the `sequences` by ID and optionally `upstream_seq`,
`downstream_seq` and `prediction_ranges`. Here: the request checked against that schema
(`parse_request`, every problem in one `BadRequest`), GAME's three errors and their
HTTP statuses, and the two wire formats (JSON; MessagePack, which GAME's test evaluator
prefers for answers). What a model answers is `serving.py`'s.
"""

import dataclasses
import json
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import msgpack

JSON = 'application/json'
MSGPACK = 'application/msgpack'
FORMATS = (JSON, MSGPACK)
READOUTS = ('point', 'track', 'interaction_matrix')
SCALES = ('linear', 'log')
TASK_KEYS = ('name', 'type', 'cell_type', 'species')


# ---------------------------------------------------------------------------
# GAME's errors.


class GameError(Exception):
  """A request refused GAME's way: its error key, HTTP status and messages."""
  key = 'server_error'
  status = 500

  def __init__(self, messages: Union[str, Sequence[str]]):
    self.messages = [messages] if isinstance(messages, str) else list(messages)
    super().__init__('; '.join(self.messages))


class BadRequest(GameError):
  """The request breaks GAME's protocol; the model did not run."""
  key, status = 'bad_prediction_request', 400


class PredictionFailed(GameError):
  """A valid request the model cannot answer (readout, tasks, letters, sizes)."""
  key, status = 'prediction_request_failed', 422


class ServerFailure(GameError):
  """The server failed on a request it should have answered."""
  key, status = 'server_error', 500


def error_body(error: GameError, predictor_name: str) -> Dict[str, Any]:
  """GAME's error answer: `{key: [messages]}` (its documentation) and
  `error: [{key: message}]` (its test predictor), with the predictor's name."""
  return {'predictor_name': predictor_name, error.key: list(error.messages),
          'error': [{error.key: message} for message in error.messages]}


def normalise(name: str) -> str:
  """GAME's spelling of a name: lower case, words joined by '_'."""
  return re.sub(r'[^a-z0-9]+', '_', name.strip().lower()).strip('_')


# ---------------------------------------------------------------------------
# Wire formats.


class _DuplicateKey(Exception):
  pass


def _unique_keys(pairs: List[Tuple[Any, Any]]) -> Dict[Any, Any]:
  out = {}
  for key, value in pairs:
    if key in out:
      raise _DuplicateKey(f'key {key!r} appears twice in one object (GAME: sequence '
                          'IDs and other keys must be unique)')
    out[key] = value
  return out


def request_format(content_type: Optional[str]) -> str:
  """The request's format from its Content-Type: MessagePack when it says so, else JSON
  (none: JSON, as GAME's test predictor assumes; curl's default form type and text/plain
  are read as JSON too, and a body that is not JSON is refused as such)."""
  media = (content_type or JSON).split(';')[0].strip().lower()
  return MSGPACK if media in (MSGPACK, 'application/x-msgpack') else JSON


def decode(body: bytes, content_type: Optional[str]) -> Any:
  """The request body as Python objects.

  Args:
    body: the request's bytes.
    content_type: its Content-Type header (`request_format`).

  Raises:
    BadRequest: a body that does not parse, or repeats a key within an object.
  """
  media = request_format(content_type)
  try:
    if media == MSGPACK:
      return msgpack.unpackb(body, raw=False, object_pairs_hook=_unique_keys)
    return json.loads(body, object_pairs_hook=_unique_keys)
  except _DuplicateKey as e:
    raise BadRequest(str(e)) from None
  except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as e:
    what = 'MessagePack' if media == MSGPACK else 'JSON'
    raise BadRequest(f'the request body is not valid {what}: {e}') from None


def response_format(accept: Optional[str]) -> str:
  """MessagePack when the client accepts it, else JSON (GAME: errors always JSON)."""
  return MSGPACK if MSGPACK in (accept or '').lower() else JSON


def encode(body: Dict[str, Any], media: str = JSON) -> bytes:
  """The answer in `media`; ValueError for a value JSON cannot hold (NaN)."""
  if media == MSGPACK:
    return msgpack.packb(body, use_bin_type=True)
  return json.dumps(body, allow_nan=False, separators=(',', ':')).encode('utf-8')


# ---------------------------------------------------------------------------
# Requests.


@dataclasses.dataclass(frozen=True)
class Task:
  """One of a request's prediction tasks, as sent."""
  name: str
  type: str
  cell_type: str
  species: str
  scale: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class PredictRequest:
  """A parsed /predict request: sequence IDs and sequences in the request's order, and
  the non-empty prediction ranges by ID ([start, end], end inclusive)."""
  readout: str
  tasks: Tuple[Task, ...]
  ids: Tuple[str, ...]
  sequences: Tuple[str, ...]
  upstream: str = ''
  downstream: str = ''
  ranges: Dict[str, Tuple[int, int]] = dataclasses.field(default_factory=dict)


def listed(items: Sequence[Any], limit: int = 5) -> str:
  """`'a', 'b'` or `'a', 'b', ... and 12 more`: a list to name in one line."""
  shown = ', '.join(repr(i) for i in items[:limit])
  return shown + (f' and {len(items) - limit:,} more' if len(items) > limit else '')


def parse_request(payload: Any) -> PredictRequest:
  """A /predict payload checked against GAME's request schema.

  Raises:
    BadRequest: every problem found (missing keys first, alone).
  """
  if not isinstance(payload, dict):
    raise BadRequest('the request must be an object with readout, prediction_tasks and '
                     'sequences')
  missing = [key for key in ('readout', 'prediction_tasks', 'sequences')
             if key not in payload]
  if missing:
    raise BadRequest(f'mandatory key(s) missing from the request: {", ".join(missing)}')
  problems = []
  readout = payload['readout']
  if not isinstance(readout, str) or readout not in READOUTS:
    problems.append(f'readout {readout!r} is not recognized: GAME readouts are '
                    f'{", ".join(READOUTS)}')
  tasks = _parse_tasks(payload['prediction_tasks'], problems)
  ids, sequences = _parse_sequences(payload['sequences'], problems)
  upstream, downstream = (_parse_flank(payload, key, problems)
                          for key in ('upstream_seq', 'downstream_seq'))
  ranges = _parse_ranges(payload.get('prediction_ranges'), ids, problems)
  if problems:
    raise BadRequest(problems)
  return PredictRequest(readout, tasks, ids, sequences, upstream, downstream, ranges)


def _parse_tasks(value: Any, problems: List[str]) -> Tuple[Task, ...]:
  if not isinstance(value, list) or not value:
    problems.append('prediction_tasks must be a non-empty array of objects')
    return ()
  tasks, names = [], set()
  for index, item in enumerate(value):
    task = _parse_task(index, item, problems)
    if task is None:
      continue
    if task.name in names:
      problems.append(f'prediction task name {task.name!r} is used twice: task names '
                      'must be unique')
    names.add(task.name)
    tasks.append(task)
  return tuple(tasks)


def _parse_task(index: int, item: Any, problems: List[str]) -> Optional[Task]:
  if not isinstance(item, dict):
    problems.append(f'prediction task {index + 1} is not an object')
    return None
  label = repr(item['name']) if isinstance(item.get('name'), str) else str(index + 1)
  missing = [key for key in TASK_KEYS if key not in item]
  if missing:
    problems.append(f'prediction task {label}: mandatory key(s) missing: '
                    f'{", ".join(missing)}')
    return None
  not_strings = [key for key in TASK_KEYS + ('scale',)
                 if key in item and not isinstance(item[key], str)]
  if not_strings:
    problems.append(f'prediction task {label}: {", ".join(not_strings)} must be '
                    'string(s)')
    return None
  found = len(problems)
  if 'scale' in item and item['scale'] not in SCALES:
    problems.append(f'prediction task {label}: scale {item["scale"]!r} is not '
                    f'recognized: GAME scales are {", ".join(SCALES)}')
  kind = item['type']
  if not (kind in ('accessibility', 'expression')
          or kind.startswith(('binding_', 'expression_', 'conformation_'))):
    problems.append(f'prediction task {label}: type {kind!r} is not recognized: GAME '
                    'types are accessibility, expression, expression_*, binding_*, '
                    'conformation_*')
  if len(problems) > found:
    return None
  return Task(*(item[key] for key in TASK_KEYS), scale=item.get('scale'))


def _parse_sequences(value: Any, problems: List[str]
                     ) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
  if not isinstance(value, dict):
    problems.append('sequences must be an object of sequence ID: sequence')
    return (), ()
  if not value:
    problems.append('sequences holds no sequence: nothing to predict')
    return (), ()
  bad_ids = [key for key in value if not isinstance(key, str) or not key]
  bad = [key for key, sequence in value.items() if not isinstance(sequence, str)]
  if bad_ids:
    problems.append(f'sequence IDs {listed(bad_ids)} must be non-empty strings')
  if bad:
    problems.append(f'sequence(s) {listed(bad)} must be strings')
  return tuple(value), tuple(value.values())


def _parse_flank(payload: Dict[str, Any], key: str, problems: List[str]) -> str:
  value = payload.get(key, '')
  if not isinstance(value, str):
    problems.append(f'{key} must be a string')
    return ''
  return value


def _parse_ranges(value: Any, ids: Sequence[str], problems: List[str]
                  ) -> Dict[str, Tuple[int, int]]:
  if value is None:
    return {}
  if not isinstance(value, dict):
    problems.append('prediction_ranges must be an object of sequence ID: [start, end]')
    return {}
  if set(value) != set(ids):
    problems.append('the sequence IDs of prediction_ranges differ from those of '
                    'sequences (GAME: they must be the same)')
    return {}
  ranges, bad = {}, []
  for key, pair in value.items():
    if pair == []:
      continue
    if (not isinstance(pair, list) or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        or not 0 <= pair[0] <= pair[1]):
      bad.append(key)
      continue
    ranges[key] = (pair[0], pair[1])
  if bad:
    problems.append(f'prediction_ranges of {listed(bad)} must be [] or [start, end]: '
                    'integers with 0 <= start <= end (0-based, end inclusive)')
  return ranges
