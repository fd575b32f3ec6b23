"""Why the generator's own function recovers the planted motifs only so far, and what
the per-position aggregation of an attribution does to that (synthetic data only).

The exact ISM of a ladder of functions of the generator, from its noise-free expression
down to plain motif occupancy:

  expression          17 sigmoid(activity): what the data were drawn from
  expression_no_gc    the same without the G+C term (a diagnostic, not a ladder step)
  activity            the logit, before the output sigmoid
  activity_no_gc      the same without the G+C term
  activity_no_gc_unsaturated
                      and with each factor's saturation S = 1 - exp(-g sum) replaced by
                      g sum (strong and repeated sites no longer saturate)
  occupancy_profile   sum over factors of position-weighted occupancy (no weights,
                      no saturation, no interactions, no G+C)
  occupancy_flat      the same with flat position profiles (binding only)

Each is summarised per position in every standard way (ISM: sum |effect| over the
substitutions, max |effect|, |mean effect|, L2 norm; gradients: |gradient x input|
summed over bases, |gradient at the reference - mean gradient| ("corrected"), L2 of the
centred gradient, sum |g[b] - g[ref]| over the other bases, i.e. first-order ISM summed
as ISM is), and scored by the AUROC of `planted.recovery_aurocs`.
`experiments.attribution_ceiling` writes the tables.
"""

import dataclasses
from typing import Dict, Tuple

import numpy as np

from enformer_small import attribution
from enformer_small import dream_data
from enformer_small import planted
from enformer_small import synthetic


# ---------------------------------------------------------------------------
# The generator's ladder of functions and their exact ISM.


def _mutants(codes: np.ndarray, lengths: np.ndarray):
  """Every single-base substitution of every random region: (codes [M, W], row, position,
  base), substituting every base other than the present one (all 4 at an N)."""
  rows, positions, bases = [], [], []
  for i, length in enumerate(lengths):
    p = np.repeat(np.arange(length), 4)
    b = np.tile(np.arange(4), length)
    keep = codes[i, p] != b
    rows.append(np.full(keep.sum(), i))
    positions.append(p[keep])
    bases.append(b[keep])
  rows, positions, bases = (np.concatenate(a) for a in (rows, positions, bases))
  mutated = codes[rows].copy()
  mutated[np.arange(rows.size), positions] = bases
  return mutated, rows, positions, bases


def _flat_model(model: synthetic.ExpressionModel) -> synthetic.ExpressionModel:
  motifs = tuple(dataclasses.replace(m, profile='flat') for m in model.motifs)
  return dataclasses.replace(model, motifs=motifs)


def ladder_values(codes: np.ndarray, lengths: np.ndarray,
                  model: synthetic.ExpressionModel) -> Dict[str, np.ndarray]:
  """{function name: float64 [n]} for random regions `codes` (see the module doc)."""
  sums = synthetic.occupancy_sums(codes, lengths, model)
  flat = synthetic.occupancy_sums(codes, lengths, _flat_model(model))
  gc = synthetic.gc_content(codes, lengths)
  saturation = -np.expm1(-model.site_gain * sums)
  act = synthetic.activity_from_features(saturation, gc, model)
  no_gc = synthetic.activity_from_features(saturation, gc,
                                           dataclasses.replace(model, gc_weight=0.0))
  # S replaced by its first order, site_gain * sum: no saturation of a factor's sites
  # (the synergy and silencing products stay).
  unsaturated = synthetic.activity_from_features(model.site_gain * sums, gc,
                                                 dataclasses.replace(model, gc_weight=0.0))
  def expression(a):
    return synthetic.MAX_EXPRESSION / (1 + np.exp(-a))
  return {'expression': expression(act), 'expression_no_gc': expression(no_gc),
          'activity': act, 'activity_no_gc': no_gc,
          'activity_no_gc_unsaturated': unsaturated,
          'occupancy_profile': sums.sum(axis=1), 'occupancy_flat': flat.sum(axis=1)}


def ladder_ism(data: planted.Input, window_start: int, window_length: int
               ) -> Dict[str, np.ndarray]:
  """{function name: float64 [N, L, 4]}: exact ISM of each ladder function, in the
  model's window (0 at the reference base and outside the random region)."""
  rows = synthetic.generate(data.synthetic_config)
  codes, lengths = rows.random_codes, rows.random_lengths
  model = data.synthetic_config.model
  mutated, row, position, base = _mutants(codes, lengths)
  reference = ladder_values(codes, lengths, model)
  values = ladder_values(mutated, lengths[row], model)
  at = len(dream_data.FLANK_5) + position - window_start
  inside = (at >= 0) & (at < window_length)
  out = {}
  for name, value in values.items():
    effects = np.zeros((len(lengths), window_length, 4))
    effects[row[inside], at[inside], base[inside]] = (value - reference[name][row])[inside]
    out[name] = effects
  return out


