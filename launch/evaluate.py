"""Evaluates the checkpoints of an existing workdir, without training.

  python launch/evaluate.py --workdir=workdirs/ma_cr [--split=test] [--model=best_val]

For each training stage (base, final) that has saved a checkpoint, finished or not, it
restores the last epoch (`--model=last`) or the best validation epoch so far
(`--model=best_val`) of every seed, prints the table of docs/spec.md section 5 (mean ± sd over
the seeds, and each seed's) on the data source of the workdir's config, and per-class F
(means over the seeds), and writes
eval_<split>.json (eval_<split>_best_val.json) beside the checkpoints (not
report_test.json, which marks a finished stage for the pipeline).

  python launch/evaluate.py --workdir=workdirs/ma_cr --split=test --predictions=DIR

scores predictions instead, of this or any other method: DIR/events_audio.csv and
DIR/events_visual.csv in the format of AVVP_eval_audio.csv (filename, onset, offset,
event_labels; tab-separated; a clip with no row has no events), against the split's truth of
the workdir's data source; writes DIR/report_<split>.json.
"""

import os

from absl import app, flags, logging

from avvp_jax import checkpoints, events, metrics, reports, seeds, train, workdir as wd
from avvp_jax.data import annotations, describe, load_splits
from avvp_jax.models import HAN

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir written by launch/main.py.')
_SPLIT = flags.DEFINE_enum('split', 'test', ['val', 'test'], 'Which split to evaluate.')
_MODEL = flags.DEFINE_enum('model', None, list(wd.MODEL_SELECTIONS),
                           "Which epoch of each stage: the last, or the best on val by the "
                           "method's metric; default the method's own (config.eval.model).")
_PREDICTIONS = flags.DEFINE_string(
    'predictions', None, 'A folder with events_audio.csv and events_visual.csv to score.')
flags.mark_flags_as_required(['workdir'])


def score_predictions(config, split, split_name: str, folder: str) -> None:
  """Scores the two events files of `folder` against the split's truth; prints, reports."""
  if not split.has_dense_truth:
    raise SystemExit(f'The {split_name} split of {describe(config.data)} has no dense truth '
                     'to score against.')
  try:
    pred = {m: events.read_predictions(os.path.join(folder, f'events_{m}.csv'), split.names)
            for m in ('audio', 'visual')}
  except (annotations.AnnotationError, FileNotFoundError) as e:
    raise SystemExit(str(e)) from None
  evaluation = metrics.evaluate_with_classes(pred['audio'], pred['visual'], split.gt_a, split.gt_v)
  data_name = describe(config.data)
  print(metrics.format_table(evaluation['results'], title=(
      f'predictions of {folder}, {split_name} on {data_name}')))
  print(metrics.format_per_class(evaluation['per_class_audio'],
                                 evaluation['per_class_visual']))
  reports.write_report(os.path.join(folder, f'report_{split_name}.json'),
                  metrics.summarise_seeds([evaluation]), seeds=[], per_seed=[],
                  split=split_name, num_clips=len(split), step=None, config_name=config.name,
                  data=data_name, model='predictions')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  workdir = os.path.abspath(_WORKDIR.value)  # Orbax: absolute paths.
  config = wd.load_config(workdir)
  split_name, which = _SPLIT.value, _MODEL.value or train.eval_protocol(config).model
  split = load_splits(config.data)[split_name]
  if _PREDICTIONS.value:
    score_predictions(config, split, split_name, os.path.abspath(_PREDICTIONS.value))
    return
  data_name = describe(config.data)
  found = False
  for stage in wd.TRAINING_STAGES:
    if checkpoints.checkpoint_epoch(workdir, stage, which) is None:
      continue
    found = True
    checkpoint = checkpoints.restore_params(workdir, stage, which)
    stage_seeds = seeds.checkpoint_seeds(config, checkpoint)
    evaluations = train.evaluate_split(HAN.from_config(config.model, stage), checkpoint.params,
                                       split, config.train.eval_batch_size, seeds=True,
                                       clip_filter=train.eval_protocol(config).clip_filter)
    summary = metrics.summarise_seeds(evaluations)
    print(metrics.format_results(metrics.table_title(
        config.name, stage, split_name, data_name,
        f'{which} model (epoch {checkpoint.epoch})'), stage_seeds, summary, evaluations))
    print(metrics.format_per_class(summary['per_class_audio'], summary['per_class_visual']))
    suffix = '' if which == 'last' else f'_{which}'
    reports.write_report(
        os.path.join(wd.stage_paths(workdir, stage)['dir'], f'eval_{split_name}{suffix}.json'),
        summary, seeds=stage_seeds, per_seed=evaluations, split=split_name,
        num_clips=len(split), step=None, epoch=checkpoint.epoch, config_name=config.name,
        data=data_name, model=which)
  if not found:
    raise SystemExit(f'{workdir}: no {which} checkpoint of any stage (expected one in '
                     f'{wd.checkpoint_dir(workdir, "base", which)}).')


if __name__ == '__main__':
  app.run(main)
