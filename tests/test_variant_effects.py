"""Variant effects (enformer_small.variant_effects, experiments.variant_effects).

- An SNV's effect is the matching ISM entry; an edit outside the model's window has
  effect 0 and says so.
- A table of edits (substitutions, insertions, deletions) gives what the pairs built by
  hand give; a ref that does not match the sequence, and every other bad line, is one
  error naming the file and line.
- Both sequences of a pair go through the one inference path (`inference.Predictor`:
  the checkpoint's window [15:100] of the 110 bp encoding here); positions are those of
  the sequence.
- The command (in this process) writes those effects, from a converted checkpoint too.
- Slow tier (test_slow_variant_effects.py): on the real test set (skips without
  ../shared), the DREAM SNV, motif perturbation and motif tiling pairs scored as pairs
  give the official scorer's per-subset correlations on per-sequence predictions, with
  the seed's converted TF/Sonnet model; the command on the command line.
"""

import gzip

import numpy as np
import pytest

from enformer_small import attribution
from enformer_small import checkpoint
from enformer_small import config as config_lib
from enformer_small import dream_data
from enformer_small import inference
from enformer_small import model as model_lib
from enformer_small import variant_effects
import in_process
from random_model import converted_seed_model, random_variables

FLANK_5, FLANK_3 = dream_data.FLANK_5, dream_data.FLANK_3
BATCH = 64  # Rows per forward pass, as in test_attribution.py: one compilation.


def random_sequences(n, seed):
  rng = np.random.default_rng(seed)
  return [FLANK_5 + ''.join(rng.choice(list('ACGT'), 80)) + FLANK_3 for _ in range(n)]


@pytest.fixture(scope='module')
def random_checkpoint(tmp_path_factory):
  """A saved 85 bp model with random, non-trivial weights and BatchNorm averages."""
  config = config_lib.seed_config(85)
  params, state = random_variables(config, seed=3)
  path = tmp_path_factory.mktemp('variants') / 'random.npz'
  checkpoint.save_checkpoint(path, params=params, state=state, model_config=config)
  return checkpoint.load_checkpoint(path)


@pytest.fixture(scope='module')
def converted_checkpoint(seed_fixtures_dir, tmp_path_factory):
  """The seed's TF/Sonnet fixture model, converted and saved as experiments.convert does."""
  config, params, state = converted_seed_model(
      str(seed_fixtures_dir / 'checkpoint' / 'ckpt'))
  path = tmp_path_factory.mktemp('converted') / 'seed_85bp.npz'
  checkpoint.save_checkpoint(path, params=params, state=state, model_config=config)
  return checkpoint.load_checkpoint(path)


def predictor_of(ckpt, batch_size=BATCH, **options):
  """The checkpoint's predictor (its window, shifts and strands unless overridden)."""
  return inference.from_checkpoint(
      ckpt, inference.InferenceOptions(batch_size=batch_size, **options))


def model_alone(ckpt, x):
  """float32 [N, 1]: `model.predict_fn` of each one-hot window [N, 85, 4] on its own
  (the compilation test_attribution's brute-force ISM makes too)."""
  predict = model_lib.predict_fn(ckpt.model_config)
  return np.concatenate([np.asarray(predict(ckpt.params, ckpt.state, w[None])) for w in x])


def window_codes(sequences):
  """The 85 bp window [15:100] of the 110 bp encodings, by hand."""
  return dream_data.encode_sequences(list(sequences))[:, 15:100]


# ---------------------------------------------------------------------------
# Effects.


def test_snv_effects_equal_the_matching_ism_entries(random_checkpoint):
  ckpt = random_checkpoint
  predictor = predictor_of(ckpt)
  window = predictor.windows
  assert (window.start, window.length) == (15, 85)
  np.testing.assert_array_equal(np.flatnonzero(predictor.covered()), np.arange(15, 100))
  sequences = random_sequences(2, seed=4)
  x = dream_data.one_hot(predictor.layout.encode(sequences).codes)
  ism = attribution.ism(predictor, x)
  assert ism.shape == (2, 110, 4, 1)
  assert (ism[:, :15] == 0).all() and (ism[:, 100:] == 0).all()
  edits, expected = [], []
  for n, position, base in [(0, 16, 'A'), (0, 60, 'C'), (1, 100, 'G'), (1, 17, 'T'),
                            (1, 58, 'A'), (0, 99, 'G')]:
    ref = sequences[n][position - 1]
    if ref == base:
      base = 'ACGT'[('ACGT'.index(base) + 1) % 4]
    edits.append(variant_effects.Edit(sequences[n], position, ref, base))
    expected.append(ism[n, position - 1, 'ACGT'.index(base), 0])  # sequence position
  effects = variant_effects.edit_effects(predictor, edits)
  assert np.abs(expected).min() > 0
  np.testing.assert_allclose(effects.effect[:, 0], expected, rtol=0, atol=2e-5)
  assert effects.window_changed.all()
  outside = variant_effects.Edit(sequences[0], 5, sequences[0][4], 'N')
  effects = variant_effects.edit_effects(predictor, [outside])
  assert effects.effect[0, 0] == 0 and not effects.window_changed[0]


