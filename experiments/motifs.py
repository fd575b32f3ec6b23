r"""Which motifs a model learned, and whose they are; motif sites in any sequences.

  # discovery: attributions of many sequences -> TF-MoDISco -> TOMTOM against JASPAR
  python -m experiments.motifs --checkpoint runs/demo/checkpoint_best.npz \
      --synthetic_rows 20000 --synthetic_seed 1 --output_dir motifs_demo/
  python -m experiments.motifs --checkpoint a.npz,b.npz \
      --input ../shared/data/dream/test_71103_measured.tsv --output_dir motifs_real/
  # scanning: FIMO sites of JASPAR's (and discovered, --meme) motifs
  python -m experiments.motifs --scan --input designs.fa --meme motifs_demo/motifs.meme \
      --output_dir scan/
  python -m experiments.motifs --scan --pairs pairs.tsv --output_dir scan/

Input: --input is FASTA, a DREAM file (`sequence<TAB>expression`) or one sequence per
line (`variant_effects.read_sequences`); --synthetic_rows N --synthetic_seed S takes
the generator's rows instead (its planted motifs are then added to the database as
`planted_<factor>`). --pairs / --edits (scan mode) are variant tables as
experiments.variant_effects reads them.

Discovery (enformer_small/motifs.py): each sequence is attributed through the one
inference path (the checkpoint's encoding, windows, shifts and strands; several
checkpoints, a comma list or list file: the mean over members), by --method:
`hypothetical` (input gradient minus its mean over the 4 bases; default),
`gradient_x_input` or `ism`. TF-MoDISco (modisco-lite) clusters them in the random
region (between the constant DREAM flanks; --region_start/--region_end, 1-based,
inclusive, override it) with settings for 80 bp inputs (flags named as modisco-lite's
arguments). Every motif is compared by TOMTOM with JASPAR2024's CORE fungi motifs
(read offline from pyjaspar's copy; --nojaspar leaves them out) and any --meme files.

Writes to --output_dir:
  motifs.tsv     per motif: name (pos_i / neg_i: the sign of its contribution), sign,
                 seqlets, trimmed width, consensus, the --top_matches best database
                 matches with TOMTOM q-value, p-value and strand
  motifs.meme    the trimmed PPMs (for --scan --meme, or MEME suite tools)
  motifs.npz     per motif <name>_ppm, <name>_cwm, <name>_hcwm [W, 4] and <name>_sites
                 [K, 3] (sequence, 0-based start in the encoding, reverse strand)
  seqlets.tsv    every seqlet: motif, sequence name, start/end (1-based, inclusive),
                 strand
  logos/         <name>_cwm.png, <name>_pwm.png (PWM above its best match, aligned)
  index.html     the table and the logos (no outside resources)
  attributions.npz   with --save_attributions: names, codes, region and the scores
Scan mode (--scan) writes hits.tsv (sequence, motif, factor, start, end, strand,
score, p-value, site), or for --pairs / --edits site_changes.tsv: the sites each edit
loses (in ref, positions in ref) or gains (in alt, positions in alt).
"""

import os
import time
from typing import List, Tuple

from absl import flags
import numpy as np

from experiments import _flags
from experiments import _runtime

from enformer_small import checkpoint as checkpoint_lib
from enformer_small import dream_data
from enformer_small import ensemble
from enformer_small import files
from enformer_small import inference
from enformer_small import motif_db
from enformer_small import motif_report
from enformer_small import motif_scan
from enformer_small import motifs as motifs_lib
from enformer_small import planted
from enformer_small import variant_effects

FLAGS = flags.FLAGS


class MotifsInputError(Exception):
  """Bad flags; the message says which."""


