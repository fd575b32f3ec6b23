"""This project's model served to GAME evaluators: their requests in, answers out.

`GameServer` answers GAME's `/formats`, `/help` and `/predict` (`game_protocol`: the
request schema, errors and wire formats) as dicts, without a network
(`experiments/serve.py` puts them on HTTP), and predicts through the one inference path
(`ensemble.Ensemble.predict_codes`), so a sequence gets the value `experiments.predict`
gives it.

Policies (also in the `/help` answer):
- Readout 'point' only; 'track' and 'interaction_matrix' are refused.
- A task is answered when its type is expression (`ANSWERED_TYPES`), its species the
  model's and its cell type one the model answers (a table run's target column by name);
  any other task is refused with GAME's error message, never guessed: inside a 200 answer
  (`predictions: {"error": [...]}`, as GAME's test evaluator reads it) when another task
  is answered, as the whole request's error (422) when none is.
- Sequences: `upstream_seq` + the sequence (cut to its `prediction_ranges` entry) +
  `downstream_seq`; letters A, C, G, T, N in any case; then the checkpoint's length
  policy (`inference.Layout.encode`: DREAM rows cut or N-padded at the 3' end to 110 bp,
  the plasmid context added by the inference path; a fixed-length table refuses other
  lengths).
- Answer: the ensemble mean per sequence and task, one number (as in GAME's newest
  example answer and test predictor); an ensemble of several checkpoints also gives the
  sd across them under the extra top-level key `prediction_spread` (by task name, then
  sequence ID), kept out of the tasks so evaluators that log a task's fields do not log
  it. `sequence_notes` says what the length policy padded or cut.
- Size: at most `max_sequences` sequences a request, predicted `chunk_size` at a time,
  each chunk under one lock (model calls are serialised; concurrent requests take turns
  chunk by chunk).
"""

import dataclasses
import json
import logging
import os
import re
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from enformer_small import dream_data
from enformer_small import ensemble as ensemble_lib
from enformer_small import game_protocol as game
from enformer_small import inference
from enformer_small import plasmid
from enformer_small.settings import setting

log = logging.getLogger(__name__)

# A reporter of promoter activity: Pol II expression; GAME's 'expression' means mRNA.
ANSWERED_TYPES = ('expression', 'expression_mrna', 'expression_pol2')
YEAST = 'saccharomyces_cerevisiae'
YEAST_NAMES = (YEAST, 's_cerevisiae', 'yeast')
YEAST_CELL_TYPES = ('yeast', 'yeast_cell', YEAST, 's_cerevisiae')
_NOT_A_BASE = re.compile('[^ACGTNacgtn]')


class SetupError(ValueError):
  """Serving options that cannot describe the model; the message names the flag."""


# ---------------------------------------------------------------------------
# What the server answers.


@dataclasses.dataclass(frozen=True)
class ServingOptions:
  """How the server describes the model and bounds its work."""
  predictor_name: str = setting(
      '', "Name given to evaluators (GAME's predictor_name; default: enformer_small_ "
      "and the checkpoint's run directory and file name).")
  species: str = setting(
      '', 'GAME species the model predicts (default: saccharomyces_cerevisiae for a '
      'model of DREAM rows; required for a model trained on a table).')
  cell_types: Tuple[str, ...] = setting(
      (), 'GAME cell types answered, compared in lower case with other characters as '
      '_ (default: yeast, yeast_cell, saccharomyces_cerevisiae, s_cerevisiae for DREAM '
      "rows; a table run's target columns are always answered by name).")
  scale: str = setting(
      '', "GAME scale of the predictions, log or linear (default: log for DREAM rows, "
      "whose 0-17 expression bins are log-spaced; required for a table run).")
  max_sequences: int = setting(
      200_000, 'Most sequences in one request; more are refused (422).')
  chunk_size: int = setting(
      10_000, 'Sequences predicted at a time within a request (bounds the memory).')
  max_request_mb: int = setting(
      256, 'Largest request body (MiB); a larger one is refused (422) unread.')

  def __post_init__(self):
    object.__setattr__(self, 'cell_types', tuple(self.cell_types))
    if self.scale not in ('',) + game.SCALES:
      raise SetupError(f'--scale must be log or linear, got {self.scale!r}')
    for name in ('max_sequences', 'chunk_size', 'max_request_mb'):
      if getattr(self, name) < 1:
        raise SetupError(f'--{name} must be >= 1, got {getattr(self, name)}')


