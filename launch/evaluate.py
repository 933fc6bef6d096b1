"""Evaluates the checkpoints of an existing workdir, without training.

  python launch/evaluate.py --workdir=workdirs/ma_cr [--split=test]

For each finished training stage (base, final) it restores the last saved epoch, prints the
table of METHOD.md section 5 and per-class F, and writes eval_<split>.json beside the
checkpoint (not report_test.json, which marks a finished stage for the pipeline).
"""

import os

from absl import app, flags, logging

from avvp_jax import metrics, pipeline, train
from avvp_jax.data import load_splits
from avvp_jax.models import HAN

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir written by launch/main.py.')
_SPLIT = flags.DEFINE_enum('split', 'test', ['val', 'test'], 'Which split to evaluate.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  workdir, split_name = os.path.abspath(_WORKDIR.value), _SPLIT.value  # Orbax: absolute paths.
  config = pipeline.load_config(workdir)
  split = load_splits(config.data)[split_name]
  model = HAN.from_config(config.model)
  found = False
  for stage in train.STAGE_INDEX:
    paths = train.stage_paths(workdir, stage)
    if not os.path.isdir(paths['checkpoints']):
      continue
    found = True
    state = train.restore_state(config, workdir, stage)
    result = train.evaluate_split(model, state.params, split, config.train.eval_batch_size)
    print(metrics.format_table(result['results'], title=f'{config.name} [{stage}] {split_name}'))
    print(metrics.format_per_class(result['per_class_audio'], result['per_class_visual']))
    metrics.write_report(os.path.join(paths['dir'], f'eval_{split_name}.json'),
                         result['results'], split=split_name, num_clips=len(split),
                         step=int(state.step), config_name=config.name,
                         per_class_audio=result['per_class_audio'],
                         per_class_visual=result['per_class_visual'])
  if not found:
    raise SystemExit(f'{workdir}: no stage checkpoint found (expected {workdir}/base/checkpoints).')


if __name__ == '__main__':
  app.run(main)
