"""Designing sequences with an ensemble: greedy / beam substitution, evolution, implants.

A `Designer` scores candidate sequences with an `ensemble.Ensemble` (every member
through the one inference path) and an `Objective`: per member the chosen output (or a
difference of two outputs, for specificity), then the members' mean minus k times their
spread (raising a prediction only one member believes costs k per unit of spread), or
its negation (minimise), or minus the distance to a target value. Every candidate is
checked against the `design_constraints.Constraints` before it is evaluated, so a
design never breaks them. One evaluation is one candidate sequence scored by the whole
ensemble; every method stops at its budget of evaluations per design.

Methods, each batched over all designs at once:
  greedy / beam   every single substitution of each beam member (the batched ISM of the
                  current sequences), the best `width` kept per design; greedy is width 1
                  and stops when no substitution improves the objective.
  evolve          a genetic algorithm: tournament selection, uniform crossover at the
                  positions where parents differ, random substitutions, the best of
                  parents and children kept (elitist).
  implant         a motif (IUPAC string or PWM consensus) at every allowed position on
                  both strands; the best placement kept.
The gradient method (Fast SeqProp's straight-through relaxation) is `design_gradient`.
"""

import dataclasses
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from enformer_small import design_constraints as rules
from enformer_small.design_constraints import Constraints
from enformer_small.ensemble import Ensemble

DIRECTIONS = ('max', 'min', 'target')


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a design optimises (higher `score` is better).

  direction: 'max', 'min' or 'target' (approach target_value).
  output, minus_output: the output index; with minus_output, the difference
    output - minus_output (specificity of one output over another).
  spread_penalty: k in mean - k sd (max), -mean - k sd (min), -|mean - t| - k sd.
  """
  direction: str = 'max'
  target_value: float = 0.0
  output: int = 0
  minus_output: Optional[int] = None
  spread_penalty: float = 0.0

  def __post_init__(self):
    if self.direction not in DIRECTIONS:
      raise ValueError(f'direction must be one of {", ".join(DIRECTIONS)}; got '
                       f'{self.direction!r}')
    if self.spread_penalty < 0:
      raise ValueError(f'spread_penalty must be >= 0, got {self.spread_penalty}')

  def member_values(self, members: np.ndarray) -> np.ndarray:
    """float64 [K, M]: each member's value of predictions [K, M, T]."""
    values = np.asarray(members, np.float64)[..., self.output]
    if self.minus_output is not None:
      values = values - np.asarray(members, np.float64)[..., self.minus_output]
    return values

  def score(self, values: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, mean, spread) [M] of member values [K, M]."""
    mean = values.mean(axis=0)
    spread = values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros_like(mean)
    centre = {'max': mean, 'min': -mean,
              'target': -np.abs(mean - self.target_value)}[self.direction]
    return centre - self.spread_penalty * spread, mean, spread


@dataclasses.dataclass
class Scored:
  """Candidates with their members' values [K, M], mean, spread and score [M]."""
  codes: np.ndarray
  members: np.ndarray
  mean: np.ndarray
  spread: np.ndarray
  score: np.ndarray

  def take(self, index) -> 'Scored':
    """The candidates at `index` (an index array or a mask)."""
    return Scored(self.codes[index], self.members[:, index], self.mean[index],
                  self.spread[index], self.score[index])

  @staticmethod
  def concat(parts: Sequence['Scored']) -> 'Scored':
    return Scored(np.concatenate([p.codes for p in parts]),
                  np.concatenate([p.members for p in parts], axis=1),
                  *(np.concatenate([getattr(p, f) for p in parts])
                    for f in ('mean', 'spread', 'score')))

  def replace_where_better(self, rows: np.ndarray, other: 'Scored') -> None:
    """In place: row rows[i] becomes other's candidate i where that scores higher
    (a strictly better score; ties keep the present one)."""
    better = other.score > self.score[rows]
    into, taken = rows[better], np.flatnonzero(better)
    self.codes[into], self.members[:, into] = other.codes[taken], other.members[:, taken]
    for field in ('mean', 'spread', 'score'):
      getattr(self, field)[into] = getattr(other, field)[taken]


