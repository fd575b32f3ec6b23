"""Specification of the `dream_promoters` TFDS builder (`enformer_small.tfds_dream`).

The dataset is built offline from tiny challenge-format files written here;
whatever way it is read back, it must equal `dream_data.read_dream_file` of
the same files (the raw-file path of the training pipeline).
"""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from enformer_small import dataset
from enformer_small import dream_data
from enformer_small import tfds_dream


def write_rows(path, seqs, values):
  path.write_text(''.join(f'{s}\t{v}\n' for s, v in zip(seqs, values)))


def random_promoters(rng, num_rows):
  """Challenge-like rows: flanks around random DNA, with N, short and long."""
  bases = np.array(list('ACGT'))
  seqs = []
  for i in range(num_rows):
    middle = ''.join(bases[rng.integers(0, 4, 80)])
    if i % 7 == 3:
      middle = middle[:30] + 'N' + middle[31:]
    if i % 11 == 5:
      middle = middle[:70]  # 100 bp: padded.
    if i % 13 == 6:
      middle += 'ACGTACGTAC'  # 120 bp: truncated.
    seqs.append(dream_data.FLANK_5 + middle + dream_data.FLANK_3)
  return seqs


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """(data_dir, manual_dir) of a dataset prepared from 50 + 20 rows."""
  root = tmp_path_factory.mktemp('dream_tfds')
  manual_dir, data_dir = root / 'manual', root / 'data'
  manual_dir.mkdir()
  rng = np.random.default_rng(0)
  write_rows(manual_dir / tfds_dream.TRAIN_FILE, random_promoters(rng, 50),
             np.round(rng.uniform(0, 17, 50), 3))
  # Test-set measurements are on the MAUDE scale: negative values occur.
  write_rows(manual_dir / tfds_dream.TEST_FILE, random_promoters(rng, 20),
             np.round(rng.uniform(-1.4, 1.7, 20), 4))
  builder = tfds_dream.DreamPromoters(data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return data_dir, manual_dir


def raw(manual_dir, split):
  name = {'train': tfds_dream.TRAIN_FILE, 'test': tfds_dream.TEST_FILE}[split]
  return dream_data.read_dream_file(manual_dir / name, use_cache=False,
                                    allow_negative=split == 'test')


def assert_same_rows(got, expected):
  np.testing.assert_array_equal(got.codes, expected.codes)
  np.testing.assert_array_equal(got.expression, expected.expression)
  np.testing.assert_array_equal(got.lengths, expected.lengths)
  assert got.codes.dtype == np.uint8 and got.codes.shape[1] == 110
  assert got.expression.dtype == np.float32 and got.lengths.dtype == np.int32


@pytest.mark.parametrize('split', ['train', 'test'])
def test_tfds_load_gives_the_raw_file_rows_in_file_order(built, split):
  data_dir, manual_dir = built
  ds = tfds.load('dream_promoters', split=split, data_dir=str(data_dir),
                 download_and_prepare_kwargs={
                     'download_config': tfds.download.DownloadConfig(
                         manual_dir=str(manual_dir))})
  expected = raw(manual_dir, split)
  indices = [int(x['index']) for x in tfds.as_numpy(ds)]
  assert indices == list(range(len(expected)))
  assert_same_rows(tfds_dream.as_dream_data(ds), expected)


@pytest.mark.parametrize('split, rows', [
    ('train', slice(None)), ('test', slice(None)), ('train[10:25]', slice(10, 25)),
])
def test_read_split_equals_the_raw_file_rows(built, split, rows):
  data_dir, manual_dir = built
  builder = tfds_dream.DreamPromoters(data_dir=str(data_dir))
  got = tfds_dream.read_split(builder, split)
  full = raw(manual_dir, split.split('[')[0])
  expected = dream_data.DreamData(
      codes=full.codes[rows], expression=full.expression[rows],
      lengths=full.lengths[rows], source='')
  assert_same_rows(got, expected)


def test_load_dream_data_reuses_the_prepared_dataset(built):
  data_dir, manual_dir = built
  got = tfds_dream.load_dream_data('test', data_dir=str(data_dir))
  assert_same_rows(got, raw(manual_dir, 'test'))
  assert got.source == 'tfds:dream_promoters/test'


def test_dataset_info_describes_features_and_splits(built):
  data_dir, _ = built
  builder = tfds.builder('dream_promoters', data_dir=str(data_dir))
  info = builder.info
  assert info.splits['train'].num_examples == 50
  assert info.splits['test'].num_examples == 20
  assert info.supervised_keys == ('sequence', 'expression')
  spec = builder.as_dataset(split='train').element_spec
  assert spec['sequence'].shape == (110,) and spec['sequence'].dtype == tf.uint8
  assert spec['expression'].dtype == tf.float32
  assert spec['length'].dtype == tf.int32 and spec['index'].dtype == tf.int64
  assert '10633252' in tfds_dream.DreamPromoters.MANUAL_DOWNLOAD_INSTRUCTIONS


def test_training_pipeline_takes_tfds_data_like_raw_data(built):
  """The same training batches (and so the same rows evaluation and prediction cut
  their windows from: the codes) from the TFDS split as from the raw file."""
  data_dir, manual_dir = built
  from_tfds = tfds_dream.load_dream_data('train', data_dir=str(data_dir))
  from_file = raw(manual_dir, 'train')
  np.testing.assert_array_equal(from_tfds.codes, from_file.codes)
  kwargs = dict(global_batch_size=16, local_device_count=2, seed=3, epoch=1)
  rows = np.arange(len(from_file))
  batches = list(zip(dataset.train_batches(from_tfds, rows, **kwargs),
                     dataset.train_batches(from_file, rows, **kwargs), strict=True))
  assert len(batches) == dataset.num_train_batches(len(rows), 16)
  for a, b in batches:
    assert set(a) == set(b) == {'inputs', 'targets'}
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_missing_manual_file_names_the_file_and_the_zenodo_record(tmp_path):
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  write_rows(manual_dir / tfds_dream.TRAIN_FILE, ['ACGT' * 27], [1.0])
  builder = tfds_dream.DreamPromoters(data_dir=str(tmp_path / 'data'))
  with pytest.raises(dream_data.DreamFileNotFoundError,
                     match=r'test_sequences\.txt(.|\n)*10633252'):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir)))


def test_malformed_file_is_reported_with_path_and_line(tmp_path):
  manual_dir = tmp_path / 'manual'
  manual_dir.mkdir()
  (manual_dir / tfds_dream.TRAIN_FILE).write_text('ACGT\t1.0\nACGT 2.0\n')
  write_rows(manual_dir / tfds_dream.TEST_FILE, ['ACGT'], [0.5])
  builder = tfds_dream.DreamPromoters(data_dir=str(tmp_path / 'data'))
  with pytest.raises(dream_data.DreamDataError,
                     match=r'train_sequences\.txt:2: missing tab'):
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(manual_dir)))