@dataclasses.dataclass(frozen=True)
class ModelCard:
  """What the served model predicts, in GAME's terms (names `game.normalise`d).

  species / species_names: the species answered, and the names taken for it.
  cell_type / cell_type_names: the cell type reported, and the names taken for it.
  outputs: the model's outputs (`Ensemble.targets`); each answers tasks naming it.
  scale: 'log' or 'linear'. dream: a model of DREAM rows (else a table run).
  """
  species: str
  species_names: Tuple[str, ...]
  cell_type: str
  cell_type_names: Tuple[str, ...]
  outputs: Tuple[str, ...]
  scale: str
  dream: bool

  def cell_type_of(self, output: int) -> str:
    return self.cell_type if len(self.outputs) == 1 else self.outputs[output]


def model_card(ens: ensemble_lib.Ensemble, options: ServingOptions) -> ModelCard:
  """The card of a model of DREAM rows (yeast) or of a table run (as the options say).

  Raises:
    SetupError: a table run without --species or --scale (its checkpoint records
      neither).
  """
  dream = ens.layout.table is None
  if not dream and not (options.species and options.scale):
    raise SetupError(f'{_source(ens)}: trained on a table, whose species and scale '
                     'the checkpoint does not record: give --species and --scale')
  species = game.normalise(options.species) if options.species else YEAST
  cell_types = (tuple(game.normalise(c) for c in options.cell_types)
                or (YEAST_CELL_TYPES if dream else ()))
  return ModelCard(species=species,
                   species_names=(species,) if options.species else YEAST_NAMES,
                   cell_type=cell_types[0] if cell_types else ens.targets[0],
                   cell_type_names=cell_types, outputs=tuple(ens.targets),
                   scale=options.scale or 'log', dream=dream)


def _source(ens: ensemble_lib.Ensemble) -> str:
  return ens.members[0].source or 'the model'


def default_name(ens: ensemble_lib.Ensemble) -> str:
  """enformer_small_<run directory>_<file> of the first checkpoint (+ '_and_<K-1>_more'
  for an ensemble): a name evaluators can put in file names."""
  path = ens.members[0].source or 'model'
  stem = os.path.splitext(os.path.basename(path))[0]
  run = (os.path.basename(os.path.dirname(os.path.abspath(path)))
         if ens.members[0].source else '')
  name = '_'.join(p for p in ('enformer_small', run, stem) if p)
  if ens.size > 1:
    name += f'_and_{ens.size - 1}_more'
  return re.sub(r'[^A-Za-z0-9._-]+', '_', name)


def match_task(task: game.Task, card: ModelCard) -> Union[int, str]:
  """The index of the output that answers `task`, or why none does (one line)."""
  if game.normalise(task.type) not in ANSWERED_TYPES:
    return (f'task {task.name!r}: type {task.type!r} is not predicted: this model '
            f'predicts expression ({", ".join(ANSWERED_TYPES)})')
  if game.normalise(task.species) not in card.species_names:
    return (f'task {task.name!r}: species {task.species!r} is not predicted: this '
            f'model predicts {card.species}')
  cell_type = game.normalise(task.cell_type)
  named = [i for i, output in enumerate(card.outputs)
           if game.normalise(output) == cell_type]
  if named:
    return named[0]
  if len(card.outputs) == 1 and cell_type in card.cell_type_names:
    return 0
  answered = card.cell_type_names if len(card.outputs) == 1 else card.outputs
  return (f'task {task.name!r}: cell type {task.cell_type!r} is not predicted: this '
          f'model answers {", ".join(answered)}')


