"""Designing sequences (enformer_small.design, design_gradient, design_constraints,
robustness).

- A greedy round picks the argmax of brute-force single-mutant predictions of the
  ensemble objective (mean minus k times the spread).
- Implanting a motif equals inserting it by hand at every allowed place and strand and
  keeping the best.
- The gradient method's objective rises on a toy (linear) model; the projection keeps
  at most max_edits edits.
- Constraints are never violated: `Constraints.valid` agrees with a by-hand reading of
  every rule on random inputs, and every method's designs keep them.
- Robustness is the share of substitutions below the threshold, by hand on a linear
  model.
"""

import os
import re

import jax.numpy as jnp
import numpy as np
import pytest

from enformer_small import config as config_lib
from enformer_small import design
from enformer_small import design_constraints as rules
from enformer_small import design_gradient
from enformer_small import ensemble
from enformer_small import inference
from enformer_small import model as model_lib
from enformer_small import robustness
from enformer_small import window_average

import in_process
import jax

S = 30


def linear_apply(variables, x):
  """A toy model: sum of position-and-base weights, [B, 1]."""
  return jnp.sum(x * variables[0], axis=(1, 2))[:, None]


def toy_member(seed: int, length: int = S) -> inference.Predictor:
  weights = np.random.default_rng(seed).normal(0, 1, (length, 4)).astype(np.float32)
  return inference.Predictor(linear_apply, (weights,), inference.Layout(length=length),
                             window_average.Windows(0, length), targets=('y',),
                             batch_size=64)


def toy_ensemble(seeds=(0, 1)) -> ensemble.Ensemble:
  return ensemble.Ensemble(tuple(toy_member(s) for s in seeds))


def mutable_middle(length: int = S) -> np.ndarray:
  mutable = np.zeros(length, bool)
  mutable[5:25] = True
  return mutable


@pytest.fixture(scope='module')
def enformer_pair():
  """Two random seed models at 85 bp read bare (one window, both strands averaged)."""
  config = config_lib.seed_config(85)
  members = []
  for seed in (0, 1):
    params, state = model_lib.init(config, jax.random.PRNGKey(seed))
    members.append(inference.model_predictor(config, params, state,
                                             reverse_complement=True, batch_size=32))
  return ensemble.Ensemble(tuple(members))


def test_a_greedy_round_takes_the_best_single_mutant_by_brute_force(enformer_pair):
  mutable = np.zeros(85, bool)
  mutable[40:50] = True
  constraints = rules.Constraints(mutable)
  objective = design.Objective('max', spread_penalty=1.0)
  start = np.random.default_rng(3).integers(0, 4, (1, 85)).astype(np.uint8)
  designer = design.Designer(enformer_pair, objective, constraints)
  result = design.beam(designer, start, width=1, budget=30)  # One round: 30 mutants.
  _, mutants = design.single_substitutions(start, mutable)
  alone = np.stack([enformer_pair.predict_codes(m[None]).members[:, 0, 0]
                    for m in mutants], axis=1)  # [K, 30], each mutant alone
  score, _, _ = objective.score(alone.astype(np.float64))
  best = int(np.argmax(score))
  np.testing.assert_array_equal(result.designs.codes[0], mutants[best])
  assert result.designs.score[0] == pytest.approx(score[best], rel=1e-5, abs=1e-5)
  assert result.traces[0][-1][0] == 30


def test_implanting_a_motif_equals_inserting_it_by_hand(enformer_pair):
  mutable = np.zeros(85, bool)
  mutable[30:60] = True
  designer = design.Designer(enformer_pair, design.Objective('min'),
                             rules.Constraints(mutable))
  rng = np.random.default_rng(4)
  start = rng.integers(0, 4, 85).astype(np.uint8)
  text = rules.sequences_of(start[None])[0]
  found = design.implant(designer, start[None], design.motif_codes('TATAAA'))
  by_hand = {text}
  for motif in ('TATAAA', 'TTTATA'):
    for offset in range(30, 60 - len(motif) + 1):
      by_hand.add(text[:offset] + motif + text[offset + len(motif):])
  by_hand = sorted(by_hand)
  values = np.stack([enformer_pair.predict([s]).members[:, 0, 0] for s in by_hand],
                    axis=1)
  score, _, _ = design.Objective('min').score(values.astype(np.float64))
  assert rules.sequences_of(found.designs.codes)[0] == by_hand[int(np.argmax(score))]
  assert found.traces[0][-1][0] == len(by_hand) - 1


def test_iupac_implants_keep_the_start_where_the_motif_allows_it():
  start = rules.codes_of(['AAAAAAAAAA'], 10)[0]
  mutable = np.ones(10, bool)
  placed = design.placements(start, design.motif_codes('CNG'), mutable)
  texts = set(rules.sequences_of(placed))
  assert 'CAGAAAAAAA' in texts          # N keeps the start's A
  assert 'CTGAAAAAAA' not in texts
  assert 'AAAAAAACAG' in texts          # the reverse complement CNG again
  assert len(texts) == 8                # 8 offsets; both strands give the same string


