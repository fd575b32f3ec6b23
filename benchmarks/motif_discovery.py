r"""Figures of issue 27: which motifs a model learned, whose they are, and what it costs.

(a) synthetic: the demo's model (trained on seed-0 synthetic rows) on unseen rows of
    seed --synthetic_seed: discovery (hypothetical scores -> TF-MoDISco), every motif
    compared by TOMTOM with JASPAR2024 CORE fungi plus the generator's planted PWMs;
    each planted factor is "recovered" when some discovered motif matches its PWM with
    q < 0.05 (the motif, its sign and seqlets listed), and every discovered motif
    without a planted match is listed with its best JASPAR match.
(b) real: a real_6370.flags model on the 71,103 test sequences, one per family of
    near copies (SNV pairs, tilings, perturbations share most of their bases, which
    TF-MoDISco would cluster; --no-real_distinct keeps all), or the first --real_rows of
    them: the discovered motifs and their best JASPAR fungi matches,
    naming the known regulators of yeast promoter activity where they appear (REB1,
    ABF1, RAP1 by JASPAR match at q < 0.05; poly(dA:dT) tracts by a run of >= 6 A or
    >= 6 T in the motif's consensus).
(c) times of each step (attributions, TF-MoDISco, TOMTOM, FIMO scan of the sequences
    with JASPAR and the discovered motifs, logos and page) at each --sizes (synthetic)
    and on the real rows.

  python benchmarks/motif_discovery.py \
      --synthetic_checkpoint runs/demo/checkpoint_best.npz \
      --real_checkpoint runs/real_6370/checkpoint_best.npz --out bench_motifs/
  # tiny check of the script (a random-weight model of the seed's architecture):
  python benchmarks/motif_discovery.py --random_model --sizes 300 --real_rows 300 \
      --out /tmp/motif_bench_tiny

Writes <out>/results.json (one record per run, appended as each finishes) and per run
<out>/<run>/ the command's outputs (motifs.tsv, logos/, index.html, ...); prints a
summary per run. On CPU it re-executes itself with jemalloc preloaded, as the entry
points do.
"""

import argparse
import json
import os
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from experiments import _runtime  # pylint: disable=g-import-not-at-top

REAL_INPUT = os.path.join(REPO, '..', 'shared', 'data', 'dream',
                          'test_71103_measured.tsv')
# JASPAR names of the regulators the DREAM promoters are known to respond to.
KNOWN = {'REB1': 'Reb1', 'ABF1': 'Abf1', 'RAP1': 'Rap1', 'NSI1': 'Reb1-like (Nsi1)'}
POLY_DA_DT = re.compile('A{6,}|T{6,}')


def random_checkpoint(path, seed=3):
  """A narrow model of the seed's kind (48 channels, one transformer layer) at 110 bp
  with random weights (variance-preserving scale, BatchNorm averages non-trivial): the
  init's zero attention output leaves the attributions flat, and the full-width model
  with such weights predicts NaN."""
  import dataclasses
  import jax
  import numpy as np
  from enformer_small import checkpoint, config as config_lib, model as model_lib
  config = dataclasses.replace(config_lib.seed_config(110), channels=48,
                               num_transformer_layers=1, num_heads=2, key_size=8,
                               conv_tower_divisible_by=8)
  params, state = model_lib.param_shapes(config)
  rng = np.random.default_rng(seed)

  def weight(path, leaf):
    if len(leaf.shape) >= 2:
      return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape)
    if 'scale' in jax.tree_util.keystr(path):
      return rng.uniform(0.5, 1.5, leaf.shape)
    return rng.normal(0, 0.1, leaf.shape)

  def average(path, leaf):
    if not leaf.shape:
      return np.zeros((), leaf.dtype)
    if 'var_ema' in jax.tree_util.keystr(path):
      return rng.uniform(0.5, 1.5, leaf.shape)
    return rng.normal(0, 0.3, leaf.shape)

  def cast(f):
    return lambda path, leaf: np.asarray(f(path, leaf), leaf.dtype)
  params = jax.tree_util.tree_map_with_path(cast(weight), params)
  state = jax.tree_util.tree_map_with_path(cast(average), state)
  checkpoint.save_checkpoint(path, params=params, state=state, model_config=config)
  return path


