"""Attributions (enformer_small.attribution) against brute force and hand-worked answers.

- ISM (through the one inference path, `inference.Predictor`) equals predicting every
  mutated sequence one at a time with `model.predict_fn` (an independent path), on
  models with non-trivial weights at 85 bp (110 bp: slow tier), including N columns,
  mutant batches that straddle sequences, and reverse-complement averaging. A
  checkpoint's attributions are in the coordinates of the 110 bp sequence encoding: what
  the bare model gives at window position l is at sequence position start + l, and
  they are exactly 0 where no window reads.
- On models whose answer is known by hand (a linear map of the one-hot input, a
  softplus head on it) ISM, gradient x input and integrated gradients give that answer.
- The synthetic generator's record of planted motifs (`synthetic.planted_sites`) marks
  real motif instances.
- experiments.attribute (in this process) writes the arrays, summary, figures and, on
  synthetic rows, the recovery table.
- Slow tier (test_slow_attribution.py): the 110 bp model, integrated gradients'
  completeness, the command line, and a model trained as the demo trains putting its
  attributions on the planted motifs.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from enformer_small import attribution
from enformer_small import config as config_lib
from enformer_small import inference
from enformer_small import model as model_lib
from enformer_small import synthetic
from enformer_small import window_average
import in_process
from random_model import converted_seed_model, random_variables

BATCH = 64  # Rows per forward pass of the 85 bp models: one compilation for the tests.


# ---------------------------------------------------------------------------
# Models.


def random_model_of(length):
  config = config_lib.seed_config(length)
  params, state = random_variables(config, seed=length)
  return config, params, state


@pytest.fixture(scope='module')
def random_model():
  return random_model_of(85)


@pytest.fixture(scope='module')
def converted_model(seed_fixtures_dir):
  """The seed's own TF/Sonnet fixture model (random weights), converted."""
  return converted_seed_model(str(seed_fixtures_dir / 'checkpoint' / 'ckpt'))


def random_one_hot(n, length, seed, n_columns=()):
  """[n, length, 4] one-hot; (row, position) pairs in n_columns are N (all zero)."""
  codes = np.random.default_rng(seed).integers(0, 4, (n, length))
  x = np.eye(4, dtype=np.float32)[codes]
  for row, position in n_columns:
    x[row, position] = 0
  return x


def linear_apply(variables, x):
  """f(x) = sum_{l,b} x[l, b] W[l, b, t] + c_t: every attribution known by hand."""
  w, c = variables
  return jnp.einsum('blk,lkt->bt', x.astype(jnp.float32), w) + c


def linear_scorer(weights, bias):
  return attribution.Scorer(linear_apply, (jnp.asarray(weights), jnp.asarray(bias)),
                            weights.shape[0], tuple(f't{i}' for i in range(weights.shape[2])))


def linear_predictor(weights, bias, batch_size=16):
  """The linear model as a predictor of sequences of its length (one window)."""
  length = weights.shape[0]
  return inference.Predictor(
      linear_apply, (jnp.asarray(weights), jnp.asarray(bias)),
      inference.Layout(length=length), window_average.Windows(0, length),
      targets=tuple(f't{i}' for i in range(weights.shape[2])), batch_size=batch_size)


def predictor_of(config, params, state, **kwargs):
  """A bare model's predictor (`inference.model_predictor`), BATCH rows per pass."""
  return inference.model_predictor(config, params, state, batch_size=BATCH, **kwargs)


# ---------------------------------------------------------------------------
# ISM.


def brute_force_ism(config, params, state, x):
  """Each mutant predicted alone (batch of 1) by model.predict_fn."""
  predict = model_lib.predict_fn(config)
  def one(seq):
    return np.asarray(predict(params, state, seq[None]))[0]
  out = np.zeros(x.shape + (1,), np.float32)
  for n in range(x.shape[0]):
    reference = one(x[n])
    for l in range(x.shape[1]):
      for b in range(4):
        if x[n, l, b] == 1:
          continue
        mutant = x[n].copy()
        mutant[l] = np.eye(4)[b]
        out[n, l, b] = one(mutant) - reference
  return out


def check_ism_equals_predicting_each_mutant_alone(config, params, state):
  """Batches of 64 mutants straddle the two sequences and pad the last batch; an N
  column has 4 substitutions."""
  x = random_one_hot(2, config.input_length, seed=1, n_columns=[(1, 7)])
  predictor = predictor_of(config, params, state)
  effects = attribution.ism(predictor, x, batch_size=64)
  expected = brute_force_ism(config, params, state, x)
  assert effects.shape == (2, config.input_length, 4, 1)
  assert np.abs(expected).max() > 1e-2  # the model is not flat
  np.testing.assert_allclose(effects, expected, rtol=0, atol=2e-5)
  assert (effects[x == 1] == 0).all()
  assert np.count_nonzero(effects[1, 7]) == 4


