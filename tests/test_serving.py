"""experiments.serve and enformer_small.serving: the model served to GAME evaluators.

The tiny run's checkpoint (tests/conftest.py: 10 bp of plasmid context, shifts -2,0,2 on
both strands) served by uvicorn on a free loopback port in this process, asked over real
HTTP with requests shaped like GAME's example files (example_JSON_files/ and the test
evaluator's evaluator_data/ in de-Boer-Lab/Genomic-API-for-Model-Evaluation), whose
answers are checked against the fields GAME's API docs require (written here from
docs/source/API/Predictor_responses.md, help.md and Error_messages.md):

- /formats and /help, and what /help says the model predicts;
- predictions equal experiments.predict's of the same sequences; flanks, prediction
  ranges and the 3' length policy; MessagePack answers;
- tasks the model cannot answer get GAME's error, in the answer or as the answer;
- bad requests get GAME's error format and status, and the server lives on; a request
  over the limits is refused; chunks answer as one; two requests at once are both
  answered; an ensemble gives its spread; a table run needs --species and --scale.
"""

import contextlib
import json
import os
import threading
import time
import types

import msgpack
import numpy as np
import pytest
import requests

from enformer_small import checkpoint
from enformer_small import dream_data
from enformer_small import ensemble
from enformer_small import game_protocol as game
from enformer_small import inference
from enformer_small import plasmid
from enformer_small import serving
from enformer_small import tables
from experiments import predict
from experiments import serve
import in_process

BATCH = 64
OPTIONS = inference.InferenceOptions(batch_size=BATCH)
FLANK_5, FLANK_3 = dream_data.FLANK_5, dream_data.FLANK_3
YEAST_TASK = {'name': 'yeast_expression', 'type': 'expression', 'cell_type': 'yeast',
              'scale': 'linear', 'species': 'saccharomyces_cerevisiae'}


def inserts(n, seed=0):
  """{id: insert}: random 80 bp promoters, a few of other lengths, with N, lowercase."""
  rng = np.random.default_rng(seed)
  found = {}
  for i in range(n):
    s = ''.join(rng.choice(list('ACGT'), {3: 75, 7: 95}.get(i, 80)))
    s = s[:30] + 'NNNN' + s[34:] if i == 5 else s
    found[f'seq_{i}'] = s.lower() if i == 11 else s
  return found


def request_of(sequences, tasks=(YEAST_TASK,), **extra):
  """A /predict request shaped as GAME's evaluator_message_simple_test.json."""
  return dict({'readout': 'point', 'prediction_tasks': list(tasks),
               'sequences': sequences}, **extra)


# ---------------------------------------------------------------------------
# GAME's answer schemas, from its API docs.


def check_error(response, status, key):
  """A GAME error (Error_messages.md): the status, JSON, {key: [messages]} and the
  test predictor's error: [{key: message}]. Returns the messages."""
  assert response.status_code == status, response.text
  assert response.headers['content-type'].startswith(game.JSON)
  body = response.json()
  assert isinstance(body['predictor_name'], str)
  messages = body[key]
  assert messages and all(isinstance(m, str) and '\n' not in m for m in messages)
  assert body['error'] == [{key: m} for m in messages]
  assert 'Traceback' not in response.text
  return messages


def check_answer(body, request):
  """A /predict answer (Predictor_responses.md) to `request`: each task's required
  fields, and either a number for every sequence sent or GAME's error."""
  assert isinstance(body['predictor_name'], str) and body['request'] == 'predict'
  assert len(body['prediction_tasks']) == len(request['prediction_tasks'])
  for sent, task in zip(request['prediction_tasks'], body['prediction_tasks']):
    assert (task['name'], task['type_requested'], task['cell_type_requested'],
            task['species_requested']) == tuple(sent[k] for k in game.TASK_KEYS)
    assert isinstance(task['type_actual'], list)
    assert all(isinstance(t, str) for t in task['type_actual'])
    assert isinstance(task['cell_type_actual'], str)
    assert isinstance(task['species_actual'], str)
    assert task.get('scale_prediction_requested') == sent.get('scale')
    assert task.get('scale_prediction_actual', 'log') in game.SCALES
    assert all(isinstance(v, str) for v in task.get('aggregation', {}).values())
    predictions = task['predictions']
    if set(predictions) == {'error'}:
      assert [list(e) for e in predictions['error']] == [[PredictionFailedKey]]
      continue
    assert list(predictions) == list(request['sequences'])
    values = np.array(list(predictions.values()))
    assert values.dtype == np.float64 and np.isfinite(values).all()
  return body


