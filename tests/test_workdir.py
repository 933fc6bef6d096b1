"""The workdir layer: config guard, run lock, metrics log, reports, atomic writes, restores."""

import json
import math
import os
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from avvp_jax import metrics, workdir as wd
from avvp_jax.data.classes import CLASSES
from configs import ma

C = len(CLASSES)


def _config(**overrides):
  config = ma.get_config('cr')
  config.update_from_flattened_dict(overrides)
  return config


def test_another_config_in_the_same_workdir_is_refused(tmp_path):
  wd.check_or_save_config(_config(), str(tmp_path))
  with pytest.raises(ValueError, match=r'loss.tau: 0.2 in the workdir, 0.1 now'):
    wd.check_or_save_config(_config(**{'loss.tau': 0.1}), str(tmp_path))


def test_keys_that_change_no_result_may_differ_on_resume(tmp_path):
  """Steps per call, batch sizes of evaluation and stage 2, and whether pictures are drawn
  change no result: a workdir saved with others, or before such a key existed, resumes."""
  path = tmp_path / wd.CONFIG_FILE
  wd.check_or_save_config(_config(), str(tmp_path))
  saved = json.loads(path.read_text())
  del saved['train']['steps_per_call'], saved['plots']
  path.write_text(json.dumps(saved))
  wd.check_or_save_config(
      _config(**{'train.steps_per_call': 7, 'train.eval_batch_size': 8,
                 'refine.batch_size': 64, 'plots': False}), str(tmp_path))
  assert json.loads(path.read_text()) == saved  # The run's own record stays.


def test_load_config_of_a_folder_that_is_no_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match='is not a workdir of launch/main.py'):
    wd.load_config(str(tmp_path))


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
  path = tmp_path / 'f.txt'
  path.write_text('old')

  def fail(*args):
    raise OSError('disk full')

  monkeypatch.setattr(os, 'fsync', fail)
  with pytest.raises(OSError, match='disk full'):
    wd.atomic_write(str(path), 'new')
  assert path.read_text() == 'old' and os.listdir(tmp_path) == ['f.txt']


def _evaluation(results, f_audio=None):
  return {'results': results, 'per_class_audio': np.full(C, np.nan) if f_audio is None
          else f_audio, 'per_class_visual': np.linspace(0, 50, C)}


