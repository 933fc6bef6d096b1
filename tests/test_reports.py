"""Reports: written whole, read back with per-class F as arrays."""

import json
import math
import os

import numpy as np
import pytest

from avvp_jax import metrics, reports
from avvp_jax.data.classes import CLASSES

C = len(CLASSES)


def _evaluation(results, f_audio=None):
  return {'results': results, 'per_class_audio': np.full(C, np.nan) if f_audio is None
          else f_audio, 'per_class_visual': np.linspace(0, 50, C)}


def test_write_report_round_trip_with_the_mean_and_each_seed(tmp_path):
  path = tmp_path / 'reports' / 'test.json'
  f_audio = np.linspace(0, 100, C)
  f_audio[3] = np.nan
  per_seed = [_evaluation({'segment/audio': 71.25, 'event/type': 60.5}, f_audio),
              _evaluation({'segment/audio': 69.25, 'event/type': 62.5})]
  reports.write_report(str(path), metrics.summarise_seeds(per_seed), seeds=[3, 4],
                       per_seed=per_seed,
                       split='test', num_clips=1200, step=4000, config_name='ma:cr',
                       data='llp (/data/llp)', model='best_val', epoch=7)
  report = json.loads(path.read_text())
  assert report['split'] == 'test' and report['num_clips'] == 1200 and report['step'] == 4000
  assert report['config_name'] == 'ma:cr' and report['data'] == 'llp (/data/llp)'
  assert report['model'] == 'best_val' and report['epoch'] == 7 and report['seeds'] == [3, 4]
  assert report['results'] == {'segment/audio': 70.25, 'event/type': 61.5}
  assert report['sd'] == {'segment/audio': 1.0, 'event/type': 1.0}
  assert [p['seed'] for p in report['per_seed']] == [3, 4]
  assert report['per_seed'][1]['results'] == {'segment/audio': 69.25, 'event/type': 62.5}
  assert list(report['per_class_audio']) == list(CLASSES)
  # Means over the seeds where a class's F is defined: Dog nowhere, Clapping in seed 3 only.
  assert report['per_class_audio']['Dog'] is None
  assert report['per_class_audio']['Clapping'] == pytest.approx(100.0)
  assert report['per_seed'][0]['per_class_audio']['Clapping'] == pytest.approx(100.0)
  assert report['per_seed'][1]['per_class_audio']['Clapping'] is None
  assert report['per_class_visual']['Clapping'] == pytest.approx(50.0)
  assert os.listdir(path.parent) == ['test.json']  # No temp file left behind.
  assert reports.read_report(str(tmp_path / 'no')) is None
  # Read back (as `write_report` returns it too): per-class F as arrays in the order of
  # CLASSES, NaN where undefined, of the mean and of each seed.
  back = reports.read_report(str(path))
  summary = metrics.summarise_seeds(per_seed)
  for got in (back, reports.write_report(
      str(path), summary, seeds=[3, 4], per_seed=per_seed, split='test', num_clips=1200,
      step=4000, config_name='ma:cr', data='llp (/data/llp)', model='best_val', epoch=7)):
    assert {k: v for k, v in got.items() if k not in ('per_seed', *reports.PER_CLASS)} == {
        k: v for k, v in report.items() if k not in ('per_seed', *reports.PER_CLASS)}
    for key in reports.PER_CLASS:
      np.testing.assert_array_equal(got[key], summary[key])
      for entry, evaluation in zip(got['per_seed'], per_seed):
        np.testing.assert_array_equal(entry[key], evaluation[key])


def test_one_seed_report_has_its_numbers_and_no_sd(tmp_path):
  path = tmp_path / 'test.json'
  per_seed = [_evaluation({'segment/audio': 71.3})]
  reports.write_report(str(path), metrics.summarise_seeds(per_seed), seeds=[0],
                       per_seed=per_seed, split='test', num_clips=1, step=0,
                       config_name='ma:cr', data='synthetic')
  report = reports.read_report(str(path))
  assert report['results'] == {'segment/audio': 71.3} and report['sd'] is None


def test_write_report_refuses_nan_results_and_keeps_the_old_file(tmp_path):
  path = tmp_path / 'test.json'
  path.write_text('old')
  per_seed = [_evaluation({'segment/audio': math.nan})]
  with pytest.raises(ValueError):
    reports.write_report(str(path), metrics.summarise_seeds(per_seed), seeds=[0],
                         per_seed=per_seed, split='test', num_clips=1, step=0, config_name='ma:cr',
                         data='synthetic (seed 0)')
  assert path.read_text() == 'old' and os.listdir(tmp_path) == ['test.json']


