"""The workdir of a run: where every stage finds its input and leaves its output.

  <workdir>/
    config.json             the run's config; another config is refused (`check_or_save_config`)
    metrics.jsonl           one record per epoch, training stage and seed
    tensorboard/seed_<s>/   the same as TensorBoard scalars, one run per seed
    .lock                   held by the live run (`hold`); a dead run's lock is released by the OS
    base/checkpoints/       Orbax: train state + meta of the last epoch (resume)
    base/best/              Orbax: parameters of the best validation epoch
    base/report_test.json   the test report (mean, sd and each seed), which marks the stage
                            finished
    refine/                 Orbax: drop_a, drop_v, partners and the statistics
    final/...               as base/

Every model, refined label set and report holds all `config.num_seeds` seeds: the arrays are
stacked on a leading axis of S (1 in a one-seed run).

Every file is written whole or not at all (`atomic_write`, Orbax's own commit), except
metrics.jsonl and the TensorBoard files, which are appended to; the next run drops a line
cut by a kill (`truncate_metrics`) and rewrites the TensorBoard files. So a run killed at
any moment leaves a workdir that the next run resumes. Nothing here computes.

With several processes (hosts), only process 0 writes files, holds the lock and the config;
Orbax's checkpoints are written by all processes together, as Orbax requires, and every
process reads the same files.
"""

import contextlib
import fcntl
import json
import math
import os
import secrets

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from avvp_jax import tfevents
from avvp_jax.data.classes import CLASSES

CONFIG_FILE = 'config.json'
METRICS_FILE = 'metrics.jsonl'
LOCK_FILE = '.lock'
TENSORBOARD_DIR = 'tensorboard'
EVENTS_FILE = 'events.out.tfevents.avvp'  # TensorBoard reads the files named *tfevents*.
TRAINING_STAGES = ('base', 'final')
# How the work is batched and whether it is drawn, not what is computed: these may differ when
# a workdir is resumed (and be missing from a workdir saved before they existed).
NOT_COMPUTED = ('train.steps_per_call', 'train.eval_batch_size', 'refine.batch_size', 'plots')
MODEL_SELECTIONS = ('last', 'best_val')


class WorkdirBusy(RuntimeError):
  """Another live process holds the workdir."""


def writes_files() -> bool:
  """Whether this process writes the workdir's files: process 0 of a multi-process run."""
  return jax.process_index() == 0


def atomic_write(path: str, text: str | bytes) -> None:
  """Writes `path` whole or not at all: a temp file beside it, fsync, then a rename. Only
  process 0 writes (`writes_files`)."""
  if not writes_files():
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  tmp = os.path.join(directory, f'.tmp-{os.getpid()}-{secrets.token_hex(4)}')
  # Not mkstemp, whose 0600 would hide the file from others sharing the workdir.
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, 'wb' if isinstance(text, bytes) else 'w') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