PredictionFailedKey = game.PredictionFailed.key


# ---------------------------------------------------------------------------
# The server.


@contextlib.contextmanager
def running(game_server):
  """`game_server` on uvicorn on a free port of 127.0.0.1, in a thread: its URL."""
  sock = serve.listen('127.0.0.1', 0)
  server = serve.uvicorn_server(serve.make_app(game_server), access_log=False)
  thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not server.started and time.monotonic() < deadline:
    time.sleep(0.01)
  assert server.started
  try:
    yield serve.url(sock)
  finally:
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope='module')
def checkpoint_path(tiny_run):
  config, _ = tiny_run
  return os.path.join(config.run_dir, checkpoint.BEST_NAME)


@pytest.fixture(scope='module')
def model(checkpoint_path):
  return ensemble.load(checkpoint_path, OPTIONS)


@pytest.fixture(scope='module')
def url(model):
  game_server = serving.GameServer(model)
  game_server.warm_up()
  with running(game_server) as found:
    yield found


@pytest.fixture(scope='module')
def limited_url(model):
  """The same model behind smaller limits: 1,000 sequences, 16 MiB a request."""
  options = serving.ServingOptions(max_sequences=1000, max_request_mb=16)
  with running(serving.GameServer(model, options)) as found:
    yield found


def post(url, request, **kwargs):
  return requests.post(f'{url}/predict', json=request, timeout=120, **kwargs)


def values_of(body, task=0):
  return np.array(list(body['prediction_tasks'][task]['predictions'].values()),
                  np.float32)


# ---------------------------------------------------------------------------
# /formats and /help.


def test_formats_and_help_say_what_the_model_predicts(url, checkpoint_path):
  formats = requests.get(f'{url}/formats', timeout=30).json()
  assert game.JSON in formats['predictor_supported_request_formats']
  assert game.JSON in formats['predictor_supported_response_formats']
  found = requests.get(f'{url}/help', timeout=30).json()
  # help.md's keys and types.
  assert isinstance(found['model'], str) and isinstance(found['publication'], str)
  assert found['features'] == ['expression'] and found['cell_types'] == ['yeast']
  assert found['species'] == ['saccharomyces_cerevisiae']
  assert found['input_size'] == 110 and found['expression_strand_specific'] is False
  assert found['readouts'] == ['point'] and found['scale'] == 'log'
  assert 'DREAM Challenge 2022' in found['description'] and '0-17' in found['description']
  assert found['outputs'] == [{'name': 'yeast', 'type': 'expression',
                               'cell_type': 'yeast', 'scale': 'log',
                               'species': 'saccharomyces_cerevisiae'}]
  sent = found['input']
  assert FLANK_5 in sent['construct'] and FLANK_3 in sent['construct']
  assert sent['plasmid_context'] == dict(
      sent['plasmid_context'], bp_each_side=10, upstream=plasmid.UPSTREAM[-10:],
      downstream=plasmid.DOWNSTREAM[:10])
  assert "3' end" in sent['length_policy'] and 'upstream_seq' in sent['flanks']
  assert found['checkpoints'] == [{
      'file': os.path.basename(checkpoint_path), 'input_length': 110,
      'plasmid_context': 10, 'train_file': 'train_sequences.txt', 'loss': 'soft_bin'}]
  assert found['aggregation'] == {
      'windows': 'mean of 6 window(s): shift(s) -2,0,2 bp on both strands'}
  assert found['limits']['max_sequences'] == serving.ServingOptions().max_sequences


# ---------------------------------------------------------------------------
# Predictions.


def test_predictions_equal_experiments_predict(url, checkpoint_path, tmp_path):
  """The 80 bp inserts between GAME's upstream_seq and downstream_seq (the DREAM
  flanks), in a shuffled order: experiments.predict's values of the whole constructs."""
  sent = inserts(23)
  ids = list(np.random.default_rng(1).permutation(list(sent)))
  request = request_of({i: sent[i] for i in ids}, upstream_seq=FLANK_5,
                       downstream_seq=FLANK_3)
  body = check_answer(post(url, request).json(), request)
  data = tmp_path / 'constructs.txt'
  data.write_text(''.join(f'{FLANK_5}{sent[i]}{FLANK_3}\n' for i in ids))
  expected = in_process.run(predict, f'--checkpoint={checkpoint_path}', f'--input={data}',
                            f'--output_tsv={tmp_path / "out.tsv"}',
                            f'--batch_size={BATCH}', '--noprogress')['predictions']
  np.testing.assert_array_equal(values_of(body), expected)
  task = body['prediction_tasks'][0]
  assert (task['type_actual'], task['cell_type_actual'], task['species_actual'],
          task['scale_prediction_actual']) == (
              ['expression'], 'yeast', 'saccharomyces_cerevisiae', 'log')
  assert body['sequence_notes'] == [
      "1 sequence(s) shorter than 110 bp (with their flanks) padded at the 3' end with N",
      "1 sequence(s) longer than 110 bp (with their flanks) cut at the 3' end"]
  packed = post(url, request, headers={'Accept': game.MSGPACK})
  assert packed.headers['content-type'] == game.MSGPACK
  assert msgpack.unpackb(packed.content) == body


