"""Runs a trained model on clips and writes their events: what is heard and seen, and when.

  python launch/parse.py --workdir=workdirs/ma_cr [--stage=final] [--model=last]
                         [--split=test | --features=DIR] [--seed=S] [--out=DIR]

The model is a stage's last or best-val checkpoint of one seed of the workdir (the first by
default). The clips are a split of the workdir's data source, or a folder in the release
layout (vggish/, res152/, r2plus1d_18/, one .npy per clip). Writes, into --out (default
<workdir>/<stage>/events_<split or folder name>/):
  events_audio.csv, events_visual.csv   as AVVP_eval_audio.csv / AVVP_eval_visual.csv:
                                        filename, onset, offset, event_labels (tab-separated)
  events.json                           the same events with their confidence, the mean
                                        segment probability of each event
Scoring the two CSV files (`launch/evaluate.py --predictions=DIR`) gives exactly the stage's
numbers for that seed.
"""

import json
import os

import jax
import numpy as np
from absl import app, flags, logging

from avvp_jax import events, metrics, stages, train, workdir as wd
from avvp_jax.data import load_splits, llp
from avvp_jax.models import HAN

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir written by launch/main.py.')
_STAGE = flags.DEFINE_enum('stage', 'final', list(wd.TRAINING_STAGES), 'Whose model.')
_MODEL = flags.DEFINE_enum('model', 'last', list(wd.MODEL_SELECTIONS),
                           'The last epoch, or the best on val Type@AV.')
_SPLIT = flags.DEFINE_enum('split', 'test', ['train', 'val', 'test'],
                           "A split of the workdir's data source.")
_FEATURES = flags.DEFINE_string('features', None,
                                'A folder of clips in the release layout, instead of --split.')
_SEED = flags.DEFINE_integer('seed', None, "Which seed's model; default the workdir's first.")
_OUT = flags.DEFINE_string('out', None, 'Where the files go.')
flags.mark_flags_as_required(['workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  workdir = os.path.abspath(_WORKDIR.value)
  config = wd.load_config(workdir)
  seeds = stages.seed_list(config)
  seed = seeds[0] if _SEED.value is None else _SEED.value
  if seed not in seeds:
    raise app.UsageError(f'--seed={seed}: {workdir} holds the models of seeds {seeds}.')
  if _FEATURES.value:
    split, source = llp.read_feature_folder(_FEATURES.value), os.path.abspath(_FEATURES.value)
  else:
    split, source = load_splits(config.data)[_SPLIT.value], _SPLIT.value
  params, epoch = wd.restore_params(workdir, _STAGE.value, _MODEL.value)
  params = jax.tree.map(lambda x: x[seeds.index(seed)], params)
  out = train.predict(HAN.from_config(config.model), params, split,
                      config.train.eval_batch_size)
  pred = dict(zip(('audio', 'visual'), metrics.segment_predictions(
      out['frame_prob'], out['a_prob'], out['v_prob'])))
  prob = np.moveaxis(out['frame_prob'], 1, -1)  # (N, 2, 25, 10)
  found = {m: events.to_events(pred[m], split.names, prob[:, i]) for i, m in enumerate(pred)}
  folder = _OUT.value or os.path.join(
      wd.stage_paths(workdir, _STAGE.value)['dir'],
      f'events_{os.path.basename(source.rstrip("/")) if _FEATURES.value else source}')
  for m, rows in found.items():
    events.write_events_csv(os.path.join(folder, f'events_{m}.csv'), rows)
  wd.atomic_write(os.path.join(folder, 'events.json'), json.dumps({
      'workdir': workdir, 'stage': _STAGE.value, 'model': _MODEL.value, 'epoch': epoch,
      'seed': seed, 'clips': source, 'num_clips': len(split), 'events': found}, indent=1) + '\n')
  print(f'{len(split)} clips of {source}: {len(found["audio"])} audio and '
        f'{len(found["visual"])} visual events from the {_MODEL.value} {_STAGE.value} model '
        f'(epoch {epoch}, seed {seed}) -> {folder}')


if __name__ == '__main__':
  app.run(main)