def test_a_candidate_replaces_a_design_only_when_it_scores_strictly_higher():
  def scored(codes, scores):
    scores = np.array(scores, np.float64)
    return design.Scored(np.array(codes, np.uint8), np.stack([scores, scores + 1]),
                         scores, np.zeros_like(scores), scores)
  best = scored([[0, 0], [1, 1], [2, 2]], [5.0, 5.0, 5.0])
  # Candidates for rows 2 and 0: higher for row 2, equal for row 0 (a tie keeps it).
  best.replace_where_better(np.array([2, 0]), scored([[3, 3], [3, 0]], [6.0, 5.0]))
  assert best.codes.tolist() == [[0, 0], [1, 1], [3, 3]]
  assert best.score.tolist() == [5.0, 5.0, 6.0]
  assert best.members[:, 2].tolist() == [6.0, 7.0]


def test_the_gradient_objective_rises_on_a_linear_model():
  ens = toy_ensemble()
  constraints = rules.Constraints(mutable_middle(), max_edits=4)
  designer = design.Designer(ens, design.Objective('max'), constraints)
  starts = np.random.default_rng(5).integers(0, 4, (3, S)).astype(np.uint8)
  result = design_gradient.gradient(designer, starts, budget=200, learning_rate=0.5)
  first = designer.evaluate(starts).score
  assert np.all(result.designs.score > first)
  for trace in result.traces:
    scores = [s for _, s in trace]
    assert scores == sorted(scores)
  assert np.all(constraints.valid(result.designs.codes, starts))
  # The best 4 edits of a linear model, by hand: the largest weight gains.
  weights = np.mean([m.variables[0] for m in ens.members], axis=0)
  gain = weights.max(axis=1) - weights[np.arange(S), starts[0]]
  gain[~mutable_middle()] = 0
  optimum = first[0] + np.sort(gain)[-4:].sum()
  assert result.designs.score[0] == pytest.approx(optimum, rel=1e-4)


def _valid_by_hand(text: str, start: str, mutable: np.ndarray, c: rules.Constraints):
  edits = [i for i in range(len(text)) if text[i] != start[i]]
  if any(not mutable[i] for i in edits):
    return False
  if c.max_edits is not None and len(edits) > c.max_edits:
    return False
  region = ''.join(text[i] for i in np.flatnonzero(mutable))
  if c.gc_range is not None:
    gc = (region.count('G') + region.count('C')) / len(region)
    if not c.gc_range[0] - 1e-9 <= gc <= c.gc_range[1] + 1e-9:
      return False
  for site in c.forbidden:
    for strand in (site, rules.reverse_complement(site)):
      pattern = ''.join(f'[{rules.IUPAC[b]}]' for b in strand)
      for m in re.finditer(f'(?=({pattern}))', text):
        if mutable[m.start():m.start() + len(site)].any():
          return False
  if c.max_homopolymer is not None:
    for m in re.finditer(r'A+|C+|G+|T+', text):
      if m.end() - m.start() > c.max_homopolymer and mutable[m.start():m.end()].any():
        return False
  return True


def test_valid_agrees_with_every_rule_read_by_hand_on_random_inputs():
  rng = np.random.default_rng(6)
  for trial in range(40):
    mutable = rng.random(S) < rng.uniform(0.3, 1.0)
    mutable[rng.integers(0, S)] = True
    c = rules.Constraints(
        mutable, max_edits=int(rng.integers(1, 8)) if rng.random() < 0.7 else None,
        gc_range=tuple(sorted(rng.uniform(0, 1, 2))) if rng.random() < 0.5 else None,
        forbidden=tuple(rng.choice(['GAATTC', 'GGATCC', 'TTNAA', 'RGCGCY', 'AAAA'],
                                   int(rng.integers(0, 3)), replace=False)),
        max_homopolymer=int(rng.integers(2, 6)) if rng.random() < 0.6 else None)
    start = rng.integers(0, 4, S).astype(np.uint8)
    candidates = np.repeat(start[None], 200, 0)
    flips = rng.random(candidates.shape) < rng.uniform(0.02, 0.3)
    candidates[flips] = rng.integers(0, 4, int(flips.sum()))
    found = c.valid(candidates, np.repeat(start[None], 200, 0))
    texts = rules.sequences_of(candidates)
    s = rules.sequences_of(start[None])[0]
    expected = [_valid_by_hand(t, s, mutable, c) for t in texts]
    assert found.tolist() == expected, trial


