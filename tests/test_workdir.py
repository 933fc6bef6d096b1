"""The workdir: the config guard, atomic writes, the lock, paths."""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from avvp_jax import workdir as wd
from configs import ma


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


def test_paths_of_the_stages_and_the_checkpoints(tmp_path):
  assert wd.STAGES == ('base', 'refine', 'final') and wd.TRAINING_STAGES == ('base', 'final')
  assert wd.checkpoint_dir('/w', 'final', 'best_val') == '/w/final/best'
  assert wd.checkpoint_dir('/w', 'base') == '/w/base/checkpoints'
  with pytest.raises(ValueError, match="not 'best'"):
    wd.checkpoint_dir(str(tmp_path), 'base', 'best')
  with pytest.raises(ValueError, match="No training stage 'refine'"):
    wd.stage_paths(str(tmp_path), 'refine')
  wd.check_or_save_config(_config(), str(tmp_path))
  deep = tmp_path / 'final' / 'best' / '3'
  deep.mkdir(parents=True)
  assert wd.workdir_of(str(deep)) == str(tmp_path)
  with pytest.raises(FileNotFoundError, match='not inside a workdir'):
    wd.workdir_of(str(tmp_path.parent))


def test_the_compilation_cache_keeps_every_program(tmp_path):
  code = ('import jax; from avvp_jax import workdir; workdir.use_compilation_cache(); '
          'print(jax.config.jax_compilation_cache_dir, '
          'jax.config.jax_persistent_cache_min_compile_time_secs)')
  env = {**os.environ, 'JAX_COMPILATION_CACHE_DIR': str(tmp_path)}
  out = subprocess.run([sys.executable, '-c', code], env=env, check=True, capture_output=True,
                       text=True, cwd=pathlib.Path(__file__).resolve().parents[1]).stdout
  assert out.split() == [str(tmp_path), '0.0']