def test_flanks_ranges_and_the_3_prime_length_policy(url):
  construct = FLANK_5 + inserts(1)['seq_0'] + FLANK_3
  longer = construct + 'ACGTACGTAC' * 4
  request = request_of(
      {'whole': construct, 'longer': longer, 'ranged': 'GGGGG' + construct + 'TTT'},
      prediction_ranges={'whole': [], 'longer': [], 'ranged': [5, 114]})
  body = check_answer(post(url, request).json(), request)
  values = values_of(body)
  assert values[0] == values[1] == values[2]  # the 3' cut; the range
  assert body['sequence_notes'] == [
      "1 sequence(s) longer than 110 bp (with their flanks) cut at the 3' end"]
  insert = request_of({'insert': construct[17:-13]}, upstream_seq=FLANK_5,
                      downstream_seq=FLANK_3)
  assert values_of(post(url, insert).json())[0] == values[0]
  assert 'sequence_notes' not in post(url, insert).json()


# ---------------------------------------------------------------------------
# Tasks it cannot answer.


def test_tasks_it_cannot_answer_get_games_error_not_a_guess(url):
  """test_evaluator_request.json's kind of tasks beside a yeast task: the yeast task is
  answered, each other one refused in its predictions; without the yeast task the
  whole request is refused, one message per task."""
  others = [
      {'name': 'K562_linear', 'type': 'expression', 'cell_type': 'K562',
       'species': 'homo_sapiens', 'scale': 'linear'},
      {'name': 'yeast_accessibility', 'type': 'accessibility', 'cell_type': 'yeast',
       'species': 'saccharomyces_cerevisiae'},
      {'name': 'yeast_in_hepg2', 'type': 'expression', 'cell_type': 'hepg2',
       'species': 'S. cerevisiae'}]
  request = request_of(inserts(3), [dict(YEAST_TASK, cell_type='Yeast Cell')] + others)
  body = check_answer(post(url, request).json(), request)
  assert len(body['prediction_tasks'][0]['predictions']) == 3
  refusals = [t['predictions']['error'][0][PredictionFailedKey]
              for t in body['prediction_tasks'][1:]]
  assert refusals == [
      "task 'K562_linear': species 'homo_sapiens' is not predicted: this model predicts "
      'saccharomyces_cerevisiae',
      "task 'yeast_accessibility': type 'accessibility' is not predicted: this model "
      'predicts expression (expression, expression_mrna, expression_pol2)',
      "task 'yeast_in_hepg2': cell type 'hepg2' is not predicted: this model answers "
      'yeast, yeast_cell, saccharomyces_cerevisiae, s_cerevisiae']
  for task in body['prediction_tasks'][1:]:
    assert (task['type_actual'], task['cell_type_actual'], task['species_actual']) == (
        [], '', '')
  assert check_error(post(url, request_of(inserts(3), others)), 422,
                     PredictionFailedKey) == refusals


@pytest.mark.parametrize('readout', ['track', 'interaction_matrix'])
def test_other_readouts_are_refused(url, readout):
  messages = check_error(post(url, request_of(inserts(2), readout=readout)), 422,
                         PredictionFailedKey)
  assert messages == [f"this model predicts one value per sequence (readout 'point'); "
                      f'it has no {readout!r} readout']


# ---------------------------------------------------------------------------
# Bad requests.

