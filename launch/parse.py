"""Runs a trained model on clips and writes their events: what is heard and seen, and when.

  python launch/parse.py --workdir=workdirs/ma_cr [--stage=final] [--model=last]
                         [--split=test | --features=DIR] [--seed=S] [--out=DIR]
  python launch/parse.py --checkpoint=DIR [--config=configs/ma.py] --features=DIR ...
  python launch/parse.py --checkpoint=DIR --videos=DIR --out=DIR --weights=DIR [--start=S]

The model is one seed (the first by default) of a stage's last or best-val checkpoint in a
workdir, or of a checkpoint folder (a stage's checkpoints/ or best/, or one epoch in them),
whose model is that of --config (default: the config.json of the workdir holding it). The
clips are a split of the config's data source, or a folder in the release layout (vggish/,
res152/, r2plus1d_18/, one .npy per clip). Writes, into --out (default
<workdir>/<stage>/events_<split or folder name>/; needed with --checkpoint):
  events_audio.csv, events_visual.csv   as AVVP_eval_audio.csv / AVVP_eval_visual.csv:
                                        filename, onset, offset, event_labels (tab-separated)
  events.json                           the same events with their confidence, the mean
                                        segment probability of each event
Scoring the two CSV files (`launch/evaluate.py --predictions=DIR`) gives exactly the stage's
numbers for that seed.

--videos runs launch/extract.py first (the same --weights / --random_weights / --start),
into <out>/features (videos already there are skipped), parses every clip extracted there,
and also writes <out>/timelines/<clip>.png: what is heard and what is seen in each second.
A video that cannot be extracted is listed at the end and the others are parsed; the exit
status is then 1.
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from avvp_jax import checkpoints, events, plots, seeds, train, workdir as wd
from avvp_jax.data import load_splits, llp
from avvp_jax.extract import extractor, run

_WORKDIR = flags.DEFINE_string('workdir', None, 'A workdir written by launch/main.py.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', None, "Instead of --workdir: a checkpoint folder, a stage's checkpoints/ or "
    'best/ or one epoch in them.')
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, "With --checkpoint: the model's config file, default the config.json of "
    'the workdir holding the checkpoint.')
_STAGE = flags.DEFINE_enum('stage', None, list(wd.TRAINING_STAGES),
                           "Whose model; default the run's last training stage. With "
                           "--checkpoint, the stage that trained it (default: the stage whose "
                           "folder holds it); give it for a checkpoint moved out of its "
                           "workdir where the stages' models differ (JoMoLD's stage 1).")
_MODEL = flags.DEFINE_enum('model', None, list(wd.MODEL_SELECTIONS),
                           "The last epoch, or the best on val by the method's metric; "
                           "default the method's own (config.eval.model).")
_SPLIT = flags.DEFINE_enum('split', 'test', ['train', 'val', 'test'],
                           "A split of the workdir's data source.")
_FEATURES = flags.DEFINE_string('features', None,
                                'A folder of clips in the release layout, instead of --split.')
_VIDEOS = flags.DEFINE_string('videos', None,
                              'A folder of video files: extract, then parse (needs --out).')
_WEIGHTS = flags.DEFINE_string('weights', None, 'With --videos: the three weight files.')
_RANDOM = flags.DEFINE_bool('random_weights', False,
                            'With --videos: untrained networks, for tests only.')
_START = flags.DEFINE_float('start', 0.0, 'With --videos: where each 10-s clip starts (s).')
_SEED = flags.DEFINE_integer('seed', None, "Which seed's model; default the workdir's first.")
_OUT = flags.DEFINE_string('out', None, 'Where the files go.')
flags.mark_flags_as_mutual_exclusive(['workdir', 'checkpoint'], required=True)
flags.mark_flags_as_mutual_exclusive(['features', 'videos'])


def _stage_of(path: str) -> str | None:
  """The training stage whose folder holds `path`, if it is inside a workdir."""
  try:
    parts = os.path.relpath(path, wd.workdir_of(path)).split(os.sep)
  except FileNotFoundError:
    return None
  return parts[0] if parts[0] in wd.TRAINING_STAGES else None


def _model_source():
  """(config, checkpoint, where the checkpoint is, default output folder, its stage)."""
  if _CHECKPOINT.value:
    if not _OUT.value:
      raise app.UsageError('With --checkpoint, say where the events go: --out=DIR.')
    path = os.path.abspath(_CHECKPOINT.value)
    checkpoint = checkpoints.restore_checkpoint(path)
    config = _CONFIG.value or wd.load_config(wd.workdir_of(path))
    return config, checkpoint, path, None, _STAGE.value or _stage_of(path)
  if _CONFIG.value:
    raise app.UsageError("--config goes with --checkpoint; a workdir's model is its own.")
  workdir = os.path.abspath(_WORKDIR.value)
  config = wd.load_config(workdir)
  stage = _STAGE.value or ('final' if config.refine.enabled else 'base')
  which = _MODEL.value or train.eval_protocol(config).model
  checkpoint = checkpoints.restore_params(workdir, stage, which)
  return (config, checkpoint, wd.checkpoint_dir(workdir, stage, which),
          wd.stage_paths(workdir, stage)['dir'], stage)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  try:
    config, ckpt, checkpoint, default_out, stage = _model_source()
    model, params, seed = seeds.one_seed(config, ckpt, _SEED.value, checkpoint, stage)
    epoch = ckpt.epoch
  except (FileNotFoundError, ValueError) as e:  # No such checkpoint, seed or model.
    raise SystemExit(f'parse.py: {e}') from None
  summary, manifest = None, None
  if _VIDEOS.value:
    if not _OUT.value:
      raise app.UsageError('With --videos, say where the features and events go: --out=DIR.')
    features = os.path.join(_OUT.value, 'features')
    variables, label = run.load_networks(_WEIGHTS.value, _RANDOM.value)
    summary = run.extract_folder(_VIDEOS.value, features, _START.value, variables, label)
    if not summary.extracted and not summary.skipped:
      raise SystemExit(f'parse.py: no video of {_VIDEOS.value} could be extracted.\n'
                       + summary.format())
    manifest = extractor.read_manifest(features)
    split, source = llp.read_feature_folder(features), os.path.abspath(features)
  elif _FEATURES.value:
    split, source = llp.read_feature_folder(_FEATURES.value), os.path.abspath(_FEATURES.value)
    manifest = extractor.read_manifest(_FEATURES.value)
  else:
    split, source = load_splits(config.data)[_SPLIT.value], _SPLIT.value
  pred, prob = train.segment_outputs(model, params, split, config.train.eval_batch_size,
                                     train.eval_protocol(config).clip_filter)
  found = {m: events.to_events(pred[m], split.names, prob[m]) for m in pred}
  folder = _OUT.value or os.path.join(
      default_out,
      f'events_{os.path.basename(source.rstrip("/")) if _FEATURES.value else source}')
  note = manifest.get('note', '') if manifest else ''
  for m, rows in found.items():
    events.write_events_csv(os.path.join(folder, f'events_{m}.csv'), rows)
  wd.atomic_write(os.path.join(folder, 'events.json'), json.dumps({
      'checkpoint': checkpoint, 'epoch': epoch, 'seed': seed, 'clips': source,
      'num_clips': len(split), **({'features': manifest} if manifest else {}),
      'events': found}, indent=1) + '\n')
  if _VIDEOS.value:
    for k, name in enumerate(split.names):
      figure = plots.heard_and_seen(
          str(name), {m: pred[m][k] for m in pred}, {m: prob[m][k] for m in prob}, note)
      wd.atomic_write(os.path.join(folder, 'timelines', f'{name}.png'), plots.png(figure))
  print(f'{len(split)} clips of {source}: {len(found["audio"])} audio and '
        f'{len(found["visual"])} visual events from {checkpoint} (epoch {epoch}, seed {seed}) '
        f'-> {folder}')
  if note:
    print(note)
  if summary:
    print(summary.format())
    if summary.failed:
      raise SystemExit(1)


if __name__ == '__main__':
  app.run(main)
