#!/usr/bin/env bash
# The benchmark suite on a GPU or TPU machine, in one command, within 10 minutes:
#
#   bash benchmarks/gpu.sh [options of benchmarks/run.py, e.g. --sections train]
#
# It runs benchmarks/run.py with the accelerator sizes (batches that fill the chip, the whole
# LLP epoch, stage 2 on 10,000 clips, 1 / 4 / 8 seeds in one program) and writes
# benchmarks/results_<backend>.json and the <backend> block of the performance section of
# benchmarks/RESULTS.md, as a CPU run does. Then it times the main command (all three stages)
# on 10,000 synthetic training clips with 1 seed and with 8 seeds in one program, into
# benchmarks/pipeline_<backend>.txt.
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
timeout 300 "$PYTHON" benchmarks/run.py --profile accelerator "$@"

out="benchmarks/pipeline_$backend.txt"
: > "$out"
for seeds in 1 8; do
  workdir=$(mktemp -d)
  start=$SECONDS
  status=finished
  timeout 150 "$PYTHON" launch/main.py --config=configs/ma.py --workdir="$workdir/ma" \
      --config.data.synthetic.num_train=10000 --config.num_seeds="$seeds" \
      > "$workdir/log" 2>&1 || status="stopped (exit $?)"
  echo "main command, 3 stages, 10,000 train clips, $seeds seed(s) in one program:" \
       "$((SECONDS - start)) s, $status" | tee -a "$out"
  tail -n 4 "$workdir/log" >> "$out"
done
