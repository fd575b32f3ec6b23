"""The one inference path (`enformer_small.inference`) and the commands built on it.

On the `tiny_run` checkpoint (tests/conftest.py: trained with 10 bp of plasmid context,
evaluated over shifts -2, 0, 2 on both strands, a soft-bin head), through the commands'
own `run()` in this process:

- `experiments.predict`'s value for a sequence is the `ref_prediction` that
  `experiments.variant_effects` writes for it, and its value for the edited sequence the
  `alt_prediction`;
- an ISM effect of `experiments.attribute` is predict's value of the mutant minus its
  value of the reference;
- the gradient methods' scorer (`Predictor.scorer`), which averages the same windows on
  the device, gives predict's value to float32 rounding.

And the parts: `Layout` (encoding, a fixed-length table, the plasmid context),
`InferenceOptions` overrides, `predict_rows` (the given rows in order, each pass's
windows averaged, the padding dropped) and `Windows.cut`. The global batches over
several processes, and the windows evaluation cuts, are in test_dataset.py.
"""

import os

import jax
import numpy as np
import pytest

from enformer_small import checkpoint
from enformer_small import dream_data
from enformer_small import inference
from enformer_small import plasmid
from enformer_small import tables
from enformer_small import training
from enformer_small import window_average
from experiments import attribute
from experiments import predict
from experiments import variant_effects as variant_effects_command
import in_process

FLANK_5, FLANK_3 = dream_data.FLANK_5, dream_data.FLANK_3
BATCH = 64  # Every pass at one batch size: one compilation of the model (and test_trainer's).


def dream_rows(n, seed):
  rng = np.random.default_rng(seed)
  return [FLANK_5 + ''.join(rng.choice(list('ACGT'), 80)) + FLANK_3 for _ in range(n)]


def checkpoint_path(tiny_run):
  config, _ = tiny_run
  return os.path.join(config.run_dir, checkpoint.BEST_NAME)


def other(base):
  return 'ACGT'[('ACGT'.index(base.upper()) + 1) % 4]


# ---------------------------------------------------------------------------
# The commands agree: one predict run holds every sequence the others predict.

REFS = dream_rows(3, seed=11)
REFS[1] = REFS[1][:60] + 'NN' + REFS[1][62:]  # an N inside the windows
REFS[2] = REFS[2].lower()
# (sequence, 1-based position, ref, alt): an SNV, an insertion, a deletion, an edit in
# the 5' flank (read by every window: the plasmid context puts the flank inside them).
EDITS = [(0, 50, None, None), (1, 30, '-', 'GAT'), (2, 70, 3, '-'), (0, 2, None, None)]
ISM_AT = [0, 17, 55, 109]  # 0-based positions in REFS[0], one substitution each


def edit_rows():
  rows = []
  for n, position, ref, alt in EDITS:
    s = REFS[n]
    if ref is None:
      ref, alt = s[position - 1], other(s[position - 1])
    elif isinstance(ref, int):
      ref = s[position - 1:position - 1 + ref]
    rows.append((s, position, ref, alt))
  return rows


def edited(s, position, ref, alt):
  ref, alt = ('' if v == '-' else v for v in (ref, alt))
  return s[:position - 1] + alt + s[position - 1 + len(ref):]


def ism_mutants():
  s = REFS[0]
  return [(p, 'ACGT'.index(other(s[p])), s[:p] + other(s[p]) + s[p + 1:])
          for p in ISM_AT]


@pytest.fixture(scope='module')
def predicted(tiny_run, tmp_path_factory):
  """experiments.predict of the refs, the edited sequences and some ISM mutants:
  {sequence: float32 prediction} as returned and as written."""
  tmp = tmp_path_factory.mktemp('inference')
  sequences = (REFS + [edited(*row) for row in edit_rows()]
               + [m for _, _, m in ism_mutants()])
  data = tmp / 'input.txt'
  data.write_text(''.join(s + '\n' for s in sequences))
  out = tmp / 'out.tsv'
  result = in_process.run(predict, f'--checkpoint={checkpoint_path(tiny_run)}',
                          f'--input={data}', f'--output_tsv={out}',
                          f'--batch_size={BATCH}', '--noprogress')
  written = [line.split('\t') for line in out.read_text().splitlines()]
  assert [w[0] for w in written] == sequences
  values = result['predictions']
  assert values.dtype == np.float32 and values.shape == (len(sequences),)
  np.testing.assert_array_equal([np.float32(w[1]) for w in written], values)
  assert np.std(values) > 1e-3  # the sequences give different predictions
  return dict(zip(sequences, values)), tmp


