"""Motifs a model learned: enformer_small.motifs, motif_db, motif_scan, experiments.motifs.

- Attributions: on a linear model, whose every answer is known, the hypothetical
  scores (gradient minus its mean over the bases) and ISM's centred effects are the
  centred weights, an ensemble's the mean of its members', gradient x input the
  gradient at the reference base.
- Discovery: TF-MoDISco with the settings for 80 bp inputs, on attributions whose
  truth is known (the ISM of the synthetic generator's own noise-free function on its
  rows, mean-centred over the 4 bases: what a perfect model would attribute), finds the
  planted motifs: TOMTOM matches them to the generator's PWMs, written to and read from
  a MEME file, with q < 0.05, activators as positive and the repressors as negative
  patterns.
- Annotation: TOMTOM against JASPAR2024's CORE fungi motifs (178, read with every
  network connection refused) finds REB1 (MA0363) for the generator's Reb1 PWM, and
  aligns a motif with the database motif it was cut from at the right offset and
  strand.
- Scanning: FIMO finds a planted site at its position and strand, and the sites a
  generator planted; an edit in a site's core loses it, one that writes a site gains
  it, an insertion before it only moves it.
- The command, in this process, on a small random-weight model: motifs.tsv, logos and an
  HTML page whose every image exists and whose rows are the TSV's; scan mode writes
  hits and site changes.

The numba kernels of modisco-lite and memelite are compiled on first use and cached on
disk (a few minutes on a cold cache, once); the times above are with the cache warm.
"""

import dataclasses
import html.parser
import socket

import jax.numpy as jnp
import numpy as np
import pytest

from enformer_small import checkpoint
from enformer_small import config as config_lib
from enformer_small import dream_data
from enformer_small import ensemble
from enformer_small import inference
from enformer_small import motif_db
from enformer_small import motif_scan
from enformer_small import motifs
from enformer_small import synthetic
from enformer_small import window_average
import in_process
from random_model import random_variables

FLANK_5, FLANK_3 = dream_data.FLANK_5, dream_data.FLANK_3
MOTIFS = synthetic.DEFAULT_MOTIFS


def planted_database():
  return motif_db.generator_motifs(synthetic.ExpressionModel())


def generator_hypothetical(n: int, seed: int):
  """(one-hot [n, 80, 4], hypothetical scores [n, 80, 4]) of the first n 80 bp rows
  without N of a synthetic data set: the generator's activity with each base at each
  position, minus its mean over the 4 bases."""
  rows = synthetic.generate(synthetic.SyntheticConfig(num_rows=2 * n, seed=seed))
  keep = (rows.random_lengths == 80) & (rows.random_codes[:, :80] < 4).all(axis=1)
  codes = np.ascontiguousarray(rows.random_codes[np.flatnonzero(keep)[:n], :80])
  length = codes.shape[1]
  mutants = np.repeat(codes[:, None, None, :], length, axis=1).repeat(4, axis=2)
  at = np.arange(length)
  mutants[:, at, :, at] = np.arange(4, dtype=np.uint8)
  flat = mutants.reshape(-1, length)
  activity = synthetic.activity(flat, np.full(len(flat), length, np.int32))
  scores = motifs.centred(activity.reshape(len(codes), length, 4))
  return dream_data.one_hot(codes), scores.astype(np.float32)


# ---------------------------------------------------------------------------
# Attributions.


def linear_apply(variables, x):
  """f(x) = sum over positions and bases of x W, per target: its gradient is W."""
  return jnp.einsum('blk,lkt->bt', x.astype(jnp.float32), variables)


def linear_predictor(weights):
  length = weights.shape[0]
  return inference.Predictor(linear_apply, weights, inference.Layout(length=length),
                             window_average.Windows(0, length), targets=('a', 'b'),
                             batch_size=8)