class Designer:
  """Scores candidates (`evaluate`) and keeps the count and each design's trace."""

  def __init__(self, ensemble: Ensemble, objective: Objective, constraints: Constraints,
               *, batch_size: Optional[int] = None):
    self.ensemble, self.objective, self.constraints = ensemble, objective, constraints
    self.batch_size = batch_size
    self.evaluations = 0

  def evaluate(self, codes: np.ndarray) -> Scored:
    codes = np.array(codes, np.uint8)  # A copy: methods update their best in place.
    if codes.shape[0] == 0:
      empty = np.zeros((0,))
      return Scored(codes, np.zeros((self.ensemble.size, 0)), empty, empty, empty)
    members = self.ensemble.predict_codes(codes, batch_size=self.batch_size).members
    values = self.objective.member_values(members)
    score, mean, spread = self.objective.score(values)
    self.evaluations += codes.shape[0]
    return Scored(codes, values, mean, spread, score)


@dataclasses.dataclass
class Result:
  """Designs [N, S], their Scored, the starts' Scored (`initial`), and per design the
  trace of (candidate evaluations spent, best score so far) after each round (the
  start's evaluation is not counted)."""
  starts: np.ndarray
  designs: Scored
  traces: List[List[Tuple[int, float]]]
  method: str
  initial: Scored


def _check_starts(designer: Designer, starts: np.ndarray) -> np.ndarray:
  starts = np.asarray(starts, np.uint8)
  if starts.ndim != 2 or starts.shape[1] != designer.constraints.length:
    raise ValueError(f'starts must be [N, {designer.constraints.length}] codes, got '
                     f'{starts.shape}')
  for i, code in enumerate(starts):
    why = designer.constraints.violations(code)
    if why:
      raise rules.ConstraintError(f'start {i + 1} breaks the constraints: '
                                  f'{"; ".join(why)}')
  return starts


def single_substitutions(codes: np.ndarray, mutable: np.ndarray
                         ) -> Tuple[np.ndarray, np.ndarray]:
  """(owner [M], mutants uint8 [M, S]): every single substitution at the mutable
  positions of each row of codes [B, S] (3 a position, 4 at an N)."""
  positions = np.flatnonzero(mutable)
  base = np.broadcast_to(np.arange(4), (codes.shape[0], positions.size, 4))
  owner, index, alt = np.nonzero(base != codes[:, positions, None])
  mutants = np.array(codes[owner], np.uint8)
  mutants[np.arange(owner.size), positions[index]] = alt
  return owner, mutants


def beam(designer: Designer, starts: np.ndarray, *, width: int = 1,
         budget: int = 2400, progress: Optional[Callable[[int], None]] = None
         ) -> Result:
  """Greedy (width 1) or beam substitution search; see the module docstring.

  Args:
    designer: the ensemble, objective and constraints.
    starts: uint8 [N, S] valid starting sequences.
    width: sequences kept per design each round.
    budget: evaluations per design (a round that would exceed it is not started).
    progress: called with the evaluations of each round.
  """
  starts = _check_starts(designer, starts)
  n = starts.shape[0]
  current = designer.evaluate(starts)
  beams = [[i] for i in range(n)]  # Indices into `current`, per design.
  best = [int(i) for i in range(n)]
  spent = np.zeros(n, int)  # Evaluations of candidates; the starts' are not counted.
  traces = [[(0, float(current.score[i]))] for i in range(n)]
  active = np.ones(n, bool)
  while active.any():
    owners, mutants = [], []
    for d in np.flatnonzero(active):
      owner, found = single_substitutions(current.codes[beams[d]],
                                          designer.constraints.mutable)
      found = np.unique(found, axis=0)
      found = found[designer.constraints.valid(found, np.repeat(starts[d:d + 1],
                                                                len(found), 0))]
      if not len(found) or spent[d] + len(found) > budget:
        active[d] = False
        continue
      owners.append(np.full(len(found), d))
      mutants.append(found)
    if not owners:
      break
    owners = np.concatenate(owners)
    scored = designer.evaluate(np.concatenate(mutants))
    if progress:
      progress(len(owners))
    offset = len(current.score)
    current = Scored.concat([current, scored])
    for d in np.unique(owners):
      mine = offset + np.flatnonzero(owners == d)
      spent[d] += len(mine)
      order = mine[np.argsort(-current.score[mine], kind='stable')]
      if current.score[order[0]] <= current.score[best[d]] and width == 1:
        active[d] = False  # Greedy: no substitution helps.
      else:
        beams[d] = list(order[:width])
        if current.score[order[0]] > current.score[best[d]]:
          best[d] = int(order[0])
      traces[d].append((int(spent[d]), float(current.score[best[d]])))
  return Result(starts, current.take(np.array(best)), traces,
                'greedy' if width == 1 else f'beam{width}', current.take(np.arange(n)))


