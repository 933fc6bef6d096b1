#!/bin/bash
# MA on a Cloud TPU VM, one host or a pod slice (every worker runs one process).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b WORKDIR=/mnt/shared/ma_cr bash launch/tpu_vm.sh \
#       --config.num_seeds=8 [more main.py flags]
#
# Run it from a machine with gcloud and this repository. It copies the repository to every
# worker, installs it with JAX for TPU, and starts launch/main.py --distributed on all of them
# at once; JAX finds the workers itself. WORKDIR must be a folder that every worker sees at
# the same path (an NFS or Filestore mount): the workdir's own files use POSIX I/O and its
# lock an flock, so gs:// paths are not supported.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME to the name of the TPU VM}"
: "${ZONE:?set ZONE to its zone}"
: "${WORKDIR:?set WORKDIR to a folder every worker sees}"
REMOTE=${REMOTE:-avvp-jax}  # Where the repository goes on the workers (under their home).

cd "$(dirname "$0")/.."
gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" --worker=all \
    avvp_jax configs launch setup.cfg pyproject.toml README.md "$TPU_NAME:$REMOTE"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  set -e; cd $REMOTE
  python3 -m pip install -q -U 'jax[tpu]' -e .
  python3 launch/main.py --config=configs/ma.py --workdir=$WORKDIR --distributed $*"