def test_edits_table_equals_the_pairs_built_by_hand(random_checkpoint, tmp_path):
  ckpt = random_checkpoint
  s, t = random_sequences(2, seed=5)
  lines = ['# a comment', 'sequence\tposition\tref\talt',
           f'{s}\t30\t{s[29]}\t{"C" if s[29] != "C" else "G"}',  # SNV
           f'{s}\t40\t{s[39:42].lower()}\tTT',                    # 3 bases -> 2, lowercase
           f'{t}\t50\t-\tGATTACA',                                 # insertion before 50
           f'{t}\t20\t{t[19:24]}\t-',                              # deletion of 20-24
           f'{t.lower()}\t110\t{t[109].lower()}\tA']               # last base
  path = tmp_path / 'edits.tsv.gz'
  path.write_bytes(gzip.compress(('\r\n'.join(lines) + '\r\n').encode()))
  edits = variant_effects.read_edits(str(path))
  by_hand = [(s, s[:29] + ('C' if s[29] != 'C' else 'G') + s[30:]),
             (s, s[:39] + 'TT' + s[42:]),
             (t, t[:49] + 'GATTACA' + t[49:]),
             (t, t[:19] + t[24:]),
             (t.lower(), t.lower()[:109] + 'A')]
  assert [(e.sequence, e.apply()) for e in edits] == by_hand
  predictor = predictor_of(ckpt)
  from_table = variant_effects.edit_effects(predictor, edits)
  from_pairs = variant_effects.pair_effects(predictor, *zip(*by_hand))
  np.testing.assert_array_equal(from_table.effect, from_pairs.effect)
  np.testing.assert_array_equal(from_table.ref, from_pairs.ref)
  # Each prediction is the model's own on that window.
  direct = model_alone(ckpt, dream_data.one_hot(window_codes([p[1] for p in by_hand])))
  np.testing.assert_allclose(from_table.alt, direct, rtol=1e-5, atol=1e-5)
  assert not np.allclose(from_table.effect, 0)