def _mutate(codes: np.ndarray, mutable: np.ndarray, rate: float,
            rng: np.random.Generator) -> np.ndarray:
  """Each mutable position substituted with probability `rate` (at least one a row)."""
  out = np.array(codes, np.uint8)
  positions = np.flatnonzero(mutable)
  hit = rng.random((len(out), positions.size)) < rate
  hit[np.arange(len(out)), rng.integers(0, positions.size, len(out))] = True
  rows, cols = np.nonzero(hit)
  shift = rng.integers(1, 4, rows.size)  # Another base than the present one.
  present = out[rows, positions[cols]]
  out[rows, positions[cols]] = np.where(present < 4, (present + shift) % 4,
                                        rng.integers(0, 4, rows.size))
  return out


def _tournament(scores: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
  """`count` indices, each the better of two drawn at random."""
  a, b = rng.integers(0, len(scores), count), rng.integers(0, len(scores), count)
  return np.where(scores[a] >= scores[b], a, b)


def _children(parents: np.ndarray, scores: np.ndarray, count: int, start: np.ndarray,
              constraints: Constraints, rate: float, rng: np.random.Generator,
              tries: int = 20) -> np.ndarray:
  """`count` valid children (or fewer) of a population: tournament pairs, uniform
  crossover, substitutions; invalid children are drawn again up to `tries` times."""
  found = []
  for _ in range(tries):
    need = count - sum(len(f) for f in found)
    if need <= 0:
      break
    mother = parents[_tournament(scores, need, rng)]
    father = parents[_tournament(scores, need, rng)]
    mask = rng.random(mother.shape) < 0.5
    child = _mutate(np.where(mask, mother, father), constraints.mutable, rate, rng)
    ok = constraints.valid(child, np.repeat(start[None], len(child), 0))
    found.append(np.unique(child[ok], axis=0))
  return np.concatenate(found)[:count] if found else np.zeros((0, start.size), np.uint8)


def evolve(designer: Designer, starts: np.ndarray, *, population: int = 48,
           budget: int = 2400, rate: Optional[float] = None, seed: int = 0,
           progress: Optional[Callable[[int], None]] = None) -> Result:
  """A genetic algorithm per design; see the module docstring.

  Args:
    population: sequences kept per design; each generation makes as many children.
    budget: evaluations per design.
    rate: substitution probability per mutable position (default 1.5 / positions).
    seed: the random draws (a run is repeatable).
  """
  starts = _check_starts(designer, starts)
  rng = np.random.default_rng(seed)
  constraints = designer.constraints
  rate = rate if rate is not None else 1.5 / constraints.mutable.sum()
  initial = designer.evaluate(starts)
  pools = [initial.take(np.array([d])) for d in range(len(starts))]
  traces = [[(0, float(p.score[0]))] for p in pools]
  spent = np.zeros(len(starts), int)
  while True:
    owners, kids = [], []
    for d, pool in enumerate(pools):
      room = min(population, budget - spent[d])
      made = _children(pool.codes, pool.score, room, starts[d], constraints, rate,
                       rng) if room > 0 else np.zeros((0, starts.shape[1]), np.uint8)
      owners.append(np.full(len(made), d))
      kids.append(made)
    owners = np.concatenate(owners)
    if not owners.size:
      break
    scored = designer.evaluate(np.concatenate(kids))
    if progress:
      progress(owners.size)
    for d in np.unique(owners):
      merged = Scored.concat([pools[d], scored.take(np.flatnonzero(owners == d))])
      _, first = np.unique(merged.codes, axis=0, return_index=True)
      keep = first[np.argsort(-merged.score[first], kind='stable')][:population]
      pools[d] = merged.take(keep)
      spent[d] += int(np.sum(owners == d))
      traces[d].append((int(spent[d]), float(pools[d].score[0])))
  best = Scored.concat([p.take(np.array([0])) for p in pools])
  return Result(starts, best, traces, 'evolve', initial)


def motif_codes(motif: str) -> np.ndarray:
  """bool [k, 4] allowed bases of an IUPAC motif, for `implant`."""
  return rules.allowed(rules.check_iupac(motif))[:, :4]


def placements(start: np.ndarray, motif: np.ndarray, mutable: np.ndarray
               ) -> np.ndarray:
  """uint8 [P, S]: `start` with the motif (bool [k, 4] allowed bases, as given and
  reverse-complemented) at every offset inside the mutable positions; where a motif
  position allows several bases the start's base is kept if allowed, else the first
  allowed of A, C, G, T."""
  out = []
  k = motif.shape[0]
  for strand in (motif, motif[::-1, ::-1]):
    first = np.argmax(strand, axis=1)
    for offset in range(start.size - k + 1):
      if not mutable[offset:offset + k].all():
        continue
      code = np.array(start, np.uint8)
      here = code[offset:offset + k]
      keep = (here < 4) & strand[np.arange(k), np.minimum(here, 3)]
      code[offset:offset + k] = np.where(keep, here, first)
      out.append(code)
  return np.unique(np.array(out, np.uint8).reshape(-1, start.size), axis=0)


def implant(designer: Designer, starts: np.ndarray, motif: np.ndarray,
            progress: Optional[Callable[[int], None]] = None) -> Result:
  """The best valid placement of `motif` (bool [k, 4], `motif_codes` or a PWM's
  consensus) in each start; a start with no valid placement is kept as it is."""
  starts = _check_starts(designer, starts)
  parts, owners = [], []
  for d, start in enumerate(starts):
    found = placements(start, motif, designer.constraints.mutable)
    found = found[designer.constraints.valid(found, np.repeat(start[None], len(found), 0))]
    parts.append(np.concatenate([start[None], found]))
    owners.append(np.full(len(parts[-1]), d))
  owners = np.concatenate(owners)
  scored = designer.evaluate(np.concatenate(parts))
  if progress:
    progress(owners.size)
  best, traces = [], []
  for d in range(len(starts)):
    mine = np.flatnonzero(owners == d)
    top = mine[np.argmax(scored.score[mine])]
    best.append(top)
    traces.append([(0, float(scored.score[mine[0]])),
                   (len(mine) - 1, float(scored.score[top]))])
  firsts = np.array([np.flatnonzero(owners == d)[0] for d in range(len(starts))])
  return Result(starts, scored.take(np.array(best)), traces, 'implant',
                scored.take(firsts))


def read_pwm(path: str) -> np.ndarray:
  """float [k, 4] probabilities of the first motif of a MEME file (its
  'letter-probability matrix') or a JASPAR / plain count matrix (four rows A, C, G, T,
  optionally 'A [ ... ]'), normalised per position."""
  try:
    with open(path, 'r', encoding='utf-8') as f:
      lines = [line.strip() for line in f]
  except (OSError, UnicodeDecodeError) as e:
    raise ValueError(f'{path}: cannot read the motif: {e}') from None
  def numbers(line):
    return [float(v) for v in line.replace('[', ' ').replace(']', ' ').split()
            if _is_number(v)]
  start = next((i for i, line in enumerate(lines)
                if line.startswith('letter-probability matrix')), None)
  if start is not None:
    rows = []
    for line in lines[start + 1:]:
      values = numbers(line)
      if len(values) != 4:
        break
      rows.append(values)
    matrix = np.array(rows)
  else:
    rows = [numbers(line) for line in lines if line and not line.startswith('>')]
    rows = [r for r in rows if r]
    if len(rows) != 4 or len({len(r) for r in rows}) != 1:
      raise ValueError(f'{path}: expected a MEME motif or four rows (A, C, G, T) of counts')
    matrix = np.array(rows).T
  if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] != 4:
    raise ValueError(f'{path}: no motif matrix found')
  return matrix / matrix.sum(axis=1, keepdims=True)


def _is_number(text: str) -> bool:
  try:
    float(text)
    return True
  except ValueError:
    return False


def consensus(pwm: np.ndarray) -> np.ndarray:
  """bool [k, 4]: the most probable base at each position of a PWM [k, 4]."""
  return np.eye(4, dtype=bool)[np.argmax(pwm, axis=1)]