# ---------------------------------------------------------------------------
# Per-position aggregations.


def ism_aggregations(effects: np.ndarray) -> Dict[str, np.ndarray]:
  """{name: [N, L]} from ISM effects [N, L, 4] (0 at the reference base)."""
  substitutions = np.count_nonzero(effects, axis=-1).clip(min=3)
  return {'sum|e|': np.abs(effects).sum(-1), 'max|e|': np.abs(effects).max(-1),
          '|mean e|': np.abs(effects.sum(-1)) / substitutions,
          'L2(e)': np.sqrt((effects ** 2).sum(-1))}


def gradient_aggregations(gradients: np.ndarray, x: np.ndarray) -> Dict[str, np.ndarray]:
  """{name: [N, L]} from raw input gradients [N, L, 4] at one-hot x [N, L, 4]."""
  centred = gradients - gradients.mean(-1, keepdims=True)
  # g[b] - g[ref] is the first-order ISM effect of substituting b, so its sum of
  # magnitudes is the gradient's counterpart of ISM's sum |e|.
  first_order = gradients - (gradients * x).sum(-1, keepdims=True)
  return {'|sum g*x|': np.abs((gradients * x).sum(-1)),
          '|g_ref - mean g|': np.abs((centred * x).sum(-1)),
          'L2(g - mean g)': np.sqrt((centred ** 2).sum(-1)),
          'sum|g - g_ref|': np.abs(first_order).sum(-1)}


# ---------------------------------------------------------------------------
# Where the ceiling goes.


def instance_occupancy(data: planted.Input) -> Tuple[synthetic.PlantedSites, np.ndarray]:
  """(intact planted sites, float64 [k]: occupancy of each instance's own window, both
  strands, flat profile): a PWM-sampled instance with two mismatches is barely bound."""
  sites = synthetic.planted_sites(data.synthetic_config)
  keep = np.flatnonzero(sites.intact)
  sites = synthetic.PlantedSites(*(f[keep] for f in (sites.row, sites.motif, sites.start,
                                                     sites.reverse, sites.intact)))
  model = data.synthetic_config.model
  flat = _flat_model(model)
  codes = synthetic.generate(data.synthetic_config).random_codes
  out = np.zeros(len(sites))
  for m, motif in enumerate(model.motifs):
    pick = np.flatnonzero(sites.motif == m)
    windows = codes[sites.row[pick, None], sites.start[pick, None] + np.arange(motif.width)]
    out[pick] = synthetic.occupancy_sums(
        np.ascontiguousarray(windows), np.full(pick.size, motif.width), flat)[:, m]
  return sites, out


def functional_label_map(data: planted.Input, window_start: int, window_length: int,
                         threshold: float) -> np.ndarray:
  """int [N, L]: the planted-motif map restricted to instances bound >= threshold,
  -2 at the informative columns of the weaker intact instances (to leave out)."""
  sites, occupancy = instance_occupancy(data)
  n = len(data.sequences)
  model = data.synthetic_config.model
  width = window_start + window_length
  out = np.full((n, width), -1, np.int64)
  flank = len(dream_data.FLANK_5)
  for strong in (False, True):
    chosen = (occupancy >= threshold) == strong
    part = synthetic.PlantedSites(sites.row[chosen], sites.motif[chosen],
                                  sites.start[chosen], sites.reverse[chosen],
                                  sites.intact[chosen])
    found = part.motif_map(n, width - flank, model)
    out[:, flank:][found >= 0] = found[found >= 0] if strong else -2
  return out[:, window_start:]


def nonintact_mask(data: planted.Input, window_start: int, window_length: int
                   ) -> np.ndarray:
  """bool [N, L]: informative columns of planted instances that a later plant or an N
  run overwrote in part (not positives, yet often still bound)."""
  sites = synthetic.planted_sites(data.synthetic_config)
  broken = ~sites.intact
  part = synthetic.PlantedSites(sites.row[broken], sites.motif[broken],
                                sites.start[broken], sites.reverse[broken],
                                np.ones(int(broken.sum()), bool))
  flank = len(dream_data.FLANK_5)
  out = np.zeros((len(data.sequences), window_start + window_length), bool)
  out[:, flank:] = part.mask(len(data.sequences), out.shape[1] - flank,
                             data.synthetic_config.model)
  return out[:, window_start:]


def correlation(a: np.ndarray, b: np.ndarray, keep: np.ndarray, shift: int = 0) -> float:
  """Pearson r of a[:, l] with b[:, l + shift] over positions `keep` (both inside)."""
  length = a.shape[1]
  lo, hi = max(0, -shift), min(length, length - shift)
  a, b = a[:, lo:hi], b[:, lo + shift:hi + shift]
  keep = keep[:, lo:hi] & keep[:, lo + shift:hi + shift]
  a, b = a[keep].ravel(), b[keep].ravel()
  nonzero = (a != 0) | (b != 0)
  return float(np.corrcoef(a[nonzero], b[nonzero])[0, 1])


