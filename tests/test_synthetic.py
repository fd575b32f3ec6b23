"""Specification of the synthetic DREAM-format data (enformer_small.synthetic)."""

import dataclasses
import gzip
import re

import numpy as np
import pytest

from enformer_small import synthetic

FLANK_5 = 'TGCATTTTTTTCACATC'
FLANK_3 = 'GGTTACGGCTGTT'
# An 80 bp random region with no factor site of note (every saturation < 0.05) and
# G+C content 0.46 (picked once from random sequences; see test_neutral_background_...).
NEUTRAL = 'TCGCTCCTGGGGAAGTGAATATTACTTACGAACAGAGGAGTGTCCCCTTGATGTGCAGAGATGACCTTGTGGGAAATTAA'
REB1 = 'TTACCCGG'
REB1_REVERSE = 'CCGGGTAA'
LINE = re.compile(r'^([ACGTN]+)\t(\d{1,2}(?:\.\d+)?)$')

# Small blocks so that a few thousand rows already span several independent blocks.
SMALL = synthetic.SyntheticConfig(num_rows=3_000, seed=7, block_rows=1_000)


def _insert(region: str, site: str, position: int) -> str:
  return region[:position] + site + region[position + len(site):]


def _noise_free(region: str) -> float:
  return float(synthetic.noise_free_expression([FLANK_5 + region + FLANK_3])[0])


def _write(tmp_path, config, name='data.txt', **kwargs):
  path = tmp_path / name
  report = synthetic.write_synthetic_file(str(path), config, **kwargs)
  return path, report


@pytest.fixture(scope='module')
def rows_20k():
  return synthetic.generate(synthetic.SyntheticConfig(num_rows=20_000, seed=11))


def test_every_line_is_sequence_tab_expression_with_flanks(tmp_path):
  """Each line: ACGTN sequence starting/ending with the flanks, a tab, expression 0..17."""
  path, report = _write(tmp_path, SMALL)
  lines = path.read_text().split('\n')
  assert lines[-1] == ''  # the file ends with a newline
  lines = lines[:-1]
  assert len(lines) == SMALL.num_rows == report.rows
  for number, line in enumerate(lines, 1):
    match = LINE.match(line)
    assert match, f'line {number}: {line!r}'
    sequence, expression = match.group(1), float(match.group(2))
    assert sequence.startswith(FLANK_5) and sequence.endswith(FLANK_3), number
    assert 0.0 <= expression <= 17.0, number
    assert 'N' not in sequence[:17] + sequence[-13:], number


def test_file_contents_equal_the_generated_rows(tmp_path):
  """The file holds exactly generate()'s sequences and (rounded) expressions."""
  path, _ = _write(tmp_path, SMALL)
  rows = synthetic.generate(SMALL)
  sequences, expressions = zip(*(line.split('\t') for line in path.read_text().splitlines()))
  assert list(sequences) == rows.sequences()
  np.testing.assert_array_equal(np.array(expressions, dtype=np.float64), rows.expression)
  assert [len(s) for s in sequences] == rows.lengths.tolist()
  assert path.read_bytes() == rows.to_bytes()


def test_same_seed_gives_same_bytes_and_another_seed_other_bytes(tmp_path):
  a, _ = _write(tmp_path, SMALL, 'a.txt')
  b, _ = _write(tmp_path, SMALL, 'b.txt')
  c, _ = _write(tmp_path, dataclasses.replace(SMALL, seed=8), 'c.txt')
  assert a.read_bytes() == b.read_bytes()
  assert a.read_bytes() != c.read_bytes()
  first_a, first_c = a.read_text().splitlines()[0], c.read_text().splitlines()[0]
  assert first_a != first_c


