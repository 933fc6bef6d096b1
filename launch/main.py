"""Runs MA (or an ablation) end to end: base training, refinement, retraining.

  python launch/main.py --config=configs/ma.py [--workdir=...] [--config.train.epochs=12 ...]
"""

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from avvp_jax import pipeline, workdir as wd

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A config file: configs/ma.py[:variant].',
                                          lock_config=True)
flags.mark_flags_as_required(['config'])
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Where checkpoints and metrics go; default ./workdirs/<config name>.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join(
      'workdirs', config.name.replace(':', '_').replace(',', '_'))
  if not jax.config.jax_compilation_cache_dir:  # Reruns and later stages skip XLA compiles.
    jax.config.update('jax_compilation_cache_dir',
                      os.path.expanduser('~/.cache/avvp_jax/xla'))
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  print(f'workdir: {os.path.abspath(workdir)}', flush=True)
  try:
    pipeline.run(config, workdir)
  except wd.WorkdirBusy as e:
    raise SystemExit(str(e)) from None


if __name__ == '__main__':
  app.run(main)
