"""The DREAM 2022 reporter plasmid around the 110 bp construct (numpy only).

Every challenge sequence is a 110 bp construct: the constant 5' flank TGCATTTTTTTCACATC
(17 bp), the random 80 bp insert and the constant 3' flank GGTTACGGCTGTT (13 bp), cut
out of an 8,294 nt plasmid whose 80 N of the insert start at offset 3648
(`../shared/data/dream/plasmid.json`, kept beside the repository; tests check these constants
against it when it is there). In the cell the construct is read within that plasmid,
so the bases beyond the flanks are real context, the same for every sequence: the
challenge winner (LegNet) filled its 150 bp inputs with them. `add_context` puts
MAX_CONTEXT of them (or fewer) on each side of the encoded constructs, so that windows
longer than 110 bp or shifted beyond it read plasmid rather than padding.

A row of the 110 bp encoding that is shorter than 110 (N-padded at the 3' end) keeps its
padding between the construct and the 3' context: the encoding does not say where such a
sequence was cut.
"""

import numpy as np

from enformer_small.dream_data import SEQUENCE_LENGTH, encode_sequences

FLANK_5P = 'TGCATTTTTTTCACATC'
FLANK_3P = 'GGTTACGGCTGTT'
INSERT_OFFSET = 3648      # first N of the insert in plasmid.json
INSERT_LENGTH = 80
MAX_CONTEXT = 150
# plasmid[3631 - 150 : 3631] and plasmid[3741 : 3741 + 150]: what lies beyond the
# constant flanks.
UPSTREAM = (
    'TTCCAGTTTGGAACAAGAGTCCACTATTAAAGAACGTGGACTCCAACGTCAAAGGGCGAAAAACCGTCTATCAGGGC'
    'GATGGCCCACTACGTGAACCATCACCCTAATCAAGTGCTAGCAGGAATGATGCAAAAGGTTCCCGATTCGAAC')
DOWNSTREAM = (
    'TCTTAATTAAAAAAAGATAGAAAACATTAGGAGTGTAACACAAGACTTTCGGATCCTGAGCAGGCAAGATAAACGAA'
    'GGCAAAGATGTCTAAAGGTGAAGAATTATTCACTGGTGTTGTCCCAATTTTGGTTGAATTAGATGGTGATGTT')


def context_codes(context: int):
  """uint8 codes of the `context` plasmid bases before and after the construct."""
  if not 0 <= context <= MAX_CONTEXT:
    raise ValueError(f'plasmid context must lie in 0..{MAX_CONTEXT}, got {context}')
  left = encode_sequences([UPSTREAM[len(UPSTREAM) - context:]], length=context)[0]
  right = encode_sequences([DOWNSTREAM[:context]], length=context)[0]
  return left, right


def add_context(codes: np.ndarray, context: int) -> np.ndarray:
  """uint8 [N, 110] -> [N, 110 + 2 * context]: plasmid, construct, plasmid."""
  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.shape[1] != SEQUENCE_LENGTH:
    raise ValueError(f'codes must be [N, {SEQUENCE_LENGTH}], got {codes.shape}')
  if context == 0:
    return codes
  left, right = context_codes(context)
  out = np.empty((codes.shape[0], SEQUENCE_LENGTH + 2 * context), np.uint8)
  out[:, :context] = left
  out[:, context:context + SEQUENCE_LENGTH] = codes
  out[:, context + SEQUENCE_LENGTH:] = right
  return out


def default_window_start(input_length: int, context: int = 0) -> int:
  """Where a window of `input_length` starts in rows with `context` on each side.

  The seed cut X[:, 15:100]: of the 25 positions it left out, 15 (3/5) lie at the 5' end
  and 10 (2/5) at the 3' end. Other lengths keep that 3:2 split, continued past 110 bp:
  start = context + (110 - L) * 3 // 5 (floor), so 85 bp reads [15:100] of the
  construct, 110 bp all of it, 100 bp [6:106], and 150 bp starts 24 bp into the 5'
  context. Checkpoints record the start their training used (`Checkpoint.crop_start`).
  """
  start = context + (SEQUENCE_LENGTH - input_length) * 3 // 5
  if input_length <= 0 or start < 0 or start + input_length > SEQUENCE_LENGTH + 2 * context:
    raise ValueError(f'a {input_length} bp window does not fit {SEQUENCE_LENGTH} bp '
                     f'with {context} bp of plasmid on each side')
  return start