def test_chunked_generation_equals_unchunked():
  """Rows come out the same whatever range (chunk) they are generated in."""
  whole = synthetic.generate(SMALL)
  pieces = [synthetic.generate(SMALL, lo, hi)
            for lo, hi in [(0, 1), (1, 999), (999, 1_001), (1_001, 2_500), (2_500, 3_000)]]
  assert b''.join(p.to_bytes() for p in pieces) == whole.to_bytes()
  np.testing.assert_array_equal(np.concatenate([p.noise_free for p in pieces]),
                                whole.noise_free)


def test_first_rows_do_not_depend_on_num_rows():
  short = synthetic.generate(dataclasses.replace(SMALL, num_rows=1_234))
  assert short.to_bytes() == synthetic.generate(SMALL, 0, 1_234).to_bytes()


def test_worker_processes_do_not_change_the_bytes(tmp_path):
  serial, serial_report = _write(tmp_path, SMALL, 'serial.txt', workers=1)
  parallel, parallel_report = _write(tmp_path, SMALL, 'parallel.txt', workers=2)
  assert serial.read_bytes() == parallel.read_bytes()
  assert serial_report.noise_ceiling_pearson == pytest.approx(
      parallel_report.noise_ceiling_pearson, abs=1e-12)


def test_gzip_output_holds_the_same_bytes_reproducibly(tmp_path):
  plain, _ = _write(tmp_path, SMALL, 'data.txt')
  packed, report = _write(tmp_path, SMALL, 'data.txt.gz')
  again, _ = _write(tmp_path, SMALL, 'again.txt.gz')
  assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
  assert packed.read_bytes() == again.read_bytes()
  assert report.bytes_written == packed.stat().st_size


def test_length_variants_and_ns_occur_at_the_configured_rates():
  """~18% of random regions are not 80 bp (mostly 79), lengths stay in the real range;
  rows with N follow n_row_share and their Ns sit in the random region."""
  config = synthetic.SyntheticConfig(num_rows=20_000, seed=3, n_row_share=0.05)
  rows = synthetic.generate(config)
  variant = rows.random_lengths != 80
  assert variant.mean() == pytest.approx(0.18, abs=0.015)
  assert np.mean(rows.random_lengths[variant] == 79) == pytest.approx(0.70, abs=0.05)
  assert rows.lengths.min() >= 80 and rows.lengths.max() <= 135
  valid = np.arange(rows.random_codes.shape[1]) < rows.random_lengths[:, None]
  with_n = ((rows.random_codes == 4) & valid).any(axis=1)
  assert with_n.mean() == pytest.approx(0.05, abs=0.01)
  assert all('N' not in s[:17] and 'N' not in s[-13:] for s in rows.sequences()[:2_000])


def test_default_rates_of_n_rows_and_variants(rows_20k):
  valid = np.arange(rows_20k.random_codes.shape[1]) < rows_20k.random_lengths[:, None]
  with_n = ((rows_20k.random_codes == 4) & valid).any(axis=1).mean()
  assert 0.001 < with_n < 0.01  # configured 0.004; real data 25 of 6,370 rows
  assert 0.16 < np.mean(rows_20k.random_lengths != 80) < 0.20


def test_integer_share_follows_the_config(rows_20k):
  is_integer = rows_20k.expression == np.rint(rows_20k.expression)
  assert is_integer.mean() == pytest.approx(0.58, abs=0.015)
  none = synthetic.generate(dataclasses.replace(SMALL, integer_share=0.0))
  assert np.mean(none.expression == np.rint(none.expression)) < 0.01


def test_expression_distribution_resembles_the_real_training_data(rows_20k, shared_dir):
  """Mean and sd within 0.3 of train_6370.txt (11.15, 2.35); range 0..17."""
  real = np.array([float(line.split('\t')[1])
                   for line in (shared_dir / 'train_6370.txt').read_text().splitlines()])
  assert rows_20k.expression.mean() == pytest.approx(real.mean(), abs=0.3)
  assert rows_20k.expression.std() == pytest.approx(real.std(), abs=0.3)
  assert rows_20k.expression.min() >= 0 and rows_20k.expression.max() <= 17