def test_variant_effects_writes_predicts_values_of_ref_and_alt(tiny_run, predicted,
                                                                capsys):
  by_sequence, tmp = predicted
  rows = edit_rows()
  edits = tmp / 'edits.tsv'
  edits.write_text(''.join(f'{s}\t{p}\t{r}\t{a}\n' for s, p, r, a in rows))
  out = tmp / 'effects.tsv'
  effects = in_process.run(variant_effects_command,
                           f'--checkpoint={checkpoint_path(tiny_run)}',
                           f'--edits={edits}', f'--output_tsv={out}',
                           f'--batch_size={BATCH}', '--noprogress')
  assert 'shift (-2,0,2) averaging' in capsys.readouterr().out
  ref = np.array([by_sequence[s] for s, _, _, _ in rows], np.float32)
  alt = np.array([by_sequence[edited(*row)] for row in rows], np.float32)
  # The same forward pass on the same windows in batches of the same size: exact.
  np.testing.assert_array_equal(effects.ref[:, 0], ref, strict=True)
  np.testing.assert_array_equal(effects.alt[:, 0], alt, strict=True)
  assert effects.window_changed.all()  # the context: even the flank edit is read
  header, *lines = [line.split('\t') for line in out.read_text().splitlines()]
  assert header[-3:] == ['ref_prediction', 'alt_prediction', 'effect']
  written = np.array([line[-3:] for line in lines], np.float64)  # 8 digits written
  np.testing.assert_allclose(written[:, 0], ref, rtol=1e-6, atol=0)
  np.testing.assert_allclose(written[:, 1], alt, rtol=1e-6, atol=0)
  assert np.abs(written[:, 2]).min() > 0


def test_an_ism_effect_is_the_difference_of_two_predictions(tiny_run, predicted):
  """experiments.attribute's ISM at sequence positions [0, 110): every position is
  read by some window (the plasmid context); the effect of a substitution is predict's
  value of the mutant minus its value of the reference."""
  by_sequence, tmp = predicted
  data = tmp / 'one.fa'
  data.write_text(f'>ref\n{REFS[0]}\n')
  out = tmp / 'attribute'
  found = in_process.run(attribute, f'--checkpoint={checkpoint_path(tiny_run)}',
                         f'--input={data}', f'--output_dir={out}', '--methods=ism',
                         '--num_figures=0', f'--batch_size={BATCH}', '--noprogress')
  saved = np.load(out / 'attributions.npz')
  ism = saved['ism']
  assert ism.shape == (1, 110, 4, 1)
  np.testing.assert_array_equal(ism, found['ism'])
  np.testing.assert_allclose(saved['predictions'][0, 0], by_sequence[REFS[0]],
                             rtol=1e-6, atol=0)
  x = dream_data.one_hot(saved['codes'])
  assert (ism[x == 1] == 0).all() and np.count_nonzero(ism) == 3 * 110
  reference = by_sequence[REFS[0]]
  for position, base, mutant in ism_mutants():
    difference = np.float32(by_sequence[mutant]) - np.float32(reference)
    # ISM predicts the reference alone (in a batch of 8) and predict in one of 64:
    # each to float32 rounding, so their differences agree to a few ulps of 17.
    np.testing.assert_allclose(ism[0, position, base, 0], difference, rtol=0,
                               atol=4 * np.finfo(np.float32).eps * 17)
  assert np.abs(ism).max() > 1e-3


