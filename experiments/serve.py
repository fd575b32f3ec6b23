r"""Serves a checkpoint, or an ensemble of them, to GAME evaluators over HTTP.

  python -m experiments.serve --checkpoint=runs/real_6370/checkpoint_best.npz --port=5000
  curl http://127.0.0.1:5000/help
  # an ensemble, reachable from other machines (an evaluator's container):
  python -m experiments.serve --host=0.0.0.0 --port=5000 \
      --checkpoint=runs/a/checkpoint_best.npz,runs/b/checkpoint_best.npz

GAME, the Genomic API for Model Evaluation (de Boer lab), has evaluators ask a predictor
`GET /formats`, `GET /help` and `POST /predict`; `enformer_small/serving.py` answers them
(its policies: the tasks answered, lengths and flanks, errors, limits; also in /help).
This command loads the model, compiles its forward pass with one warm-up prediction, and
only then listens: it prints the URL and the start-up time and serves until Ctrl-C.
Predictions go through the one inference path, as experiments.predict's do, with the same
inference flags (--batch_size, --eval_shifts, --reverse_complement_average, --heads,
--fast_cpu), so with the same flags a sequence gets predict's value bit for bit. Every
forward pass runs a padded batch of --batch_size rows per window: for evaluators that
send a few sequences per request, a small --batch_size (e.g. 16) cuts the latency of one
request many-fold (figures: docs/serving.md), at rounding-level differences from predict
run with the default 1,000.
"""

import logging
import os
import socket
import time
from typing import Optional

from absl import flags
import fastapi
from fastapi import responses
from starlette import concurrency
from starlette import exceptions as starlette_exceptions
import uvicorn

from experiments import _flags
from experiments import _runtime

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import ensemble
from enformer_small import game_protocol as game
from enformer_small import inference
from enformer_small import serving

FLAGS = flags.FLAGS


class ServeError(Exception):
  """Bad flags or an address the server cannot listen on."""


def define_flags() -> None:
  flags.DEFINE_string('checkpoint', None,
                      'Checkpoint (.npz) to serve; a comma list (or a file listing '
                      'them) serves their ensemble: the mean, and the sd across them.')
  flags.DEFINE_string('host', '127.0.0.1',
                      'Address to listen on (0.0.0.0: every interface, for evaluators '
                      'on other machines).')
  flags.DEFINE_integer('port', 5000, 'Port to listen on (0: any free port).')
  flags.DEFINE_bool('access_log', True, 'Print a line per HTTP request.')
  _flags.define(inference.InferenceOptions)
  _flags.define(serving.ServingOptions)


# ---------------------------------------------------------------------------
# HTTP.


def make_app(server: serving.GameServer) -> fastapi.FastAPI:
  """GAME's three routes on `server`; any other path or method, and any failure, is
  answered in GAME's error format (never a traceback)."""
  app = fastapi.FastAPI(title=server.name, docs_url=None, redoc_url=None,
                        openapi_url=None)
  limit = server.options.max_request_mb << 20

  @app.get('/formats')
  def formats() -> responses.Response:
    return _answer(200, game.encode(server.formats()), game.JSON)

  @app.get('/help')
  def help_() -> responses.Response:
    return _answer(200, game.encode(server.help()), game.JSON)

  @app.post('/predict')
  async def predict(request: fastapi.Request) -> responses.Response:
    body = await _read_body(request, limit)
    if body is None:
      error = game.PredictionFailed(
          f'the request body exceeds {server.options.max_request_mb} MiB '
          '(--max_request_mb): send the sequences in several requests')
      return _answer(error.status, game.encode(game.error_body(error, server.name)),
                     game.JSON)
    # Parsing, predicting and encoding block: off the event loop, so /help and other
    # requests are answered meanwhile.
    found = await concurrency.run_in_threadpool(
        server.answer_predict, body, request.headers.get('content-type'),
        request.headers.get('accept'))
    return _answer(*found)

  @app.exception_handler(starlette_exceptions.HTTPException)
  async def http_error(request: fastapi.Request, exc) -> responses.Response:
    error = game.BadRequest(f'{request.method} {request.url.path}: {exc.detail}; this '
                            'predictor answers GET /formats, GET /help, POST /predict')
    return _answer(exc.status_code, game.encode(game.error_body(error, server.name)),
                   game.JSON, getattr(exc, 'headers', None))  # 405's Allow

  return app


