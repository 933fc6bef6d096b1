#!/usr/bin/env bash
# The benchmark suite on a GPU or TPU machine, in one command, budgeted at 10 minutes (270 +
# 290 s; not yet run on an accelerator):
#
#   bash benchmarks/gpu.sh
#
# It runs benchmarks/run.py with the accelerator sizes in two parts. The step-level sections
# (batches that fill the chip, the whole LLP epoch, stage 2 on 10,000 clips, 1 / 4 / 8 seeds
# in one program, feature extraction) write benchmarks/results_<backend>.json and the
# <backend> block of the performance section of benchmarks/RESULTS.md, as a CPU run does.
# The whole-run sections (the main command by phase, the three stages against the PyTorch
# port in the reference's loop, peak memory at 2,000 / 10,000 / 40,000 training clips) write
# benchmarks/results_<backend>_pipeline.json and benchmarks/pipeline_<backend>.md.
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
# Each part within its own limit; a part that runs out of time leaves the other to run.
timeout 270 "$PYTHON" benchmarks/run.py --profile accelerator \
    --sections attention,train,refine,seeds,eval,extract || echo "gpu.sh: part 1 stopped ($?)" >&2
timeout 290 "$PYTHON" benchmarks/run.py --profile accelerator --sections phases,e2e,memory \
    --json "benchmarks/results_${backend}_pipeline.json" \
    --results "benchmarks/pipeline_${backend}.md" || echo "gpu.sh: part 2 stopped ($?)" >&2
