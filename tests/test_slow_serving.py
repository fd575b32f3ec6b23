"""`python -m experiments.serve` as GAME evaluators meet it (slow tier: subprocesses).

GAME's own test evaluator (de-Boer-Lab/Genomic-API-for-Model-Evaluation,
src/Test_Modules/Test_Evaluator) is not on PyPI, so `evaluate` below is an equivalent
client written from its documented behaviour: it asks /formats and negotiates the wire
formats (JSON requests; MessagePack answers when offered, as its config prefers), posts
the request with Content-Type and Accept, takes a 4xx/5xx answer as an error report
(always JSON), saves the answer as `<evaluator>_predictions_from_<predictor_name>.json`,
checks that every task returned a prediction per sequence sent, and for a 200 answer
writes GAME's evaluator summary (tab-separated: evaluator_name, description,
predictor_name, time_stamp, metric, value, prediction_task(s)_data), with Pearson r
against the measured values and NaN for a task refused with 'error' in its predictions.

- The command prints its URL and start-up time, serves such an evaluator the tiny run's
  rows (the values experiments.predict gives them), refuses the test evaluator's own
  requests (human and mouse tasks, other readouts) with GAME's errors, and stops on
  Ctrl-C; bad flags and a busy port are one error line.
- A request of 100,000 sequences is answered whole, predicted in chunks, within a
  bounded peak memory of the server process.
"""

import contextlib
import csv
import datetime
import glob
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import msgpack
import numpy as np
import pytest
import requests

from enformer_small import checkpoint
from enformer_small import dream_data
from enformer_small import inference
from experiments import predict
import in_process

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
JSON, MSGPACK = 'application/json', 'application/msgpack'
SUMMARY_COLUMNS = ('evaluator_name', 'description', 'predictor_name', 'time_stamp',
                   'metric', 'value', 'prediction_task(s)_data')
YEAST = {'name': 'dream_yeast', 'type': 'expression', 'cell_type': 'yeast',
         'species': 'saccharomyces_cerevisiae', 'scale': 'linear'}
# The tasks of GAME's test_evaluator_request.json (a human and a mouse predictor's).
GAME_TEST_TASKS = [
    {'name': 'K562_linear', 'type': 'expression', 'cell_type': 'K562',
     'species': 'homo_sapiens', 'scale': 'linear'},
    {'name': 'hepg2_linear', 'type': 'expression', 'cell_type': 'hepg2',
     'species': 'mus_musculus', 'scale': 'linear'},
    {'name': 'task3', 'type': 'accessibility', 'cell_type': 'liver',
     'species': 'mus_musculus', 'scale': 'log'}]


# ---------------------------------------------------------------------------
# A GAME evaluator.


def negotiate(url):
  """(request format, answer format) from the predictor's /formats."""
  found = requests.get(f'{url}/formats', timeout=60)
  found.raise_for_status()
  offered = {key: [f.lower() for f in found.json().get(key, [])] + [JSON]
             for key in ('predictor_supported_request_formats',
                         'predictor_supported_response_formats')}
  answer = MSGPACK if MSGPACK in offered['predictor_supported_response_formats'] else JSON
  return JSON, answer


def evaluate(url, request, measured, output_dir, name='enformer_small_test_evaluator'):
  """Sends `request`, saves the answer and, for a 200, the evaluator summary: (status,
  answer, summary rows)."""
  sent, answer_format = negotiate(url)
  response = requests.post(f'{url}/predict', data=json.dumps(request).encode(),
                           headers={'Content-Type': sent, 'Accept': answer_format},
                           timeout=3600)
  kind = response.headers.get('content-type', '')
  answer = (msgpack.unpackb(response.content) if MSGPACK in kind and response.ok
            else response.json())
  predictor = answer.get('predictor_name', 'UnknownPredictor').replace(' ', '_')
  with open(os.path.join(output_dir, f'{name}_predictions_from_{predictor}.json'),
            'w') as f:
    json.dump(answer, f)
  if not response.ok:
    return response.status_code, answer, []
  for task in answer['prediction_tasks']:
    assert len(task['predictions']) in (1, len(request['sequences'])), task['name']
  rows = [summary_row(name, predictor, task, measured)
          for task in answer['prediction_tasks']]
  path = os.path.join(output_dir, f'evaluation_summary_{name}.csv')
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, SUMMARY_COLUMNS, delimiter='\t')
    writer.writeheader()
    writer.writerows(rows)
  return response.status_code, answer, rows


