r"""GAME serving throughput against experiments.predict's, and the server's start-up time.

The server is the command (`python -m experiments.serve`, a subprocess listening on
127.0.0.1 with this --batch_size). For each request size (--sizes: sequences a request)
it answers sequential POST /predict requests of random DREAM constructs (110 bp: the
flanks around random 80 bp inserts), after one untimed request, until --min_seconds and
--min_requests have passed: requests/s and sequences/s at the client (JSON both ways,
keep-alive). experiments.predict's path (`inference.load(...).predict_codes`, what its
'seq/s' line times) predicts the same sequences in this process, with the same checkpoint
and batch size, while the server idles. Start-up: from starting the command to its first
answered /formats (model load, warm-up compile, listening), and the time it prints.

  python benchmarks/bench_serving.py --checkpoint runs/real_6370/checkpoint_best.npz
  python benchmarks/bench_serving.py --checkpoint ckpt.npz --sizes 1,100 --min_seconds 2 \
      --json_out serving.json

On CPU the script re-executes itself with jemalloc preloaded, as the entry points do (the
server inherits it).
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments import _runtime  # pylint: disable=g-import-not-at-top

TASK = {'name': 'yeast', 'type': 'expression', 'cell_type': 'yeast',
        'species': 'saccharomyces_cerevisiae'}


def constructs(n, seed=0):
  """n random DREAM constructs: the constant flanks around random 80 bp inserts."""
  import numpy as np
  from enformer_small import dream_data
  letters = np.array(list('ACGT'))[np.random.default_rng(seed).integers(0, 4, (n, 80))]
  return [dream_data.FLANK_5 + ''.join(row) + dream_data.FLANK_3 for row in letters]


def start_server(checkpoint, batch_size, log):
  """The command on a free port: (process, url, seconds to its first /formats answer,
  start-up seconds it printed)."""
  import requests
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=REPO)
  started = time.perf_counter()
  process = subprocess.Popen(
      [sys.executable, '-m', 'experiments.serve', f'--checkpoint={checkpoint}',
       '--port=0', f'--batch_size={batch_size}', '--noaccess_log'],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
  for line in process.stdout:
    found = re.search(r'at (http://\S+) .*started in ([\d.]+) s', line)
    if found:
      break
  else:
    raise SystemExit(f'the server exited ({process.wait()}); its stderr: {log.name}')
  url = found.group(1)
  while requests.get(f'{url}/formats', timeout=30).status_code != 200:
    time.sleep(0.05)
  return process, url, time.perf_counter() - started, float(found.group(2))


def timed(call, min_seconds, min_calls):
  """Calls `call()` once untimed, then until both minima pass: (calls, seconds)."""
  call()
  calls, started = 0, time.perf_counter()
  while calls < min_calls or time.perf_counter() - started < min_seconds:
    call()
    calls += 1
  return calls, time.perf_counter() - started


def serve_rate(session, url, sequences, args):
  body = json.dumps({'readout': 'point', 'prediction_tasks': [TASK],
                     'sequences': {f's{i}': s for i, s in enumerate(sequences)}})

  def call():
    response = session.post(f'{url}/predict', data=body, timeout=3600,
                            headers={'Content-Type': 'application/json'})
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()['prediction_tasks'][0]['predictions']) == len(sequences)
  return timed(call, args.min_seconds, args.min_requests)


def predict_rate(predictor, sequences, args):
  codes = predictor.layout.encode(sequences).codes
  return timed(lambda: predictor.predict_codes(codes), args.min_seconds,
               args.min_requests)


def measure(args):
  """{'startup': ..., 'rows': [...]}: the server's and predict's rates per size."""
  import requests
  from enformer_small import inference
  with tempfile.NamedTemporaryFile('w', suffix='.log', delete=False) as log:
    process, url, first_answer, printed = start_server(args.checkpoint, args.batch_size,
                                                       log)
  rows = []
  try:
    session = requests.Session()
    for size in args.sizes:
      sequences = constructs(size, seed=size)
      calls, seconds = serve_rate(session, url, sequences, args)
      rows.append(dict(sequences_per_request=size, requests=calls, seconds=seconds,
                       requests_per_s=calls / seconds,
                       serve_seq_per_s=calls * size / seconds))
  finally:
    process.send_signal(signal.SIGINT)
    process.wait(30)
  predictor = inference.load(args.checkpoint,
                             inference.InferenceOptions(batch_size=args.batch_size))
  for row in rows:
    calls, seconds = predict_rate(
        predictor, constructs(row['sequences_per_request'],
                              seed=row['sequences_per_request']), args)
    row['predict_seq_per_s'] = calls * row['sequences_per_request'] / seconds
    row['serve_over_predict'] = row['serve_seq_per_s'] / row['predict_seq_per_s']
  return dict(startup=dict(first_answer_s=first_answer, printed_s=printed), rows=rows)


def table(found):
  lines = [f'server start-up: {found["startup"]["first_answer_s"]:.1f} s to the first '
           f'/formats answer (it printed {found["startup"]["printed_s"]:.1f} s)', '',
           '| seq/request | requests | requests/s | serve seq/s | predict seq/s | '
           'serve/predict |', '|---:|---:|---:|---:|---:|---:|']
  for r in found['rows']:
    lines.append(f'| {r["sequences_per_request"]:,} | {r["requests"]} | '
                 f'{r["requests_per_s"]:,.2f} | {r["serve_seq_per_s"]:,.0f} | '
                 f'{r["predict_seq_per_s"]:,.0f} | {r["serve_over_predict"]:.2f} |')
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--checkpoint', required=True)
  parser.add_argument('--sizes', default='1,100,10000',
                      help='Sequences a request, comma-separated.')
  parser.add_argument('--batch_size', type=int, default=1000)
  parser.add_argument('--min_seconds', type=float, default=10.0)
  parser.add_argument('--min_requests', type=int, default=3)
  parser.add_argument('--json_out', default=None)
  args = parser.parse_args()
  args.sizes = [int(s) for s in args.sizes.split(',')]
  _runtime.reexec_with_jemalloc()
  import jax
  found = measure(args)
  found.update(checkpoint=args.checkpoint, batch_size=args.batch_size,
               device=jax.devices()[0].device_kind, cpu_count=os.cpu_count(),
               allocator='jemalloc' if 'jemalloc' in os.environ.get('LD_PRELOAD', '')
               else 'glibc', min_seconds=args.min_seconds,
               mean_request_s={r['sequences_per_request']: r['seconds'] / r['requests']
                                 for r in found['rows']})
  print(table(found))
  if args.json_out:
    with open(args.json_out, 'w') as f:
      json.dump(found, f, indent=1)
    print(f'wrote {args.json_out}')


if __name__ == '__main__':
  main()