@pytest.mark.parametrize('method', ['greedy', 'beam', 'evolve', 'gradient', 'implant'])
def test_every_method_keeps_every_constraint(method):
  mutable = mutable_middle()
  constraints = rules.Constraints(mutable, max_edits=3, gc_range=(0.3, 0.7),
                                  forbidden=('GAATTC', 'TTTT'), max_homopolymer=3)
  rng = np.random.default_rng(7)
  starts = rules.random_starts(constraints, rng.integers(0, 4, S), 4, rng)
  designer = design.Designer(toy_ensemble(), design.Objective('max', spread_penalty=0.5),
                             constraints)
  run = {'greedy': lambda: design.beam(designer, starts, budget=300),
         'beam': lambda: design.beam(designer, starts, width=3, budget=300),
         'evolve': lambda: design.evolve(designer, starts, population=12, budget=120),
         'gradient': lambda: design_gradient.gradient(designer, starts, budget=20),
         'implant': lambda: design.implant(designer, starts, design.motif_codes('GCG'))}
  result = run[method]()
  assert np.all(constraints.valid(result.designs.codes, starts))
  start_scores = designer.evaluate(starts).score
  assert np.all(result.designs.score >= start_scores - 1e-6)
  np.testing.assert_array_equal(result.initial.codes, starts)  # The report's start columns.
  np.testing.assert_allclose(result.initial.score, start_scores, rtol=1e-6)
  again = run[method]()  # Seeds make a run repeatable.
  np.testing.assert_array_equal(again.designs.codes, result.designs.codes)


def test_a_start_that_breaks_the_constraints_is_refused_naming_it():
  constraints = rules.Constraints(mutable_middle(), forbidden=('AAAA',))
  start = rules.codes_of(['C' * 10 + 'AAAA' + 'C' * 16], S)
  designer = design.Designer(toy_ensemble(), design.Objective(), constraints)
  with pytest.raises(rules.ConstraintError, match='start 1 breaks.*forbidden site'):
    design.beam(designer, start)


def test_robustness_is_the_share_of_small_effects_by_hand():
  member = toy_member(8)
  ens = ensemble.Ensemble((member,))
  start = np.random.default_rng(9).integers(0, 4, (1, S)).astype(np.uint8)
  positions = mutable_middle()
  found = robustness.robustness(ens, start, positions, threshold=0.5)
  w = member.variables[0]
  effects = [w[i, b] - w[i, start[0, i]] for i in np.flatnonzero(positions)
             for b in range(4) if b != start[0, i]]
  np.testing.assert_allclose(found.effects[0], np.sort(effects), rtol=1e-5, atol=1e-6)
  assert found.robust[0] == pytest.approx(np.mean(np.abs(effects) < 0.5))


# ---------------------------------------------------------------------------
# The command, in this process.


def test_the_command_judges_the_designs_of_every_method_and_keeps_the_flags_rules(
    tiny_run, tmp_path, capsys):
  """Judged by the designer's own checkpoint, the judge's columns equal the designer's;
  a beam run is judged as greedy is (its method is written and printed 'beam2')."""
  from experiments import design as command
  ckpt = os.path.join(tiny_run[0].run_dir, 'checkpoint_best.npz')
  out = tmp_path / 'designs'
  results = in_process.run(
      command, f'--checkpoint={ckpt}', f'--judge={ckpt}', '--random_starts=3',
      '--seed=1', '--methods=greedy,beam', '--beam_width=2', '--max_edits=2',
      '--budget=480', '--forbidden=GAATTC', '--robustness', f'--output_dir={out}',
      '--noprogress')
  header, *rows = [line.split('\t') for line in
                   (out / 'designs.tsv').read_text().splitlines()]

  def column(name):
    return [row[header.index(name)] for row in rows]
  assert column('method') == ['greedy'] * 3 + ['beam2'] * 3
  printed = capsys.readouterr().out
  assert 'greedy: 3 designs in ' in printed and 'beam2: 3 designs in ' in printed
  assert column('judge_mean') == column('mean')
  assert column('judge_start_mean') == column('start_mean')
  judge = ensemble.load(ckpt)
  for result in results:
    expected = judge.predict_codes(result.designs.codes).members[..., 0].mean(axis=0)
    np.testing.assert_allclose(result.designs.mean, expected, rtol=1e-6)
    # The designer's own robustness: the judge is the same checkpoint here.
    robust = robustness.robustness(judge, result.designs.codes,
                                   rules.dream_mutable(result.designs.codes.shape[1])).robust
    mine = [row for row in rows if row[0] == result.method]
    assert [row[header.index('robustness')] for row in mine] == [f'{r:.4f}' for r in robust]
  starts = column('robustness_start')
  assert starts[:3] == starts[3:]  # The same starts for both methods.
  for start, sequence, edits in zip(column('start_sequence'), column('sequence'),
                                    column('edits')):
    assert sum(a != b for a, b in zip(start, sequence)) == int(edits) <= 2
    assert 'GAATTC' not in sequence
  assert (out / 'designs.fa').read_text().count('>') == 6
  assert (out / 'objective_greedy.png').exists() and (out / 'objective_beam2.png').exists()