# ---------------------------------------------------------------------------
# Tables.


def auroc_lines(labels: np.ndarray, scored: np.ndarray,
                importance: Dict[str, np.ndarray], names) -> list:
  table = planted.recovery_aurocs(labels, scored, importance, names)
  columns = ['all', 'per_sequence'] + list(names)
  lines = ['source\taggregation\t' + '\t'.join(columns)]
  for key, found in table.items():
    source, aggregation = key.split(' | ')
    lines.append(f'{source}\t{aggregation}\t'
                 + '\t'.join(f'{found[c]:.4f}' for c in columns))
  return lines


def model_importance(scorer: attribution.Scorer, x: np.ndarray, arrays
                     ) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
  """({'model ISM | agg' ...: [N, L]}, raw input gradients [N, L, 4]), target 0."""
  out = {f'model ISM | {k}': v for k, v in ism_aggregations(arrays['ism'][..., 0]).items()}
  gradients = attribution.input_gradients(scorer, x)[..., 0]
  out.update({f'model gradient | {k}': v
              for k, v in gradient_aggregations(gradients, x).items()})
  if 'integrated_gradients' in arrays:
    out['model integrated gradients | |sum|'] = np.abs(
        arrays['integrated_gradients'][..., 0].sum(-1))
  return out, gradients


def decomposition_lines(data, labels, scored, truth, window) -> list:
  """Where the expression's ISM (sum |e|) ranks non-motif positions above motif ones."""
  names = [m.name for m in data.synthetic_config.model.motifs]
  expression = np.abs(truth['expression']).sum(-1)
  no_gc = np.abs(truth['expression_no_gc']).sum(-1)
  positive, negative = scored & (labels >= 0), scored & (labels < 0)
  broken = nonintact_mask(data, window.start, window.length)
  lines = ['quantity\tvalue']
  def add(k, v):
    lines.append(f'{k}\t{v:.4f}' if isinstance(v, float) else f'{k}\t{v}')
  add('motif positions', int(positive.sum()))
  add('other positions', int(negative.sum()))
  for where, mask in (('motif', positive), ('other', negative)):
    add(f'mean sum|e| at {where} positions, expression', float(expression[mask].mean()))
    add(f'mean sum|e| at {where} positions, expression without G+C',
        float(no_gc[mask].mean()))
  high = negative & (expression > np.median(expression[positive]))
  add('other positions above the median motif position (sum|e|)', float(high[negative].mean()))
  add('  of these, in a partly overwritten planted instance', float(broken[high].mean()))
  add('  of these, still above it without the G+C term',
      float((no_gc[high] > np.median(no_gc[positive])).mean()))
  flat = np.abs(truth['occupancy_flat']).sum(-1)
  add('other positions whose binding ISM (occupancy_flat) exceeds the median motif '
      'position\'s', float((flat[negative] > np.median(flat[positive])).mean()))
  sites, occupancy = instance_occupancy(data)
  add('intact instances', int(occupancy.size))
  for threshold in (0.5, 0.1):
    add(f'intact instances bound < {threshold} (own window, both strands)',
        float((occupancy < threshold).mean()))
    for m, name in enumerate(names):
      add(f'  {name}', float((occupancy[sites.motif == m] < threshold).mean()))
  return lines


def label_variant_lines(data, labels, scored, window, sources: Dict[str, np.ndarray]
                        ) -> list:
  """AUROC of each [N, L] source when the labelling leaves out what no function of the
  sequence can rank: weakly bound planted instances, partly overwritten ones."""
  broken = nonintact_mask(data, window.start, window.length)
  variants = {'as labelled': (labels, scored),
              'without partly overwritten instances': (labels, scored & ~broken)}
  for threshold in (0.1, 0.5):
    strong = functional_label_map(data, window.start, window.length, threshold)
    variants[f'positives bound >= {threshold} only'] = (strong, scored & (strong != -2))
  lines = ['labelling\t' + '\t'.join(sources)]
  for variant, (lab, keep) in variants.items():
    lines.append(variant + '\t' + '\t'.join(
        f'{attribution.auroc(values[keep], lab[keep] >= 0):.4f}'
        for values in sources.values()))
  return lines


def linearity(model_ism: np.ndarray, gradients: np.ndarray, x: np.ndarray,
              keep: np.ndarray) -> float:
  """Pearson r of each substitution's ISM effect with its first-order (gradient)
  prediction g[alt] - g[ref], over non-reference entries at positions `keep`."""
  predicted = gradients - (gradients * x).sum(-1, keepdims=True)
  mask = keep[..., None] & (x == 0)
  return float(np.corrcoef(model_ism[mask], predicted[mask])[0, 1])