@contextlib.contextmanager
def hold(workdir: str):
  """Holds the workdir for this process: a second live run on it stops at once.

  An advisory `flock` on <workdir>/.lock, which the OS releases when the holder exits in any
  way (SIGKILL included), so a dead run's workdir is never refused. Needs a local or POSIX
  file system. Held by process 0 only: the other processes of the run share its workdir.
  """
  if not writes_files():
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  with open(path, 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'unknown'
      raise WorkdirBusy(
          f'{workdir} is in use by a live run (process {holder}; lock {path}). Wait for it '
          'to finish, or use another --workdir.') from None
    f.seek(0)
    f.truncate()
    f.write(f'{os.getpid()}\n')
    f.flush()
    try:
      yield
    finally:
      f.truncate(0)
      fcntl.flock(f, fcntl.LOCK_UN)


# The config.


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
  (one that differs in more than the NOT_COMPUTED keys)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    atomic_write(path, config.to_json(indent=2))  # Process 0; the processes agree on it.
    return
  with open(path) as f:
    old, new = _flatten(json.load(f)), _flatten(json.loads(config.to_json()))
  diff = sorted(k for k in old.keys() | new.keys()
                if old.get(k) != new.get(k) and k not in NOT_COMPUTED)
  if diff:
    lines = '\n'.join(f'  {k}: {old.get(k)!r} in the workdir, {new.get(k)!r} now' for k in diff)
    raise ValueError(
        f'{workdir} holds a run of a different config ({path}):\n{lines}\n'
        'Use another --workdir, or the same config to resume.')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: {workdir} is not a workdir of launch/main.py.')
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  if 'num_seeds' not in config:
    raise ValueError(f'{path} has no num_seeds: {workdir} was written by an avvp-jax from '
                     'before several seeds per run, whose checkpoints this one cannot read. '
                     'Rerun launch/main.py in a new workdir.')
  return config


# Paths.


def workdir_of(path: str) -> str:
  """The workdir that holds `path` (the nearest folder above it with a config.json)."""
  here = os.path.abspath(path)
  while not os.path.exists(os.path.join(here, CONFIG_FILE)):
    if os.path.dirname(here) == here:
      raise FileNotFoundError(f'{path} is not inside a workdir of launch/main.py (no '
                              f'{CONFIG_FILE} above it): give its model\'s --config.')
    here = os.path.dirname(here)
  return here


def stage_paths(workdir: str, stage: str) -> dict[str, str]:
  """The folders and the report of a training stage ('base' or 'final')."""
  if stage not in TRAINING_STAGES:
    raise ValueError(f'No training stage {stage!r}; choose one of {TRAINING_STAGES}.')
  d = os.path.join(workdir, stage)
  return {'dir': d, 'checkpoints': os.path.join(d, 'checkpoints'), 'best': os.path.join(d, 'best'),
          'report': os.path.join(d, 'report_test.json')}


def refine_dir(workdir: str) -> str:
  return os.path.join(workdir, 'refine')


# The metrics log.


def read_metrics(workdir: str) -> list[dict]:
  """The records of <workdir>/metrics.jsonl, oldest first ([] if none), without a last line
  cut by a kill."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  records = []
  for n, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if n < len(lines) - 1:  # Only the last line can be cut (by a kill); the next run drops it.
        raise ValueError(f'{path}, line {n + 1}: not a JSON record: {line[:80]!r}') from None
  return records


def append_metrics(workdir: str, record: dict) -> None:
  if not writes_files():
    return
  with open(os.path.join(workdir, METRICS_FILE), 'a') as f:
    f.write(json.dumps(record) + '\n')
    f.flush()
    os.fsync(f.fileno())


def truncate_metrics(workdir: str, stage: str, last_epoch: int) -> None:
  """Drops the records of `stage` after `last_epoch`: written before a kill, redone now.

  A line cut short by the kill is dropped too.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.read().splitlines()
  keep = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if not (record['stage'] == stage and record['epoch'] > last_epoch):
      keep.append(line)
  if keep != lines:
    atomic_write(path, ''.join(line + '\n' for line in keep))


# TensorBoard: a view of metrics.jsonl, one run per seed.


def tensorboard_file(workdir: str, seed: int) -> str:
  return os.path.join(workdir, TENSORBOARD_DIR, f'seed_{seed}', EVENTS_FILE)


def _scalars(record: dict) -> list[tuple[str, int, float, float]]:
  """A metrics record as TensorBoard scalars, stepped by epoch: <stage>/train/<loss term>,
  <stage>/val/<metric>, <stage>/lr."""
  stage, epoch, wall_time = record['stage'], record['epoch'], record.get('time', 0.0)
  return ([(f'{stage}/{group}/{k}', epoch, v, wall_time)
           for group in ('train', 'val') for k, v in record[group].items()]
          + [(f'{stage}/lr', epoch, record['lr'], wall_time)])


def rewrite_tensorboard(workdir: str) -> None:
  """Rewrites every seed's event file from metrics.jsonl, whole: after `truncate_metrics`,
  it drops what a killed run logged of the epochs that are redone."""
  by_seed = {}
  root = os.path.join(workdir, TENSORBOARD_DIR)
  for name in os.listdir(root) if os.path.isdir(root) else []:  # Seeds left with no record.
    if name.startswith('seed_') and name[5:].lstrip('-').isdigit():
      by_seed[int(name[5:])] = []
  for record in read_metrics(workdir):
    by_seed.setdefault(record['seed'], []).extend(_scalars(record))
  for seed, scalars in by_seed.items():
    atomic_write(tensorboard_file(workdir, seed),
                 tfevents.file_header(scalars[0][3] if scalars else 0.0)
                 + tfevents.scalar_records(scalars))


def append_tensorboard(workdir: str, records: list[dict]) -> None:
  """Appends the records of one epoch (one per seed) to the seeds' event files, so that a
  live `tensorboard` sees each epoch."""
  if not writes_files():
    return
  for record in records:
    path = tensorboard_file(workdir, record['seed'])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    new = not os.path.exists(path)
    with open(path, 'ab') as f:
      scalars = _scalars(record)
      f.write((tfevents.file_header(scalars[0][3]) if new else b'')
              + tfevents.scalar_records(scalars))


# Reports.


def _per_class_dict(values):
  """(C,) values or None -> {class_name: float or None (for NaN)} or None."""
  if values is None:
    return None
  if len(values) != len(CLASSES):
    raise ValueError(f'Expected {len(CLASSES)} classes, got {len(values)}.')
  return {name: None if math.isnan(float(v)) else float(v) for name, v in zip(CLASSES, values)}


def write_report(path: str, summary: dict, *, seeds: list[int], per_seed: list[dict],
                 split: str, num_clips: int, step, config_name: str, data: str,
                 model: str = 'last', epoch=None) -> dict:
  """Writes an evaluation report of the models of one or more seeds as JSON, atomically.

  `summary` is `metrics.summarise_seeds(per_seed)`: `results` and the per-class fields are the
  means over the seeds, `sd` their sd (null for one seed); `per_seed` holds each seed's own
  {'results', 'per_class_audio', 'per_class_visual'}. `data` names the data source; `model`
  and `epoch` say which checkpoint was evaluated ('last' or 'best_val'); `step` is its train
  step where known. Per-class fields are {class_name: F or null}. Returns the report.
  """
  report = {
      'split': split,
      'data': data,
      'model': model,
      'epoch': None if epoch is None else int(epoch),
      'num_clips': int(num_clips),
      'step': None if step is None else int(step),
      'config_name': config_name,
      'seeds': [int(s) for s in seeds],
      'results': {key: float(value) for key, value in summary['results'].items()},
      'sd': None if summary['sd'] is None else {k: float(v) for k, v in summary['sd'].items()},
      'per_class_audio': _per_class_dict(summary['per_class_audio']),
      'per_class_visual': _per_class_dict(summary['per_class_visual']),
      'per_seed': [{'seed': int(seed), 'results': {k: float(v) for k, v in e['results'].items()},
                    'per_class_audio': _per_class_dict(e['per_class_audio']),
                    'per_class_visual': _per_class_dict(e['per_class_visual'])}
                   for seed, e in zip(seeds, per_seed, strict=True)],
  }
  atomic_write(path, json.dumps(report, indent=2, allow_nan=False) + '\n')
  return report


def read_report(path: str):
  """A report written by `write_report`, or None if there is none."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# Checkpoints.


def _options(**kwargs) -> ocp.CheckpointManagerOptions:
  # A save cut short by a kill leaves a temp folder, which is not a checkpoint: remove it.
  return ocp.CheckpointManagerOptions(create=True, cleanup_tmp_directories=True, **kwargs)


_EXISTING = ocp.CheckpointManagerOptions(create=False)


def _replicated_like_saved(mngr: ocp.CheckpointManager, step: int, item: str):
  """The saved tree's shapes and dtypes, replicated over this process's devices: restores a
  checkpoint written on any number of devices."""
  tree = mngr.item_metadata(step)[item]
  sharding = NamedSharding(Mesh(np.array(jax.devices()), ('data',)), P())
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                      getattr(tree, 'tree', tree))


def _restore(directory: str, item: str, step: int):
  """Item `item` of checkpoint `step` in `directory`, as saved (plain nested dicts),
  replicated over this process's devices."""
  handlers = {item: ocp.StandardCheckpointHandler(), 'meta': ocp.JsonCheckpointHandler()}
  with ocp.CheckpointManager(directory, item_handlers=handlers, options=_EXISTING) as mngr:
    return mngr.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(_replicated_like_saved(mngr, step, item))}))[item]


