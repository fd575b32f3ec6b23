"""Where the train step's time goes on one device: a jax.profiler trace read back.

For each dtype and variant: compiles the pmapped train step at --batch, times it (median
of --repeats runs of --steps steps), traces --trace_steps more steps with
`jax.profiler.trace`, and sums the device's kernel times from the trace by HLO
instruction. Each instruction is put in a class (convolution, matmul, random bits,
reduction, layout copy, elementwise) by what it computes, and in the Haiku module its
operations come from (`hk.config` profiler name scopes; they do not change the
computation), and the shares are printed: the evidence for what to speed up.

Variants (measured in the same process, same batch):
  base   the project's step as `experiments.train` builds it;
  rbg    dropout bits from XLA's RngBitGenerator (`jax_default_prng_impl=rbg`) instead
         of threefry: another random stream, the same dropout distribution;
  unsafe_rbg  the same without rbg's care for key splitting (faster, weaker streams);
  fast_cpu  the step arranged for XLA:CPU (`training.make_train_step(fast_cpu=True)`,
         `enformer_small/fast_cpu.py`).

  python benchmarks/profile_step.py --batch 10000 --dtypes float32,bfloat16 \
      --variants base,rbg --out /tmp/profile
"""

import argparse
import collections
import glob
import os
import re
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

PRNG_OF_VARIANT = {'base': 'threefry2x32', 'rbg': 'rbg', 'unsafe_rbg': 'unsafe_rbg',
                   'fast_cpu': 'threefry2x32'}
# HLO computation headers and instructions of `compiled.as_text()`.
_COMPUTATION = re.compile(r'^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%?([\w.\-]+) = (.*)$')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r'(?:calls|to_apply)=%?([\w.\-]+)')
_OPCODE = re.compile(r'^[^=]*?\s([a-z][\w\-]*)\(')
# Module path components worth naming (the Enformer tree's block names).
_MODULES = ('stem', 'conv_tower', 'transformer', 'mha', 'attention', 'final_pointwise',
            'head', 'batch_norm', 'layer_norm')


def parse_hlo(text):
  """{instruction: (opcode, [op_name...])}, fusions carrying their callees' op names."""
  ops, comps, current = {}, collections.defaultdict(list), None
  calls = {}
  for line in text.splitlines():
    m = _COMPUTATION.match(line)
    if m and '=' not in line.split('{')[0]:
      current = m.group(1)
      continue
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, rest = m.groups()
    op = _OPCODE.match(' ' + rest.split(', metadata')[0])
    opcode = op.group(1) if op else '?'
    if 'custom_call_target=' in rest:
      opcode = 'custom-call:' + rest.split('custom_call_target="')[1].split('"')[0]
    names = _OP_NAME.findall(rest)
    ops[name] = (opcode, names)
    comps[current].append(name)
    c = _CALLS.search(rest)
    if c:
      calls[name] = c.group(1)

  def callee_names(comp, depth=0):
    out = []
    for inst in comps.get(comp, []):
      out += ops[inst][1]
      if inst in calls and depth < 4:
        out += callee_names(calls[inst], depth + 1)
    return out

  inner_opcodes = {}
  for name, comp in calls.items():
    ops[name] = (ops[name][0], ops[name][1] + callee_names(comp))
    inner_opcodes[name] = {ops[i][0] for i in comps.get(comp, [])}
  return ops, inner_opcodes


def hlo_name(kernel):
  """The HLO instruction a GPU kernel was named after ('fusion_12' -> 'fusion.12')."""
  return re.sub(r'_(\d+)$', r'.\1', kernel)


def library_kernel_class(kernel):
  """cuDNN / cuBLAS kernels carry the library's names, not the instruction's."""
  if any(k in kernel for k in ('fprop', 'dgrad', 'wgrad', 'cudnn', 'conv')):
    return 'convolution'
  if any(k in kernel for k in ('gemm', 'nvjet', 'xmma', 'cutlass')):
    return 'matmul'
  return None


def op_class(opcode, inner, op_names):
  """What an instruction (or fusion) mostly computes."""
  text = ' '.join(op_names)
  everything = {opcode} | inner
  if any(o == 'convolution' or 'cudnn' in o for o in everything):
    return 'convolution'
  if any(o in ('dot', 'custom-call:__cublas$gemm', 'custom-call:__cublas$lt$matmul')
         or 'gemm' in o or 'matmul' in o or 'triton' in o for o in everything):
    return 'matmul'
  if ('random_bits' in text or 'threefry' in text or '/dropout/' in text
      or 'rng-bit-generator' in everything):
    return 'dropout bits and masks'
  if everything & {'reduce', 'reduce-window', 'select-and-scatter'}:
    return 'reduction'
  if everything <= {'copy', 'transpose', 'bitcast', 'parameter', 'tuple',
                    'get-tuple-element'}:
    return 'layout copy'
  return 'elementwise'