def test_noise_ceiling_is_the_pearson_of_noise_free_with_written_expression(tmp_path):
  path, report = _write(tmp_path, SMALL)
  rows = synthetic.generate(SMALL)
  expected = np.corrcoef(rows.noise_free, rows.expression)[0, 1]
  assert report.noise_ceiling_pearson == pytest.approx(expected, abs=1e-10)
  assert report.expression_mean == pytest.approx(rows.expression.mean(), abs=1e-10)
  assert report.expression_sd == pytest.approx(rows.expression.std(), abs=1e-10)
  assert report.expression_min == rows.expression.min()
  assert report.expression_max == rows.expression.max()
  assert report.integer_share == np.mean(rows.expression == np.rint(rows.expression))
  assert synthetic.pearson(rows.noise_free, rows.expression) == pytest.approx(
      expected, abs=1e-12)


def test_default_noise_ceiling_is_between_085_and_090(rows_20k):
  ceiling = np.corrcoef(rows_20k.noise_free, rows_20k.expression)[0, 1]
  assert 0.85 <= ceiling <= 0.90


def test_no_noise_means_ceiling_near_one():
  rows = synthetic.generate(dataclasses.replace(SMALL, noise_sd=0.0, integer_share=0.0))
  assert np.corrcoef(rows.noise_free, rows.expression)[0, 1] > 0.9999


def test_neutral_background_has_no_site_of_note():
  codes, lengths = synthetic.split_random_regions([FLANK_5 + NEUTRAL + FLANK_3])
  assert synthetic.motif_saturations(codes, lengths).max() < 0.05


def test_an_activator_site_raises_expression():
  """A Reb1 consensus site near the TSS side raises the noise-free expression."""
  assert _noise_free(_insert(NEUTRAL, REB1, 60)) > _noise_free(NEUTRAL) + 2.0


def test_the_reverse_complement_site_counts_too():
  base = _noise_free(NEUTRAL)
  forward = _noise_free(_insert(NEUTRAL, REB1, 60)) - base
  reverse = _noise_free(_insert(NEUTRAL, REB1_REVERSE, 60)) - base
  assert reverse > 2.0
  assert reverse == pytest.approx(forward, rel=0.2)


def test_a_repressor_site_lowers_expression():
  """Rox1 (YYNATTGTTY) represses."""
  assert _noise_free(_insert(NEUTRAL, 'TTAATTGTTT', 60)) < _noise_free(NEUTRAL) - 2.0


def test_a_site_broken_by_an_n_is_not_bound():
  """Windows containing N are not bound: an N in the Reb1 site removes its effect."""
  intact = _noise_free(_insert(NEUTRAL, REB1, 60)) - _noise_free(NEUTRAL)
  broken = _noise_free(_insert(NEUTRAL, 'TTACCNGG', 60)) - _noise_free(NEUTRAL)
  assert abs(broken) < 0.1 * intact


def test_activators_act_more_near_the_tss_side():
  """'proximal' profile: the same site counts more near the 3' end of the random region."""
  near = _noise_free(_insert(NEUTRAL, REB1, 68))
  far = _noise_free(_insert(NEUTRAL, REB1, 4))
  assert near > far + 0.5


def test_gcn4_and_tata_act_in_synergy():
  base = _noise_free(NEUTRAL)
  gcn4 = _noise_free(_insert(NEUTRAL, 'TGACTCA', 50)) - base
  tata = _noise_free(_insert(NEUTRAL, 'TATAAAAG', 62)) - base
  both = _noise_free(_insert(_insert(NEUTRAL, 'TGACTCA', 50), 'TATAAAAG', 62)) - base
  assert both > gcn4 + tata + 1.0


def test_ume6_silences_activators():
  """A Ume6 site (URS1) shrinks the effect of a Reb1 site."""
  alone = _noise_free(_insert(NEUTRAL, REB1, 60)) - _noise_free(NEUTRAL)
  silenced_base = _insert(NEUTRAL, 'TAGCCGCCGA', 20)
  silenced = _noise_free(_insert(silenced_base, REB1, 60)) - _noise_free(silenced_base)
  assert silenced < 0.7 * alone