def _answer(status: int, body: bytes, media: str, headers=None) -> responses.Response:
  return responses.Response(content=body, status_code=status, media_type=media,
                            headers=headers)


async def _read_body(request: fastapi.Request, limit: int):
  """The body, or None when it exceeds `limit` bytes (read to its end but not kept, so
  the client hears the answer rather than a closed connection)."""
  chunks, size = [], 0
  async for chunk in request.stream():
    size += len(chunk)
    if size <= limit:
      chunks.append(chunk)
  return b''.join(chunks) if size <= limit else None


def bind(host: str, port: int) -> socket.socket:
  """A socket bound to host:port (port 0: a free one), before the model loads so that a
  busy port fails at once; ServeError naming the address when it cannot. Listening
  waits for `sock.listen()`, after the warm-up."""
  if not 0 <= port <= 65535:
    raise ServeError(f'--port must lie in 0..65535, got {port}')
  try:
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(info[4])
  except OSError as e:
    raise ServeError(f'cannot listen on {host}:{port}: {e.strerror or e}') from None
  return sock


def listen(host: str, port: int) -> socket.socket:
  """A socket listening on host:port: connections queue from now on, so the URL can
  be printed before the server's loop starts."""
  sock = bind(host, port)
  sock.listen(2048)
  return sock


def url(sock: socket.socket) -> str:
  host, port = sock.getsockname()[:2]
  return f'http://[{host}]:{port}' if ':' in host else f'http://{host}:{port}'


def uvicorn_server(app: fastapi.FastAPI, access_log: bool = True) -> uvicorn.Server:
  """uvicorn's server of `app`, its own start-up lines silenced (this command prints
  the URL); `access_log` keeps its line per request."""
  config = uvicorn.Config(app, log_level='info' if access_log else 'warning',
                          access_log=access_log, timeout_graceful_shutdown=5)
  server = uvicorn.Server(config)
  logging.getLogger('uvicorn.error').setLevel(logging.WARNING)
  return server


# ---------------------------------------------------------------------------
# The command.


def seconds_since_start() -> Optional[float]:
  """Seconds since this process started, interpreter and imports included (Linux's
  /proc; the jemalloc re-exec keeps the process); None where unknown."""
  try:
    with open('/proc/self/stat', encoding='ascii') as f:
      ticks = float(f.read().rsplit(')', 1)[1].split()[19])  # Field 22: starttime.
    with open('/proc/uptime', encoding='ascii') as f:
      uptime = float(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    return None
  return uptime - ticks / os.sysconf('SC_CLK_TCK')


def run() -> None:
  started = time.perf_counter()
  _runtime.show_library_log(FLAGS.access_log)  # serving's line per prediction
  if not FLAGS.checkpoint:
    raise ServeError('--checkpoint is required')
  options = _flags.parse(serving.ServingOptions)
  sock = bind(FLAGS.host, FLAGS.port)
  ens = ensemble.load(FLAGS.checkpoint, _flags.parse(inference.InferenceOptions))
  server = serving.GameServer(ens, options)
  print(f'{FLAGS.checkpoint}: {ensemble.describe(ens)}')
  compiled = server.warm_up()
  sock.listen(2048)
  loaded = time.perf_counter() - started
  print(f'serving {server.name} to GAME evaluators at {url(sock)} (GET /formats, '
        f'GET /help, POST /predict); started in {seconds_since_start() or loaded:.1f} s '
        f'(model loaded and compiled in {loaded:.1f} s, of which the warm-up '
        f'{compiled:.1f} s); Ctrl-C stops', flush=True)
  uvicorn_server(make_app(server), FLAGS.access_log).run(sockets=[sock])


main = _runtime.command(run, (ServeError, checkpoint_lib.CheckpointError,
                              ensemble.EnsembleError, serving.SetupError, ValueError))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  _runtime.run(main)