def test_hypothetical_scores_of_a_linear_model_are_its_centred_weights():
  """For f = sum x W every method knows the answer: the gradient is W, hypothetical
  scores W minus its mean over the bases, ISM's centred effects the same; an ensemble
  gives its members' mean."""
  rng = np.random.default_rng(0)
  w1, w2 = rng.normal(size=(2, 12, 4, 2)).astype(np.float32)
  x = dream_data.one_hot(rng.integers(0, 4, (5, 12)))
  members = ensemble.Ensemble((linear_predictor(w1), linear_predictor(w2)))
  centred = motifs.centred((w1 + w2)[..., 1] / 2)
  for method in ('hypothetical', 'ism'):
    found = motifs.hypothetical_contributions(members, x, method=method, target=1)
    np.testing.assert_allclose(found, np.broadcast_to(centred, x.shape), atol=1e-5)
  plain = motifs.hypothetical_contributions(linear_predictor(w1), x,
                                            method='gradient_x_input')
  np.testing.assert_allclose(plain * x, w1[None, ..., 0] * x, atol=1e-6)
  assert motifs.work_rows(members, 5, 'hypothetical') == 10


# ---------------------------------------------------------------------------
# Discovery and annotation.


@pytest.fixture(scope='module')
def jaspar_fungi():
  return motif_db.jaspar()


@pytest.fixture(scope='module')
def generator_scores():
  return generator_hypothetical(600, seed=0)


def test_discovery_finds_the_planted_motifs_with_their_signs(tmp_path, jaspar_fungi,
                                                             generator_scores):
  x, scores = generator_scores
  found = motifs.discover(x, scores, region=(0, 80))
  meme = tmp_path / 'planted.meme'
  motif_db.write_meme(str(meme), planted_database())
  database = jaspar_fungi + motif_db.read_meme(str(meme))
  recovered = {}
  for motif, matches in zip(found, motifs.annotate(found, database, top=5)):
    planted = [m for m in matches if m.target.source == str(meme) and m.q_value < 0.05]
    if planted:
      recovered.setdefault(planted[0].target.name, set()).add(motif.sign)
  print({m.name: (m.seqlets, m.as_motif().consensus()) for m in found}, recovered)
  assert {'Rap1', 'Rox1'} <= set(recovered) and len(recovered) >= 4
  for name, signs in recovered.items():
    weight = synthetic.ExpressionModel().motif(name).weight
    assert signs == ({'negative'} if weight <= 0 else {'positive'}), (name, signs)
  assert all(m.sites[:, 1].min() >= 0 and m.sites[:, 1].max() + len(m.ppm) <= 80
             for m in found)


def test_the_cli_defaults_find_nothing_in_80_bp(generator_scores):
  """tfmodisco-lite #68: 30 bp patterns padded by 10 bp drop the seqlets of 80 bp
  sequences; the chosen settings keep them (test above)."""
  x, scores = generator_scores
  defaults = motifs.DiscoverySettings(sliding_window_size=20, flank_size=5,
                                      trim_to_window_size=30, initial_flank_to_add=10)
  assert motifs.discover(x, scores, region=(0, 80), settings=defaults) == []


def test_jaspar_fungi_is_read_without_the_network(monkeypatch):
  def refuse(*args, **kwargs):
    raise OSError('network refused by the test')
  monkeypatch.setattr(socket.socket, 'connect', refuse)
  monkeypatch.setattr(socket, 'create_connection', refuse)
  found = motif_db.jaspar()
  assert len(found) == 178 and all(m.ppm.shape[1] == 4 for m in found)
  assert {'MA0363', 'MA0265', 'MA0359'} <= {m.id.split('.')[0] for m in found}
  np.testing.assert_allclose(np.concatenate([m.ppm.sum(axis=1) for m in found]), 1.0)


def test_tomtom_finds_reb1_for_a_reb1_like_pwm(jaspar_fungi):
  reb1 = synthetic.pwm(synthetic.ExpressionModel().motif('Reb1'))
  for query in (reb1, motif_db.reverse_complement(reb1)):
    matches = motif_db.tomtom([query], jaspar_fungi, top=3)[0]
    hit = [m for m in matches if m.target.id.startswith('MA0363')]
    assert hit and hit[0].q_value < 0.05 and hit[0].target.name == 'REB1'