def prepare_sequences(request: game.PredictRequest, layout: inference.Layout,
                      max_sequences: int) -> List[str]:
  """The sequences the model reads: each cut to its prediction range, between the
  request's flanks.

  Args:
    request: the parsed request.
    layout: how the model reads sequences (a fixed-length table refuses other lengths;
      other layouts pad or cut them when encoding).
    max_sequences: the most sequences a request may hold.

  Raises:
    game.PredictionFailed: more than `max_sequences`, empty sequences, letters other
      than A, C, G, T, N, ranges beyond a sequence, or lengths a fixed-length table
      refuses.
  """
  n = len(request.sequences)
  if n > max_sequences:
    raise game.PredictionFailed(
        f'{n:,} sequences exceed the limit of {max_sequences:,} a request '
        '(--max_sequences): send them in several requests')
  problems = [f'{key} holds letters other than A, C, G, T, N: '
              f'{game.listed(sorted(set(_NOT_A_BASE.findall(flank))))}'
              for key, flank in (('upstream_seq', request.upstream),
                                 ('downstream_seq', request.downstream))
              if _NOT_A_BASE.search(flank)]
  pairs = list(zip(request.ids, request.sequences))
  empty = [key for key, s in pairs if not s]
  letters = [key for key, s in pairs if _NOT_A_BASE.search(s)]
  beyond = [key for key, s in pairs
            if key in request.ranges and request.ranges[key][1] >= len(s)]
  for ids, what in ((empty, 'are empty'),
                    (letters, 'hold letters other than A, C, G, T, N (any case)'),
                    (beyond, 'end before their prediction range')):
    if ids:
      problems.append(f'sequence(s) {game.listed(ids)} {what}')
  built = [request.upstream + _cut(s, request.ranges.get(key)) + request.downstream
           for key, s in pairs]
  if layout.fixed_length:
    wrong = [key for key, s in zip(request.ids, built) if len(s) != layout.length]
    if wrong:
      problems.append(f'sequence(s) {game.listed(wrong)} are not {layout.length} bp with '
                      'their flanks: the model was trained on a table of fixed length')
  if problems:
    raise game.PredictionFailed(problems)
  return built


def _cut(sequence: str, span: Optional[Tuple[int, int]]) -> str:
  return sequence if span is None else sequence[span[0]:span[1] + 1]


# ---------------------------------------------------------------------------
# Answers.


@dataclasses.dataclass(frozen=True)
class Predicted:
  """float32 [N, T] mean and sd across members, and the sequences the layout padded
  or truncated."""
  mean: np.ndarray
  spread: np.ndarray
  num_padded: int = 0
  num_truncated: int = 0


def task_answer(task: game.Task, match: Union[int, str], card: ModelCard,
                ids: Sequence[str], predicted: Predicted,
                aggregation: Dict[str, str]) -> Dict[str, Any]:
  """GAME's answer to one task: its values by sequence ID, or its refusal.

  Args:
    task: the task as sent.
    match: `match_task`'s answer: the output's index, or why none answers.
    card: what the model predicts.
    ids: the request's sequence IDs, in order.
    predicted: the predictions of the request's sequences (rows in `ids` order).
    aggregation: GAME's `aggregation` of an answered task.
  """
  answered = not isinstance(match, str)
  out = {'name': task.name, 'type_requested': task.type,
         'type_actual': ['expression'] if answered else [],
         'cell_type_requested': task.cell_type,
         'cell_type_actual': card.cell_type_of(match) if answered else '',
         'species_requested': task.species,
         'species_actual': card.species if answered else ''}
  if task.scale is not None:
    out['scale_prediction_requested'] = task.scale
  if not answered:
    out['predictions'] = {'error': [{game.PredictionFailed.key: match}]}
    return out
  out['scale_prediction_actual'] = card.scale
  out['aggregation'] = dict(aggregation)
  values = predicted.mean[:, match].astype(np.float64).tolist()
  out['predictions'] = dict(zip(ids, values))
  return out


def fit_notes(predicted: Predicted, layout: inference.Layout) -> List[str]:
  """What the length policy did to the request's sequences ([] if nothing)."""
  notes = []
  if predicted.num_padded:
    notes.append(f"{predicted.num_padded:,} sequence(s) shorter than {layout.length} bp "
                 "(with their flanks) padded at the 3' end with N")
  if predicted.num_truncated:
    notes.append(f"{predicted.num_truncated:,} sequence(s) longer than {layout.length} "
                 "bp (with their flanks) cut at the 3' end")
  return notes


