"""The three-stage pipeline end to end: the chain of checkpoints, resume after a real kill."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from avvp_jax import pipeline, train, workdir as wd
from avvp_jax.data import load_splits
from avvp_jax.models import HAN
from configs import ma

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = {
    'model.d_model': 32, 'model.ffn_dim': 32,
    'data.synthetic.num_train': 48, 'data.synthetic.num_val': 16, 'data.synthetic.num_test': 16,
    'train.epochs': 3, 'train.lr_decay_every': 2,
}


def _tiny_config(**extra):
  config = ma.get_config('cr')
  config.update_from_flattened_dict({**TINY, **extra})
  return config


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def test_three_stages_chain_through_the_workdir(tmp_path, capsys):
  workdir = str(tmp_path / 'run')
  config = _tiny_config()
  out = pipeline.run(config, workdir)
  assert set(out) == {'base', 'refine', 'final'}
  printed = capsys.readouterr().out.split('stage 3 - stage 1 (test, points of F)\n')[1]
  segment_gain = printed.splitlines()[1].split()[1:]
  assert segment_gain[1] == f'{out["final"]["segment/visual"] - out["base"]["segment/visual"]:+.1f}'

  # base checkpoint -> refined targets -> final checkpoint, each found by the next stage.
  for stage in ('base', 'final'):
    with open(wd.stage_paths(workdir, stage)['report']) as f:
      report = json.load(f)
    assert report['step'] == 3 * 3  # 3 epochs of ceil(48 / 16) steps
    assert report['split'] == 'test' and report['num_clips'] == 16
    assert report['data'] == 'synthetic (seed 0)' and report['model'] == 'last'
    params, epoch = wd.restore_params(workdir, stage)
    assert epoch == 3 and params['fc_prob']['kernel'].shape == (32, 25)
    assert report['config_name'] == 'ma:cr' and len(report['results']) == 10
  refined = wd.load_refined(workdir)
  labels = load_splits(config.data)['train'].labels > 0
  for key in ('drop_a', 'drop_v'):
    assert refined[key].shape == (48, 25) and refined[key].dtype == bool
    assert not (refined[key] & ~labels).any(), 'dropped labels are a subset of the weak labels'
  assert refined['partners'].shape == (48, 1)
  assert refined['stats']['labels'] == labels.sum()
  assert {'audio/precision', 'visual/recall'} <= set(refined['stats'])

  records = _records(workdir)
  assert [(r['stage'], r['epoch']) for r in records] == [
      (s, e) for s in ('base', 'final') for e in (1, 2, 3)]
  assert records[0]['lr'] == pytest.approx(3e-4) and records[2]['lr'] == pytest.approx(3e-5)
  assert {'global', 'audio', 'visual', 'contrastive', 'total'} == set(records[0]['train'])

  # Rerunning finds every stage done and changes nothing.
  report = wd.stage_paths(workdir, 'final')['report']
  mtime = os.path.getmtime(report)
  again = pipeline.run(config, workdir)
  assert again == out
  assert os.path.getmtime(report) == mtime and len(_records(workdir)) == 6


def test_one_stage_config_skips_refinement(tmp_path):
  out = pipeline.run(_tiny_config(**{'refine.enabled': False, 'train.epochs': 1}),
                     str(tmp_path))
  assert set(out) == {'base'}
  assert not os.path.exists(wd.refine_dir(str(tmp_path)))


def test_relative_workdir(tmp_path, monkeypatch):
  """The README's command passes a relative workdir; Orbax needs absolute paths."""
  monkeypatch.chdir(tmp_path)
  pipeline.run(_tiny_config(**{'refine.enabled': False, 'train.epochs': 1}), 'workdirs/rel')
  assert (tmp_path / 'workdirs' / 'rel' / 'base' / 'report_test.json').exists()


def _main_command(workdir):
  overrides = [f'--config.{k}={v}' for k, v in TINY.items()]
  return [sys.executable, str(ROOT / 'launch' / 'main.py'), '--config=configs/ma.py',
          f'--workdir={workdir}', *overrides]