def timed(times, step, function, *args, **kwargs):
  started = time.perf_counter()
  out = function(*args, **kwargs)
  times[step] = round(time.perf_counter() - started, 2)
  print(f'  {step}: {times[step]:.1f} s', flush=True)
  return out


def discover(model, sequences, names, database, directory, times):
  """Attributions -> TF-MoDISco -> TOMTOM -> FIMO -> report, each step timed."""
  from enformer_small import dream_data, motif_report, motif_scan, motifs
  x = dream_data.one_hot(model.layout.encode(sequences).codes)
  bars = _runtime.progress_bars(True)
  rows = motifs.work_rows(model, len(x), 'hypothetical')
  bar = bars(rows, 'attributions') if bars else None
  scores = timed(times, 'attributions', motifs.hypothetical_contributions, model, x,
                 progress=bar.update if bar else None)
  if bar is not None:
    bar.close()
  found = timed(times, 'tf_modisco', motifs.discover, x, scores,
                region=motifs.default_region(model.layout))
  matches = timed(times, 'tomtom', motifs.annotate, found, database, top=len(database))
  scanned = database + [m.as_motif() for m in found]
  hits = timed(times, 'fimo_scan', motif_scan.scan, sequences, scanned)
  timed(times, 'report', motif_report.write_report, directory, found,
        [m[:3] for m in matches], names, top=3)
  return found, matches, len(hits)


def planted_recovery(found, matches, planted):
  """{factor: [(motif, sign, seqlets, q)]} and the discovered motifs with no planted
  match (with their best JASPAR match)."""
  recovered = {m.name: [] for m in planted}
  unmatched = []
  for motif, best in zip(found, matches):
    hits = [m for m in best if m.target.source == 'generator' and m.q_value < 0.05]
    for m in hits:
      recovered[m.target.name].append((motif.name, motif.sign, motif.seqlets,
                                       m.q_value))
    if not hits:
      jaspar = [m for m in best if m.target.source != 'generator'][:1]
      unmatched.append((motif.name, motif.seqlets, motif.as_motif().consensus(),
                        [(m.target.label, m.q_value) for m in jaspar]))
  return recovered, unmatched


def regulators(motif, best):
  """Known regulators this motif looks like: JASPAR matches at q < 0.05, poly(dA:dT)."""
  named = [KNOWN[m.target.name.upper()] for m in best[:3]
           if m.q_value < 0.05 and m.target.name.upper() in KNOWN]
  if POLY_DA_DT.search(motif.as_motif().consensus().upper()):
    named.append('poly(dA:dT)')
  return sorted(set(named))


def record(args, entry):
  with open(os.path.join(args.out, 'results.json'), 'a') as f:
    f.write(json.dumps(entry) + '\n')


def run_synthetic(args, model, size):
  from enformer_small import motif_db, planted
  data = planted.synthetic_input(size, args.synthetic_seed)
  known = motif_db.generator_motifs(data.synthetic_config.model)
  database = motif_db.jaspar() + known
  print(f'(a) synthetic seed {args.synthetic_seed}: {size:,} rows', flush=True)
  times = {}
  found, matches, hits = discover(model, data.sequences, data.names, database,
                                     os.path.join(args.out, f'synthetic_{size}'), times)
  recovered, unmatched = planted_recovery(found, matches, known)
  for factor, motifs_found in recovered.items():
    print(f'  {factor:6s} ' + ('; '.join(f'{n} ({s}, {k} seqlets, q={q:.2g})'
                                         for n, s, k, q in motifs_found)
                               if motifs_found else 'NOT recovered'))
  for name, seqlets, consensus, best in unmatched:
    print(f'  {name} ({seqlets} seqlets, {consensus}): no planted match; best JASPAR '
          + (f'{best[0][0]} q={best[0][1]:.2g}' if best else 'none'))
  record(args, dict(run='synthetic', rows=size, seed=args.synthetic_seed,
                    motifs=len(found), fimo_hits=hits, times=times,
                    recovered={f: m for f, m in recovered.items()},
                    unmatched=unmatched))