def test_ism_equals_predicting_each_mutant_alone(random_model):
  check_ism_equals_predicting_each_mutant_alone(*random_model)


def test_ism_of_the_converted_seed_model_equals_brute_force(converted_model):
  config, params, state = converted_model
  x = random_one_hot(1, 85, seed=2)
  predictor = predictor_of(config, params, state)
  expected = brute_force_ism(config, params, state, x)
  assert np.abs(expected).max() > 1e-2
  np.testing.assert_allclose(attribution.ism(predictor, x), expected, rtol=0, atol=2e-5)


def test_ism_with_reverse_complement_averaging(converted_model):
  """ISM of (f(x) + f(rc x)) / 2 is the mean of ISM of x and ISM of rc(x), the latter
  read back on the forward strand (position L-1-l, complementary base 3-b)."""
  config, params, state = converted_model
  x = random_one_hot(2, 85, seed=3)
  plain = predictor_of(config, params, state)
  averaged = predictor_of(config, params, state, reverse_complement=True)
  forward = attribution.ism(plain, x)
  backward = attribution.ism(plain, x[:, ::-1, ::-1].copy())[:, ::-1, ::-1]
  np.testing.assert_allclose(attribution.ism(averaged, x), (forward + backward) / 2,
                             rtol=0, atol=2e-5)


def test_ism_of_a_linear_model_is_the_weight_difference():
  """f linear in x: substituting b for the reference r at l changes f by W[l,b] - W[l,r]
  (at an N column, by W[l,b]); two targets at once."""
  rng = np.random.default_rng(4)
  w = rng.normal(size=(12, 4, 2)).astype(np.float32)
  predictor = linear_predictor(w, np.array([0.5, -1.0], np.float32))
  x = random_one_hot(3, 12, seed=5, n_columns=[(2, 0)])
  expected = w[None] - np.einsum('nlk,lkt->nlt', x, w)[:, :, None, :]
  np.testing.assert_allclose(attribution.ism(predictor, x, batch_size=16), expected,
                             rtol=0, atol=1e-5)


def test_scorer_of_several_heads_concatenates_their_outputs():
  config = config_lib.seed_config(85)
  config = config.__class__(**{**config.__dict__, 'heads': (('yeast', 1), ('extra', 2))})
  params, state = random_variables(config, seed=6)
  x = random_one_hot(3, 85, seed=7)
  apply = jax.jit(model_lib.make_model(config).apply, static_argnums=4)
  outputs, _ = apply(params, state, None, x, False)
  both = inference.model_predictor(config, params, state, batch_size=8)
  assert both.targets == both.scorer().targets == ('yeast', 'extra/0', 'extra/1')
  np.testing.assert_allclose(both.predict_codes(attribution.codes_of_one_hot(x)),
                             np.concatenate([outputs['yeast'], outputs['extra']], 1),
                             rtol=1e-6, atol=1e-6)
  extra = inference.model_predictor(config, params, state, heads=['extra'], batch_size=8)
  assert extra.targets == extra.scorer().targets == ('extra/0', 'extra/1')
  effects = attribution.ism(extra, x[:1], batch_size=8)
  assert effects.shape == (1, 85, 4, 2) and np.abs(effects).max() > 0
  with pytest.raises(ValueError, match='unknown head'):
    inference.model_predictor(config, params, state, heads=['human'])


def test_inputs_must_be_one_hot_at_the_model_length():
  """ISM reads sequences of the predictor's layout; a scorer's inputs are its length."""
  weights, bias = np.ones((12, 4, 1), np.float32), np.zeros(1, np.float32)
  predictor, scorer = linear_predictor(weights, bias), linear_scorer(weights, bias)
  x = random_one_hot(2, 12, seed=8)
  x[1, 3] = [0.5, 0.5, 0, 0]
  with pytest.raises(ValueError, match='sequence 1, position 3'):
    attribution.ism(predictor, x)
  with pytest.raises(ValueError, match='sequence 1, position 3'):
    attribution.gradient_x_input(scorer, x)
  with pytest.raises(ValueError, match='10 bp for a model reading 12 bp sequences'):
    attribution.ism(predictor, random_one_hot(1, 10, seed=9))
  with pytest.raises(ValueError, match='10 bp for a model of 12 bp'):
    attribution.gradient_x_input(scorer, random_one_hot(1, 10, seed=9))


# ---------------------------------------------------------------------------
# Gradients.