def test_tomtom_aligns_a_piece_of_a_motif_where_it_was_cut(jaspar_fungi):
  reb1 = [m for m in jaspar_fungi if m.name == 'REB1'][0]
  cases = ((reb1.ppm[2:8], 2, '+'), (motif_db.reverse_complement(reb1.ppm[1:7]), 2, '-'))
  for query, offset, strand in cases:
    match = [m for m in motif_db.tomtom([query], jaspar_fungi, top=5)[0]
             if m.target is reb1][0]
    assert (match.offset, match.strand) == (offset, strand)


def test_q_values_are_benjamini_hochberg_by_hand():
  p = np.array([[0.01, 0.04, 0.03, 0.5]])
  # Sorted: 0.01 x 4/1, 0.03 x 4/2, 0.04 x 4/3, 0.5 x 4/4, then the running minimum
  # from the largest down.
  np.testing.assert_allclose(motif_db.bh_qvalues(p), [[0.04, 0.16 / 3, 0.16 / 3, 0.5]])


def test_meme_files_round_trip_and_bad_lines_name_their_line(tmp_path):
  path = tmp_path / 'm.meme'
  motif_db.write_meme(str(path), planted_database())
  back = motif_db.read_meme(str(path))
  assert [m.id for m in back] == [f'planted_{m.name}' for m in MOTIFS]
  np.testing.assert_allclose(back[0].ppm, synthetic.pwm(MOTIFS[0]), atol=1e-6)
  lines = path.read_text().splitlines()
  bad = next(i for i, line in enumerate(lines) if line.startswith('letter')) + 2
  lines[bad - 1] = '0.1 0.2 0.7'
  path.write_text('\n'.join(lines) + '\n')
  with pytest.raises(motif_db.MotifFileError, match=f'm.meme:{bad}: expected 4 values'):
    motif_db.read_meme(str(path))


# ---------------------------------------------------------------------------
# Scanning.


def with_site(site: str, at: int, seed: int, length: int = 80) -> str:
  rng = np.random.default_rng(seed)
  random = ''.join(rng.choice(list('ACGT'), length))
  return FLANK_5 + random[:at] + site + random[at + len(site):] + FLANK_3


REB1 = motif_db.Motif('planted_Reb1', 'Reb1',
                      synthetic.pwm(synthetic.ExpressionModel().motif('Reb1')))


def test_fimo_finds_a_planted_site_at_its_position_and_strand():
  sequences = [with_site('TTACCCGG', 30, seed=1), with_site('CCGGGTAA', 50, seed=2)]
  hits = motif_scan.scan(sequences, [REB1])
  found = {(h.sequence, h.start, h.end, h.strand, h.site) for h in hits}
  assert (0, 17 + 30, 17 + 38, '+', 'TTACCCGG') in found
  assert (1, 17 + 50, 17 + 58, '-', 'TTACCCGG') in found
  assert all(h.p_value <= 1e-4 for h in hits)


def test_fimo_finds_the_generators_consensus_sites():
  config = synthetic.SyntheticConfig(num_rows=400, seed=3)
  rows, sites = synthetic.generate(config), synthetic.planted_sites(config)
  sequences = rows.sequences()
  hits = {(h.sequence, h.start - len(FLANK_5), h.strand)
          for h in motif_scan.scan(sequences, [REB1])}
  reb1 = [i for i in range(len(sites)) if sites.intact[i] and
          MOTIFS[sites.motif[i]].name == 'Reb1']
  consensus = [i for i in reb1 if motif_scan._site(
      sequences[sites.row[i]], len(FLANK_5) + sites.start[i],
      len(FLANK_5) + sites.start[i] + 8, '-+'[int(not sites.reverse[i])]) == 'TTACCCGG']
  assert len(consensus) >= 10
  assert all((sites.row[i], sites.start[i], '-+'[int(not sites.reverse[i])]) in hits
             for i in consensus)


