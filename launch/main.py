"""Runs a method end to end: MA (or an ablation) with base training, refinement and
retraining; JoMoLD or VALOR with their own stages (docs/methods.md).

  python launch/main.py --config=configs/ma.py [--workdir=...] [--config.train.epochs=12 ...]
  python launch/main.py --config=configs/jomold.py     (or configs/valor.py)

On several hosts, start it once per host with the same flags and a shared workdir:
`--distributed` on Cloud TPU, or under SLURM (`srun`, detected by itself), where JAX finds
the processes; elsewhere `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`. Only process 0 prints and writes; see launch/tpu_vm.sh and
launch/slurm.sbatch.
"""

import os
import sys
import traceback

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from avvp_jax import pipeline, workdir as wd

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A config file: configs/ma.py[:variant].',
                                          lock_config=True)
flags.mark_flags_as_required(['config'])
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'One process per host via jax.distributed.initialize, its '
    'parameters found by JAX (Cloud TPU, SLURM, Open MPI) or given by the flags below.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None,
                                   'HOST:PORT of process 0 (implies --distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Processes in all.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0 .. num_processes - 1.')
_HEARTBEAT = flags.DEFINE_integer(
    'heartbeat_timeout', 100, 'Seconds of silence after which jax.distributed declares a '
    'process dead and stops the others (JAX\'s default).')
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Where checkpoints and metrics go; default ./workdirs/<config name>.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO, JAX its backends.
  slurm_tasks = int(os.environ.get('SLURM_NTASKS', '1'))
  if _DISTRIBUTED.value or _COORDINATOR.value or slurm_tasks > 1:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               heartbeat_timeout_seconds=_HEARTBEAT.value)
  if jax.process_index():  # One log: process 0's; errors still reach stderr.
    sys.stdout = open(os.devnull, 'w')
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join(
      'workdirs', config.name.replace(':', '_').replace(',', '_'))
  wd.use_compilation_cache()
  print(f'workdir: {os.path.abspath(workdir)}', flush=True)
  try:
    pipeline.run(config, workdir)
  except wd.WorkdirBusy as e:
    raise SystemExit(str(e)) from None
  except Exception:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    # Its peers are dead or will fail too: jax.distributed's shutdown barrier at exit would
    # only wait out --heartbeat_timeout and then abort the process.
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)


if __name__ == '__main__':
  app.run(main)
