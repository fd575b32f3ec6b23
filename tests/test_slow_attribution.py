"""Slow tier of the attributions: the 110 bp model's ISM against brute force, the
completeness of integrated gradients on a real model, experiments.attribute on the
command line, and the recovery of the planted motifs by a model trained as the demo
trains."""

import os
import pathlib
import subprocess
import sys

import numpy as np

from enformer_small import attribution
from enformer_small import checkpoint
from enformer_small import config as config_lib
from enformer_small import dream_data
from enformer_small import inference
from enformer_small import model as model_lib
from enformer_small import planted
from enformer_small import synthetic
from test_attribution import (check_ism_equals_predicting_each_mutant_alone,
                              converted_model, predictor_of, random_model_of,
                              random_one_hot)  # pylint: disable=unused-import
from random_model import random_variables

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_ism_equals_predicting_each_mutant_alone_at_110_bp():
  check_ism_equals_predicting_each_mutant_alone(*random_model_of(110))


def test_integrated_gradients_are_complete(converted_model):
  """Sum of IG over positions and bases -> f(x) - f(baseline) (midpoint rule, 256 steps;
  max pooling and the ReLU make the path integrand kinked, so it converges slowly)."""
  config, params, state = converted_model
  predictor = predictor_of(config, params, state)
  x = random_one_hot(2, 85, seed=16)
  ig = attribution.integrated_gradients(predictor.scorer(), x, baseline='uniform',
                                        steps=256, batch_size=512)
  reference = predictor.predict_codes(attribution.codes_of_one_hot(x))[:, 0]
  baseline = np.asarray(model_lib.predict_fn(config)(params, state,
                                                     np.full_like(x, 0.25)))[:, 0]
  total = ig.sum(axis=(1, 2, 3))
  assert np.abs(reference - baseline).min() > 1e-2
  np.testing.assert_allclose(total, reference - baseline,
                             rtol=0.02, atol=0.02 * np.abs(reference - baseline).max())


def test_attribute_command_line_writes_arrays_summary_and_figures(tmp_path):
  """The command in a process of its own: its arrays (sequence coordinates: the 85 bp
  model's window [15:100] of the 110 bp encoding, 0 elsewhere), summary and figures;
  a bad --methods is one error line."""
  config = config_lib.seed_config(85)
  params, state = random_variables(config, seed=20)
  ckpt_path = tmp_path / 'model.npz'
  checkpoint.save_checkpoint(ckpt_path, params=params, state=state, model_config=config)
  rng = np.random.default_rng(21)
  sequences = [synthetic.FLANK_5 + ''.join(rng.choice(list('ACGT'), 80)) + synthetic.FLANK_3
               for _ in range(2)]
  fasta = tmp_path / 'in.fa'
  fasta.write_text(f'>first\n{sequences[0][:50]}\n{sequences[0][50:]}\n>second\n'
                   f'{sequences[1]}\n')
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL='3')
  def run(*args):
    return subprocess.run(
        [sys.executable, '-m', 'experiments.attribute', f'--checkpoint={ckpt_path}',
         '--noprogress', '--batch_size=64', *args], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=600)
  out = tmp_path / 'out'
  result = run(f'--input={fasta}', f'--output_dir={out}', '--num_figures=1',
               '--methods=ism,gradient_x_input')
  assert result.returncode == 0, result.stderr[-3000:]
  saved = np.load(out / 'attributions.npz')
  assert saved['names'].tolist() == ['first', 'second']
  np.testing.assert_array_equal(saved['codes'],
                                [[('ACGT'.index(c)) for c in s] for s in sequences])
  window = np.eye(5, 4, dtype=np.float32)[saved['codes'][:, 15:100]]
  predictor = predictor_of(config, params, state)
  np.testing.assert_allclose(saved['ism'][:, 15:100], attribution.ism(predictor, window),
                             rtol=0, atol=1e-6)
  np.testing.assert_allclose(saved['gradient_x_input'][:, 15:100],
                             attribution.gradient_x_input(predictor.scorer(), window),
                             rtol=0, atol=1e-6)
  for method in ('ism', 'gradient_x_input'):
    assert (saved[method][:, :15] == 0).all() and (saved[method][:, 100:] == 0).all()
  header, *rows = [l.split('\t') for l in (out / 'summary.tsv').read_text().splitlines()]
  assert header[:4] == ['name', 'target', 'prediction', 'ism_min_at'] and len(rows) == 2
  effects = saved['ism'][0, 15:100, :, 0]
  l, b = np.unravel_index(np.argmin(effects), effects.shape)
  assert rows[0][3] == f'{15 + l + 1}{"ACGT"[b]}'
  assert sorted(p.name for p in (out / 'figures').iterdir()) == ['first_ism.png',
                                                                 'first_logo.png']
  synthetic_out = tmp_path / 'synthetic'
  result = run('--synthetic_rows=3', f'--output_dir={synthetic_out}', '--num_figures=1',
               '--methods=gradient_x_input')
  assert result.returncode == 0, result.stderr[-3000:]
  table = (synthetic_out / 'recovery.tsv').read_text().splitlines()
  assert [line.split('\t')[0] for line in table] == ['method', 'gradient_x_input',
                                                     'generator_ism']
  result = run(f'--input={fasta}', f'--output_dir={out}', '--methods=shap')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert "error: --methods: unknown ['shap']" in result.stderr


# ---------------------------------------------------------------------------
# Recovery of the planted motifs by a model trained as the demo trains.


def test_attributions_of_a_trained_model_fall_on_the_planted_motifs(demo_checkpoint):
  """AUROC of |attribution| at planted-motif positions against the other random-region
  positions of 500 unseen synthetic rows, for the model the demo trains.

  The demo's recipe records one window ([15:100] of the 110 bp encoding, which holds
  the whole random region) on one strand, so the checkpoint's predictor is the model on
  that window, and every scored position is one it reads.

  The issue's goal is 0.8 for ISM and gradient x input. Measured (BUILD_NOTES): the
  generator's own expression function scores 0.7995 under this labelling (weakly bound
  planted instances, unplanted sites and the G+C term; no per-position aggregation
  lifts it: tests/test_attribution_ceiling.py), the demo's model ISM 0.7535 and gradient
  x input 0.6246 (the demo shortened to 1 epoch of 60,000 rows: 0.713 / 0.571, below
  these guards). The assertions guard what the demo's recipe reaches.
  """
  predictor = inference.load(demo_checkpoint,
                             inference.InferenceOptions(batch_size=1024))
  assert predictor.windows.passes == ((0, False),)
  data = planted.synthetic_input(500, 1)
  span = planted.Span(0, predictor.layout.length)
  x = dream_data.one_hot(span.codes(data.sequences))
  labels, scored = planted.planted_labels(data, span)
  scored &= predictor.covered()[None]
  found = planted.recovery_aurocs(labels, scored, {
      'ism': attribution.ism_importance(attribution.ism(predictor, x))[..., 0],
      'gradient_x_input': np.abs(attribution.contribution(
          attribution.gradient_x_input(predictor.scorer(), x)))[..., 0],
      'generator_ism': np.abs(planted.generator_ism(data, span)).sum(axis=-1)})
  print({m: round(v['all'], 4) for m, v in found.items()})
  ceiling = found['generator_ism']['all']
  assert 0.79 < ceiling < 0.81
  assert found['ism']['all'] >= ceiling - 0.07
  assert found['gradient_x_input']['all'] >= 0.60