def checkpoint_dir(workdir: str, stage: str, which: str = 'last') -> str:
  """The Orbax folder of a stage's last epoch ('last') or best validation epoch ('best_val')."""
  if which not in MODEL_SELECTIONS:
    raise ValueError(f'The model must be one of {MODEL_SELECTIONS}, not {which!r}.')
  return stage_paths(workdir, stage)['best' if which == 'best_val' else 'checkpoints']


def restore_checkpoint(path: str):
  """(params, epoch) of a checkpoint folder of a training stage: `checkpoints/` or `best/`
  (its latest epoch), or one epoch in them (`.../best/6`). The parameters are those of
  every seed, stacked on a leading axis (S, ...)."""
  path = os.path.abspath(path)
  directory, step = path, None
  if os.path.basename(path).isdigit():
    directory, step = os.path.dirname(path), int(os.path.basename(path))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'No checkpoint in {path}: no such folder.')
  with ocp.CheckpointManager(directory, options=_EXISTING) as mngr:
    epochs = mngr.all_steps()
    saved = mngr.latest_step() if step is None else step
  items = set(os.listdir(os.path.join(directory, str(saved)))) if saved in epochs else set()
  if not items & {'params', 'state'}:
    held = f' ({directory} holds epochs {sorted(epochs)})' if step is not None else ''
    raise FileNotFoundError(
        f'No checkpoint of a training stage in {path}{held}: give a stage\'s checkpoints/ '
        'or best/ folder of a launch/main.py workdir, or one epoch in them.')
  is_best = 'params' in items
  restored = _restore(directory, 'params' if is_best else 'state', saved)
  return (restored if is_best else restored['params']), saved


