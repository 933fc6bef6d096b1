"""The MA pipeline (METHOD.md section 4): base training -> refinement -> retraining.

This module only sequences: it holds the workdir, checks the config against it, loads the
data once and runs the stages of `stages.py` in order. Rerunning resumes: finished stages
are skipped, an interrupted one continues from its last saved epoch.
"""

import os

import ml_collections

from avvp_jax import metrics, stages, workdir as wd
from avvp_jax.data import describe, load_splits


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage the config enables; returns {stage: test results or refine stats}."""
  workdir = os.path.abspath(workdir)  # Orbax needs absolute paths.
  with wd.hold(workdir):
    wd.check_or_save_config(config, workdir)
    splits = load_splits(config.data)
    print(f'data: { {k: len(v) for k, v in splits.items()} }', flush=True)
    out = {'base': stages.train_stage(config, workdir, 'base', splits)}
    if config.refine.enabled:
      out['refine'] = stages.refine_stage(config, workdir, splits)
      out['final'] = stages.train_stage(config, workdir, 'final', splits)
  if 'final' in out:
    gain = {k: out['final'][k] - out['base'][k] for k in out['base']}
    print(metrics.format_table(gain, signed=True, title=(
        f'{config.name}: what the refinement gained on {describe(config.data)}, stage 3 - '
        'stage 1 (test, points of F)')))
  return out
