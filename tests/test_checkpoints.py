"""Orbax checkpoints: a stage's last and best epochs, restores, the refined labels."""

import os
import socket
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from avvp_jax import checkpoints, workdir as wd
from configs import ma


def _config(**overrides):
  config = ma.get_config('cr')
  config.update_from_flattened_dict(overrides)
  return config


def test_restore_checkpoint_of_a_folder_or_of_one_epoch(tmp_path):
  workdir = str(tmp_path)
  wd.check_or_save_config(_config(), workdir)
  state = {'params': {'w': jnp.arange(3.0)}, 'step': jnp.int32(5)}
  with checkpoints.StageCheckpoints(workdir, 'final') as ckpt:
    for epoch in (1, 2):
      ckpt.save_best(epoch, {'w': jnp.arange(3.0) + epoch}, [7])
    ckpt.save(2, state, {'epoch': 2, 'best_val': [50.0], 'best_epoch': [2], 'seeds': [7]})
  best = os.path.join(workdir, 'final', 'best')
  for path, want_epoch, want in ((best, 2, [2, 3, 4]), (os.path.join(best, '1'), 1, [1, 2, 3]),
                                 (os.path.join(workdir, 'final', 'checkpoints'), 2, [0, 1, 2])):
    params, epoch, seeds = checkpoints.restore_checkpoint(path)
    assert epoch == want_epoch and seeds == [7]  # The seeds as saved, not from a config.
    np.testing.assert_array_equal(params['w'], want)
    assert wd.workdir_of(path) == workdir
  with pytest.raises(FileNotFoundError, match='No checkpoint of a training stage in .*final: '
                                              'give a stage'):
    checkpoints.restore_checkpoint(os.path.join(workdir, 'final'))
  with pytest.raises(FileNotFoundError, match=r'in .*best/7 \(.*best holds epochs \[1, 2\]\)'):
    checkpoints.restore_checkpoint(os.path.join(best, '7'))
  with pytest.raises(FileNotFoundError, match='No checkpoint in .*nowhere: no such folder'):
    checkpoints.restore_checkpoint(os.path.join(workdir, 'nowhere'))
  checkpoints.save_refined(workdir, {'drop_a': np.zeros((1, 2, 25), bool)}, {})
  with pytest.raises(FileNotFoundError, match='No checkpoint of a training stage in .*refine'):
    # An Orbax folder, not a stage's.
    checkpoints.restore_checkpoint(os.path.join(workdir, 'refine'))


def test_stage_checkpoints_restore_and_drop_a_best_newer_than_the_last_epoch(tmp_path):
  workdir = str(tmp_path)
  state = {'params': {'w': jnp.arange(3.0)}, 'step': jnp.int32(5)}
  with checkpoints.StageCheckpoints(workdir, 'base') as ckpt:
    assert ckpt.restore(state) is None
    meta = {'epoch': 1, 'best_val': [50.0], 'best_epoch': [1]}
    ckpt.save_best(1, state['params'], [0])
    ckpt.save(1, state, meta)
    meta['epoch'] = 99  # The saved meta is a copy.
    ckpt.save_best(2, {'w': jnp.arange(3.0) + 1}, [0])  # A kill before epoch 2's checkpoint.
  assert checkpoints.checkpoint_epoch(workdir, 'base', 'best_val') == 2
  with checkpoints.StageCheckpoints(workdir, 'base') as ckpt:
    restored, meta = ckpt.restore(state)
  assert meta == {'epoch': 1, 'best_val': [50.0], 'best_epoch': [1]}
  np.testing.assert_array_equal(restored['params']['w'], [0, 1, 2])
  assert checkpoints.checkpoint_epoch(workdir, 'base', 'best_val') == 1
  params, epoch, seeds = checkpoints.restore_params(workdir, 'base', 'best_val')
  assert epoch == 1 and seeds == [0]
  np.testing.assert_array_equal(params['w'], [0, 1, 2])


def test_restore_params_names_what_is_missing(tmp_path):
  with pytest.raises(FileNotFoundError, match='No checkpoint in .*base/best'):
    checkpoints.restore_params(str(tmp_path), 'base', 'best_val')
  with pytest.raises(ValueError, match="not 'best'"):
    checkpoints.restore_params(str(tmp_path), 'base', 'best')


def test_the_meta_of_an_async_save_is_not_the_callers_dict(tmp_path, monkeypatch):
  """Orbax may write the JSON after `save` returns, while training goes on and changes meta:
  the saved object must be a copy (a race that no timing reliably shows)."""
  handed = []
  json_save = checkpoints.ocp.args.JsonSave
  monkeypatch.setattr(checkpoints.ocp.args, 'JsonSave',
                      lambda item: handed.append(item) or json_save(item))
  meta = {'epoch': 1, 'best_val': [50.0], 'best_epoch': [1]}
  with checkpoints.StageCheckpoints(str(tmp_path), 'base') as ckpt:
    ckpt.save(1, {'w': jnp.zeros(2)}, meta)
  assert handed == [meta] and handed[0] is not meta