def test_an_edit_in_a_site_loses_it_and_one_that_writes_a_site_gains_it():
  ref = with_site('TTACCCGG', 30, seed=4)
  at = 17 + 33
  broken = ref[:at] + ('T' if ref[at] != 'T' else 'A') + ref[at + 1:]
  made = with_site('TTACCCGG', 60, seed=4)
  inserted = ref[:20] + 'GA' + ref[20:]
  changes = motif_scan.site_changes([ref, ref, ref], [broken, made, inserted], [REB1])
  lost = [(c.hit.sequence, c.hit.start) for c in changes if c.change == 'lost']
  gained = [(c.hit.sequence, c.hit.start) for c in changes if c.change == 'gained']
  assert (0, 47) in lost and (1, 77) in gained
  assert not [c for c in changes if c.hit.sequence == 2]


# ---------------------------------------------------------------------------
# The command.


class _Page(html.parser.HTMLParser):
  def __init__(self):
    super().__init__()
    self.images, self.rows, self._row, self._cell = [], [], None, None

  def handle_starttag(self, tag, attrs):
    if tag == 'img':
      self.images.append(dict(attrs)['src'])
    elif tag == 'tr':
      self._row = []
    elif tag in ('td', 'th') and self._row is not None:
      self._cell = ''

  def handle_data(self, data):
    if self._cell is not None:
      self._cell += data

  def handle_endtag(self, tag):
    if tag in ('td', 'th') and self._cell is not None:
      self._row.append(self._cell)
      self._cell = None
    elif tag == 'tr':
      self.rows.append(self._row)
      self._row = None


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  """A small model of the seed's architecture with random weights, 110 bp input."""
  config = dataclasses.replace(config_lib.seed_config(110), channels=48,
                               num_transformer_layers=1, num_heads=2, key_size=8,
                               conv_tower_divisible_by=8)
  params, state = random_variables(config, seed=3)
  path = tmp_path_factory.mktemp('motifs') / 'tiny.npz'
  checkpoint.save_checkpoint(path, params=params, state=state, model_config=config)
  return str(path)


def test_the_command_writes_the_table_logos_and_a_page_that_loads(tmp_path,
                                                                   tiny_checkpoint):
  from experiments import motifs as command
  out = tmp_path / 'out'
  found = in_process.run(command, f'--checkpoint={tiny_checkpoint}',
                         '--synthetic_rows=300', f'--output_dir={out}', '--noprogress')
  table = [line.split('\t') for line in (out / 'motifs.tsv').read_text().splitlines()]
  assert len(found) >= 1 and len(table) == len(found) + 1
  assert table[0][:5] == ['motif', 'sign', 'seqlets', 'width', 'consensus']
  page = _Page()
  page.feed((out / 'index.html').read_text())
  assert page.images and all((out / src).is_file() for src in page.images)
  assert len(page.images) == 2 * len(found)
  assert [row[:len(table[0])] for row in page.rows] == table
  assert len(motif_db.read_meme(str(out / 'motifs.meme'))) == len(found)
  seqlets = (out / 'seqlets.tsv').read_text().splitlines()
  assert len(seqlets) == 1 + sum(m.seqlets for m in found)


def test_scan_mode_writes_hits_and_site_changes(tmp_path):
  from experiments import motifs as command
  fasta, pairs = tmp_path / 'in.fa', tmp_path / 'pairs.tsv'
  ref = with_site('TTACCCGG', 30, seed=4)
  fasta.write_text(f'>reb1\n{ref}\n')
  broken = ref[:50] + ('T' if ref[50] != 'T' else 'A') + ref[51:]
  pairs.write_text(f'snv\t{ref}\t{broken}\n')
  hits = in_process.run(command, '--scan', f'--input={fasta}', f'--output_dir={tmp_path}')
  rows = [line.split('\t') for line in (tmp_path / 'hits.tsv').read_text().splitlines()]
  assert len(rows) == len(hits) + 1
  # JASPAR's REB1 is 9 bp (aTTACCCGG): its site starts a base before the planted 8.
  assert ['reb1', 'MA0363.3', 'REB1', '47', '55', '+'] in [r[:6] for r in rows]
  in_process.run(command, '--scan', f'--pairs={pairs}', f'--output_dir={tmp_path}')
  rows = [line.split('\t') for line in
          (tmp_path / 'site_changes.tsv').read_text().splitlines()]
  assert ['snv', 'lost', 'MA0363.3', 'REB1', '47', '55', '+'] in [r[:7] for r in rows]
