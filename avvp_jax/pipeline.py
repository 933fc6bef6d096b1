"""The MA pipeline (METHOD.md section 4): base training -> refinement -> retraining.

Each stage is a function of (config, workdir) that finds its input in the workdir and leaves
its output there; this module only sequences them. Rerunning resumes: finished stages are
skipped, an interrupted one continues from its last saved epoch.
"""

import json
import os

import ml_collections

from avvp_jax import metrics, refine, train
from avvp_jax.data import load_splits

CONFIG_FILE = 'config.json'
# How the work is batched, not what is computed: these may differ when a workdir is resumed
# (and be missing from a workdir saved before they existed).
SPEED_ONLY = ('train.steps_per_call', 'train.eval_batch_size', 'refine.batch_size')


def _flatten(d: dict, prefix: str = '') -> dict:
  flat = {}
  for k, v in d.items():
    if isinstance(v, dict):
      flat.update(_flatten(v, f'{prefix}{k}.'))
    else:
      flat[f'{prefix}{k}'] = v
  return flat


def check_or_save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves the config in a new workdir; refuses a workdir that holds another config's run
  (one that differs in more than the SPEED_ONLY keys)."""
  path = os.path.join(workdir, CONFIG_FILE)
  current = json.loads(config.to_json())
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    old, new = _flatten(saved), _flatten(current)
    diff = sorted(k for k in old.keys() | new.keys()
                  if old.get(k) != new.get(k) and k not in SPEED_ONLY)
    if diff:
      lines = '\n'.join(f'  {k}: {old.get(k)!r} in the workdir, {new.get(k)!r} now' for k in diff)
      raise ValueError(
          f'{workdir} holds a run of a different config ({path}):\n{lines}\n'
          'Use another --workdir, or the same config to resume.')
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    f.write(config.to_json(indent=2))
  os.replace(tmp, path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    return ml_collections.ConfigDict(json.load(f))


def stage_targets(config, workdir: str, stage: str, labels):
  """The training targets of a stage: the weak labels (base) or the refined ones (final)."""
  if stage == 'base':
    return train.targets_from_labels(labels, config.loss)
  refined = refine.load_refined(workdir)
  return train.targets_from_labels(labels, config.loss, refined['drop_a'], refined['drop_v'],
                                   config.refine.audio_drop_clears_global)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs every stage the config enables; returns {stage: test results or refine stats}."""
  workdir = os.path.abspath(workdir)  # Orbax needs absolute paths.
  check_or_save_config(config, workdir)
  splits = load_splits(config.data)
  print(f'data: { {k: len(v) for k, v in splits.items()} }', flush=True)
  out = {}
  stages = ['base'] + (['refine', 'final'] if config.refine.enabled else [])
  for stage in stages:
    if stage == 'refine':
      out[stage] = refine.refine_stage(config, workdir, splits)
      continue
    report = train.stage_paths(workdir, stage)['report']
    if os.path.exists(report):
      print(f'[{stage}] finished earlier ({report}), not redone', flush=True)
      with open(report) as f:
        out[stage] = json.load(f)['results']
      continue
    targets = stage_targets(config, workdir, stage, splits['train'].labels)
    out[stage] = train.train_stage(config, workdir, stage, targets, splits)['results']
  if 'final' in out:
    gain = {k: out['final'][k] - out['base'][k] for k in out['base']}
    print(metrics.format_table(gain, signed=True, title=(
        f'{config.name}: what the refinement gained, stage 3 - stage 1 (test, points of F)')))
  return out