def test_an_epoch_is_saved_only_after_its_best_has_committed(tmp_path, monkeypatch):
  """Orbax orders no commits across managers: were epoch e's checkpoint to commit before
  best/e, a kill could leave meta naming a best that is gone."""
  order = []
  with checkpoints.StageCheckpoints(str(tmp_path), 'base') as ckpt:
    ckpt.save_best(1, {'w': jnp.zeros(2)}, [0])
    best_wait, last_save = ckpt._best.wait_until_finished, ckpt._last.save
    monkeypatch.setattr(ckpt._best, 'wait_until_finished',
                        lambda: order.append('best committed') or best_wait())
    monkeypatch.setattr(ckpt._last, 'save',
                        lambda *a, **k: order.append('epoch saved') or last_save(*a, **k))
    ckpt.save(1, {'w': jnp.zeros(2)}, {'epoch': 1, 'best_val': [1.0], 'best_epoch': [1]})
    assert order == ['best committed', 'epoch saved']


# One process of a two-process run: a stage's saves every epoch, each after a random pause,
# so that one process's best is saved while the other's last epoch is still committing.
_TWO_PROCESS_SAVES = """
import sys, time
import jax, numpy as np
port, process_id, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(f'127.0.0.1:{port}', 2, process_id, heartbeat_timeout_seconds=10)
from avvp_jax import checkpoints
rng = np.random.default_rng(process_id)
state = {'w': np.zeros((2000, 1000), np.float32)}
with checkpoints.StageCheckpoints(workdir, 'base') as ckpt:
  for epoch in range(1, 31):
    time.sleep(rng.uniform(0, 0.05))
    ckpt.save_best(epoch, state, [0])
    ckpt.save(epoch, state, {'epoch': epoch, 'best_epoch': [epoch]})
"""


def test_two_processes_save_a_stages_last_and_best_at_once(tmp_path):
  """Under jax.distributed, a stage's two managers save concurrently (one epoch's best while
  the last epoch commits): their barriers across processes must not share keys."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  logs = [tmp_path / f'process_{i}.log' for i in (0, 1)]
  procs = []
  for i, log in enumerate(logs):
    with open(log, 'w') as f:
      procs.append(subprocess.Popen(
          [sys.executable, '-c', _TWO_PROCESS_SAVES, str(port), str(i), str(tmp_path)],
          env=env, stdout=f, stderr=subprocess.STDOUT))
  deadline = time.monotonic() + 120
  while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
    if any(p.poll() for p in procs):  # One failed: its peer would wait at a barrier.
      break
    time.sleep(0.2)
  for p in procs:
    p.kill()
    p.wait()
  assert [p.returncode for p in procs] == [0, 0], '\n'.join(
      f'process {i} (exit {p.returncode}):\n{log.read_text()[-2000:]}'
      for i, (p, log) in enumerate(zip(procs, logs)))
  with checkpoints.StageCheckpoints(str(tmp_path), 'base') as ckpt:
    assert ckpt._last.latest_step() == ckpt._best.latest_step() == 30


def test_a_best_that_is_gone_is_a_clear_error_on_resume(tmp_path):
  state = {'w': jnp.zeros(2)}
  with checkpoints.StageCheckpoints(str(tmp_path), 'base') as ckpt:
    ckpt.save(1, state, {'epoch': 1, 'best_val': [1.0], 'best_epoch': [1]})  # No best saved.
  with checkpoints.StageCheckpoints(str(tmp_path), 'base') as ckpt:
    with pytest.raises(RuntimeError, match=r'names epoch 1 as the last best on val, but .*best '
                                           r'holds epochs \[\]'):
      ckpt.restore(state)


def test_a_checkpoint_that_names_no_seeds_reads_as_none(tmp_path):
  """A train state saved before metas named their seeds: `seeds` is None, and the caller
  (`seeds.checkpoint_seeds`) takes them from the config."""
  with checkpoints.StageCheckpoints(str(tmp_path), 'base') as ckpt:
    ckpt.save(1, {'params': {'w': jnp.zeros((2, 3))}},
              {'epoch': 1, 'best_val': [1.0, 2.0], 'best_epoch': [1, 1]})
  restored = checkpoints.restore_params(str(tmp_path), 'base')
  assert restored.epoch == 1 and restored.seeds is None
  assert restored.params['w'].shape == (2, 3)


def test_refined_labels_round_trip(tmp_path):
  workdir = str(tmp_path)
  assert checkpoints.load_refined(workdir) is None
  targets = {'drop_a': np.eye(25, dtype=bool)[None, :3], 'drop_v': np.zeros((1, 3, 25), bool),
             'partners': np.array([[[1], [2], [0]]])}
  checkpoints.save_refined(workdir, targets, {'seeds': [4], 'audio/dropped': 3})
  loaded = checkpoints.load_refined(workdir)
  for key, value in targets.items():
    np.testing.assert_array_equal(loaded[key], value)
  assert loaded['stats'] == {'seeds': [4], 'audio/dropped': 3}