def test_the_gradient_scorer_is_predicts_average_of_windows(tiny_run, predicted):
  """`Predictor.scorer()`: the six windows (shifts -2, 0, 2, both strands) of each
  sequence with its plasmid context, averaged on the device in float32."""
  by_sequence, _ = predicted
  predictor = inference.load(checkpoint_path(tiny_run))
  scorer = predictor.scorer()
  assert (scorer.input_length, scorer.targets) == (110, ('yeast',))
  sequences = list(by_sequence)[:4]
  x = dream_data.one_hot(predictor.layout.encode(sequences).codes)
  value = np.asarray(jax.jit(scorer.apply)(scorer.variables, x))
  np.testing.assert_allclose(value[:, 0], [by_sequence[s] for s in sequences],
                             rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------
# A checkpoint's predictor and its overrides.


def test_a_checkpoint_records_its_layout_and_windows(tiny_run):
  predictor = inference.load(checkpoint_path(tiny_run))
  assert predictor.layout == inference.Layout(length=110, context=10)
  assert predictor.windows == window_average.Windows(
      start=10, length=110, shifts=(-2, 0, 2), reverse_complement=True)
  assert len(predictor.windows.passes) == 6
  assert predictor.covered().all()  # [8, 122) of the 130 bp rows covers the sequence
  assert inference.describe(predictor) == (
      '110 bp model (window [10:120] of 130, 10 bp plasmid context each side) with '
      'reverse-complement and shift (-2,0,2) averaging')


def test_overrides_give_one_pass_and_a_shift_outside_the_rows_is_refused(tiny_run):
  ckpt = checkpoint.load_checkpoint(checkpoint_path(tiny_run))
  one = inference.from_checkpoint(ckpt, inference.InferenceOptions(
      eval_shifts=(0,), reverse_complement_average=False, batch_size=7))
  assert one.windows.passes == ((0, False),) and one.batch_size == 7
  assert one.windows.span() == (10, 120)
  assert (np.flatnonzero(one.covered()) == np.arange(110)).all()
  wider = inference.from_checkpoint(ckpt, inference.InferenceOptions(eval_shifts=(-10, 10)))
  assert wider.windows.passes == ((-10, False), (-10, True), (10, False), (10, True))
  with pytest.raises(ValueError, match=r'eval shifts \(11,\) move the 110 bp window '
                     r'\[10:120\] outside the 130 bp rows it is cut from'):
    inference.from_checkpoint(ckpt, inference.InferenceOptions(eval_shifts=(0, 11)))
  with pytest.raises(ValueError, match='eval_shifts must be distinct'):
    inference.InferenceOptions(eval_shifts=(1, 1))
  with pytest.raises(ValueError, match='batch_size must be >= 1'):
    inference.InferenceOptions(batch_size=0)


def test_the_one_pass_of_an_override_is_the_window_by_hand(tiny_run, predicted):
  """eval_shifts=(0,) on one strand: the model on [10:120] of the row with context."""
  by_sequence, _ = predicted
  ckpt = checkpoint.load_checkpoint(checkpoint_path(tiny_run))
  one = inference.from_checkpoint(ckpt, inference.InferenceOptions(
      eval_shifts=(0,), reverse_complement_average=False, batch_size=BATCH))
  rows = plasmid.add_context(dream_data.encode_sequences(REFS), 10)
  x = np.zeros((BATCH, 110, 4), np.uint8)  # padded as predict pads: one compilation
  x[:len(REFS)] = dream_data.one_hot(rows[:, 10:120], np.uint8)
  forward = inference._pmapped(  # pylint: disable=protected-access
      inference.enformer_apply(ckpt.model_config, ('yeast',),
                               inference.trained_fast_cpu(ckpt)))
  direct = np.asarray(forward(training.replicate((ckpt.params, ckpt.state)),
                              training.shard_batch(
                                  x.reshape((jax.local_device_count(), -1, 110, 4)))))
  direct = direct.reshape(BATCH, -1)[:len(REFS)]
  found = one.predict(REFS)
  np.testing.assert_array_equal(found, direct)
  assert not np.allclose(found[:, 0],
                         [by_sequence[s] for s in REFS], rtol=1e-4, atol=0)


# ---------------------------------------------------------------------------
# Layout.


def test_encode_pads_truncates_and_counts():
  long, short = 'ACGT' * 30, 'acgtNacg'
  sequences = [long, short, FLANK_5 + 'A' * 80 + FLANK_3, 'ACGTRY' + 'A' * 104]
  found = inference.Layout().encode(sequences)
  np.testing.assert_array_equal(found.codes, dream_data.encode_sequences(sequences))
  assert found.codes.shape == (4, 110) and found.codes.dtype == np.uint8
  assert (found.num_padded, found.num_truncated, found.num_with_n) == (1, 1, 2)
  np.testing.assert_array_equal(found.codes[1, :8], [0, 1, 2, 3, 4, 0, 1, 2])
  assert (found.codes[1, 8:] == dream_data.PAD_CODE).all()  # padding is not an N


def test_a_fixed_length_table_refuses_another_length_naming_the_sequence():
  spec = tables.TableSpec(target_columns=('x', 'y'), length=12, pad=False)
  layout = inference.Layout(length=12, table=spec)
  assert layout.fixed_length and layout.row_length == 12
  with pytest.raises(ValueError) as info:
    layout.encode(['ACGTACGTACGT', 'ACGTACGTACG', 'A'])
  assert str(info.value) == ('sequence 2 has 11 bp; the model was trained on a table of '
                             '12 bp sequences without padding')
  padded = inference.Layout(length=12, table=tables.TableSpec(('x',), length=12, pad=True))
  assert not padded.fixed_length
  assert padded.encode(['ACGTACGTACG', 'A' * 13]).num_truncated == 1


def test_rows_add_the_plasmid_context():
  sequences = [FLANK_5 + 'ACGT' * 20 + FLANK_3, 'ACG']
  layout = inference.Layout(context=7)
  assert layout.row_length == 124
  rows = layout.rows(layout.encode(sequences).codes)
  expected = dream_data.encode_sequences(
      [plasmid.UPSTREAM[-7:] + sequences[0] + plasmid.DOWNSTREAM[:7]], length=124)
  np.testing.assert_array_equal(rows[0], expected[0])
  np.testing.assert_array_equal(rows[1, 7:117], dream_data.encode_sequences(['ACG'])[0])
  np.testing.assert_array_equal(rows[1, :7], expected[0, :7])
  codes = inference.Layout().encode(sequences).codes
  np.testing.assert_array_equal(inference.Layout().rows(codes), codes)
  with pytest.raises(ValueError, match=r'codes must be \[N, 110\], got \(2, 109\)'):
    layout.rows(codes[:, :109])


def test_read_takes_dream_rows_with_or_without_values(tmp_path):
  path = tmp_path / 'in.tsv'
  path.write_text('ACGT\t-1.5\nggcn\t2\n')
  rows = inference.Layout().read(str(path))
  assert list(rows.sequences) == ['ACGT', 'ggcn']
  np.testing.assert_array_equal(rows.measured, [-1.5, 2.0])
  np.testing.assert_array_equal(rows.codes, dream_data.encode_sequences(['ACGT', 'ggcn']))
  path.write_text('ACGT\nGGCC\n')
  assert inference.Layout().read(str(path)).measured is None


# ---------------------------------------------------------------------------
# predict_rows and the global batches.


def fake_processes(monkeypatch, count, index):
  monkeypatch.setattr(jax, 'process_count', lambda: count)
  monkeypatch.setattr(jax, 'process_index', lambda: index)


def recorded_forward(log):
  """A forward pass that records its inputs [D, B, L, 4] and returns, per row, the
  sum over positions of (position + 1) * (code + 1) of its one-hot (0 for all-N)."""
  def forward(inputs):
    x = np.asarray(inputs)
    log.append(x)
    weights = (np.arange(x.shape[2])[:, None] + 1) * (np.arange(4)[None] + 1)
    return (x * weights).sum(axis=(2, 3))[..., None].astype(np.float32)
  return forward


def signature(windows):
  weights = (np.arange(windows.shape[1])[:, None] + 1) * (np.arange(4)[None] + 1)
  return (dream_data.one_hot(windows) * weights).sum(axis=(1, 2))


def test_predict_rows_predicts_the_given_rows_in_order_and_drops_the_padding(
    monkeypatch):
  """Rows 9, 2, 17, ... of 23 in batches of 4 per device: each pass is the given rows in
  order, the padded rows (all N) of the last batch dropped; the passes averaged."""
  rng = np.random.default_rng(0)
  rows = rng.integers(0, 5, (23, 30)).astype(np.uint8)
  windows = window_average.Windows(start=4, length=20, shifts=(-2, 3),
                                   reverse_complement=True)
  log, done = [], []
  devices = jax.local_device_count()
  size = 4 * devices
  indices = np.array([9, 2, 17, 4, 22, 0, 3])
  found = inference.predict_rows(recorded_forward(log), rows, windows, batch_size=size,
                                 indices=indices, progress=done.append)
  assert found.shape == (7, 1) and found.dtype == np.float32
  expected = np.mean([signature(windows.cut(rows[indices], s, r))
                      for s, r in windows.passes], axis=0)
  np.testing.assert_allclose(found[:, 0], expected, rtol=1e-6)
  batches = -(-7 // size)
  assert len(log) == 4 * batches  # 4 passes
  assert all(x.shape == (devices, 4, 20, 4) and x.dtype == np.uint8 for x in log)
  last = log[batches - 1].reshape(-1, 20, 4)
  assert (last[7 - (batches - 1) * size:] == 0).all()  # the padding: all N
  assert done == ([size] * (batches - 1) + [7 - (batches - 1) * size]) * 4
  everything = inference.predict_rows(recorded_forward([]), rows, windows,
                                      batch_size=size)
  np.testing.assert_allclose(everything[indices], found, rtol=1e-6)
  fake_processes(monkeypatch, 3, 0)
  with pytest.raises(ValueError, match=rf'batch_size \({size}\) must be a multiple of '
                     rf'the {3 * devices} devices'):
    inference.predict_rows(recorded_forward([]), rows, windows, batch_size=size)


def test_windows_cut_the_shifted_window_and_its_reverse_complement():
  rows = dream_data.encode_sequences(['GGTCAAAAAGTCC', 'ACGTN' * 3])
  windows = window_average.Windows(start=2, length=8)
  np.testing.assert_array_equal(windows.cut(rows, 0, False), rows[:, 2:10])
  np.testing.assert_array_equal(windows.cut(rows, 1, False), rows[:, 3:11])
  # TCAAAAAG read backwards and complemented: CTTTTTGA; N stays N.
  np.testing.assert_array_equal(windows.cut(rows, 0, True)[0],
                                dream_data.encode_sequences(['CTTTTTGA'], 8)[0])
  np.testing.assert_array_equal(windows.cut(rows, 0, True)[1],
                                dream_data.encode_sequences(['NACGTNAC'], 8)[0])
  assert windows.span() == (2, 10)
