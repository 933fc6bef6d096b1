#!/usr/bin/env bash
# The benchmark suite on a GPU or TPU machine, in one command, within 5 minutes:
#
#   bash benchmarks/gpu.sh [options of benchmarks/run.py, e.g. --sections train]
#
# It runs benchmarks/run.py with the accelerator sizes (batches that fill the chip, the whole
# LLP epoch, stage 2 on 10,000 clips) and writes benchmarks/results_<backend>.json and the
# <backend> block of the performance section of benchmarks/RESULTS.md, as a CPU run does.
# PYTHON picks the interpreter (default python3); it needs the package's dependencies and
# PyTorch, which runs on the GPU where it has CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PYTHON" -c 'import flax, ml_collections, optax, orbax.checkpoint, torch, tqdm' 2>/dev/null
then
  echo "gpu.sh: $PYTHON lacks a dependency; install them with: pip install -e '.[test]'" >&2
  exit 1
fi
backend=$("$PYTHON" -c 'import jax; print(jax.default_backend())')
if [[ "$backend" == cpu ]]; then
  echo 'gpu.sh: JAX sees no accelerator; on a CPU run python benchmarks/run.py' >&2
  exit 1
fi
# JAX takes 75 % of the accelerator's memory up front by default; PyTorch shares the GPU in
# the same process.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}"
echo "gpu.sh: backend $backend" >&2
exec timeout 300 "$PYTHON" benchmarks/run.py --profile accelerator "$@"
