"""The main command, timed by phase: where a run's wall time goes.

  python benchmarks/phase_run.py --config=configs/ma.py --workdir=DIR --json=FILE

Runs `pipeline.run` as launch/main.py does (the same XLA cache unless
JAX_COMPILATION_CACHE_DIR says otherwise) with the library's entry points for each phase
wrapped by a stopwatch, and writes {phase: seconds} to --json. The phases nest (a
validation inside a stage, a compile inside an epoch): each second counts in the innermost
phase open then, so the phases add up to the wall time. Compiles (tracing, lowering, XLA or
the cache) are reported by JAX's monitoring events and taken out of the phase that
triggered them. The library itself is not changed.
"""

import time

START = time.perf_counter()

# pylint: disable=g-import-not-at-top,wrong-import-position
import collections
import functools
import json
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from avvp_jax import checkpoints, logs, pipeline, plots, reports, stages, train
from avvp_jax import workdir as wd

_CONFIG = config_flags.DEFINE_config_file('config', None, 'A config file.', lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'A fresh workdir.')
_JSON = flags.DEFINE_string('json', None, 'Where {phase: seconds} goes.')
flags.mark_flags_as_required(['config', 'workdir', 'json'])

COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration')
PHASES = ('imports and start-up', 'data', 'compiles', 'training epochs', 'validation',
          'logs (metrics.jsonl, TensorBoard)', 'checkpoints', 'refinement',
          'test evaluation', 'pictures', 'other (stage set-up, the rest)')


class Clock:
  """Seconds per phase: the innermost open phase gets the time; compiles are moved out."""

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self.stack = ['other (stage set-up, the rest)']
    self.since = time.perf_counter()

  def _switch(self, name: str | None) -> None:
    now = time.perf_counter()
    self.seconds[self.stack[-1]] += now - self.since
    self.since = now
    if name is None:
      self.stack.pop()
    else:
      self.stack.append(name)

  def wrap(self, fn, name):
    @functools.wraps(fn)
    def timed(*args, **kwargs):
      self._switch(name(*args, **kwargs) if callable(name) else name)
      try:
        return fn(*args, **kwargs)
      finally:
        self._switch(None)
    return timed

  def compiled(self, event: str, seconds: float, **_) -> None:
    if event in COMPILE_EVENTS:
      self.seconds['compiles'] += seconds
      self.seconds[self.stack[-1]] -= seconds


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  wd.use_compilation_cache()
  clock = Clock()
  clock.seconds['imports and start-up'] = time.perf_counter() - START
  jax.monitoring.register_event_duration_secs_listener(clock.compiled)
  held = {}

  def load_splits(data_config):
    splits = pipeline_load(data_config)
    held.update({name: split.names for name, split in splits.items()})  # Not the features.
    return splits

  def evaluation(model, params, split, *args, **kwargs):
    del model, params, args, kwargs
    if split.names is held.get('val'):
      return 'validation'
    return ('test evaluation' if split.names is held.get('test')
            else 'other (stage set-up, the rest)')

  pipeline_load = pipeline.load_splits
  pipeline.load_splits = clock.wrap(load_splits, 'data')
  train.train_epoch = clock.wrap(train.train_epoch, 'training epochs')
  train.evaluate_split = clock.wrap(train.evaluate_split, evaluation)
  logs.append_metrics = clock.wrap(logs.append_metrics, 'logs (metrics.jsonl, TensorBoard)')
  logs.TensorBoardLog.add = clock.wrap(logs.TensorBoardLog.add,
                                       'logs (metrics.jsonl, TensorBoard)')
  for fn in ('save', 'save_best', 'restore', 'restore_best'):
    setattr(checkpoints.StageCheckpoints, fn,
            clock.wrap(getattr(checkpoints.StageCheckpoints, fn), 'checkpoints'))
  reports.write_report = clock.wrap(reports.write_report, 'checkpoints')
  stages.refine_stage = clock.wrap(stages.refine_stage, 'refinement')
  stages.noise_ratio_stage = clock.wrap(stages.noise_ratio_stage, 'refinement')
  plots.plot_run = clock.wrap(plots.plot_run, 'pictures')
  pipeline.run(_CONFIG.value, _WORKDIR.value)
  clock._switch(None)  # pylint: disable=protected-access
  clock.seconds['wall'] = time.perf_counter() - START
  with open(_JSON.value, 'w') as f:
    json.dump({p: clock.seconds.get(p, 0.0) for p in (*PHASES, 'wall')}, f, indent=1)


if __name__ == '__main__':
  app.run(main)