def test_expression_is_a_function_of_the_sequence(rows_20k):
  """Recomputing from the sequences alone gives the generator's noise-free values."""
  np.testing.assert_allclose(
      synthetic.noise_free_expression(rows_20k.sequences()[:3_000]),
      rows_20k.noise_free[:3_000], rtol=0, atol=0)


def test_sequences_without_flanks_are_rejected():
  with pytest.raises(ValueError, match='flanks'):
    synthetic.noise_free_expression([NEUTRAL])


def test_pwms_are_distributions_and_the_consensus_scores_best():
  for motif in synthetic.DEFAULT_MOTIFS:
    probs = synthetic.pwm(motif)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    reverse = synthetic.reverse_complement_pwm(probs)
    np.testing.assert_allclose(synthetic.reverse_complement_pwm(reverse), probs)
  reb1 = synthetic.pwm(synthetic.ExpressionModel().motif('Reb1'))
  assert ''.join('ACGT'[i] for i in reb1.argmax(axis=1)) == REB1


def _kmer_counts(codes: np.ndarray, max_k: int) -> np.ndarray:
  """[n, sum 4**k]: counts of every k-mer (k = 1..max_k) over windows without N."""
  n, length = codes.shape
  features = []
  for k in range(1, max_k + 1):
    positions = length - k + 1
    index = np.zeros((n, positions), dtype=np.int64)
    ok = np.ones((n, positions), dtype=bool)
    for j in range(k):
      index = index * 4 + (codes[:, j:j + positions] & 3)
      ok &= codes[:, j:j + positions] < 4
    flat = (np.arange(n)[:, None] * 4 ** k + index)[ok]
    features.append(np.bincount(flat, minlength=n * 4 ** k).reshape(n, 4 ** k))
  return np.concatenate(features, axis=1).astype(np.float64)


def test_ridge_on_kmer_counts_learns_the_signal(rows_20k):
  """The signal is learnable from modest data: ridge regression on 1..4-mer counts of
  16k rows reaches a clearly positive Pearson r (~0.55) on 4k held-out rows."""
  x = _kmer_counts(rows_20k.random_codes, 4)
  y = rows_20k.expression
  train, test = slice(0, 16_000), slice(16_000, None)
  mean, scale = x[train].mean(axis=0), x[train].std(axis=0) + 1e-6
  a, b = (x[train] - mean) / scale, (x[test] - mean) / scale
  weights = np.linalg.solve(a.T @ a + 100.0 * np.eye(a.shape[1]),
                            a.T @ (y[train] - y[train].mean()))
  r = np.corrcoef(b @ weights, y[test])[0, 1]
  assert r > 0.45
  # and no model can beat the noise ceiling by much
  assert r < np.corrcoef(rows_20k.noise_free[test], y[test])[0, 1]


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match='integer_share'):
    synthetic.SyntheticConfig(integer_share=1.5)
  with pytest.raises(ValueError, match='seed'):
    synthetic.SyntheticConfig(seed=-1)


def test_files_read_back_with_the_project_reader(tmp_path):
  """dream_data.read_dream_file accepts the file; codes and expressions round-trip."""
  dream_data = pytest.importorskip('enformer_small.dream_data')
  path, _ = _write(tmp_path, SMALL)
  data = dream_data.read_dream_file(str(path), use_cache=False)
  rows = synthetic.generate(SMALL)
  np.testing.assert_array_equal(data.codes, rows.codes())
  np.testing.assert_array_equal(data.lengths, rows.lengths)
  np.testing.assert_array_equal(data.expression, rows.expression.astype(np.float32))
  np.testing.assert_array_equal(rows.codes(), dream_data.encode_sequences(rows.sequences()))
