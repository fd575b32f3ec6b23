#!/bin/bash
# Trains enformer_small on a Cloud TPU VM pod slice: the same command on every worker
# (one process per host, each driving its host's TPU chips); JAX finds the other
# workers from the TPU VM metadata (see launch/README.md).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b RUN_DIR=/mnt/shared/runs/small \
#       launch/tpu_pod.sh [extra experiments.train flags]
#
# Needs, on every worker: this repository at ~/$REPO_DIR with its .venv holding the
# TPU jaxlib, and the training file at the same path (see launch/README.md for the
# set-up commands). RUN_DIR must be on storage every worker sees (NFS / Filestore /
# gcsfuse): worker 0 writes the checkpoints there and every worker reads them back
# with --resume.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the name of the TPU VM}"
: "${ZONE:?set ZONE to its zone}"
REPO_DIR="${REPO_DIR:-enformer_small}"
RUN_DIR="${RUN_DIR:?set RUN_DIR to a directory on storage shared by all workers}"

EXTRA=""
for flag in "$@"; do EXTRA+=" $(printf '%q' "$flag")"; done

gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --worker=all \
  --command="cd ${REPO_DIR} && .venv/bin/python -m experiments.train \
--flagfile=small.flags --run_dir=${RUN_DIR} --resume${EXTRA}"
