"""What the motifs command writes: the motif table, logos, an HTML page, hits tables.

- `motif_table`: one row per discovered motif: name, sign, seqlets, width, consensus
  and its best database matches with their TOMTOM q- and p-values.
- `draw_logos`: <name>_cwm.png (the contribution-weight matrix, trimmed span marked)
  and <name>_pwm.png (the trimmed PPM in bits, above its best match aligned as TOMTOM
  aligned them, the match's reverse complement when that matched).
- `html_page`: a page with no outside resources showing the table and the logos
  (images by relative path, beside it).
- `write_report`: all of the discovery outputs of experiments/motifs.py in a folder.
- `hit_lines` / `change_lines`: FIMO hits and the sites edits lose or gain, with
  1-based inclusive positions (FIMO's own table convention).
"""

import html
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from enformer_small import motif_db
from enformer_small import motif_scan
from enformer_small import motifs as motifs_lib

BASES = 'ACGT'


def _format(value: float) -> str:
  return f'{value:.3g}'


def motif_table(found: Sequence[motifs_lib.DiscoveredMotif],
                matches: Sequence[Sequence[motif_db.Match]], top: int) -> List[List[str]]:
  """Rows of the motif table, header first (all strings)."""
  header = ['motif', 'sign', 'seqlets', 'width', 'consensus']
  for k in range(1, top + 1):
    header += [f'match{k}', f'match{k}_q', f'match{k}_p', f'match{k}_strand']
  rows = [header]
  for motif, best in zip(found, matches):
    row = [motif.name, motif.sign, str(motif.seqlets), str(motif.trim[1] - motif.trim[0]),
           motif.as_motif().consensus()]
    for k in range(top):
      if k < len(best):
        m = best[k]
        row += [m.target.label, _format(m.q_value), _format(m.p_value), m.strand]
      else:
        row += ['', '', '', '']
    rows.append(row)
  return rows


def tsv(rows: Sequence[Sequence[str]]) -> str:
  return ''.join('\t'.join(row) + '\n' for row in rows)


def bits(ppm: np.ndarray) -> np.ndarray:
  """[W, 4] PPM scaled to its information content per position (a sequence logo)."""
  p = np.clip(ppm, 1e-9, 1.0)
  return ppm * (2 + (p * np.log2(p)).sum(axis=1, keepdims=True))


def aligned_target(match: motif_db.Match) -> Tuple[np.ndarray, int]:
  """(the target's PPM on the strand that matched, the query position of its first
  column): TOMTOM's offset is the target column under the query's first."""
  ppm = match.target.ppm
  if match.strand == '-':
    ppm = motif_db.reverse_complement(ppm)
  return ppm, -match.offset


def _logo(ax, matrix: np.ndarray, first: int, title: str) -> None:
  import logomaker
  import pandas as pd
  frame = pd.DataFrame(matrix, columns=list(BASES),
                       index=np.arange(first, first + matrix.shape[0]))
  logomaker.Logo(frame, ax=ax, color_scheme='classic')
  ax.set_title(title, fontsize=9)
  ax.axhline(0, color='grey', lw=0.5)


def draw_logos(directory: str, motif: motifs_lib.DiscoveredMotif,
               match: Optional[motif_db.Match]) -> Dict[str, str]:
  """Writes <name>_cwm.png and <name>_pwm.png into `directory`; their paths by kind."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  os.makedirs(directory, exist_ok=True)
  lo, hi = motif.trim
  fig, ax = plt.subplots(figsize=(max(4, len(motif.cwm) / 3), 1.8))
  _logo(ax, motif.cwm, 0, f'{motif.name} CWM ({motif.sign}, {motif.seqlets} seqlets)')
  ax.axvspan(lo - 0.5, hi - 0.5, color='gold', alpha=0.15, lw=0)
  paths = {'cwm': os.path.join(directory, f'{motif.name}_cwm.png')}
  _save(fig, paths['cwm'])
  panels = 2 if match is not None else 1
  query = motif.as_motif().ppm
  first, last = 0, len(query)
  if match is not None:
    target, start = aligned_target(match)
    first, last = min(0, start), max(last, start + len(target))
  fig, axes = plt.subplots(panels, 1, figsize=(max(4, (last - first) / 3), 1.6 * panels),
                           squeeze=False, sharex=True)
  _logo(axes[0, 0], bits(query), 0, f'{motif.name} PWM (bits)')
  if match is not None:
    _logo(axes[1, 0], bits(target), start,
          f'best match {match.target.label} ({match.strand}), q = '
          f'{_format(match.q_value)}')
  for ax in axes[:, 0]:
    ax.set_ylim(0, 2)
  axes[-1, 0].set_xlim(first - 0.5, last - 0.5)
  paths['pwm'] = os.path.join(directory, f'{motif.name}_pwm.png')
  _save(fig, paths['pwm'])
  return paths


def _save(fig, path: str) -> None:
  import matplotlib.pyplot as plt
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


_STYLE = ('body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}'
          'td,th{border:1px solid #ccc;padding:4px;vertical-align:middle;'
          'font-size:13px}img{max-height:160px}')


def html_page(title: str, notes: Sequence[str], rows: Sequence[Sequence[str]],
              images: Sequence[Dict[str, str]]) -> str:
  """The page: `notes` as paragraphs, then the table `rows` (header first) with each
  motif's images (relative paths by kind, 'cwm' and 'pwm') in two more columns."""
  e = html.escape
  head = (''.join(f'<th>{e(h)}</th>' for h in rows[0]) +
          '<th>CWM</th><th>PWM and best match</th>')
  body = []
  for row, found in zip(rows[1:], images):
    cells = ''.join(f'<td>{e(v)}</td>' for v in row)
    pictures = ''.join(f'<td><img src="{e(found[k])}" alt="{e(row[0])} {k}"></td>'
                       for k in ('cwm', 'pwm'))
    body.append(f'<tr>{cells}{pictures}</tr>')
  text = ''.join(f'<p>{e(n)}</p>' for n in notes)
  return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{e(title)}</title>'
          f'<style>{_STYLE}</style></head><body><h1>{e(title)}</h1>{text}\n'
          f'<table><thead><tr>{head}</tr></thead><tbody>\n' + '\n'.join(body) +
          '\n</tbody></table></body></html>\n')