def module_of(op_names):
  """The Enformer module most of an instruction's operations come from."""
  counts = collections.Counter()
  for name in op_names:
    parts = name.split('/')
    hits = [p for p in parts if any(p.startswith(m) for m in _MODULES)]
    if 'sgd' in name or 'apply_updates' in name or 'adam' in name:
      counts['optimizer'] += 1
    elif hits:
      counts['/'.join(dict.fromkeys(re.sub(r'_\d+$', '', h) for h in hits[:2]))] += 1
    else:
      counts['(other)'] += 1
  return counts.most_common(1)[0][0] if counts else '(unnamed)'


_SECTIONS = (('stem', 'stem'), ('conv_tower', 'conv_tower'), ('/mlp/', 'transformer mlp'),
             ('/mha/', 'transformer attention'), ('final_pointwise', 'final_pointwise'),
             ('head_', 'head'))
_PARTS = (('dropout', 'dropout'), ('threefry', 'dropout'), ('random_bits', 'dropout'),
          ('batch_norm', 'batch_norm'), ('layer_norm', 'layer_norm'),
          ('conv1_d', 'conv'), ('linear', 'linear'), ('_layer', 'linear'))


def component_of(op_names):
  """'section: part' (e.g. 'conv_tower: batch_norm') most of an instruction comes from.

  Finer than `module_of`: a section of the model (stem, conv_tower, transformer
  attention or mlp, final_pointwise, head, optimizer) and the kind of layer within it.
  GELU and residual adds have no scope of their own and count as the section's 'other'.
  """
  counts = collections.Counter()
  for name in op_names:
    if 'sgd' in name or 'apply_updates' in name:
      counts['optimizer'] += 1
      continue
    hit = next(((key, s) for key, s in _SECTIONS if key in name), None)
    if hit is None:
      counts['(outside the model)'] += 1
      continue
    key, section = hit
    tail = name.split(key, 1)[-1]
    part = next((p for k, p in _PARTS if k in tail), 'other')
    if section == 'transformer attention' and part == 'other' and 'attention_' in tail:
      part = 'attention core'  # logits, relative shift, softmax, weights x values
    counts[f'{section}: {part}'] += 1
  return counts.most_common(1)[0][0] if counts else '(unnamed)'


def kernel_times(trace_dir):
  """{event name: total ns} over the device planes of a trace.

  GPU planes hold one line per CUDA stream ('Stream #N...') besides summary lines
  ('XLA Ops', 'XLA Modules'); the kernels are read from 'XLA Ops' where present, else
  from the stream lines. CPU: XLA's thunks on its threads.
  """
  from jax.profiler import ProfileData
  totals = collections.Counter()
  for path in glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True):
    for plane in ProfileData.from_file(path).planes:
      on_device = plane.name.startswith('/device:')
      if not (on_device or plane.name == '/host:CPU'):
        continue
      lines = list(plane.lines)
      if on_device:
        print(f'  trace plane {plane.name}: lines ' + ', '.join(
            f'{l.name} ({sum(1 for _ in l.events)})' for l in lines))
        ops = [l for l in lines if l.name == 'XLA Ops']
        lines = ops or [l for l in lines if l.name.startswith('Stream')]
      else:
        lines = [l for l in lines if 'XLA' in l.name]
      for line in lines:
        for event in line.events:
          if event.name.startswith(('ThunkExecutor', 'SlinkyThreadPool')):
            continue  # CPU: waits around the thunks, not work
          totals[event.name.lstrip('%')] += event.duration_ns
  return totals


def profile(step, train_state, batch, args, label, out_dir):
  """Times `step`, traces it, writes and returns the per-instruction table."""
  import jax
  compiled = step.lower(train_state, batch).compile()
  ops, inner = parse_hlo(compiled.as_text())
  with open(os.path.join(out_dir, f'{label}.hlo.txt'), 'w') as f:
    f.write(compiled.as_text())
  for _ in range(3):
    train_state, metrics = step(train_state, batch)
  jax.block_until_ready(metrics)
  rates = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      train_state, metrics = step(train_state, batch)
    jax.block_until_ready(metrics)
    rates.append(args.steps * args.batch / (time.perf_counter() - t0))
  trace_dir = tempfile.mkdtemp()
  with jax.profiler.trace(trace_dir):
    for _ in range(args.trace_steps):
      train_state, metrics = step(train_state, batch)
    jax.block_until_ready(metrics)
  times = kernel_times(trace_dir)
  rows = classify(times, ops, inner, args.trace_steps)
  with open(os.path.join(out_dir, f'{label}.ops.tsv'), 'w') as f:
    f.write('ms_per_step\tinstruction\tclass\tmodule\tcomponent\n')
    for row in rows:
      f.write('%.4f\t%s\t%s\t%s\t%s\n' % row)
  return statistics.median(rates), rows, train_state


