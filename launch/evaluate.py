"""Evaluates the checkpoints of an existing workdir, without training.

  python launch/evaluate.py --workdir=workdirs/ma_cr [--split=test] [--model=best_val]

For each training stage (base, final) that has saved a checkpoint, finished or not, it
restores the last epoch (`--model=last`) or the best validation epoch so far
(`--model=best_val`) of every seed, prints the table of METHOD.md section 5 (mean ± sd over
the seeds, and each seed's) on the data source of the workdir's config, and per-class F
(means over the seeds), and writes
eval_<split>.json (eval_<split>_best_val.json) beside the checkpoints (not
report_test.json, which marks a finished stage for the pipeline).
"""

import os

from absl import app, flags, logging

from avvp_jax import metrics, stages, train, workdir as wd
from avvp_jax.data import describe, load_splits
from avvp_jax.models import HAN

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir written by launch/main.py.')
_SPLIT = flags.DEFINE_enum('split', 'test', ['val', 'test'], 'Which split to evaluate.')
_MODEL = flags.DEFINE_enum('model', 'last', list(wd.MODEL_SELECTIONS),
                           'Which epoch of each stage: the last, or the best on val Type@AV.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  workdir = os.path.abspath(_WORKDIR.value)  # Orbax: absolute paths.
  split_name, which = _SPLIT.value, _MODEL.value
  config = wd.load_config(workdir)
  split = load_splits(config.data)[split_name]
  data_name = describe(config.data)
  model = HAN.from_config(config.model)
  seeds = stages.seed_list(config)
  found = False
  for stage in wd.TRAINING_STAGES:
    if wd.checkpoint_epoch(workdir, stage, which) is None:
      continue
    found = True
    params, epoch = wd.restore_params(workdir, stage, which)
    evaluations = train.evaluate_split(model, params, split, config.train.eval_batch_size,
                                       seeds=True)
    summary = stages.print_results(stages.table_title(
        config, stage, split_name, data_name, f'{which} model (epoch {epoch})'), seeds,
        evaluations)
    print(metrics.format_per_class(summary['per_class_audio'], summary['per_class_visual']))
    suffix = '' if which == 'last' else f'_{which}'
    wd.write_report(
        os.path.join(wd.stage_paths(workdir, stage)['dir'], f'eval_{split_name}{suffix}.json'),
        summary, seeds=seeds, per_seed=evaluations, split=split_name, num_clips=len(split),
        step=None, epoch=epoch, config_name=config.name, data=data_name, model=which)
  if not found:
    raise SystemExit(f'{workdir}: no {which} checkpoint of any stage (expected one in '
                     f'{wd.checkpoint_dir(workdir, "base", which)}).')


if __name__ == '__main__':
  app.run(main)