SEQ = FLANK_5 + 'ACGT' * 20 + FLANK_3
BAD = {
    'malformed JSON': (b'{"readout": "point", "sequences": {', 400, 'not valid JSON'),
    'nested too deep': (b'[' * 100_000, 400, 'not valid JSON'),
    'not an object': ([1, 2], 400, 'must be an object'),
    'missing keys': ({'readout': 'point'}, 400,
                     'missing from the request: prediction_tasks, sequences'),
    'task without species': (request_of({'a': SEQ}, [{'name': 't', 'type': 'expression',
                                                      'cell_type': 'yeast'}]),
                             400, "task 't': mandatory key(s) missing: species"),
    'unknown readout': (request_of({'a': SEQ}, readout='points'), 400,
                        "readout 'points' is not recognized"),
    'unknown scale': (request_of({'a': SEQ}, [dict(YEAST_TASK, scale='log2')]), 400,
                      "scale 'log2' is not recognized"),
    'unknown type': (request_of({'a': SEQ}, [dict(YEAST_TASK, type='expresion')]), 400,
                     "type 'expresion' is not recognized"),
    'task names twice': (request_of({'a': SEQ}, [YEAST_TASK, YEAST_TASK]), 400,
                         'is used twice'),
    'sequence IDs twice': (json.dumps(request_of({'a': SEQ}))[:-2].encode()
                           + b', "a": "ACGT"}}', 400, "key 'a' appears twice"),
    'a sequence not a string': (request_of({'a': SEQ, 'b': 123}), 400,
                                "sequence(s) 'b' must be strings"),
    'an empty sequence set': (request_of({}), 400, 'sequences holds no sequence'),
    'bad letters': (request_of({'a': SEQ, 'b': SEQ[:50] + 'X-' + SEQ[52:]}), 422,
                    "sequence(s) 'b' hold letters other than A, C, G, T, N"),
    'an empty sequence': (request_of({'a': SEQ, 'b': ''}), 422,
                          "sequence(s) 'b' are empty"),
    'bad flank letters': (request_of({'a': SEQ}, upstream_seq='ACGU'), 422,
                          "upstream_seq holds letters other than A, C, G, T, N: 'U'"),
    'a flank not a string': (request_of({'a': SEQ}, downstream_seq=['A']), 400,
                             'downstream_seq must be a string'),
    'ranges of other IDs': (request_of({'a': SEQ}, prediction_ranges={'b': []}), 400,
                            'prediction_ranges differ'),
    'a range backwards': (request_of({'a': SEQ}, prediction_ranges={'a': [9, 2]}), 400,
                          "prediction_ranges of 'a' must be [] or [start, end]"),
    'a range beyond': (request_of({'a': SEQ}, prediction_ranges={'a': [0, 110]}), 422,
                       "sequence(s) 'a' end before their prediction range"),
}


@pytest.mark.parametrize('case', list(BAD))
def test_bad_requests_get_games_error_and_the_server_lives_on(url, case):
  request, status, fragment = BAD[case]
  data = request if isinstance(request, bytes) else json.dumps(request).encode()
  response = requests.post(f'{url}/predict', data=data, timeout=60,
                           headers={'Content-Type': game.JSON})
  key = {400: game.BadRequest.key, 422: PredictionFailedKey}[status]
  assert any(fragment in m for m in check_error(response, status, key)), response.text
  assert requests.get(f'{url}/formats', timeout=30).status_code == 200


def test_other_paths_formats_and_methods_get_games_error(url):
  assert check_error(requests.get(f'{url}/predictions', timeout=30), 404,
                     game.BadRequest.key)[0].startswith('GET /predictions: Not Found')
  response = requests.put(f'{url}/predict', json={}, timeout=30)
  check_error(response, 405, game.BadRequest.key)
  assert response.headers['allow'] == 'POST'
  garbage = requests.post(f'{url}/predict', data=b'\xc1\xc1',
                          headers={'Content-Type': game.MSGPACK}, timeout=30)
  assert 'not valid MessagePack' in check_error(garbage, 400, game.BadRequest.key)[0]
  packed = msgpack.packb(request_of({'a': SEQ}))
  answer = requests.post(f'{url}/predict', data=packed, timeout=60,
                         headers={'Content-Type': game.MSGPACK})
  assert answer.status_code == 200 and answer.headers['content-type'] == game.JSON


def test_requests_over_the_limits_are_refused(limited_url):
  """100,000 sequences against a limit of 1,000; a body over --max_request_mb."""
  many = {f's{i}': SEQ for i in range(100_000)}
  messages = check_error(post(limited_url, request_of(many)), 422, PredictionFailedKey)
  assert messages == ['100,000 sequences exceed the limit of 1,000 a request '
                      '(--max_sequences): send them in several requests']
  huge = b'{"readout": "point", "x": "' + b'A' * (17 << 20) + b'"}'
  response = requests.post(f'{limited_url}/predict', data=huge, timeout=60)
  assert check_error(response, 422, PredictionFailedKey) == [
      'the request body exceeds 16 MiB (--max_request_mb): send the sequences in '
      'several requests']
  assert post(limited_url, request_of({'a': SEQ})).status_code == 200