def define_flags() -> None:
  flags.DEFINE_string('checkpoint', None, 'Checkpoint(s): a comma list or a file listing '
                      'them (discovery).')
  flags.DEFINE_string('input', None, 'FASTA, DREAM file or one sequence per line.')
  flags.DEFINE_integer('synthetic_rows', 0, 'Instead of --input: this many synthetic '
                       'rows (their planted motifs join the database).')
  flags.DEFINE_integer('synthetic_seed', 1, 'Seed of the synthetic rows (the demo '
                       'trains on seed 0).')
  flags.DEFINE_string('output_dir', None, 'Where the outputs go.')
  flags.DEFINE_enum('method', 'hypothetical', list(motifs_lib.METHODS),
                    'Attribution handed to TF-MoDISco (see the module help).')
  flags.DEFINE_integer('target', 0, 'Output (target index) attributed.')
  flags.DEFINE_integer('region_start', None, 'First base searched (1-based; default: '
                       "the random region's first).")
  flags.DEFINE_integer('region_end', None, 'Last base searched (1-based, inclusive).')
  _flags.define(motifs_lib.DiscoverySettings)
  _flags.define(inference.InferenceOptions)
  flags.DEFINE_bool('jaspar', True, "Compare with / scan for JASPAR's CORE fungi motifs.")
  flags.DEFINE_string('jaspar_release', motif_db.JASPAR_RELEASE, 'JASPAR release '
                      "(pyjaspar's local copy).")
  flags.DEFINE_list('meme', [], 'MEME files of further motifs (e.g. a motifs.meme).')
  flags.DEFINE_integer('top_matches', 3, 'Database matches listed per motif.')
  flags.DEFINE_bool('save_attributions', False, 'Also write attributions.npz.')
  flags.DEFINE_bool('scan', False, 'Scan mode: FIMO sites of the database motifs in '
                    '--input / --synthetic_rows sequences, or the sites --pairs / '
                    '--edits lose and gain.')
  flags.DEFINE_string('pairs', None, 'Scan mode: [name<TAB>]ref<TAB>alt per line.')
  flags.DEFINE_string('edits', None, 'Scan mode: sequence<TAB>position<TAB>ref<TAB>alt.')
  flags.DEFINE_float('threshold', motif_scan.DEFAULT_THRESHOLD,
                     'Scan mode: FIMO p-value threshold of a site.')
  flags.DEFINE_bool('progress', True, 'Progress bars (only on a terminal).')


# ---------------------------------------------------------------------------
# Inputs.


def _check_flags() -> None:
  if not FLAGS.output_dir:
    raise MotifsInputError('--output_dir is required')
  given = [f for f in ('input', 'synthetic_rows', 'pairs', 'edits') if FLAGS[f].value]
  allowed = ('input', 'synthetic_rows') + (('pairs', 'edits') if FLAGS.scan else ())
  if len(given) != 1 or given[0] not in allowed:
    raise MotifsInputError('give exactly one of ' + ', '.join(f'--{a}' for a in allowed))
  if not FLAGS.scan and not FLAGS.checkpoint:
    raise MotifsInputError('--checkpoint is required (or --scan)')
  if FLAGS.top_matches < 1:
    raise MotifsInputError(f'--top_matches must be >= 1, got {FLAGS.top_matches}')
  files.check_output(FLAGS.output_dir, directory=True, flag='--output_dir')


def _read_input() -> planted.Input:
  if FLAGS.synthetic_rows:
    return planted.synthetic_input(FLAGS.synthetic_rows, FLAGS.synthetic_seed)
  names, sequences = variant_effects.read_sequences(FLAGS.input)
  return planted.Input(names, sequences)


def _database(data: planted.Input) -> List[motif_db.Motif]:
  found = motif_db.database(FLAGS.meme, use_jaspar=FLAGS.jaspar,
                            release=FLAGS.jaspar_release) if (
                                FLAGS.jaspar or FLAGS.meme) else []
  if data.synthetic_config is not None:
    found += motif_db.generator_motifs(data.synthetic_config.model)
  if not found:
    raise MotifsInputError('no motifs to compare with: --nojaspar and no --meme')
  return found


def _region(layout, settings: motifs_lib.DiscoverySettings) -> Tuple[int, int]:
  lo, hi = motifs_lib.default_region(layout)
  lo = lo if FLAGS.region_start is None else FLAGS.region_start - 1
  hi = hi if FLAGS.region_end is None else FLAGS.region_end
  if not 0 <= lo < hi <= layout.length:
    raise MotifsInputError(f'--region_start/--region_end: [{lo + 1}, {hi}] is not '
                           f'inside the {layout.length} bp sequences')
  need = settings.seqlet_length + 2 * settings.flank_size
  if hi - lo < need:
    raise MotifsInputError(f'--region_start/--region_end: bases {lo + 1}-{hi} are '
                           f'{hi - lo} bp; a seqlet with its margins needs {need}')
  return lo, hi


# ---------------------------------------------------------------------------
# Discovery.