def restore_params(workdir: str, stage: str, which: str = 'last'):
  """(params, epoch) of a training stage: its last epoch or its best validation epoch. The
  parameters are those of every seed, stacked on a leading axis (S, ...); `epoch` is the
  checkpoint's (for best_val, the last epoch at which a seed improved)."""
  return restore_checkpoint(checkpoint_dir(workdir, stage, which))


def checkpoint_epoch(workdir: str, stage: str, which: str = 'last'):
  """The epoch of a stage's last or best-val checkpoint, or None if it has none."""
  directory = checkpoint_dir(workdir, stage, which)
  if not os.path.isdir(directory):
    return None
  with ocp.CheckpointManager(directory) as mngr:
    return mngr.latest_step()


class StageCheckpoints:
  """The two Orbax managers of a training stage, closed on every exit (a NaN included).

  `checkpoints/` keeps the train state and meta of the last epoch (the resume point);
  `best/` the parameters of the best validation epoch. Both hold the models of all seeds,
  stacked on a leading axis; meta's `best_val` and `best_epoch` hold one entry per seed. Use
  as a context manager.
  """

  def __init__(self, workdir: str, stage: str):
    paths = stage_paths(workdir, stage)
    self.directory = paths['checkpoints']
    self._last = ocp.CheckpointManager(paths['checkpoints'], options=_options(max_to_keep=1))
    # Two: a kill between the commits of `save_best` and `save` leaves a best newer than the
    # last epoch, which `restore` deletes; the best before it must still be there.
    self._best = ocp.CheckpointManager(paths['best'], options=_options(max_to_keep=2))

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def close(self) -> None:
    for mngr in (self._last, self._best):
      mngr.wait_until_finished()
      mngr.close()

  def restore(self, like):
    """(state, meta) of the last saved epoch, placed as `like` (a fresh state), or None in a
    new stage.

    A best-val checkpoint newer than that epoch (saved just before a kill) is deleted: the
    epoch is redone and decides again.
    """
    step = self._last.latest_step()
    if step is None:
      self._drop_best_after(0)
      return None
    restored = self._last.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, like)), meta=ocp.args.JsonRestore()))
    self._drop_best_after(restored.meta['epoch'])
    best_saved = max(restored.meta['best_epoch'])  # Any seed's new best saves them all.
    if best_saved and best_saved not in self._best.all_steps():
      raise RuntimeError(
          f'{self.directory} (epoch {restored.meta["epoch"]}) names epoch {best_saved} as the '
          f'last best on val, but {self._best.directory} holds epochs {self._best.all_steps()}: '
          'the stage cannot resume its best-val model; delete the stage folder to redo it.')
    return restored.state, restored.meta

  def restore_best(self, like):
    """The best-val parameters saved last, placed as `like`, or None if none was saved."""
    step = self._best.latest_step()
    if step is None:
      return None
    return self._best.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(
        jax.tree.map(ocp.utils.to_shape_dtype_struct, like)))).params

  def _drop_best_after(self, epoch: int) -> None:
    for step in self._best.all_steps():
      if step > epoch:
        self._best.delete(step)

  def save_best(self, epoch: int, params) -> None:
    """Saves the best-val parameters of every seed (each from its own best epoch so far)."""
    self._best.save(epoch, args=ocp.args.Composite(params=ocp.args.StandardSave(params)))

  def save(self, epoch: int, state, meta: dict) -> None:
    """Saves asynchronously; `meta` is copied, so the caller may change it at once.

    Waits first for a pending `save_best`: Orbax orders no commits across managers, and an
    epoch committed before its best would name a best that a kill could lose.
    """
    self._best.wait_until_finished()
    self._last.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                   meta=ocp.args.JsonSave(dict(meta))))


# The refined targets.


def save_refined(workdir: str, targets: dict[str, np.ndarray], stats: dict) -> None:
  """Saves stage 2's output, one per seed: {drop_a, drop_v (S, N, 25) bool, partners (S, N, K)
  int}, stats."""
  with ocp.CheckpointManager(refine_dir(workdir), options=_options()) as mngr:
    mngr.save(0, args=ocp.args.Composite(targets=ocp.args.StandardSave(targets),
                                         stats=ocp.args.JsonSave(stats)))
    mngr.wait_until_finished()


def load_refined(workdir: str):
  """{'drop_a', 'drop_v', 'partners', 'stats'} saved by `save_refined`, or None if not there."""
  if not os.path.isdir(refine_dir(workdir)):
    return None
  with ocp.CheckpointManager(refine_dir(workdir)) as mngr:
    if mngr.latest_step() is None:
      return None
    restored = mngr.restore(0, args=ocp.args.Composite(
        targets=ocp.args.StandardRestore(), stats=ocp.args.JsonRestore()))
  return {**{k: np.asarray(v) for k, v in restored.targets.items()}, 'stats': restored.stats}