def classify(times, ops, inner, steps):
  """[(ms per step, kernel, class, module)], largest first."""
  rows = []
  for kernel, ns in times.items():
    name = kernel if kernel in ops else hlo_name(kernel)
    opcode, names = ops.get(name, ('?', []))
    cls = (library_kernel_class(kernel) if name not in ops else
           op_class(opcode, inner.get(name, set()), names))
    rows.append((ns / steps / 1e6, kernel, cls or 'library kernel',
                 module_of(names) if names else '(library call)',
                 component_of(names) if names else '(library call)'))
  return sorted(rows, reverse=True)


def reanalyse(directory):
  """Re-classifies saved `*.ops.tsv` tables with their `*.hlo.txt` (no device)."""
  for path in sorted(glob.glob(os.path.join(directory, '*.ops.tsv'))):
    label = os.path.basename(path)[:-len('.ops.tsv')]
    with open(os.path.join(directory, label + '.hlo.txt')) as f:
      ops, inner = parse_hlo(f.read())
    with open(path) as f:
      times = {l.split('\t')[1]: float(l.split('\t')[0]) * 1e6 for l in list(f)[1:]}
    rows = classify(times, ops, inner, 1)
    summarise(label, float('nan'), rows, 1)


def summarise(label, seq_s, rows, batch):
  total = sum(r[0] for r in rows)
  print(f'\n== {label}: {seq_s:,.0f} seq/s (step {1e3 * batch / seq_s:.2f} ms wall, '
        f'{total:.2f} ms of kernels, {len(rows)} kernels per step)')
  for key, title, top in ((2, 'class', 8), (3, 'module', 8), (4, 'component', 40)):
    sums = collections.Counter()
    for r in rows:
      sums[r[key]] += r[0]
    print(f'  by {title}: ' + '; '.join(f'{k} {v:.2f} ms ({100 * v / total:.0f}%)'
                                       for k, v in sums.most_common(top)))
  cross = collections.Counter()
  for r in rows:
    cross[(r[4].split(':')[0], r[2])] += r[0]
  print('  by section and class (ms): ' + '; '.join(
      f'{s} / {c} {v:.2f}' for (s, c), v in cross.most_common(30)))
  print('  top kernels: ' + '; '.join(f'{r[1]} [{r[2]}, {r[3]}] {r[0]:.3f} ms'
                                      for r in rows[:8]))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--batch', type=int, default=10000)
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--variants', default='base,rbg')
  parser.add_argument('--input_length', type=int, default=85)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--trace_steps', type=int, default=3)
  parser.add_argument('--out', default=tempfile.mkdtemp(prefix='profile_step_'))
  parser.add_argument('--reanalyse', default=None,
                      help='a directory of saved tables and HLO: classify again, no run')
  args = parser.parse_args()
  if args.reanalyse:
    reanalyse(args.reanalyse)
    return
  os.makedirs(args.out, exist_ok=True)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from enformer_small import config as config_lib
  from enformer_small import training

  model_config = config_lib.seed_config(args.input_length)
  n = jax.local_device_count()
  rng = np.random.default_rng(0)
  host = {'inputs': np.eye(4, dtype=np.uint8)[
              rng.integers(0, 4, (n, args.batch // n, args.input_length))],
          'targets': rng.uniform(0, 17, (n, args.batch // n, 1)).astype(np.float32)}
  print(f'{jax.devices()[0].device_kind} x{n}, jax {jax.__version__}, batch {args.batch}, '
        f'{args.input_length} bp; figures per step', flush=True)
  table = []
  for variant in args.variants.split(','):
    jax.config.update('jax_default_prng_impl', PRNG_OF_VARIANT[variant])
    for dtype in args.dtypes.split(','):
      optimizer = training.make_optimizer()
      state = training.replicate(training.init_train_state(
          model_config, optimizer, jax.random.PRNGKey(0)))
      step = training.make_train_step(model_config, optimizer,
                                      compute_dtype=jnp.dtype(dtype),
                                      return_predictions=True,
                                      fast_cpu=variant == 'fast_cpu')
      label = f'{variant}_{dtype}_{args.batch}'
      seq_s, rows, _ = profile(step, state, training.shard_batch(host), args, label,
                               args.out)
      summarise(label, seq_s, rows, args.batch)
      table.append((label, seq_s))
      sys.stdout.flush()
  print('\nvariant/dtype/batch              seq/s')
  for label, seq_s in table:
    print(f'{label:30s} {seq_s:10,.0f}')


if __name__ == '__main__':
  main()
