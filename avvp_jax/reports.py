"""Evaluation reports: the ten numbers and per-class F of the models of one or more seeds, as
JSON written whole, and read back with the per-class F as arrays again.

A stage's report_test.json marks it finished; evaluate.py writes eval_<split>.json beside it,
and scored predictions report_<split>.json.
"""

import json
import math
import os

import numpy as np

from avvp_jax import workdir as wd
from avvp_jax.data.classes import CLASSES

PER_CLASS = ('per_class_audio', 'per_class_visual')


def _per_class_dict(values):
  """(C,) values or None -> {class_name: float or None (for NaN)} or None."""
  if values is None:
    return None
  if len(values) != len(CLASSES):
    raise ValueError(f'Expected {len(CLASSES)} classes, got {len(values)}.')
  return {name: None if math.isnan(float(v)) else float(v) for name, v in zip(CLASSES, values)}


def _per_class_array(values: dict | None):
  """The inverse of `_per_class_dict`: (C,) float, NaN where null, in the order of CLASSES."""
  if values is None:
    return None
  return np.array([np.nan if values[name] is None else values[name] for name in CLASSES])


def write_report(path: str, summary: dict, *, seeds: list[int], per_seed: list[dict],
                 split: str, num_clips: int, step, config_name: str, data: str,
                 model: str = 'last', epoch=None) -> dict:
  """Writes an evaluation report of the models of one or more seeds as JSON, atomically.

  `summary` is `metrics.summarise_seeds(per_seed)`: `results` and the per-class fields are the
  means over the seeds, `sd` their sd (null for one seed); `per_seed` holds each seed's own
  {'results', 'per_class_audio', 'per_class_visual'}. `data` names the data source; `model`
  and `epoch` say which checkpoint was evaluated ('last' or 'best_val'; `epoch` one number,
  or one per seed); `step` is its train
  step where known. Per-class fields are {class_name: F or null}. Returns the report as
  `read_report` gives it.
  """
  report = {
      'split': split,
      'data': data,
      'model': model,
      'epoch': None if epoch is None else (
          [int(e) for e in epoch] if isinstance(epoch, (list, tuple)) else int(epoch)),
      'num_clips': int(num_clips),
      'step': None if step is None else int(step),
      'config_name': config_name,
      'seeds': [int(s) for s in seeds],
      'results': {key: float(value) for key, value in summary['results'].items()},
      'sd': None if summary['sd'] is None else {k: float(v) for k, v in summary['sd'].items()},
      **{key: _per_class_dict(summary[key]) for key in PER_CLASS},
      'per_seed': [{'seed': int(seed), 'results': {k: float(v) for k, v in e['results'].items()},
                    **{key: _per_class_dict(e[key]) for key in PER_CLASS}}
                   for seed, e in zip(seeds, per_seed, strict=True)],
  }
  text = json.dumps(report, indent=2, allow_nan=False) + '\n'
  wd.atomic_write(path, text)
  return _arrays(json.loads(text))


def _arrays(report: dict) -> dict:
  for entry in [report, *report['per_seed']]:
    for key in PER_CLASS:
      entry[key] = _per_class_array(entry[key])
  return report


def read_report(path: str):
  """A report written by `write_report`, or None if there is none. Its per-class fields
  (of the mean and of each seed) are (25,) arrays in the order of CLASSES, NaN where F is
  undefined."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return _arrays(json.load(f))