def _attributions(model, x: np.ndarray) -> np.ndarray:
  bars = _runtime.progress_bars(FLAGS.progress)
  total = motifs_lib.work_rows(model, x.shape[0], FLAGS.method)
  bar = bars(total, f'attributions ({FLAGS.method})') if bars else None
  started = time.perf_counter()
  scores = motifs_lib.hypothetical_contributions(
      model, x, method=FLAGS.method, target=FLAGS.target,
      progress=bar.update if bar else None)
  if bar is not None:
    bar.close()
  print(f'attributions ({FLAGS.method}) of {x.shape[0]:,} sequences in '
        f'{time.perf_counter() - started:.1f} s')
  return scores


def _discover() -> List[motifs_lib.DiscoveredMotif]:
  data = _read_input()
  database = _database(data)
  model = ensemble.load(FLAGS.checkpoint, _flags.parse(inference.InferenceOptions))
  settings = _flags.parse(motifs_lib.DiscoverySettings)
  region = _region(model.layout, settings)
  codes = model.layout.encode(data.sequences).codes
  x = dream_data.one_hot(codes)
  print(f'{FLAGS.checkpoint}: {ensemble.describe(model)}; {len(codes):,} sequences; '
        f'region {region[0] + 1}-{region[1]}; {len(database)} database motifs')
  note = model.layout.fit_note(data.sequences)
  if note:
    print(f'{FLAGS.input or "synthetic rows"}: {note}')
  _runtime.show_library_log()
  scores = _attributions(model, x)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  if FLAGS.save_attributions:
    np.savez(os.path.join(FLAGS.output_dir, 'attributions.npz'),
             names=np.array(data.names), codes=codes, region=np.array(region),
             scores=scores)
  print(f'TF-MoDISco on {len(codes):,} sequences (no progress bar: it reports none)')
  found = motifs_lib.discover(x, scores, region=region, settings=settings)
  matches = motifs_lib.annotate(found, database, top=FLAGS.top_matches)
  notes = [f'{ensemble.describe(model)}; {len(codes):,} sequences ('
           f'{FLAGS.input or f"synthetic seed {FLAGS.synthetic_seed}"}); attributions: '
           f'{FLAGS.method}; region {region[0] + 1}-{region[1]}.',
           f'TOMTOM against {len(database)} motifs; q-values are Benjamini-Hochberg over '
           "each motif's matches."]
  motif_report.write_report(FLAGS.output_dir, found, matches, data.names,
                            top=FLAGS.top_matches, notes=notes)
  print(f'{len(found)} motif(s); wrote {FLAGS.output_dir}/motifs.tsv, motifs.meme, '
        'motifs.npz, seqlets.tsv, logos/ and index.html')
  return found


# ---------------------------------------------------------------------------
# Scanning.


def _scan() -> List:
  data = None if (FLAGS.pairs or FLAGS.edits) else _read_input()
  database = _database(data or planted.Input([], []))
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  started = time.perf_counter()
  if data is not None:
    hits = motif_scan.scan(data.sequences, database, threshold=FLAGS.threshold)
    path, rows = 'hits.tsv', motif_report.hit_lines(data.names, database, hits)
  else:
    if FLAGS.pairs:
      names, refs, alts = variant_effects.read_pairs(FLAGS.pairs)
    else:
      edits = variant_effects.read_edits(FLAGS.edits)
      names = [str(i + 1) for i in range(len(edits))]
      refs, alts = [e.sequence for e in edits], [e.apply() for e in edits]
    hits = motif_scan.site_changes(refs, alts, database, threshold=FLAGS.threshold)
    path, rows = 'site_changes.tsv', motif_report.change_lines(names, database, hits)
  with open(os.path.join(FLAGS.output_dir, path), 'w', encoding='utf-8') as f:
    f.write(motif_report.tsv(rows))
  print(f'{len(hits):,} {"sites" if data is not None else "site changes"} of '
        f'{len(database)} motifs in {time.perf_counter() - started:.1f} s; wrote '
        f'{FLAGS.output_dir}/{path}')
  return hits


def run() -> List:
  _check_flags()
  return _scan() if FLAGS.scan else _discover()


main = _runtime.command(
    run, (MotifsInputError, motif_db.MotifFileError, variant_effects.VariantInputError,
          ensemble.EnsembleError, checkpoint_lib.CheckpointError, files.OutputPathError,
          ValueError))


if __name__ == '__main__':
  _runtime.reexec_with_jemalloc()
  define_flags()
  _runtime.run(main)