def test_reverse_complement_average_is_the_mean_of_both_strands(random_checkpoint):
  ckpt = random_checkpoint
  refs, alts = random_sequences(3, seed=6), random_sequences(3, seed=7)
  both = variant_effects.pair_effects(
      predictor_of(ckpt, reverse_complement_average=True), refs, alts)
  def strands(sequences):
    x = dream_data.one_hot(window_codes(sequences))
    return (model_alone(ckpt, x) + model_alone(ckpt, x[:, ::-1, ::-1])) / 2
  np.testing.assert_allclose(both.effect, strands(alts) - strands(refs), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------
# Reading.


@pytest.mark.parametrize('line, message', [
    ('ACGTACGT\t3\tA\tC', r':2: ref \'A\' does not match the sequence, which has \'G\' at '
                          'position 3'),
    ('ACGTACGT\tthree\tG\tC', ':2: position \'three\' is not a whole number'),
    ('ACGTACGT\t9\tG\tC', ':2: position 9 .* outside the 8 bp sequence'),
    ('ACGTACGT\t8\tTA\tC', ':2: position 8 .* outside the 8 bp sequence'),
    ('ACGTACGT\t0\t-\tC', ':2: position 0 .* outside'),
    ('ACGT ACGT\t3\tG\tC', ':2: sequence .* is not a sequence'),
    ('ACGTACGT\t3\tG\tC1', ':2: alt \'C1\' is not bases'),
    ('ACGTACGT\t3\t-\t-', ':2: ref and alt are both empty'),
    ('ACGTACGT\t3\tG', ':2: expected "sequence<TAB>position<TAB>ref<TAB>alt", got 3'),
])
def test_bad_edit_lines_are_errors_naming_file_and_line(tmp_path, line, message):
  path = tmp_path / 'edits.tsv'
  path.write_text('ACGTACGT\t1\tA\tT\n' + line + '\nACGTACGT\t2\tC\tT\n')
  with pytest.raises(variant_effects.VariantInputError, match=f'^{path}{message}'):
    variant_effects.read_edits(str(path))


def test_edge_edits_parse():
  """Insertion after the last base (position L + 1), and '-' for empty ref/alt."""
  edit = variant_effects.parse_edit('f', 1, ['ACGT', '5', '-', 'GG'])
  assert edit.apply() == 'ACGTGG'
  assert variant_effects.parse_edit('f', 1, ['ACGT', '1', 'AC', '-']).apply() == 'GT'


def test_pairs_file_with_and_without_names(tmp_path):
  two = tmp_path / 'two.tsv'
  two.write_text('ref_sequence\talt_sequence\nACGT\tACGA\n#x\nGGGG\tGGG\n')
  assert variant_effects.read_pairs(str(two)) == (['2', '4'], ['ACGT', 'GGGG'],
                                                  ['ACGA', 'GGG'])
  three = tmp_path / 'three.tsv'
  three.write_text('snv1\tACGT\tACGA\nsnv2\tACGT\tTCGT\n')
  assert variant_effects.read_pairs(str(three))[0] == ['snv1', 'snv2']
  bad = tmp_path / 'bad.tsv'
  bad.write_text('a\tACGT\tACGA\nACGT\tACGA\n')
  with pytest.raises(variant_effects.VariantInputError, match=f'^{bad}:2: .*3 fields'):
    variant_effects.read_pairs(str(bad))
  bad.write_text('ACGT\tAC-GA\n')
  with pytest.raises(variant_effects.VariantInputError, match=f'^{bad}:1: alt sequence'):
    variant_effects.read_pairs(str(bad))


def test_read_sequences_fasta_plain_and_dream(tmp_path):
  fasta = tmp_path / 'a.fa'
  fasta.write_text('>one desc\nACGT\nacg\n\n>two\nTTTT\n')
  assert variant_effects.read_sequences(str(fasta)) == (['one', 'two'], ['ACGTacg', 'TTTT'])
  dream = tmp_path / 'a.txt'
  dream.write_text('ACGT\t11.5\nGGCC\t3\n')
  assert variant_effects.read_sequences(str(dream)) == (['1', '2'], ['ACGT', 'GGCC'])
  dream.write_text('ACGT\n>x\n')  # '>' after line 1: no FASTA, the DREAM reader's error
  with pytest.raises(variant_effects.VariantInputError) as info:
    variant_effects.read_sequences(str(dream))
  assert str(info.value) == (f"{dream}:2: invalid character '>' at position 1 of the "
                             'sequence; expected letters (A, C, G, T, N)')
  fasta.write_text('>one\n>two\nACGT\n')
  with pytest.raises(variant_effects.VariantInputError, match="record 'one' has no"):
    variant_effects.read_sequences(str(fasta))


# ---------------------------------------------------------------------------
# The command, in this process.


def run_command(capsys, *args):
  """experiments.variant_effects's main: (exit status, stdout, stderr)."""
  from experiments import variant_effects as command
  with in_process.command_flags(command, *args):
    try:
      command.main(['prog'])
      status = 0
    except SystemExit as e:
      status = e.code
  out, err = capsys.readouterr()
  return status, out, err


def check_command_output(ckpt, edits, out, s, t):
  header, *rows = [line.split('\t') for line in out.read_text().splitlines()]
  assert header == ['sequence', 'position', 'ref', 'alt', 'window_changed',
                    'ref_prediction', 'alt_prediction', 'effect']
  assert [r[:5] for r in rows] == [[s, '30', s[29], 'N', '1'], [t, '3', t[2], 'A', '0'],
                                   [t, '60', '-', 'AC', '1']]
  expected = variant_effects.edit_effects(predictor_of(ckpt),
                                          variant_effects.read_edits(str(edits)))
  np.testing.assert_allclose(np.array([r[5:] for r in rows], float),
                             np.stack([expected.ref[:, 0], expected.alt[:, 0],
                                       expected.effect[:, 0]], 1), rtol=1e-6, atol=1e-6)


def test_command_writes_the_effects_of_a_converted_checkpoint(converted_checkpoint,
                                                              tmp_path, capsys):
  ckpt = converted_checkpoint
  s, t = random_sequences(2, seed=8)
  edits = tmp_path / 'edits.tsv'
  edits.write_text(f'{s}\t30\t{s[29]}\tN\n{t}\t3\t{t[2]}\tA\n{t}\t60\t-\tAC\n')
  out = tmp_path / 'effects.tsv'
  status, _, err = run_command(capsys, f'--checkpoint={ckpt.path}', f'--edits={edits}',
                               f'--output_tsv={out}', f'--batch_size={BATCH}',
                               '--noprogress')
  assert status == 0, err[-3000:]
  check_command_output(ckpt, edits, out, s, t)
  edits.write_text(f'{s}\t30\t{s[29]}\tN\n{t}\t3\t{"A" if t[2] != "A" else "C"}\tG\n')
  status, _, err = run_command(capsys, f'--checkpoint={ckpt.path}', f'--edits={edits}',
                               f'--output_tsv={tmp_path / "x.tsv"}')
  assert status == 1 and 'Traceback' not in err
  assert err.strip().splitlines()[-1].startswith(f'error: {edits}:2: ref ')
  assert not (tmp_path / 'x.tsv').exists()
