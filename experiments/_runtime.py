"""Process set-up shared by the entry points (not library code)."""

import os
import sys

JEMALLOC = '/usr/lib/x86_64-linux-gnu/libjemalloc.so.2'


def reexec_with_jemalloc() -> None:
  """Restarts this command with jemalloc preloaded, when it is installed.

  On the 2-core VMs this project is developed on, glibc's allocator made XLA's CPU
  training erratic and several times slower; jemalloc fixed it. The allocator must be
  chosen before the process starts, hence the re-exec. Set ENFORMER_SMALL_NO_JEMALLOC=1
  to keep glibc's allocator.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  if (os.environ.get('ENFORMER_SMALL_NO_JEMALLOC') or not os.path.exists(JEMALLOC)
      or 'jemalloc' in os.environ.get('LD_PRELOAD', '')):
    return
  env = dict(os.environ)
  env['LD_PRELOAD'] = ':'.join(p for p in (JEMALLOC, env.get('LD_PRELOAD')) if p)
  main = sys.modules['__main__']
  module = getattr(main.__spec__, 'name', None) if main.__spec__ else None
  argv = ([sys.executable, '-m', module] if module else [sys.executable, sys.argv[0]])
  os.execve(sys.executable, argv + sys.argv[1:], env)
