"""Slow tier of the variant effects: the real test set's pair subsets (public and
private) scored as pairs against the official scorer, and the command on the command
line."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from enformer_small import dream_data
from enformer_small import metrics
from enformer_small import model as model_lib
from enformer_small import scoring
from enformer_small import variant_effects
from test_variant_effects import (check_command_output, converted_checkpoint,
                                  predictor_of, random_sequences,
                                  window_codes)  # pylint: disable=unused-import

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _pair_subset_check(shared_dir, ckpt, split_name):
  splits = scoring.load_official_splits(shared_dir / 'test_subsets',
                                        shared_dir / 'public_leaderboard')
  test = scoring.read_test_set(shared_dir / 'test_71103_measured.tsv')
  split = splits.split(split_name)
  pairs = {name: split[name].rows for name in sorted(scoring.PAIR_SUBSETS)}
  rows = np.unique(np.concatenate([p.reshape(-1) for p in pairs.values()]))
  # Per-sequence predictions by the plain model call on the window [15:100], then the
  # official scorer.
  predict = model_lib.predict_fn(ckpt.model_config)
  sequences = np.array(test.sequences)
  per_row = np.full(len(sequences), np.nan)
  for lo in range(0, rows.size, 1000):
    chunk = rows[lo:lo + 1000]
    x = dream_data.one_hot(window_codes(sequences[chunk]))
    per_row[chunk] = np.asarray(predict(ckpt.params, ckpt.state, x))[:, 0]
  predictor = predictor_of(ckpt, batch_size=1000)
  for name, subset_pairs in pairs.items():
    official = scoring.subset_score(per_row, test.measured, split[name])
    effects = variant_effects.pair_effects(predictor, sequences[subset_pairs[:, 1]],
                                           sequences[subset_pairs[:, 0]])
    measured = test.measured[subset_pairs[:, 0]] - test.measured[subset_pairs[:, 1]]
    r = metrics.pearson_r(effects.effect[:, 0], measured)
    rho = metrics.spearman_rho(effects.effect[:, 0], measured)
    assert abs(official.r) > 0.01, name
    assert r == pytest.approx(official.r, abs=2e-5), name
    assert rho == pytest.approx(official.rho, abs=2e-4), name


def test_public_pair_subsets_score_as_the_official_scorer(shared_dir, converted_checkpoint):
  _pair_subset_check(shared_dir, converted_checkpoint, 'public')


def test_private_pair_subsets_score_as_the_official_scorer(shared_dir,
                                                            converted_checkpoint):
  _pair_subset_check(shared_dir, converted_checkpoint, 'private')


def run_module(module, *args):
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def test_command_line_writes_the_effects_of_a_converted_checkpoint(converted_checkpoint,
                                                                   tmp_path):
  ckpt = converted_checkpoint
  s, t = random_sequences(2, seed=8)
  edits = tmp_path / 'edits.tsv'
  edits.write_text(f'{s}\t30\t{s[29]}\tN\n{t}\t3\t{t[2]}\tA\n{t}\t60\t-\tAC\n')
  out = tmp_path / 'effects.tsv'
  result = run_module('experiments.variant_effects', f'--checkpoint={ckpt.path}',
                      f'--edits={edits}', f'--output_tsv={out}', '--noprogress')
  assert result.returncode == 0, result.stderr[-3000:]
  check_command_output(ckpt, edits, out, s, t)
  edits.write_text(f'{s}\t30\t{s[29]}\tN\n{t}\t3\t{"A" if t[2] != "A" else "C"}\tG\n')
  result = run_module('experiments.variant_effects', f'--checkpoint={ckpt.path}',
                      f'--edits={edits}', f'--output_tsv={tmp_path / "x.tsv"}')
  assert result.returncode == 1 and 'Traceback' not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      f'error: {edits}:2: ref ')