def aggregation_of(ens: ensemble_lib.Ensemble) -> Dict[str, str]:
  """GAME's `aggregation` of an answer: the windows each checkpoint averages, and the
  checkpoints averaged."""
  def windows(w) -> str:
    shifts = ','.join(str(s) for s in (w.shifts or (0,)))
    strands = 'both strands' if w.reverse_complement else 'the forward strand'
    return f'mean of {len(w.passes)} window(s): shift(s) {shifts} bp on {strands}'
  out = {'windows': '; '.join(sorted({windows(m.windows) for m in ens.members}))}
  if ens.size > 1:
    out['replicates'] = (f'mean of {ens.size} checkpoints (their sd in '
                         'prediction_spread)')
  return out


# ---------------------------------------------------------------------------
# /help.

DREAM_DESCRIPTION = (
    'Predicts the expression a promoter sequence drives in yeast (Saccharomyces '
    'cerevisiae) as measured by the Random Promoter DREAM Challenge 2022: a reporter '
    'library (MPRA-like sort-seq: random 80 bp promoter inserts in a 110 bp construct '
    'on a plasmid, cells sorted by reporter fluorescence into 18 expression bins); one '
    'value per sequence on the training scale, expression bins 0-17.')
DREAM_SCALE_NOTE = (
    'log: the 0-17 expression bins are log-spaced in reporter fluorescence, so the '
    'values are log-like units, not a linear expression level. A task asking for '
    "'linear' is answered on this scale and says so in scale_prediction_actual.")


def help_message(ens: ensemble_lib.Ensemble, card: ModelCard, options: ServingOptions,
                 name: str) -> Dict[str, Any]:
  """GAME's /help answer: its documented keys, then what an evaluator needs to send
  and read (inputs, outputs, scale, limits, errors).

  Args:
    ens: the model served.
    card: what it predicts, in GAME's terms.
    options: the limits stated.
    name: the predictor's name.
  """
  rc = all(m.windows.reverse_complement for m in ens.members)
  outputs = [{'name': output, 'type': 'expression', 'cell_type': card.cell_type_of(i),
              'species': card.species, 'scale': card.scale}
             for i, output in enumerate(card.outputs)]
  return {
      'predictor_name': name,
      'model': 'enformer_small: a reduced Enformer (JAX + dm-haiku reproduction of a '
               'Random Promoter DREAM Challenge 2022 entry)',
      'game_schema_version': '1.0',
      'publication': 'Rafi et al., Nature Biotechnology 2024 (the Random Promoter DREAM '
                     'Challenge 2022); Avsec et al., Nature Methods 2021 (Enformer)',
      'features': ['expression'] * len(card.outputs),
      'cell_types': [o['cell_type'] for o in outputs],
      'species': [card.species],
      'input_size': ens.layout.length,
      'expression_strand_specific': not rc,
      'readouts': ['point'],
      'description': DREAM_DESCRIPTION if card.dream else (
          f'Predicts the {len(card.outputs)} target(s) of the table the model was '
          f'trained on ({", ".join(card.outputs)}), one value per sequence and target.'),
      'outputs': outputs,
      'tasks_answered': _tasks_help(card),
      'scale': card.scale,
      'scale_note': DREAM_SCALE_NOTE if card.dream else
                    f'{card.scale}: the scale of the training targets (--scale).',
      'input': input_help(ens.layout),
      'model_window': ensemble_lib.describe(ens),
      'aggregation': aggregation_of(ens),
      'checkpoints': [_checkpoint_help(c) for c in ens.checkpoints],
      'limits': {'max_sequences': options.max_sequences,
                 'sequences_per_chunk': options.chunk_size,
                 'max_request_mb': options.max_request_mb},
      'formats': list(game.FORMATS),
      'errors': {game.BadRequest.key: '400: the request breaks the GAME protocol',
                 game.PredictionFailed.key: '422: valid, but this model cannot answer it '
                                       '(readout, task, letters, lengths, size)',
                 game.ServerFailure.key: '500: the server failed'},
  }