def summary_row(name, predictor, task, measured):
  predictions = task['predictions']
  value = 'NaN'
  if 'error' not in predictions:
    ids = list(measured)
    value = str(np.corrcoef([predictions[i] for i in ids],
                            [measured[i] for i in ids])[0, 1])
  metadata = {k: v for k, v in task.items() if k != 'predictions'}
  return dict(evaluator_name=name, description=f'tiny run rows ({task["name"]})',
              predictor_name=predictor, metric='pearson_r', value=value,
              time_stamp=datetime.datetime.now(datetime.timezone.utc).strftime(
                  '%Y%m%d-%H%M%S.%f'),
              **{'prediction_task(s)_data': str([metadata])})


# ---------------------------------------------------------------------------
# The command.


@contextlib.contextmanager
def serving(*args):
  """`python -m experiments.serve ARGS --port=0`: (process, url, its start-up line);
  stopped with Ctrl-C (SIGINT) afterwards if still running."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', TF_ENABLE_ONEDNN_OPTS='0')
  env['PYTHONPATH'] = os.pathsep.join([str(REPO_ROOT), env.get('PYTHONPATH', '')])
  process = subprocess.Popen([sys.executable, '-m', 'experiments.serve', *args,
                              '--port=0', '--noaccess_log'], cwd=REPO_ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    line = ''
    for line in process.stdout:
      if line.startswith('serving '):
        break
    found = re.search(r'at (http://127\.0\.0\.1:\d+) ', line)
    assert found, f'{line!r}; stderr: {process.stderr.read() if process.poll() else ""}'
    yield process, found.group(1), line
  finally:
    if process.poll() is None:
      process.send_signal(signal.SIGINT)
      process.wait(60)


def stop(process):
  """Ctrl-C: (exit status, stderr)."""
  process.send_signal(signal.SIGINT)
  return process.wait(60), process.stderr.read()


@pytest.fixture(scope='module')
def run(tiny_run):
  """The checkpoint's path, and {id: measured} and {id: sequence} of the tiny run's
  first 200 rows (in a shuffled order)."""
  config, _ = tiny_run
  rows = open(sorted(glob.glob(os.path.join(config.synthetic_dir, '*.txt')))[0]
              ).read().split('\n')[:200]
  pairs = [row.split('\t') for row in rows]
  order = np.random.default_rng(0).permutation(len(pairs))
  sequences = {f'row_{i}': pairs[i][0] for i in order}
  measured = {f'row_{i}': float(pairs[i][1]) for i in order}
  return os.path.join(config.run_dir, checkpoint.BEST_NAME), measured, sequences


def test_the_command_serves_a_game_evaluator(run, tmp_path):
  path, measured, sequences = run
  with serving(f'--checkpoint={path}', '--batch_size=64') as (process, url, line):
    assert re.search(r'started in [\d.]+ s \(model loaded and compiled in', line), line
    request = {'readout': 'point', 'prediction_tasks': [YEAST] + GAME_TEST_TASKS[:1],
               'sequences': sequences}
    status, answer, rows = evaluate(url, request, measured, tmp_path)
    assert status == 200 and [r['value'] for r in rows][1] == 'NaN'
    assert np.isfinite(float(rows[0]['value']))
    data = tmp_path / 'rows.txt'
    data.write_text(''.join(s + '\n' for s in sequences.values()))
    expected = in_process.run(predict, f'--checkpoint={path}', f'--input={data}',
                              f'--output_tsv={tmp_path / "out.tsv"}', '--batch_size=64',
                              '--noprogress')['predictions']
    values = list(answer['prediction_tasks'][0]['predictions'].values())
    np.testing.assert_array_equal(np.float32(values), expected)
    with open(tmp_path / 'evaluation_summary_enformer_small_test_evaluator.csv') as f:
      assert tuple(next(csv.reader(f, delimiter='\t'))) == SUMMARY_COLUMNS
    # GAME's test evaluator's own requests: a human/mouse predictor's tasks.
    game_test = {'readout': 'interaction_matrix', 'prediction_tasks': GAME_TEST_TASKS,
                 'upstream_seq': 'ATGCATGC', 'downstream_seq': 'GCTAGCTA',
                 'sequences': {'short_seq': 'ATCGATCGATGCTAC', 'full_range': 'ACGT' * 25},
                 'prediction_ranges': {'short_seq': [0, 2], 'full_range': [0, 99]}}
    status, answer, _ = evaluate(url, game_test, measured, tmp_path)
    assert status == 422 and "no 'interaction_matrix' readout" in (
        answer['prediction_request_failed'][0])
    status, answer, _ = evaluate(url, dict(game_test, readout='point'), measured,
                                 tmp_path)
    assert status == 422 and len(answer['error']) == 3
    assert (tmp_path / f'enformer_small_test_evaluator_predictions_from_'
            f'{answer["predictor_name"]}.json').exists()
    status, stderr = stop(process)
  assert status == 130 and stderr.strip().endswith('interrupted')


def test_bad_flags_and_a_busy_port_are_one_error_line(run):
  path = run[0]
  with serving(f'--checkpoint={path}', '--batch_size=64') as (process, url, _):
    port = url.rsplit(':', 1)[1]
    busy = subprocess.run(
        [sys.executable, '-m', 'experiments.serve', f'--checkpoint={path}',
         f'--port={port}', '--batch_size=64'], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL='3'))
  assert busy.returncode == 1
  assert busy.stderr.strip().splitlines()[-1] == (
      f'error: cannot listen on 127.0.0.1:{port}: Address already in use')
  for args, error in ((['--port=5000'], 'error: --checkpoint is required'),
                      ([f'--checkpoint={path}', '--max_sequences=0'],
                       'error: --max_sequences must be >= 1, got 0')):
    found = subprocess.run([sys.executable, '-m', 'experiments.serve', *args],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert (found.returncode, found.stderr.strip().splitlines()[-1]) == (1, error)


def peak_rss_gb(pid):
  with open(f'/proc/{pid}/status') as f:
    kb = [line.split()[1] for line in f if line.startswith('VmHWM:')][0]
  return int(kb) / 2**20


def test_a_request_of_100000_sequences_is_answered_in_chunks(run):
  """One window a row (shifts and strands off) keeps it to minutes on two cores."""
  path = run[0]
  rng = np.random.default_rng(7)
  letters = np.array(list('ACGT'))[rng.integers(0, 4, (100_000, 80))]
  sequences = {f's{i}': dream_data.FLANK_5 + ''.join(row) + dream_data.FLANK_3
               for i, row in enumerate(letters)}
  flags_ = ['--eval_shifts=0', '--noreverse_complement_average', '--batch_size=1000']
  with serving(f'--checkpoint={path}', *flags_) as (process, url, _):
    before = peak_rss_gb(process.pid)
    response = requests.post(f'{url}/predict', timeout=3600, json={
        'readout': 'point', 'prediction_tasks': [YEAST], 'sequences': sequences})
    assert response.status_code == 200, response.text[:500]
    after = peak_rss_gb(process.pid)
  predictions = response.json()['prediction_tasks'][0]['predictions']
  assert list(predictions) == list(sequences)
  predictor = inference.load(path, inference.InferenceOptions(
      eval_shifts=(0,), reverse_complement_average=False, batch_size=1000))
  sample = [f's{i}' for i in range(0, 100_000, 997)]
  np.testing.assert_allclose(
      np.float32([predictions[i] for i in sample]),
      predictor.predict([sequences[i] for i in sample])[:, 0], rtol=1e-6)
  # The request's own memory (its text, the parsed sequences, a chunk's rows and
  # predictions, the answer): peak RSS grew 0.05 GB on the project's VM.
  assert after - before < 0.5, (before, after)
