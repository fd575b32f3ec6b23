"""Probes what a new user meets when things go wrong: each case run as a command.

  python benchmarks/probe_failures.py --out runs/figs/probe

Every case of `robust_runs` in docs/ runs the real command on tiny synthetic data and
records its exit status, the last line it wrote to stderr (or the line that matters on
stdout) and what it left; prints a markdown table.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--flagfile=demo.flags', '--synthetic_rows=600', '--num_holdout=100',
        '--batch_size=32', '--eval_batch_size=64', '--num_epochs=1', '--noprogress',
        '--log_every_steps=0']


def command(*args):
  return [sys.executable, '-m'] + list(args)


def run(cmd, timeout=900):
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, PYTHONUNBUFFERED='1'))
  return proc.returncode, proc.stdout, proc.stderr


def last(text):
  lines = [l for l in text.strip().splitlines() if l.strip()]
  return lines[-1] if lines else ''


def train(out, name, *extra):
  return command('experiments.train', *TINY, f'--run_dir={out}/{name}',
                 f'--synthetic_dir={out}/data', f'--data_cache_dir={out}/cache', *extra)


def two_writers(out):
  first = subprocess.Popen(train(out, 'shared', '--num_epochs=3'), cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  time.sleep(8)
  rows = []
  for label, extra in (('a second training into the same --run_dir, 8 s later',
                        ('--seed=1', '--learning_rate=0.05')),
                       ('--resume beside the live run', ('--resume',))):
    status, _, err = run(train(out, 'shared', '--num_epochs=3', *extra))
    rows.append((label, status, last(err), 'the live run goes on alone'))
  first.send_signal(signal.SIGKILL)
  first.wait()
  started = time.perf_counter()
  status, outp, err = run(train(out, 'shared', '--num_epochs=3', '--resume'))
  rows.append((f'--resume right after SIGKILL of the first (took '
               f'{time.perf_counter() - started:.0f} s)', status, last(outp),
               'resumed from the last save'))
  return rows


def prediction_cases(out):
  ckpt = f'{out}/tiny'
  data = os.path.join(out, 'data', os.listdir(os.path.join(out, 'data'))[0])
  os.makedirs(f'{out}/a_dir', exist_ok=True)
  steps = sorted(os.listdir(f'{ckpt}/checkpoints'), key=int)
  cases = [
      ('predict --output_tsv=an existing directory',
       ('--input', data, '--output_tsv', f'{out}/a_dir')),
      ('predict --output_tsv equal to --input', ('--input', data, '--output_tsv', data)),
      ('predict --checkpoint=a run directory',
       ('--input', data, '--output_tsv', f'{out}/p1.tsv')),
      ('predict --checkpoint=runs/x/checkpoints/<step>',
       ('--input', data, '--output_tsv', f'{out}/p2.tsv'),
       f'{ckpt}/checkpoints/{steps[-1]}'),
      ('predict --checkpoint=runs/x/checkpoints', ('--input', data, '--output_tsv',
                                                    f'{out}/p3.tsv'),
       f'{ckpt}/checkpoints'),
  ]
  rows = []
  for label, args, *which in cases:
    status, outp, err = run(command('experiments.predict',
                                    f'--checkpoint={which[0] if which else ckpt}', *args,
                                    '--noprogress'))
    rows.append((label, status, last(err) if status else last(outp.split('wrote')[0]),
                 'input untouched' if 'input' in label else ''))
  return rows


def training_cases(out):
  big = f'{out}/big.txt'
  with open(big, 'w') as f:
    f.write('ACGTACGTACGTACGTACGT\t5\n' * 20 + 'ACGTACGTACGTACGTAAAA\t1e39\n')
  flat = f'{out}/flat.txt'
  shutil.copy(os.path.join(out, 'data', os.listdir(os.path.join(out, 'data'))[0]), flat)
  with open(flat) as f:
    lines = [l.split('\t')[0] + '\t5\n' for l in f]
  with open(flat, 'w') as f:
    f.writelines(lines)
  table = f'{out}/table.tsv'
  with open(table, 'w') as f:
    f.write('sequence\tactivity\n' + 'ACGTACGTAC\t1\n' * 50)
  cases = [
      ('a training file with a target of 1e39 (finite in float64, not float32)',
       ('--synthetic_rows=0', f'--train_file={big}', '--num_holdout=5')),
      ('all-equal targets (no finite held-out Pearson)',
       ('--synthetic_rows=0', f'--train_file={flat}')),
      ('--num_epochs=0', ('--num_epochs=0',)),
      ('--freeze=trnk', ('--freeze=trnk',)),
      ('--batch_size=0', ('--batch_size=0',)),
      ('--target_columns=activity,activity', (f'--table_file={table}',
                                              '--target_columns=activity,activity',
                                              '--sequence_length=10')),
      ('--target_columns=sequence', (f'--table_file={table}', '--target_columns=sequence',
                                     '--sequence_length=10')),
  ]
  rows = []
  for i, (label, extra) in enumerate(cases):
    status, _, err = run(train(out, f'case{i}', *extra))
    rows.append((label, status, last(err), ''))
  return rows


def cache_case(out):
  cache = f'{out}/cache'
  entry = os.path.join(cache, sorted(os.listdir(cache))[0], 'expression.npy')
  with open(entry, 'r+b') as f:
    f.seek(-8, os.SEEK_END)
    f.write(b'\x00\x00\xc0\x7f' * 2)  # Two float32 NaNs; the array's shape stays.
  status, outp, err = run(train(out, 'after_damage'))
  warning = [l for l in err.splitlines() if 'checksum' in l]
  return [('NaN bytes written into a cached expression.npy', status,
           warning[0] if warning else last(err), last(outp))]


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--out', default=os.path.join(REPO, 'runs', 'figs', 'probe'))
  args = parser.parse_args()
  out = os.path.relpath(args.out, REPO)
  shutil.rmtree(args.out, ignore_errors=True)
  status, _, err = run(train(out, 'tiny'))
  assert status == 0, err[-2000:]
  rows = (prediction_cases(out) + training_cases(out) + cache_case(out) +
          two_writers(out))
  lines = ['| case | exit | message | kept |', '|---|---|---|---|']
  lines += [f'| {label} | {status} | {msg.replace("|", "/")[:400]} | {kept} |'
            for label, status, msg, kept in rows]
  text = '\n'.join(lines)
  print(text)
  with open(os.path.join(args.out, 'probe.md'), 'w') as f:
    f.write(text + '\n')


if __name__ == '__main__':
  main()
