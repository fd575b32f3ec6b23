"""TFDS builder `dream_promoters`: the Random Promoter DREAM Challenge 2022 data.

The challenge files are not downloaded by TFDS (they are large and versioned
on Zenodo): put them in a manual directory and point TFDS at it, fully
offline::

  from enformer_small import tfds_dream  # Registers 'dream_promoters'.
  ds = tfds.load(
      'dream_promoters', split='train', data_dir=DATA_DIR,
      download_and_prepare_kwargs={'download_config':
          tfds.download.DownloadConfig(manual_dir=MANUAL_DIR)})
  data = tfds_dream.as_dream_data(ds)  # -> dream_data.DreamData
  # Faster (vectorised parsing), preparing the dataset first if needed:
  data = tfds_dream.load_dream_data('train', data_dir=DATA_DIR,
                                    manual_dir=MANUAL_DIR)

Files are read and validated by `dream_data.read_dream_file` (the same encoding
and error messages as the raw-file path, `path:line: ...`), so the training
pipeline (`dataset.py`) gets identical `DreamData` from TFDS or from raw files.

Features per row: `sequence` uint8 [110] codes (A=0 C=1 G=2 T=3, other and end
padding 4; stored as 110 raw bytes), `expression` float32, `length` int32 (the
sequence length before padding / truncation) and `index` int64 (the row's
0-based position in its file). Shuffling at write time is disabled and TFDS
reads such datasets in order, so rows keep file order (the test set's row index
is the official `pos`).

Cost (2-core machine, a 6,739,258-row synthetic training file): preparing
takes ~3.5 minutes once (TFDS serialises example by example, ~32,000 rows/s;
parsing the text file itself takes ~7 s) and 1.3 GB of disk; `read_split`
reads the split back in ~17 s, `as_dream_data` at ~10,000 rows/s (TFDS's
per-example decoding). The raw-file path (`dream_data.read_dream_file`, cached)
remains the fastest way in.
"""

import os
from typing import Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from enformer_small import dream_data

ZENODO_RECORD = 'https://zenodo.org/records/10633252'
TRAIN_FILE = 'train_sequences.txt'
TEST_FILE = 'test_sequences.txt'

_CITATION = """\
@article{rafi2025community,
  title = {A community effort to optimize sequence-based deep learning models
           of gene regulation},
  author = {Rafi, Abdul Muntakim and Nogina, Daria and Penzar, Dmitry and
            others and Random Promoter DREAM Challenge Consortium and
            Meyer, Pablo and de Boer, Carl G.},
  journal = {Nature Biotechnology},
  volume = {43},
  number = {8},
  pages = {1373--1383},
  year = {2025},
  doi = {10.1038/s41587-024-02414-w},
}
"""

_DESCRIPTION = """\
Random Promoter DREAM Challenge 2022: 110 bp yeast promoter constructs
(17 bp 5' flank + ~80 bp random DNA + 13 bp 3' flank) and their measured
expression. train: 6,739,258 random promoters (expression 0..17); test:
71,103 designed sequences (official order; measured values, where present, are
on the MAUDE scale). Sequences are stored as uint8 codes (A=0, C=1, G=2, T=3,
other letters and end padding 4), padded / truncated at the end to 110.
"""


class DreamPromoters(tfds.core.GeneratorBasedBuilder):
  """Random Promoter DREAM Challenge 2022 sequences and expression."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: codes, expression, length, '
                            'index; train and test splits.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the challenge data from its Zenodo record {ZENODO_RECORD}
(CC BY 4.0) and place, uncompressed or gzipped under the same name, in the
manual directory (`tfds.download.DownloadConfig(manual_dir=...)`, default
`<data_dir>/downloads/manual/`):
  {TRAIN_FILE}  tab-separated `sequence<TAB>expression`, no header
  {TEST_FILE}   same format (official test order)
"""

  @classmethod
  def get_metadata(cls):
    # TFDS would read README.md / CITATIONS.bib from this module's package
    # directory (the enformer_small package), which are not about this data.
    return tfds.core.dataset_metadata.DatasetMetadata()

  def _info(self) -> tfds.core.DatasetInfo:
    length = dream_data.SEQUENCE_LENGTH
    return tfds.core.DatasetInfo(
        builder=self,
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            'sequence': tfds.features.Tensor(
                shape=(length,), dtype=np.uint8,
                encoding=tfds.features.Encoding.BYTES,
                doc='codes A=0 C=1 G=2 T=3, other / end padding 4'),
            'expression': tfds.features.Scalar(
                dtype=np.float32, doc='measured expression'),
            'length': tfds.features.Scalar(
                dtype=np.int32, doc='sequence length before padding'),
            'index': tfds.features.Scalar(
                dtype=np.int64, doc='0-based row in the source file'),
        }),
        supervised_keys=('sequence', 'expression'),
        homepage=ZENODO_RECORD,
        citation=_CITATION,
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = dl_manager.manual_dir
    return {
        'train': self._generate_examples(
            _find_file(manual_dir, TRAIN_FILE), allow_negative=False),
        # Measured test values are on another scale (MAUDE, can be < 0).
        'test': self._generate_examples(
            _find_file(manual_dir, TEST_FILE), allow_negative=True),
    }

  def _generate_examples(self, path, allow_negative: bool):
    """Yields (row index, example) for every row, read in one vectorised pass."""
    data = dream_data.read_dream_file(
        os.fspath(path), use_cache=False, allow_negative=allow_negative)
    codes, expression, lengths = data.codes, data.expression, data.lengths
    for i in range(len(data)):
      yield i, {'sequence': codes[i], 'expression': expression[i],
                'length': lengths[i], 'index': i}


