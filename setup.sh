#!/usr/bin/env bash
# Creates .venv with the pinned versions of requirements.txt (once; again only when
# requirements.txt changes) and installs jemalloc where the machine allows it.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! cmp -s requirements.txt .venv/.installed-requirements.txt; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -r requirements.txt
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
  # memelite's TOMTOM and FIMO are numba kernels compiled on first use (~2 min) and
  # cached on disk: compile them here, once, rather than in the first motif command.
  .venv/bin/python -c "
from enformer_small import motif_db, motif_scan
motifs = motif_db.jaspar()[:30]
motif_db.tomtom([motifs[0].ppm], motifs)
motif_scan.scan(['ACGT' * 20], motifs[:2])" >/dev/null 2>&1 ||
    echo 'setup.sh: could not compile the motif kernels ahead; the first motif command will' >&2
  cp requirements.txt .venv/.installed-requirements.txt
fi
# glibc's allocator makes XLA's CPU training erratic and slow on these VMs; the entry
# points preload jemalloc when it is present (see experiments/_runtime.py).
if ! ldconfig -p 2>/dev/null | grep -q 'libjemalloc.so.2'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -qq libjemalloc2 >/dev/null 2>&1 ||
     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libjemalloc2 >/dev/null 2>&1)) ||
      echo "setup.sh: could not install libjemalloc2; CPU training will use glibc malloc" >&2
  else
    echo "setup.sh: libjemalloc2 not found; install it (Debian: apt-get install libjemalloc2) for steady CPU speed" >&2
  fi
fi