def test_write_report_round_trip_with_the_mean_and_each_seed(tmp_path):
  path = tmp_path / 'reports' / 'test.json'
  f_audio = np.linspace(0, 100, C)
  f_audio[3] = np.nan
  per_seed = [_evaluation({'segment/audio': 71.25, 'event/type': 60.5}, f_audio),
              _evaluation({'segment/audio': 69.25, 'event/type': 62.5})]
  wd.write_report(str(path), metrics.summarise_seeds(per_seed), seeds=[3, 4], per_seed=per_seed,
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
  assert wd.read_report(str(path)) == report and wd.read_report(str(tmp_path / 'no')) is None


def test_one_seed_report_has_its_numbers_and_no_sd(tmp_path):
  path = tmp_path / 'test.json'
  per_seed = [_evaluation({'segment/audio': 71.3})]
  wd.write_report(str(path), metrics.summarise_seeds(per_seed), seeds=[0], per_seed=per_seed,
                  split='test', num_clips=1, step=0, config_name='ma:cr', data='synthetic')
  report = wd.read_report(str(path))
  assert report['results'] == {'segment/audio': 71.3} and report['sd'] is None


def test_write_report_refuses_nan_results_and_keeps_the_old_file(tmp_path):
  path = tmp_path / 'test.json'
  path.write_text('old')
  per_seed = [_evaluation({'segment/audio': math.nan})]
  with pytest.raises(ValueError):
    wd.write_report(str(path), metrics.summarise_seeds(per_seed), seeds=[0], per_seed=per_seed,
                    split='test', num_clips=1, step=0, config_name='ma:cr',
                    data='synthetic (seed 0)')
  assert path.read_text() == 'old' and os.listdir(tmp_path) == ['test.json']


def test_truncate_metrics_drops_later_epochs_and_a_cut_line(tmp_path):
  records = [{'stage': s, 'epoch': e} for s, e in (('base', 1), ('base', 2), ('base', 3),
                                                   ('final', 1))]
  for r in records:
    wd.append_metrics(str(tmp_path), r)
  with open(tmp_path / wd.METRICS_FILE, 'a') as f:
    f.write('{"stage": "final", "ep')  # A kill in the middle of a write.
  assert wd.read_metrics(str(tmp_path)) == records  # The cut line is not a record.
  wd.truncate_metrics(str(tmp_path), 'final', 0)
  assert wd.read_metrics(str(tmp_path)) == records[:3]
  wd.truncate_metrics(str(tmp_path), 'base', 1)
  assert wd.read_metrics(str(tmp_path)) == records[:1]
  with open(tmp_path / wd.METRICS_FILE, 'a') as f:
    f.write('{"stage": "final", "ep\n{"stage": "final", "epoch": 2}\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl, line 2: not a JSON record'):
    wd.read_metrics(str(tmp_path))  # A broken line before the last is no kill's doing.


HOLD_SCRIPT = """
import sys, time
from avvp_jax import workdir
with workdir.hold(sys.argv[1]):
  print('holding', flush=True)
  time.sleep(float(sys.argv[2]))
"""


def _holder(workdir, seconds):
  proc = subprocess.Popen([sys.executable, '-c', HOLD_SCRIPT, workdir, str(seconds)],
                          stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == 'holding'
  return proc


def test_a_live_run_holds_the_workdir_and_a_dead_one_does_not(tmp_path):
  workdir = str(tmp_path)
  proc = _holder(workdir, 60)
  try:
    with pytest.raises(wd.WorkdirBusy, match=rf'in use by a live run \(process {proc.pid};'):
      with wd.hold(workdir):
        pass
  finally:
    proc.kill()  # SIGKILL: the holder cannot clean up; the OS releases its lock.
    proc.wait()
  with wd.hold(workdir):
    assert (tmp_path / wd.LOCK_FILE).read_text() == f'{os.getpid()}\n'
  with wd.hold(workdir):  # Released on exit, also within one process.
    pass


def test_hold_waits_for_nobody(tmp_path):
  proc = _holder(str(tmp_path), 60)
  start = time.perf_counter()
  try:
    with pytest.raises(wd.WorkdirBusy):
      with wd.hold(str(tmp_path)):
        pass
  finally:
    proc.kill()
    proc.wait()
  assert time.perf_counter() - start < 5


def _record(stage, epoch, seed):
  return {'stage': stage, 'epoch': epoch, 'seed': seed, 'lr': 1e-3 / epoch,
          'train': {'total': 3.0 - epoch + seed}, 'val': {'segment/type': 50.0 + epoch},
          'time': 1000.0 + epoch}


def _tensorboard_steps(workdir, seed, tag):
  accumulator = pytest.importorskip('tensorboard.backend.event_processing.event_accumulator')
  acc = accumulator.EventAccumulator(os.path.dirname(wd.tensorboard_file(workdir, seed)))
  acc.Reload()
  return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()['scalars'] else []


def test_tensorboard_files_follow_the_metrics_log_through_a_resume(tmp_path):
  """Each seed's event file gets every epoch as it is logged; a resume that drops the
  epochs after the last checkpoint drops them from TensorBoard too."""
  workdir = str(tmp_path)
  for epoch in (1, 2, 3):
    records = [_record('base', epoch, seed) for seed in (0, 1)]
    for r in records:
      wd.append_metrics(workdir, r)
    wd.append_tensorboard(workdir, records)
  assert _tensorboard_steps(workdir, 1, 'base/train/total') == [(1, 3.0), (2, 2.0), (3, 1.0)]
  assert [s for s, _ in _tensorboard_steps(workdir, 0, 'base/val/segment/type')] == [1, 2, 3]
  wd.truncate_metrics(workdir, 'base', 1)  # What a resume after epoch 1 does.
  wd.rewrite_tensorboard(workdir)
  for seed in (0, 1):
    assert _tensorboard_steps(workdir, seed, 'base/train/total') == [(1, 2.0 + seed)]
    assert _tensorboard_steps(workdir, seed, 'base/lr') == [(1, pytest.approx(1e-3))]
  wd.truncate_metrics(workdir, 'base', 0)  # A kill in the first epoch: no record is left.
  wd.rewrite_tensorboard(workdir)
  assert _tensorboard_steps(workdir, 0, 'base/train/total') == []


def test_restore_checkpoint_of_a_folder_or_of_one_epoch(tmp_path):
  workdir = str(tmp_path)
  wd.check_or_save_config(_config(), workdir)
  state = {'params': {'w': jnp.arange(3.0)}, 'step': jnp.int32(5)}
  with wd.StageCheckpoints(workdir, 'final') as ckpt:
    for epoch in (1, 2):
      ckpt.save_best(epoch, {'w': jnp.arange(3.0) + epoch})
    ckpt.save(2, state, {'epoch': 2, 'best_val': [50.0], 'best_epoch': [2]})
  best = os.path.join(workdir, 'final', 'best')
  for path, want_epoch, want in ((best, 2, [2, 3, 4]), (os.path.join(best, '1'), 1, [1, 2, 3]),
                                 (os.path.join(workdir, 'final', 'checkpoints'), 2, [0, 1, 2])):
    params, epoch = wd.restore_checkpoint(path)
    assert epoch == want_epoch
    np.testing.assert_array_equal(params['w'], want)
    assert wd.workdir_of(path) == workdir
  with pytest.raises(FileNotFoundError, match='No checkpoint of a training stage in .*final: '
                                              'give a stage'):
    wd.restore_checkpoint(os.path.join(workdir, 'final'))
  with pytest.raises(FileNotFoundError, match=r'in .*best/7 \(.*best holds epochs \[1, 2\]\)'):
    wd.restore_checkpoint(os.path.join(best, '7'))
  with pytest.raises(FileNotFoundError, match='No checkpoint in .*nowhere: no such folder'):
    wd.restore_checkpoint(os.path.join(workdir, 'nowhere'))
  wd.save_refined(workdir, {'drop_a': np.zeros((1, 2, 25), bool)}, {})
  with pytest.raises(FileNotFoundError, match='No checkpoint of a training stage in .*refine'):
    wd.restore_checkpoint(os.path.join(workdir, 'refine'))  # An Orbax folder, not a stage's.
  with pytest.raises(FileNotFoundError, match='not inside a workdir'):
    wd.workdir_of(str(tmp_path.parent))


def test_stage_checkpoints_restore_and_drop_a_best_newer_than_the_last_epoch(tmp_path):
  workdir = str(tmp_path)
  state = {'params': {'w': jnp.arange(3.0)}, 'step': jnp.int32(5)}
  with wd.StageCheckpoints(workdir, 'base') as ckpt:
    assert ckpt.restore(state) is None
    meta = {'epoch': 1, 'best_val': [50.0], 'best_epoch': [1]}
    ckpt.save_best(1, state['params'])
    ckpt.save(1, state, meta)
    meta['epoch'] = 99  # The saved meta is a copy.
    ckpt.save_best(2, {'w': jnp.arange(3.0) + 1})  # A kill before epoch 2's checkpoint.
  assert wd.checkpoint_epoch(workdir, 'base', 'best_val') == 2
  with wd.StageCheckpoints(workdir, 'base') as ckpt:
    restored, meta = ckpt.restore(state)
  assert meta == {'epoch': 1, 'best_val': [50.0], 'best_epoch': [1]}
  np.testing.assert_array_equal(restored['params']['w'], [0, 1, 2])
  assert wd.checkpoint_epoch(workdir, 'base', 'best_val') == 1
  params, epoch = wd.restore_params(workdir, 'base', 'best_val')
  assert epoch == 1
  np.testing.assert_array_equal(params['w'], [0, 1, 2])


def test_restore_params_names_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match='No checkpoint in .*base/best'):
    wd.restore_params(str(tmp_path), 'base', 'best_val')
  with pytest.raises(ValueError, match="not 'best'"):
    wd.restore_params(str(tmp_path), 'base', 'best')
  with pytest.raises(ValueError, match="No training stage 'refine'"):
    wd.stage_paths(str(tmp_path), 'refine')


def test_the_meta_of_an_async_save_is_not_the_callers_dict(tmp_path, monkeypatch):
  """Orbax may write the JSON after `save` returns, while training goes on and changes meta:
  the saved object must be a copy (a race that no timing reliably shows)."""
  handed = []
  json_save = wd.ocp.args.JsonSave
  monkeypatch.setattr(wd.ocp.args, 'JsonSave', lambda item: handed.append(item) or json_save(item))
  meta = {'epoch': 1, 'best_val': [50.0], 'best_epoch': [1]}
  with wd.StageCheckpoints(str(tmp_path), 'base') as ckpt:
    ckpt.save(1, {'w': jnp.zeros(2)}, meta)
  assert handed == [meta] and handed[0] is not meta


def test_an_epoch_is_saved_only_after_its_best_has_committed(tmp_path, monkeypatch):
  """Orbax orders no commits across managers: were epoch e's checkpoint to commit before
  best/e, a kill could leave meta naming a best that is gone."""
  order = []
  with wd.StageCheckpoints(str(tmp_path), 'base') as ckpt:
    ckpt.save_best(1, {'w': jnp.zeros(2)})
    best_wait, last_save = ckpt._best.wait_until_finished, ckpt._last.save
    monkeypatch.setattr(ckpt._best, 'wait_until_finished',
                        lambda: order.append('best committed') or best_wait())
    monkeypatch.setattr(ckpt._last, 'save',
                        lambda *a, **k: order.append('epoch saved') or last_save(*a, **k))
    ckpt.save(1, {'w': jnp.zeros(2)}, {'epoch': 1, 'best_val': [1.0], 'best_epoch': [1]})
    assert order == ['best committed', 'epoch saved']


def test_a_best_that_is_gone_is_a_clear_error_on_resume(tmp_path):
  state = {'w': jnp.zeros(2)}
  with wd.StageCheckpoints(str(tmp_path), 'base') as ckpt:
    ckpt.save(1, state, {'epoch': 1, 'best_val': [1.0], 'best_epoch': [1]})  # No best saved.
  with wd.StageCheckpoints(str(tmp_path), 'base') as ckpt:
    with pytest.raises(RuntimeError, match=r'names epoch 1 as the last best on val, but .*best '
                                           r'holds epochs \[\]'):
      ckpt.restore(state)