def _find_file(manual_dir, name: str):
  """manual_dir/name, or manual_dir/name.gz; a clear error when absent."""
  for candidate in (name, name + '.gz'):
    path = manual_dir / candidate
    if path.exists():
      return path
  raise dream_data.DreamFileNotFoundError(
      f'{manual_dir / name}: no such file; dream_promoters needs {TRAIN_FILE} '
      f'and {TEST_FILE} in the manual directory.\n'
      + DreamPromoters.MANUAL_DOWNLOAD_INSTRUCTIONS)


def _to_dream_data(arrays, source: str) -> dream_data.DreamData:
  return dream_data.DreamData(
      codes=np.ascontiguousarray(arrays['sequence'], np.uint8),
      expression=np.asarray(arrays['expression'], np.float32),
      lengths=np.asarray(arrays['length'], np.int32),
      source=source)


def _collect(batches, source: str) -> dream_data.DreamData:
  """Concatenates numpy batches of the four features into DreamData."""
  parts = {k: [] for k in _FEATURES}
  for batch in batches:
    for k in _FEATURES:
      parts[k].append(batch[k])
  if not parts['index']:
    raise ValueError(f'{source}: no rows')
  return _to_dream_data({k: np.concatenate(v) for k, v in parts.items()},
                        source)


_FEATURES = ('sequence', 'expression', 'length', 'index')


def as_dream_data(ds: tf.data.Dataset, *, source: str = 'tfds:dream_promoters',
                  batch_size: int = 1 << 14) -> dream_data.DreamData:
  """Collects loaded `dream_promoters` examples into `DreamData` arrays.

  Rows keep the dataset's order: file order for `tfds.load` / `as_dataset`
  (this dataset is written unshuffled and TFDS reads it in order). TFDS parses
  examples one by one (about 10,000 rows/s here); `read_split` reads a split
  much faster.

  Args:
    ds: unbatched examples from `tfds.load('dream_promoters', split=...)` or
      `builder.as_dataset(split=...)` (dict features, not as_supervised).
    source: recorded as `DreamData.source`.
    batch_size: rows converted to numpy at a time.
  Returns:
    DreamData with codes uint8 [N, 110], expression float32 [N], lengths
    int32 [N] (report None).
  """
  if not isinstance(ds.element_spec, dict) or not set(_FEATURES) <= set(
      ds.element_spec):
    raise ValueError(f'expected dream_promoters examples with features '
                     f'{_FEATURES} (load without as_supervised, unbatched), '
                     f'got {ds.element_spec}')
  ds = ds.map(lambda x: {k: x[k] for k in _FEATURES}).batch(batch_size)
  return _collect(tfds.as_numpy(ds), source)


def read_split(builder: DreamPromoters, split: str = 'train', *,
               batch_size: int = 1 << 16) -> dream_data.DreamData:
  """Reads a prepared split (or sub-split, e.g. 'train[:10%]') as DreamData.

  Vectorised: reads the split's record files in order and parses whole
  batches of serialized examples at once (`tf.io.parse_example`), instead of
  TFDS's example-by-example decoding. Rows come in file order, as with
  `as_dream_data(builder.as_dataset(split))`.
  """
  length = dream_data.SEQUENCE_LENGTH
  spec = {'sequence': tf.io.FixedLenFeature([], tf.string),
          'expression': tf.io.FixedLenFeature([], tf.float32),
          'length': tf.io.FixedLenFeature([], tf.int64),
          'index': tf.io.FixedLenFeature([], tf.int64)}

  def parse(serialized):
    x = tf.io.parse_example(serialized, spec)
    x['sequence'] = tf.reshape(tf.io.decode_raw(x['sequence'], tf.uint8),
                               [-1, length])
    return x

  instructions = builder.info.splits[split].file_instructions
  ds = None
  for instruction in instructions:
    part = tf.data.TFRecordDataset(os.fspath(instruction.filename))
    part = part.skip(instruction.skip).take(instruction.take)
    ds = part if ds is None else ds.concatenate(part)
  if ds is None:
    raise ValueError(f'dream_promoters/{split}: no files')
  ds = ds.batch(batch_size).map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                deterministic=True).prefetch(2)
  return _collect(tfds.as_numpy(ds), f'tfds:dream_promoters/{split}')


def load_dream_data(split: str, *, data_dir: Optional[str] = None,
                    manual_dir: Optional[str] = None) -> dream_data.DreamData:
  """Prepares `dream_promoters` if needed and returns a split as DreamData.

  Args:
    split: TFDS split, e.g. 'train', 'test', 'train[:1%]'.
    data_dir: TFDS data directory (default TFDS's).
    manual_dir: directory with the challenge files (see
      `DreamPromoters.MANUAL_DOWNLOAD_INSTRUCTIONS`); only needed to prepare.
  """
  builder = DreamPromoters(data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir))
  return read_split(builder, split)