def _tasks_help(card: ModelCard) -> str:
  cell_types = list(card.cell_type_names) + (
      list(card.outputs) if len(card.outputs) > 1 else [])
  return (f'readout point; type {", ".join(ANSWERED_TYPES)}; species '
          f'{", ".join(card.species_names)}; cell type {", ".join(cell_types)} (case and '
          'punctuation ignored). Other tasks are refused with prediction_request_failed: '
          'in the task\'s predictions ({"error": [...]}) when another task is answered, '
          'as the whole answer (422) when none is.')


def input_help(layout: inference.Layout) -> Dict[str, Any]:
  """How the server turns a request's sequences into the model's inputs."""
  flanks = ('upstream_seq and downstream_seq are added before and after every sequence '
            '(after cutting it to its prediction range) before the length policy')
  if layout.table is not None:
    policy = (f"shorter sequences are padded at the 3' end with N and longer ones cut at "
              f"the 3' end to {layout.length} bp" if layout.table.pad else
              f'exactly {layout.length} bp with the flanks; other lengths are refused '
              '(422)')
    return {'length': layout.length, 'letters': 'A, C, G, T, N in any case',
            'length_policy': policy, 'flanks': flanks}
  context = layout.context
  return {
      'length': layout.length,
      'letters': 'A, C, G, T, N in any case (N: an unknown base)',
      'construct': (f"the DREAM {dream_data.SEQUENCE_LENGTH} bp construct: 5' flank "
                    f'{dream_data.FLANK_5} ({len(dream_data.FLANK_5)} bp), the '
                    f"{plasmid.INSERT_LENGTH} bp promoter insert, 3' flank "
                    f'{dream_data.FLANK_3} ({len(dream_data.FLANK_3)} bp)'),
      'length_policy': (f"longer sequences are cut at the 3' end, shorter ones padded "
                        f"at the 3' end with N, to {layout.length} bp: send whole "
                        'constructs, '
                        f'or {plasmid.INSERT_LENGTH} bp inserts with upstream_seq '
                        f'{dream_data.FLANK_5} and downstream_seq {dream_data.FLANK_3}'),
      'flanks': flanks + (": a 3' cut can remove downstream_seq"),
      'plasmid_context': {
          'bp_each_side': context,
          'upstream': plasmid.UPSTREAM[len(plasmid.UPSTREAM) - context:],
          'downstream': plasmid.DOWNSTREAM[:context],
          'note': ('added by the server around every 110 bp encoding (the reporter '
                   'plasmid, the same for every sequence); not to be sent'
                   if context else 'none: the model reads the 110 bp encoding alone')},
  }


def _checkpoint_help(ckpt) -> Dict[str, Any]:
  used = ckpt.extra.get('train_config') or {}
  out = {'file': os.path.basename(ckpt.path),
         'input_length': ckpt.model_config.input_length,
         'plasmid_context': ckpt.plasmid_context}
  for key in ('train_file', 'table_file'):
    if used.get(key):
      out[key] = os.path.basename(str(used[key]))
  for key in ('target_columns', 'loss'):
    if used.get(key):
      out[key] = used[key]
  return out


# ---------------------------------------------------------------------------
# The server.