def test_gradient_x_input_of_a_linear_model_is_weight_times_input():
  rng = np.random.default_rng(10)
  w = rng.normal(size=(12, 4, 2)).astype(np.float32)
  scorer = linear_scorer(w, np.zeros(2, np.float32))
  x = random_one_hot(5, 12, seed=11, n_columns=[(0, 3)])
  np.testing.assert_allclose(attribution.gradient_x_input(scorer, x, batch_size=4),
                             w[None] * x[..., None], rtol=0, atol=1e-6)


def test_gradient_x_input_of_a_softplus_head_by_hand():
  """Haiku Linear on the flattened one-hot, then softplus (the seed's head):
  d/dx softplus(z) = sigmoid(z) W, so gradient x input = sigmoid(z) W x."""
  def forward(x):
    return jax.nn.softplus(hk.Linear(1)(x.reshape(x.shape[0], -1)))
  model = hk.without_apply_rng(hk.transform(forward))
  x = random_one_hot(4, 10, seed=12)
  params = model.init(jax.random.PRNGKey(0), x)
  scorer = attribution.Scorer(model.apply, params, 10, ('out',))
  w = np.asarray(params['linear']['w']).reshape(10, 4)
  z = x.reshape(4, -1) @ w.reshape(-1) + np.asarray(params['linear']['b'])
  sigmoid = 1 / (1 + np.exp(-z))
  expected = (sigmoid[:, None, None] * w[None] * x)[..., None]
  np.testing.assert_allclose(attribution.gradient_x_input(scorer, x), expected,
                             rtol=1e-5, atol=1e-7)


def test_gradient_x_input_of_a_batch_equals_each_sequence_alone(converted_model):
  """Eval mode: a sequence's attribution does not depend on its batch."""
  config, params, state = converted_model
  scorer = predictor_of(config, params, state).scorer()
  x = random_one_hot(5, 85, seed=13)
  batch = attribution.gradient_x_input(scorer, x, batch_size=8)
  alone = np.concatenate([attribution.gradient_x_input(scorer, x[i:i + 1])
                          for i in range(5)])
  assert np.abs(batch).max() > 1e-3
  np.testing.assert_allclose(batch, alone, rtol=0, atol=1e-6)
  assert (batch[x == 0] == 0).all()


