"""What `experiments.design` writes: the designs table, FASTA and objective plots.

  designs.tsv    per design and method: the start and the design, edits, G+C of the
                 designed positions, the objective, the designer's mean and spread and
                 every member's value, the start's objective and mean; with a judge
                 (models that did not design), its mean, spread and members; with
                 robustness, the design's and the start's (`robustness.py`)
  designs.fa     the designs, named <method>_<index>
  objective_<method>.png  the objective (mean over designs of the best so far) against
                 candidate evaluations per design
"""

import dataclasses
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from enformer_small import design_constraints as rules
from enformer_small import files
from enformer_small.design import Result


@dataclasses.dataclass(frozen=True)
class Judged:
  """Another ensemble's view of the designs and starts: member values [K, N]."""
  designs: np.ndarray
  starts: np.ndarray


def _stats(values: np.ndarray):
  mean = values.mean(axis=0)
  spread = values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
  return mean, spread


def table_lines(result: Result, constraints: rules.Constraints,
                judged: Optional[Judged] = None,
                robust: Optional[Dict[str, np.ndarray]] = None) -> List[str]:
  """designs.tsv's lines for one method's result (header first)."""
  d = result.designs
  k = d.members.shape[0]
  header = ['method', 'design', 'start_sequence', 'sequence', 'edits', 'gc', 'objective',
            'mean', 'spread'] + [f'member_{i}' for i in range(k)] + [
                'start_objective', 'start_mean']
  if judged is not None:
    header += ['judge_mean', 'judge_spread', 'judge_start_mean'] + [
        f'judge_member_{i}' for i in range(judged.designs.shape[0])]
  if robust is not None:
    header += ['robustness', 'robustness_start']
  edits = constraints.edits(d.codes, result.starts)
  gc = constraints.gc(d.codes)
  starts, designs = rules.sequences_of(result.starts), rules.sequences_of(d.codes)
  lines = ['\t'.join(header)]
  for i in range(len(designs)):
    row = [result.method, str(i), starts[i], designs[i], str(int(edits[i])),
           f'{gc[i]:.4f}', f'{d.score[i]:.6g}', f'{d.mean[i]:.6g}', f'{d.spread[i]:.6g}']
    row += [f'{v:.6g}' for v in d.members[:, i]]
    row += [f'{result.initial.score[i]:.6g}', f'{result.initial.mean[i]:.6g}']
    if judged is not None:
      mean, spread = _stats(judged.designs)
      start_mean, _ = _stats(judged.starts)
      row += [f'{mean[i]:.6g}', f'{spread[i]:.6g}', f'{start_mean[i]:.6g}']
      row += [f'{v:.6g}' for v in judged.designs[:, i]]
    if robust is not None:
      row += [f'{robust["design"][i]:.4f}', f'{robust["start"][i]:.4f}']
    lines.append('\t'.join(row))
  return lines


def fasta_lines(result: Result) -> List[str]:
  return [line for i, s in enumerate(rules.sequences_of(result.designs.codes))
          for line in (f'>{result.method}_{i}', s)]


def plot_traces(path: str, result: Result, title: str = '') -> str:
  """The objective (mean over designs of the best so far) against evaluations."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  grid = sorted({spent for trace in result.traces for spent, _ in trace})
  best = np.array([[max((s for spent, s in trace if spent <= g), default=trace[0][1])
                    for g in grid] for trace in result.traces])
  fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
  ax.plot(grid, best.mean(axis=0), '-', label='mean over designs')
  ax.fill_between(grid, best.min(axis=0), best.max(axis=0), alpha=0.2,
                  label='range over designs')
  ax.set_xlabel('candidate evaluations per design')
  ax.set_ylabel('objective (best so far)')
  ax.set_title(title or f'{result.method}: objective against evaluations')
  ax.grid(alpha=0.3)
  ax.legend(loc='lower right', fontsize=8)
  fig.tight_layout()
  files.atomic_write(path, lambda f: fig.savefig(f, format='png'))
  plt.close(fig)
  return path


def write(output_dir: str, results: Sequence[Result], constraints: rules.Constraints,
          judged: Optional[Dict[str, Judged]] = None,
          robust: Optional[Dict[str, Dict[str, np.ndarray]]] = None) -> List[str]:
  """designs.tsv, designs.fa and a plot per method into `output_dir`; the paths."""
  lines, fasta = [], []
  for result in results:
    found = table_lines(result, constraints, (judged or {}).get(result.method),
                        (robust or {}).get(result.method))
    lines += found if not lines else found[1:]
    fasta += fasta_lines(result)
  written = [os.path.join(output_dir, 'designs.tsv'), os.path.join(output_dir, 'designs.fa')]
  for path, text in zip(written, ('\n'.join(lines) + '\n', '\n'.join(fasta) + '\n')):
    files.atomic_write(path, lambda f, t=text: f.write(t.encode('utf-8')))
  for result in results:
    written.append(plot_traces(os.path.join(output_dir, f'objective_{result.method}.png'),
                               result))
  return written