def write_report(directory: str, found: Sequence[motifs_lib.DiscoveredMotif],
                 matches: Sequence[Sequence[motif_db.Match]], names: Sequence[str], *,
                 top: int, notes: Sequence[str] = ()) -> None:
  """motifs.tsv, motifs.meme, motifs.npz, seqlets.tsv, logos/ and index.html (see
  experiments/motifs.py) of motifs found in sequences named `names`."""
  os.makedirs(os.path.join(directory, 'logos'), exist_ok=True)
  rows = motif_table(found, matches, top)
  _write(os.path.join(directory, 'motifs.tsv'), tsv(rows))
  _write(os.path.join(directory, 'motifs.meme'),
         motif_db.meme_text(m.as_motif() for m in found))
  arrays = {f'{m.name}_{kind}': getattr(m, kind) for m in found
            for kind in ('ppm', 'cwm', 'hcwm', 'sites')}
  np.savez(os.path.join(directory, 'motifs.npz'),
           names=np.array([m.name for m in found]), **arrays)
  seqlets = [['motif', 'sequence', 'start', 'end', 'strand']]
  seqlets += [[m.name, names[i], str(start + 1), str(start + len(m.ppm)), '+-'[rev]]
              for m in found for i, start, rev in m.sites.tolist()]
  _write(os.path.join(directory, 'seqlets.tsv'), tsv(seqlets))
  images = []
  for motif, best in zip(found, matches):
    paths = draw_logos(os.path.join(directory, 'logos'), motif, best[0] if best else None)
    images.append({k: os.path.relpath(p, directory) for k, p in paths.items()})
  _write(os.path.join(directory, 'index.html'),
         html_page('Motifs the model learned', notes, rows, images))


def _write(path: str, text: str) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    f.write(text)


# ---------------------------------------------------------------------------
# Scans.

HIT_HEADER = ['sequence', 'motif', 'factor', 'start', 'end', 'strand', 'score',
              'p_value', 'site']


def _hit_fields(names: Sequence[str], by_id: Dict[str, motif_db.Motif],
                hit: motif_scan.Hit) -> List[str]:
  motif = by_id[hit.motif]
  return [names[hit.sequence], motif.id, motif.name, str(hit.start + 1), str(hit.end),
          hit.strand, f'{hit.score:.3f}', f'{hit.p_value:.3g}', hit.site]


def hit_lines(names: Sequence[str], motifs: Sequence[motif_db.Motif],
              hits: Sequence[motif_scan.Hit]) -> List[List[str]]:
  """The hits table (header first); positions 1-based, end inclusive."""
  by_id = {m.id: m for m in motifs}
  return [HIT_HEADER] + [_hit_fields(names, by_id, h) for h in hits]


def change_lines(names: Sequence[str], motifs: Sequence[motif_db.Motif],
                 changes: Sequence[motif_scan.SiteChange]) -> List[List[str]]:
  """The table of sites edits lose (positions in ref) or gain (positions in alt)."""
  by_id = {m.id: m for m in motifs}
  return ([['pair', 'change'] + HIT_HEADER[1:]] +
          [[names[c.hit.sequence], c.change] + _hit_fields(names, by_id, c.hit)[1:]
           for c in changes])
