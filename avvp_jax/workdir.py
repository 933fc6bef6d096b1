"""The workdir of a run: its layout, the stage names, the lock, the config guard and atomic
writes. Nothing here computes or reads a checkpoint.

  <workdir>/
    config.json             the run's config; another config is refused (`check_or_save_config`)
    metrics.jsonl           one record per epoch, training stage and seed (`logs`)
    tensorboard/seed_<s>/   the same as TensorBoard scalars, one run per seed (`logs`)
    .lock                   held by the live run (`hold`); a dead run's lock is released by the OS
    base/checkpoints/       Orbax: train state + meta of the last epoch (resume; `checkpoints`)
    base/best/              Orbax: parameters of the best validation epoch (`checkpoints`)
    base/report_test.json   the test report (`reports`), which marks the stage finished
    refine/                 Orbax: drop_a, drop_v, partners and the statistics (`checkpoints`)
    final/...               as base/
    plots/                  the pictures (`plots`)

Every model, refined label set and report holds all `config.num_seeds` seeds: the arrays are
stacked on a leading axis of S (1 in a one-seed run).

Every file is written whole or not at all (`atomic_write`, Orbax's own commit), except
metrics.jsonl and the TensorBoard files, which are appended to and repaired by the next run
(`logs`). So a run killed at any moment leaves a workdir that the next run resumes.

With several processes (hosts), only process 0 writes files, holds the lock and the config;
Orbax's checkpoints are written by all processes together, as Orbax requires, and every
process reads the same files.
"""

import contextlib
import fcntl
import json
import os
import secrets

import jax
import ml_collections
from flax import traverse_util

CONFIG_FILE = 'config.json'
LOCK_FILE = '.lock'
# The stages of MA in their order, each a folder of the workdir; the training ones train a model.
STAGES = ('base', 'refine', 'final')
TRAINING_STAGES = ('base', 'final')
STAGE_TITLES = {'base': 'stage 1 (base)', 'refine': 'stage 2 (refine)',
                'final': 'stage 3 (final)'}
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


def check_or_save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves the config in a new workdir; refuses a workdir that holds another config's run
  (one that differs in more than the NOT_COMPUTED keys)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    atomic_write(path, config.to_json(indent=2))  # Process 0; the processes agree on it.
    return
  with open(path) as f:
    old, new = (traverse_util.flatten_dict(d, sep='.')
                for d in (json.load(f), json.loads(config.to_json())))
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


def checkpoint_dir(workdir: str, stage: str, which: str = 'last') -> str:
  """The Orbax folder of a stage's last epoch ('last') or best validation epoch ('best_val')."""
  if which not in MODEL_SELECTIONS:
    raise ValueError(f'The model must be one of {MODEL_SELECTIONS}, not {which!r}.')
  return stage_paths(workdir, stage)['best' if which == 'best_val' else 'checkpoints']


def plots_dir(workdir: str) -> str:
  return os.path.join(workdir, 'plots')


def use_compilation_cache() -> None:
  """Keeps compiled programs across runs: in $JAX_COMPILATION_CACHE_DIR, else
  ~/.cache/avvp_jax/xla; every program, not only those that take a second to compile (JAX's
  default, kept where $JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS is set), since a run's
  sub-second compiles add up to seconds. Reruns, resumes and later
  runs of the same shapes then skip XLA."""
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser('~/.cache/avvp_jax/xla'))
  if 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS' not in os.environ:
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
