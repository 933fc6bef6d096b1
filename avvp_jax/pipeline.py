"""The MA pipeline (docs/spec.md section 4): base training -> refinement -> retraining, then
the pictures and the gain table.

It holds the workdir, checks the config against it, loads the data once, runs the stages of
`stages.py` in order, and prints what the refinement gained (`metrics.format_gains`).
Rerunning resumes: finished stages are skipped, an interrupted one continues from its last
saved epoch.
"""

import os

import ml_collections

from avvp_jax import metrics, placement, plots, stages, workdir as wd
from avvp_jax.data import describe, load_splits


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage the config enables; returns {stage: its test report, or for 'refine'
  the refinement's statistics}."""
  where = stages.check_placement(config)
  workdir = os.path.abspath(workdir)  # Orbax needs absolute paths.
  with wd.hold(workdir):
    wd.check_or_save_config(config, workdir)
    splits = load_splits(config.data)
    stages.check_processes(config, splits)
    # The features go to the devices once, for every stage, and leave the host.
    mesh = placement.make_mesh(config.num_seeds)
    splits = {name: placement.put_split(split, mesh) for name, split in splits.items()}
    print(f'data: { {k: len(v) for k, v in splits.items()} }; {where}', flush=True)
    out = {'base': stages.train_stage(config, workdir, 'base', splits)}
    if config.refine.enabled:
      stage_2 = (stages.noise_ratio_stage if config.loss.get('kind') == 'jomold'
                 else stages.refine_stage)
      out['refine'] = stage_2(config, workdir, splits)
      out['final'] = stages.train_stage(config, workdir, 'final', splits)
    if config.plots:
      plots.plot_run(config, workdir, splits)
  if 'final' in out:
    what = ('the denoised model gained over the noise estimator'
            if config.loss.get('kind') == 'jomold' else 'the refinement gained')
    print(metrics.format_gains(out['base'], out['final'], title=(
        f'{config.name}: what {what} on {describe(config.data)}, stage 3 - '
        'stage 1 (test, points of F')))
  return out