class GameServer:
  """The GAME predictor of an ensemble: /formats, /help and /predict answered as dicts.

  Thread-safe: model calls are serialised by a lock held for one chunk at a time.

  Args:
    ens: the model served (one checkpoint or several), with its inference options.
    options: how the model is described and the request limits.

  Raises:
    SetupError: a table run without --species and --scale.
  """

  def __init__(self, ens: ensemble_lib.Ensemble,
               options: ServingOptions = ServingOptions()):
    self.ensemble, self.options = ens, options
    self.card = model_card(ens, options)
    self.name = options.predictor_name or default_name(ens)
    self.aggregation = aggregation_of(ens)
    self._help = help_message(ens, self.card, options, self.name)
    self._lock = threading.Lock()

  def formats(self) -> Dict[str, Any]:
    return {'predictor_name': self.name,
            'predictor_supported_request_formats': list(game.FORMATS),
            'predictor_supported_response_formats': list(game.FORMATS)}

  def help(self) -> Dict[str, Any]:
    return json.loads(json.dumps(self._help))  # A copy the caller may change.

  def warm_up(self) -> float:
    """Predicts one sequence (compiling every member's forward pass): seconds taken."""
    started = time.perf_counter()
    self.predict_sequences([('ACGT' * self.ensemble.layout.length)[
        :self.ensemble.layout.length]])
    return time.perf_counter() - started

  def predict_sequences(self, sequences: Sequence[str]) -> Predicted:
    """The ensemble's predictions of checked sequences (`prepare_sequences`),
    `chunk_size` at a time; game.ServerFailure if the model gives NaN or infinity."""
    means, spreads, padded, truncated = [], [], 0, 0
    chunk = self.options.chunk_size
    for start in range(0, len(sequences), chunk):
      encoded = self.ensemble.layout.encode(sequences[start:start + chunk])
      with self._lock:
        found = self.ensemble.predict_codes(encoded.codes)
      means.append(found.mean)
      spreads.append(found.spread)
      padded += encoded.num_padded
      truncated += encoded.num_truncated
    mean = np.concatenate(means)
    if not np.isfinite(mean).all():
      raise game.ServerFailure('the model predicted NaN or infinity')
    return Predicted(mean, np.concatenate(spreads), padded, truncated)

  def answer_predict(self, body: bytes, content_type: Optional[str] = None,
                     accept: Optional[str] = None) -> Tuple[int, bytes, str]:
    """/predict's answer to a raw request body: (HTTP status, body, media type).

    Args:
      body: the request's bytes.
      content_type: its Content-Type header (None: JSON).
      accept: its Accept header (MessagePack answers when it names them).

    Never raises: a refused request is GAME's error (always JSON), and a failure of the
    server's own a `server_error` (500) logged in one line, so the server lives on.
    """
    try:
      payload = game.decode(body, content_type)
      media = game.response_format(accept)
      return 200, game.encode(self.predict(payload), media), media
    except game.GameError as e:
      error = e
    except Exception as e:  # pylint: disable=broad-except
      log.error('server error: %s: %s', type(e).__name__, e)
      error = game.ServerFailure(f'{type(e).__name__}: {e}')
    return error.status, game.encode(game.error_body(error, self.name)), game.JSON

  def predict(self, payload: Any) -> Dict[str, Any]:
    """GAME's answer to a /predict payload (decoded). Raises game.GameError."""
    started = time.perf_counter()
    request = game.parse_request(payload)
    if request.readout != 'point':
      raise game.PredictionFailed(
          "this model predicts one value per sequence (readout 'point'); it has no "
          f'{request.readout!r} readout')
    matches = [match_task(task, self.card) for task in request.tasks]
    answered = [m for m in matches if not isinstance(m, str)]
    try:
      sequences = prepare_sequences(request, self.ensemble.layout,
                                    self.options.max_sequences)
      problems = []
    except game.PredictionFailed as e:
      problems = e.messages
    if problems or not answered:
      raise game.PredictionFailed(problems + ([] if answered else matches))
    predicted = self.predict_sequences(sequences)
    body = {'request': 'predict', 'predictor_name': self.name,
            'prediction_tasks': [
                task_answer(task, match, self.card, request.ids, predicted,
                            self.aggregation)
                for task, match in zip(request.tasks, matches)]}
    if self.ensemble.size > 1:
      body['prediction_spread'] = {
          task.name: dict(zip(request.ids,
                              predicted.spread[:, m].astype(np.float64).tolist()))
          for task, m in zip(request.tasks, matches) if not isinstance(m, str)}
    notes = fit_notes(predicted, self.ensemble.layout)
    if notes:
      body['sequence_notes'] = notes
    log.info('%s sequence(s), %d of %d task(s) answered, %.2f s', f'{len(sequences):,}',
             len(answered), len(matches), time.perf_counter() - started)
    return body