def test_integrated_gradients_of_a_linear_model_are_exact():
  """Linear f: the gradient is W on the whole path, so IG = (x - baseline) * W."""
  rng = np.random.default_rng(14)
  w = rng.normal(size=(12, 4, 1)).astype(np.float32)
  scorer = linear_scorer(w, np.zeros(1, np.float32))
  x = random_one_hot(3, 12, seed=15)
  for baseline, value in (('zeros', 0.0), ('uniform', 0.25)):
    np.testing.assert_allclose(
        attribution.integrated_gradients(scorer, x, baseline=baseline, steps=3),
        ((x - value)[..., None] * w[None]), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------
# AUROC and the planted-motif record.


def test_auroc_equals_counting_pairs():
  rng = np.random.default_rng(17)
  scores = rng.integers(0, 5, 60).astype(float)  # many ties
  labels = rng.random(60) < 0.3
  pos, neg = scores[labels], scores[~labels]
  wins = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
  assert attribution.auroc(scores, labels) == pytest.approx(wins / (pos.size * neg.size),
                                                            abs=1e-12)
  assert attribution.auroc([1, 2, 3], [False, True, True]) == 1.0
  assert np.isnan(attribution.auroc([1, 2], [True, True]))


def test_planted_sites_are_motif_instances():
  """At intact planted sites the informative columns follow the motif's PWM: the
  consensus base ~91% of the time (match_prob), against ~30% at random places."""
  config = synthetic.SyntheticConfig(num_rows=3000, seed=3, block_rows=1000)
  rows = synthetic.generate(config)
  sites = synthetic.planted_sites(config)
  model = config.model
  assert len(sites) > 0.5 * 3000 and sites.intact.mean() > 0.8
  hits, total, random_hits = 0, 0, 0
  rng = np.random.default_rng(0)
  for i in np.flatnonzero(sites.intact):
    motif = model.motifs[sites.motif[i]]
    probs = synthetic.pwm(motif)
    if sites.reverse[i]:
      probs = synthetic.reverse_complement_pwm(probs)
    columns = np.flatnonzero(np.ptp(probs, axis=1) > 0)
    found = rows.random_codes[sites.row[i], sites.start[i] + columns]
    hits += (probs[columns, found] == probs[columns].max(axis=1)).sum()
    elsewhere = rng.integers(0, rows.random_lengths[sites.row[i]] - motif.width + 1)
    other = rows.random_codes[sites.row[i], elsewhere + columns]
    random_hits += (probs[columns, np.minimum(other, 3)]
                    == probs[columns].max(axis=1)).sum()
    total += columns.size
  assert 0.89 < hits / total < 0.93
  assert random_hits / total < 0.45
  assert (sites.start + np.array([m.width for m in model.motifs])[sites.motif]
          <= rows.random_lengths[sites.row]).all()


def test_planted_sites_of_a_row_range_match_the_whole_set():
  config = synthetic.SyntheticConfig(num_rows=2500, seed=4, block_rows=1000)
  whole = synthetic.planted_sites(config)
  part = synthetic.planted_sites(config, 700, 2100)
  keep = (whole.row >= 700) & (whole.row < 2100)
  def order(s, rows):
    return np.lexsort((s.motif, rows))
  a, b = order(part, part.row), order(whole, whole.row)[keep[order(whole, whole.row)]]
  np.testing.assert_array_equal(part.row[a], whole.row[b] - 700)
  for field in ('motif', 'start', 'reverse', 'intact'):
    np.testing.assert_array_equal(getattr(part, field)[a], getattr(whole, field)[b])
  mask = part.mask(1400, 120)
  assert mask.shape == (1400, 120) and mask.any(axis=1).mean() > 0.4



# ---------------------------------------------------------------------------
# The command (in this process; on the command line: test_slow_attribution.py).


def run_attribute(capsys, *args):
  """experiments.attribute's main: (exit status, stdout, stderr)."""
  from experiments import attribute
  with in_process.command_flags(attribute, '--noprogress', *args):
    try:
      attribute.main(['prog'])
      status = 0
    except SystemExit as e:
      status = e.code
  out, err = capsys.readouterr()
  return status, out, err


def test_attribute_command_writes_arrays_summary_and_figures(tmp_path, capsys):
  """An 85 bp checkpoint reads [15:100] of the 110 bp encoding: its attributions are
  those of the model on that window at positions 15 + l, and exactly 0 elsewhere."""
  from enformer_small import checkpoint
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
  def run(*args):
    return run_attribute(capsys, f'--checkpoint={ckpt_path}', f'--batch_size={BATCH}',
                         *args)
  out = tmp_path / 'out'
  status, _, err = run(f'--input={fasta}', f'--output_dir={out}', '--num_figures=1',
                       '--methods=ism,gradient_x_input')
  assert status == 0, err[-3000:]
  saved = np.load(out / 'attributions.npz')
  assert saved['names'].tolist() == ['first', 'second']
  np.testing.assert_array_equal(saved['codes'],
                                [[('ACGT'.index(c)) for c in s] for s in sequences])
  assert saved['ism'].shape == saved['gradient_x_input'].shape == (2, 110, 4, 1)
  window = np.eye(5, 4, dtype=np.float32)[saved['codes'][:, 15:100]]
  predictor = predictor_of(config, params, state)
  np.testing.assert_allclose(saved['ism'][:, 15:100], attribution.ism(predictor, window),
                             rtol=0, atol=1e-6)
  np.testing.assert_allclose(saved['gradient_x_input'][:, 15:100],
                             attribution.gradient_x_input(predictor.scorer(), window),
                             rtol=0, atol=1e-6)
  for method in ('ism', 'gradient_x_input'):
    outside = np.concatenate([saved[method][:, :15], saved[method][:, 100:]], axis=1)
    assert (outside == 0).all(), method
  header, *rows = [l.split('\t') for l in (out / 'summary.tsv').read_text().splitlines()]
  assert header[:4] == ['name', 'target', 'prediction', 'ism_min_at'] and len(rows) == 2
  effects = saved['ism'][0, 15:100, :, 0]
  l, b = np.unravel_index(np.argmin(effects), effects.shape)
  assert rows[0][3] == f'{15 + l + 1}{"ACGT"[b]}'
  assert sorted(p.name for p in (out / 'figures').iterdir()) == ['first_ism.png',
                                                                 'first_logo.png']
  synthetic_out = tmp_path / 'synthetic'
  status, _, err = run('--synthetic_rows=3', f'--output_dir={synthetic_out}',
                       '--num_figures=1', '--methods=gradient_x_input')
  assert status == 0, err[-3000:]
  table = (synthetic_out / 'recovery.tsv').read_text().splitlines()
  assert [line.split('\t')[0] for line in table] == ['method', 'gradient_x_input',
                                                     'generator_ism']
  status, _, err = run(f'--input={fasta}', f'--output_dir={out}', '--methods=shap')
  assert status == 1 and 'Traceback' not in err
  assert "error: --methods: unknown ['shap']" in err
