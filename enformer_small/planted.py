"""The ground truth of synthetic data: where the generator planted its motifs.

Attributions of a model trained on synthetic data (`synthetic.py`) are scored against
what the generator knows: the informative columns of intact planted instances are the
positives, the other random-region positions the negatives (`planted_labels`,
`recovery_aurocs`), and the ISM of the generator's own noise-free expression function is
what a perfect model would attribute (`generator_ism`). Positions are those of the
sequence's 110 bp DREAM encoding within a `Span`.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from enformer_small import attribution
from enformer_small import dream_data
from enformer_small import synthetic

BASES = 'ACGT'


@dataclasses.dataclass(frozen=True)
class Span:
  """Positions [start, start + length) of the 110 bp encoding an analysis covers."""
  start: int
  length: int

  def codes(self, sequences: Sequence[str]) -> np.ndarray:
    """uint8 [N, length]: the span of each sequence's DREAM encoding."""
    if self.start < 0 or self.start + self.length > dream_data.SEQUENCE_LENGTH:
      raise ValueError(f'span [{self.start}, {self.start + self.length}) outside the '
                       f'{dream_data.SEQUENCE_LENGTH} bp encoding')
    encoded = dream_data.encode_sequences(list(sequences))
    return np.ascontiguousarray(encoded[:, self.start:self.start + self.length])


@dataclasses.dataclass(frozen=True)
class Input:
  """Sequences to attribute; `synthetic_config` set when they come from the generator."""
  names: List[str]
  sequences: List[str]
  synthetic_config: Optional[synthetic.SyntheticConfig] = None


def synthetic_input(rows: int, seed: int) -> Input:
  """The first `rows` rows of the synthetic data set of `seed` (the demo trains on
  seed 0, so another seed gives sequences the model has not seen)."""
  config = synthetic.SyntheticConfig(num_rows=rows, seed=seed)
  data = synthetic.generate(config)
  return Input([f'synthetic{seed}_row{i}' for i in range(rows)], data.sequences(),
               config)


def planted_labels(data: Input, window: Span
                   ) -> Tuple[np.ndarray, np.ndarray]:
  """(motif index per window position, -1 where none: int [N, L]; scored: bool [N, L]).

  Positives are the informative columns of intact planted instances; scored positions
  are the random region's bases inside the window (the constant flanks never vary in
  training, so they are left out of both classes).
  """
  flank = len(dream_data.FLANK_5)
  n = len(data.sequences)
  lengths = np.array([len(s) for s in data.sequences]) - flank - len(dream_data.FLANK_3)
  motif = np.full((n, flank + max(lengths.max(), window.start + window.length)), -1,
                  np.int64)
  motif[:, flank:] = synthetic.planted_sites(data.synthetic_config).motif_map(
      n, motif.shape[1] - flank, data.synthetic_config.model)
  position = np.arange(window.start, window.start + window.length)
  scored = (position[None] >= flank) & (position[None] < flank + lengths[:, None])
  return motif[:, window.start:window.start + window.length], scored


def generator_ism(data: Input, window: Span) -> np.ndarray:
  """float64 [N, L, 4]: ISM of the synthetic data's own noise-free expression function
  (what a perfect model would attribute); 0 outside the random region."""
  flank = len(dream_data.FLANK_5)
  mutants, where = [], []
  for n, sequence in enumerate(data.sequences):
    for l in range(window.length):
      p = window.start + l
      if not flank <= p < len(sequence) - len(dream_data.FLANK_3):
        continue
      for b, base in enumerate(BASES):
        if sequence[p].upper() != base:
          mutants.append(sequence[:p] + base + sequence[p + 1:])
          where.append((n, l, b))
  reference = synthetic.noise_free_expression(data.sequences, data.synthetic_config.model)
  values = synthetic.noise_free_expression(mutants, data.synthetic_config.model)
  out = np.zeros((len(data.sequences), window.length, 4))
  n, l, b = np.array(where).T
  out[n, l, b] = values - reference[n]
  return out


def recovery_aurocs(labels: np.ndarray, scored: np.ndarray,
                    importance: Dict[str, np.ndarray],
                    motif_names: Sequence[str] = ()) -> Dict[str, Dict[str, float]]:
  """{method: {'all': AUROC, 'per_sequence': mean AUROC, motif name: AUROC}}.

  `all` pools every scored position of every sequence; `per_sequence` averages the
  AUROC within each sequence that has both classes; a motif's AUROC is its positions
  against the non-motif positions.
  """
  out = {}
  for method, scores in importance.items():
    found = {'all': attribution.auroc(scores[scored], labels[scored] >= 0)}
    within = [attribution.auroc(scores[i][scored[i]], labels[i][scored[i]] >= 0)
              for i in range(labels.shape[0])]
    within = [a for a in within if not np.isnan(a)]
    found['per_sequence'] = float(np.mean(within)) if within else float('nan')
    for m, name in enumerate(motif_names):
      keep = scored & ((labels == m) | (labels < 0))
      found[name] = attribution.auroc(scores[keep], labels[keep] == m)
    out[method] = found
  return out


def planted_logo(data: Input, window: Span, row: int) -> np.ndarray:
  """[L, 4] information content (bits) of each intact planted PWM at its place."""
  sites = synthetic.planted_sites(data.synthetic_config, row, row + 1)
  out = np.zeros((window.length, 4))
  for i in np.flatnonzero(sites.intact):
    motif = data.synthetic_config.model.motifs[sites.motif[i]]
    probs = synthetic.pwm(motif)
    if sites.reverse[i]:
      probs = synthetic.reverse_complement_pwm(probs)
    bits = probs * (2 + (probs * np.log2(probs)).sum(axis=1, keepdims=True))
    at = len(dream_data.FLANK_5) + sites.start[i] + np.arange(motif.width) - window.start
    inside = (at >= 0) & (at < window.length)
    out[at[inside]] = bits[inside]
  return out