def test_two_requests_at_once_are_both_answered(url):
  requests_sent = [request_of(inserts(40, seed)) for seed in (2, 3)]
  alone = [post(url, r).json() for r in requests_sent]
  barrier, found = threading.Barrier(2), [None, None]

  def send(i):
    barrier.wait()
    found[i] = post(url, requests_sent[i])

  threads = [threading.Thread(target=send, args=(i,)) for i in (0, 1)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join(120)
  assert [r.status_code for r in found] == [200, 200]
  assert [r.json() for r in found] == alone


# ---------------------------------------------------------------------------
# The library without a network.


def test_chunks_answer_as_the_whole_request(model):
  request = request_of(inserts(11, seed=4), upstream_seq=FLANK_5, downstream_seq=FLANK_3)
  whole = serving.GameServer(model).predict(request)
  chunked = serving.GameServer(model, serving.ServingOptions(chunk_size=4))
  status, body, media = chunked.answer_predict(json.dumps(request).encode())
  assert (status, media) == (200, game.JSON)
  # Rows batched otherwise: equal to float32 rounding.
  np.testing.assert_allclose(values_of(json.loads(body)), values_of(whole), rtol=1e-6)


def test_an_ensemble_gives_the_sd_across_its_checkpoints(checkpoint_path, tmp_path):
  ckpt = checkpoint.load_checkpoint(checkpoint_path)
  params = {m: dict(v) for m, v in ckpt.params.items()}
  head = [m for m in params if m.endswith('head_yeast/~/output')][0]
  params[head]['b'] = params[head]['b'] + np.linspace(-0.5, 0.5, params[head]['b'].size,
                                                      dtype=np.float32)
  other = str(tmp_path / 'other.npz')
  checkpoint.save_checkpoint(other, params=params, state=ckpt.state,
                             model_config=ckpt.model_config, extra=ckpt.extra)
  both = ensemble.load(f'{checkpoint_path},{other}', OPTIONS)
  server = serving.GameServer(both)
  request = request_of(inserts(5, seed=5), upstream_seq=FLANK_5, downstream_seq=FLANK_3)
  body = check_answer(server.predict(request), request)
  built = [FLANK_5 + s + FLANK_3 for s in request['sequences'].values()]
  found = both.predict(built)
  np.testing.assert_array_equal(values_of(body), found.mean[:, 0])
  spread = body['prediction_spread']['yeast_expression']
  np.testing.assert_array_equal(np.float32(list(spread.values())), found.spread[:, 0])
  assert list(spread) == list(request['sequences']) and min(spread.values()) > 0
  assert body['prediction_tasks'][0]['aggregation']['replicates'] == (
      'mean of 2 checkpoints (their sd in prediction_spread)')
  assert server.name == 'enformer_small_run_checkpoint_best_and_1_more'


def table_model(pad):
  """A stand-in for an ensemble of a table run (what the card and checks read)."""
  spec = tables.TableSpec(target_columns=('complex_medium', 'defined_medium'), length=80,
                          pad=pad)
  return types.SimpleNamespace(
      layout=inference.Layout(length=80, table=spec), targets=spec.target_columns,
      members=(types.SimpleNamespace(source='runs/table/checkpoint_best.npz'),))


def test_a_table_run_needs_species_and_scale_and_answers_its_targets_by_name():
  model = table_model(pad=False)
  with pytest.raises(serving.SetupError, match='give --species and --scale'):
    serving.model_card(model, serving.ServingOptions())
  card = serving.model_card(model, serving.ServingOptions(species='Saccharomyces '
                                                          'cerevisiae', scale='linear'))
  task = game.Task('t', 'expression', 'Defined Medium', 'saccharomyces_cerevisiae')
  assert serving.match_task(task, card) == 1
  assert 'answers complex_medium, defined_medium' in serving.match_task(
      game.Task('t', 'expression', 'yeast', 'saccharomyces_cerevisiae'), card)
  request = game.parse_request(request_of({'ok': 'A' * 70, 'short': 'A' * 60},
                                          downstream_seq='C' * 10))
  assert len(serving.prepare_sequences(
      request, table_model(pad=True).layout, 10)[1]) == 70
  with pytest.raises(game.PredictionFailed, match="'short' are not 80 bp"):
    serving.prepare_sequences(request, model.layout, 10)