def _run_until(workdir, env, stage, epoch, timeout=240):
  """Starts main.py and SIGKILLs it once metrics.jsonl records `stage` at `epoch`."""
  proc = subprocess.Popen(_main_command(workdir), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + timeout
  try:
    while time.time() < deadline:
      path = os.path.join(workdir, 'metrics.jsonl')
      if os.path.exists(path) and any(
          r['stage'] == stage and r['epoch'] >= epoch for r in _records(workdir)):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return
      if proc.poll() is not None:
        pytest.fail(f'main.py ended (exit {proc.returncode}) before {stage} epoch {epoch}')
      time.sleep(0.05)
    pytest.fail(f'{stage} epoch {epoch} not reached in {timeout} s')
  finally:
    if proc.poll() is None:
      proc.kill()


def _wait_for_lock(workdir, proc):
  """Waits until `proc` holds the workdir (its pid in the lock file)."""
  path = os.path.join(workdir, wd.LOCK_FILE)
  while not (os.path.exists(path) and open(path).read().strip() == str(proc.pid)):
    assert proc.poll() is None, 'the run ended before it held the workdir'
    time.sleep(0.05)


@pytest.fixture(scope='module')
def straight_run(tmp_path_factory):
  """The main command run once without interruption, and a second one started on its
  workdir while it runs: (workdir, env, the second run's CompletedProcess, whether the
  first was still running after the second had ended)."""
  tmp = tmp_path_factory.mktemp('straight')
  env = {**os.environ, 'JAX_COMPILATION_CACHE_DIR': str(tmp / 'xla_cache')}
  workdir = str(tmp / 'run')
  live = subprocess.Popen(_main_command(workdir), cwd=ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    _wait_for_lock(workdir, live)
    second = subprocess.run(_main_command(workdir), cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    still_live = live.poll() is None
    assert live.wait(timeout=300) == 0
  finally:
    if live.poll() is None:
      live.kill()
  return workdir, env, second, still_live


def test_a_second_run_on_a_live_workdir_stops_at_once(straight_run):
  """The live run is unharmed: the kill tests below compare their results with it."""
  _, _, second, still_live = straight_run
  assert still_live, 'the first run ended before the second reached the lock: inconclusive'
  assert second.returncode == 1
  assert 'is in use by a live run (process ' in second.stderr
  assert 'Traceback' not in second.stderr


def _assert_same_run(workdir, straight):
  """The reports, refined labels and metrics log (but for timings) of two workdirs agree
  exactly (on CPU)."""
  for stage in wd.TRAINING_STAGES:
    reports = [wd.read_report(wd.stage_paths(w, stage)['report']) for w in (workdir, straight)]
    assert reports[0] == reports[1], stage
  refined = [wd.load_refined(w) for w in (workdir, straight)]
  for key in ('drop_a', 'drop_v', 'partners', 'stats'):
    np.testing.assert_equal(refined[0][key], refined[1][key], err_msg=key)
  strip = lambda w: [{k: v for k, v in r.items() if k != 'seconds'} for r in _records(w)]
  assert strip(workdir) == strip(straight)


def test_killed_run_resumes_to_the_same_result(tmp_path, straight_run):
  straight, env, _, _ = straight_run
  killed = str(tmp_path / 'killed')
  _run_until(killed, env, 'base', 2)  # killed inside stage 1
  _run_until(killed, env, 'final', 1)  # resumed, then killed inside stage 3
  subprocess.run(_main_command(killed), cwd=ROOT, env=env, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  _assert_same_run(killed, straight)


def kill_at_random(workdir, env, rng, records):
  """Starts the main command on `workdir` once per entry of `records`, SIGKILLing it a random
  0-1.5 s after metrics.jsonl holds that many records (so that the kills land at random
  moments spread over the stages, checkpoint saves and stage 2 included), then runs it to
  the end. Returns what each kill left: (metrics records, refined labels saved)."""
  hit = []
  for target in records:
    proc = subprocess.Popen(_main_command(workdir), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
      _wait_for_lock(workdir, proc)
      path = os.path.join(workdir, wd.METRICS_FILE)
      while target and not (os.path.exists(path) and len(_records(workdir)) >= target):
        assert proc.poll() is None, f'the run ended before {target} records'
        time.sleep(0.02)
      time.sleep(rng.uniform(0, 1.5))
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
    records_left = _records(workdir) if os.path.exists(path) else []
    hit.append((len(records_left), os.path.isdir(wd.refine_dir(workdir))))
  subprocess.run(_main_command(workdir), cwd=ROOT, env=env, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return hit


def test_kills_at_random_moments_resume_to_the_same_result(tmp_path, straight_run):
  """Six kills, each a random moment after a random number of epochs (of 6 in all)."""
  straight, env, _, _ = straight_run
  workdir = str(tmp_path / 'killed')
  rng = np.random.default_rng(0)
  hit = kill_at_random(workdir, env, rng, sorted(rng.integers(0, 6, 6)))
  assert any(0 < n <= 3 and not refined for n, refined in hit), hit  # Inside stage 1.
  assert any(n > 3 for n, _ in hit), hit  # Inside stage 3.
  _assert_same_run(workdir, straight)


MULTI_DEVICE_SCRIPT = """
import json, sys
import jax
from configs import ma
from avvp_jax import pipeline
config = ma.get_config('cr')
config.update_from_flattened_dict(json.loads(sys.argv[1]))
out = pipeline.run(config, sys.argv[2])
print(json.dumps({'devices': jax.device_count(), 'final': out['final']}))
"""


def test_two_devices_run_the_same_pipeline(tmp_path):
  """The mesh code runs unchanged on 2 (simulated) devices and gives the 1-device numbers."""
  overrides = {**TINY, 'train.epochs': 2, 'train.eval_batch_size': 7}
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'PYTHONPATH': str(ROOT)}
  proc = subprocess.run([sys.executable, '-c', MULTI_DEVICE_SCRIPT, json.dumps(overrides),
                         str(tmp_path / 'two')], cwd=ROOT, env=env, check=True,
                        capture_output=True, text=True)
  two = json.loads(proc.stdout.strip().splitlines()[-1])
  assert two['devices'] == 2
  one = pipeline.run(_tiny_config(**overrides), str(tmp_path / 'one'))['final']
  for key, value in one.items():
    assert abs(two['final'][key] - value) < 0.5, key


def _evaluate(workdir, *flags):
  return subprocess.run([sys.executable, str(ROOT / 'launch' / 'evaluate.py'),
                         f'--workdir={workdir}', '--split=test', *flags], cwd=ROOT, check=True,
                        capture_output=True, text=True).stdout


def test_evaluate_entry_reproduces_the_stage_report_and_scores_the_best_val_model(tmp_path):
  workdir = tmp_path / 'run'
  config = _tiny_config(**{'refine.enabled': False, 'train.epochs': 2})
  pipeline.run(config, str(workdir))
  report = workdir / 'base' / 'report_test.json'
  want = json.loads(report.read_text())
  report.unlink()  # As if the stage had been interrupted after its last checkpoint.
  printed = _evaluate(workdir)
  assert 'ma:cr [base] test on synthetic (seed 0), last model (epoch 2)' in printed
  assert 'Segment-level' in printed and 'Speech' in printed
  got = json.loads((workdir / 'base' / 'eval_test.json').read_text())
  assert got['results'] == want['results'] and got['epoch'] == want['epoch'] == 2
  assert got['model'] == 'last' and got['data'] == 'synthetic (seed 0)'
  assert not report.exists(), 'evaluation must not mark an unfinished stage as done'

  # The best-val model: the epoch of highest val Type@AV, scored like any other.
  records = wd.read_metrics(str(workdir))
  best_epoch = max(records, key=lambda r: r['val']['segment/type'])['epoch']
  printed = _evaluate(workdir, '--model=best_val')
  assert f'best_val model (epoch {best_epoch})' in printed
  got = json.loads((workdir / 'base' / 'eval_test_best_val.json').read_text())
  params, epoch = wd.restore_params(str(workdir), 'base', 'best_val')
  split = load_splits(config.data)['test']
  expected = train.evaluate_split(HAN.from_config(config.model), params, split, 256)['results']
  assert epoch == best_epoch and got['model'] == 'best_val' and got['epoch'] == best_epoch
  assert got['results'] == pytest.approx(expected, abs=1e-9)