def distinct_rows(sequences):
  """Indices of the first sequence of each family: most test rows come in families of
  near copies (SNV pairs, motif tilings and perturbations), whose shared bases
  TF-MoDISco would cluster as "motifs". A row sharing its first or its last half with
  an earlier kept row is left out (one base apart leaves one half intact)."""
  seen, keep = set(), []
  for i, sequence in enumerate(sequences):
    half = len(sequence) // 2
    keys = (('5', sequence[:half]), ('3', sequence[half:]))
    if not any(k in seen for k in keys):
      keep.append(i)
    seen.update(keys)
  return keep


def run_real(args, model):
  from enformer_small import motif_db, variant_effects
  names, sequences = variant_effects.read_sequences(args.real_input)
  total = len(sequences)
  if args.real_distinct:
    keep = distinct_rows(sequences)
    names, sequences = [names[i] for i in keep], [sequences[i] for i in keep]
  if args.real_rows:
    names, sequences = names[:args.real_rows], sequences[:args.real_rows]
  print(f'(b) real: {len(sequences):,} of the {total:,} rows of {args.real_input}'
        + (' (one per family of near copies)' if args.real_distinct else ''),
        flush=True)
  times = {}
  database = motif_db.jaspar()
  found, matches, hits = discover(model, sequences, names, database,
                                     os.path.join(args.out, 'real'), times)
  table = []
  for motif, best in zip(found, matches):
    named = regulators(motif, best)
    table.append(dict(motif=motif.name, sign=motif.sign, seqlets=motif.seqlets,
                      consensus=motif.as_motif().consensus(), regulators=named,
                      matches=[(m.target.label, m.q_value) for m in best[:3]]))
    print(f'  {motif.name} ({motif.sign}, {motif.seqlets} seqlets) '
          f'{table[-1]["consensus"]}: ' + ', '.join(f'{l} q={q:.2g}'
                                                     for l, q in table[-1]['matches'])
          + (f'  <- {", ".join(named)}' if named else ''))
  record(args, dict(run='real', rows=len(sequences), distinct=args.real_distinct,
                    motifs=len(found), fimo_hits=hits,
                    times=times, table=table))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--synthetic_checkpoint', help='The demo model (runs/demo/...).')
  parser.add_argument('--real_checkpoint', help='A real_6370.flags model.')
  parser.add_argument('--random_model', action='store_true',
                      help='Use a random-weight model for both (checks the script).')
  parser.add_argument('--sizes', default='10000,50000',
                      help='Synthetic rows per run (at most 50,000).')
  parser.add_argument('--synthetic_seed', type=int, default=1)
  parser.add_argument('--real_input', default=REAL_INPUT)
  parser.add_argument('--real_rows', type=int, default=0, help='0: all of them.')
  parser.add_argument('--real_distinct', action=argparse.BooleanOptionalAction,
                      default=True, help='One row per family of near copies.')
  parser.add_argument('--out', required=True)
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  from enformer_small import ensemble
  _runtime.show_library_log()
  if args.random_model:
    args.synthetic_checkpoint = args.real_checkpoint = random_checkpoint(
        os.path.join(args.out, 'random_model.npz'))
  sizes = [int(s) for s in args.sizes.split(',') if s]
  if any(s > 50_000 for s in sizes):
    parser.error('--sizes: at most 50,000 rows a run')
  if args.synthetic_checkpoint:
    model = ensemble.load(args.synthetic_checkpoint)
    for size in sizes:
      run_synthetic(args, model, size)
  if args.real_checkpoint:
    run_real(args, ensemble.load(args.real_checkpoint))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  main()
