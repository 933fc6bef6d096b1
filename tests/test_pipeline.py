"""The three-stage pipeline end to end: the chain of checkpoints, resume after a real kill."""

import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from avvp_jax import checkpoints, logs, pipeline, plots, reports, train, workdir as wd
from avvp_jax.data import load_splits
from avvp_jax.models import HAN
from configs import ma

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = {
    'model.d_model': 32, 'model.ffn_dim': 32,
    'data.synthetic.num_train': 48, 'data.synthetic.num_val': 16, 'data.synthetic.num_test': 16,
    'train.epochs': 3, 'train.lr_decay_every': 2, 'plots': False,
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
  config = _tiny_config(plots=True)
  out = pipeline.run(config, workdir)
  assert set(out) == {'base', 'refine', 'final'}
  printed = capsys.readouterr().out.split('stage 3 - stage 1 (test, points of F)\n')[1]
  segment_gain = printed.splitlines()[1].split()[1:]
  gain = out['final']['results']['segment/visual'] - out['base']['results']['segment/visual']
  assert segment_gain[1] == f'{gain:+.1f}'

  # base checkpoint -> refined targets -> final checkpoint, each found by the next stage.
  for stage in ('base', 'final'):
    with open(wd.stage_paths(workdir, stage)['report']) as f:
      report = json.load(f)
    assert report['step'] == 3 * 3  # 3 epochs of ceil(48 / 16) steps
    assert report['split'] == 'test' and report['num_clips'] == 16
    assert report['data'] == 'synthetic (seed 0)' and report['model'] == 'last'
    params, epoch, seeds = checkpoints.restore_params(workdir, stage)
    assert epoch == 3 and params['fc_prob']['kernel'].shape == (1, 32, 25)  # One seed.
    assert seeds == [0]  # Named by the checkpoint.
    assert report['config_name'] == 'ma:cr' and len(report['results']) == 10
  refined = checkpoints.load_refined(workdir)
  labels = load_splits(config.data)['train'].labels > 0
  for key in ('drop_a', 'drop_v'):
    assert refined[key].shape == (1, 48, 25) and refined[key].dtype == bool
    assert not (refined[key] & ~labels).any(), 'dropped labels are a subset of the weak labels'
  assert refined['partners'].shape == (1, 48, 1)
  assert refined['stats']['labels'] == labels.sum()
  assert {'audio/precision', 'visual/recall'} <= set(refined['stats'])

  records = _records(workdir)
  assert [(r['stage'], r['epoch']) for r in records] == [
      (s, e) for s in ('base', 'final') for e in (1, 2, 3)]
  assert records[0]['lr'] == pytest.approx(3e-4) and records[2]['lr'] == pytest.approx(3e-5)
  assert {'global', 'audio', 'visual', 'contrastive', 'total'} == set(records[0]['train'])
  assert len(os.listdir(logs.tensorboard_dir(workdir, 0))) == 1  # Rewritten, not added to.

  # The pictures, drawn at the end: the first 3 test clips with an event of one modality.
  test = load_splits(config.data)['test']
  clips = test.names[plots.pick_clips(test.gt_a, test.gt_v, 3)]
  assert sorted(os.listdir(os.path.join(workdir, 'plots'))) == sorted(
      [f'timeline_test_{name}.png' for name in clips]
      + ['curves.png', 'per_class.png', 'refinement.png'])

  # Rerunning finds every stage done and changes nothing.
  report = wd.stage_paths(workdir, 'final')['report']
  mtime = os.path.getmtime(report)
  again = pipeline.run(config, workdir)
  np.testing.assert_equal(again, out)
  assert os.path.getmtime(report) == mtime and len(_records(workdir)) == 6


def test_one_stage_config_skips_refinement(tmp_path):
  out = pipeline.run(_tiny_config(**{'refine.enabled': False, 'train.epochs': 1}),
                     str(tmp_path))
  assert set(out) == {'base'}
  assert not os.path.exists(wd.refine_dir(str(tmp_path)))


def test_fewer_than_one_seed_is_refused_before_any_work(tmp_path):
  with pytest.raises(ValueError, match='num_seeds must be at least 1, not 0'):
    pipeline.run(_tiny_config(num_seeds=0), str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_relative_workdir(tmp_path, monkeypatch):
  """The README's command passes a relative workdir; Orbax needs absolute paths."""
  monkeypatch.chdir(tmp_path)
  pipeline.run(_tiny_config(**{'refine.enabled': False, 'train.epochs': 1}), 'workdirs/rel')
  assert (tmp_path / 'workdirs' / 'rel' / 'base' / 'report_test.json').exists()


# The tiny settings of the other methods' configs (VALOR's schedule has no lr steps).
TINY_OF = {
    'configs/ma.py': TINY,
    'configs/jomold.py': TINY,
    'configs/valor.py': {**{k: v for k, v in TINY.items() if k != 'train.lr_decay_every'},
                         'train.warmup_epochs': 1},
}


def _main_command(workdir, *extra, config='configs/ma.py'):
  overrides = [f'--config.{k}={v}' for k, v in TINY_OF[config.split(':')[0]].items()]
  return [sys.executable, str(ROOT / 'launch' / 'main.py'), f'--config={config}',
          f'--workdir={workdir}', *overrides, *extra]


def _run_until(workdir, env, stage, epoch, *extra, timeout=240):
  """Starts main.py and SIGKILLs it once metrics.jsonl records `stage` at `epoch` (for one
  seed: the kill may land between the records of the seeds)."""
  proc = subprocess.Popen(_main_command(workdir, *extra), cwd=ROOT, env=env,
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
    got, want = (reports.read_report(wd.stage_paths(w, stage)['report'])
                 for w in (workdir, straight))
    np.testing.assert_equal(got, want, err_msg=stage)
  refined = [checkpoints.load_refined(w) for w in (workdir, straight)]
  assert (refined[0] is None) == (refined[1] is None)
  for key in refined[1] or ():  # MA's drops and partners, JoMoLD's noise ratios; stats.
    np.testing.assert_equal(refined[0][key], refined[1][key], err_msg=key)
  for stage in wd.TRAINING_STAGES:  # Every seed's best-val model, kept across the kills.
    if checkpoints.checkpoint_epoch(straight, stage, 'best_val') is None:
      continue
    best = [checkpoints.restore_params(w, stage, 'best_val') for w in (workdir, straight)]
    assert best[0][1] == best[1][1], stage
    np.testing.assert_equal(*(jax.tree.map(np.asarray, b[0]) for b in best), err_msg=stage)
  strip = lambda w: [{k: v for k, v in r.items() if k not in ('seconds', 'time')}
                     for r in _records(w)]
  assert strip(workdir) == strip(straight)


def test_a_killed_run_of_four_seeds_resumes_to_the_same_result(tmp_path, seed_runs):
  """Killed in stage 1 of a 4-seed run (maybe between the records of the seeds), resumed,
  killed again in stage 3 (after stage 1 and the refinement are saved), resumed: the result
  of the uninterrupted 4-seed run, every seed's best-val model too."""
  four, _ = seed_runs
  killed, flag = str(tmp_path / 'killed'), '--config.num_seeds=4'
  _run_until(killed, os.environ, 'base', 2, flag)
  _run_until(killed, os.environ, 'final', 2, flag)
  assert os.path.isdir(wd.refine_dir(killed)), 'the second kill was not after stage 2'
  subprocess.run(_main_command(killed, flag), cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  _assert_same_run(killed, four)


def kill_at_random(workdir, env, kills, *extra, config='configs/ma.py'):
  """Starts the main command on `workdir` once per (records, seconds) of `kills`, SIGKILLing
  it `seconds` after metrics.jsonl holds that many records (so that the kills land at random
  moments spread over the stages, checkpoint saves and stage 2 included), then runs it to
  the end. Returns what each kill left: (metrics records, refined labels saved)."""
  hit = []
  for target, delay in kills:
    proc = subprocess.Popen(_main_command(workdir, *extra, config=config), cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
      _wait_for_lock(workdir, proc)
      path = os.path.join(workdir, logs.METRICS_FILE)
      while target and not (os.path.exists(path) and len(_records(workdir)) >= target):
        assert proc.poll() is None, f'the run ended before {target} records'
        time.sleep(0.02)
      time.sleep(delay)
    finally:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
    records_left = _records(workdir) if os.path.exists(path) else []
    hit.append((len(records_left), os.path.isdir(wd.refine_dir(workdir))))
  subprocess.run(_main_command(workdir, *extra, config=config), cwd=ROOT, env=env, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return hit


def test_kills_at_random_moments_resume_to_the_same_result(tmp_path, straight_run):
  """Four kills at moments drawn afresh on every run (the seed is in the failure message):
  one soon after stage 1's first or second epoch record, one after a stage-3 record, two
  after any record (of 6 in all), each 0-1.5 s after it (0-0.3 s for the first)."""
  straight, env, _, _ = straight_run
  workdir = str(tmp_path / 'killed')
  seed = int.from_bytes(os.urandom(4), 'little')
  rng = np.random.default_rng(seed)
  kills = sorted([(int(rng.integers(1, 3)), rng.uniform(0, 0.3)),
                  (int(rng.integers(4, 6)), rng.uniform(0, 1.5)),
                  *((int(rng.integers(1, 6)), rng.uniform(0, 1.5)) for _ in range(2))])
  hit = kill_at_random(workdir, env, kills)
  where = f'kills {kills} (seed {seed}) left (records, refined) {hit}'
  assert any(0 < n <= 3 and not refined for n, refined in hit), where  # Inside stage 1.
  assert any(n > 3 for n, _ in hit), where  # Inside stage 3.
  _assert_same_run(workdir, straight)


def test_a_killed_ensemble_run_resumes_to_the_same_result(tmp_path, straight_run):
  """Ensemble refinement (2 seeds, every model's swapped probabilities averaged): killed once
  at a random moment 0-2 s after stage 1's last record (in stage 1's last save, the
  refinement or stage 3's start), once 0-1 s after a stage-3 record, then resumed: the
  uninterrupted ensemble run's result."""
  env, extra = straight_run[1], ('--config.num_seeds=2', '--config.refine.ensemble=True')
  straight = str(tmp_path / 'straight')
  subprocess.run(_main_command(straight, *extra), cwd=ROOT, env=env, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  seed = int.from_bytes(os.urandom(4), 'little')
  rng = np.random.default_rng(seed)
  kills = [(6, rng.uniform(0, 2)), (int(rng.integers(7, 12)), rng.uniform(0, 1))]
  hit = kill_at_random(str(tmp_path / 'killed'), env, kills, *extra)
  assert hit[1][0] > 6, f'kills {kills} (seed {seed}) left (records, refined) {hit}'
  _assert_same_run(str(tmp_path / 'killed'), straight)
  per_seed = checkpoints.load_refined(straight)['stats']['per_seed']
  errors = [p['visual/train_error'] for p in per_seed]
  assert errors[0] == errors[1], 'both seeds rate the mean model: the ensemble was not used'


@pytest.mark.parametrize('config, records', [('configs/jomold.py', 6),
                                             ('configs/valor.py', 3)])
def test_jomold_and_valor_killed_at_random_moments_resume_to_the_same_result(
    tmp_path, straight_run, config, records):
  """JoMoLD (3 stages, 6 epoch records) and VALOR (1 stage, 3): killed 0-0.3 s after one of
  the first two records (the first, for VALOR), then 0-1.5 s after a later one but the last,
  resumed: the uninterrupted run's reports, stage-2 output, best-val models and metrics
  log."""
  env = straight_run[1]
  straight = str(tmp_path / 'straight')
  subprocess.run(_main_command(straight, config=config), cwd=ROOT, env=env, check=True,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  assert len(_records(straight)) == records
  seed = int.from_bytes(os.urandom(4), 'little')
  rng = np.random.default_rng(seed)
  first = int(rng.integers(1, min(3, records - 1)))
  kills = [(first, rng.uniform(0, 0.3)), (int(rng.integers(first + 1, records)),
                                          rng.uniform(0, 1.5))]
  hit = kill_at_random(str(tmp_path / 'killed'), env, kills, config=config)
  assert hit[0][0] < records, f'kills {kills} (seed {seed}) left (records, refined) {hit}'
  _assert_same_run(str(tmp_path / 'killed'), straight)


@pytest.fixture(scope='module')
def seed_runs(tmp_path_factory):
  """On one device: 4 seeds (0-3) in one program, and a one-seed run with config.seed = 1."""
  tmp = tmp_path_factory.mktemp('seeds')
  four, one = str(tmp / 'four'), str(tmp / 'seed1')
  pipeline.run(_tiny_config(num_seeds=4), four)
  pipeline.run(_tiny_config(seed=1), one)
  return four, one


def _assert_same_seed(got_dir, got_seed, want_dir, want_seed):
  """Seed `got_seed` of one workdir computed what seed `want_seed` of another did: the same
  reports, refined labels and validation numbers; train losses to 1e-5 (relative), since
  vmapped matrix products sum in another order than one model's (float32 noise, 5e-7 here)."""
  for stage in wd.TRAINING_STAGES:
    got, want = (reports.read_report(wd.stage_paths(w, stage)['report'])
                 for w in (got_dir, want_dir))
    got, want = (r['per_seed'][r['seeds'].index(s)]
                 for r, s in ((got, got_seed), (want, want_seed)))
    np.testing.assert_equal(got, want, err_msg=stage)
  got, want = (checkpoints.load_refined(w) for w in (got_dir, want_dir))
  got_s, want_s = got['stats']['seeds'], want['stats']['seeds']
  for key in ('drop_a', 'drop_v', 'partners'):
    np.testing.assert_array_equal(got[key][got_s.index(got_seed)],
                                  want[key][want_s.index(want_seed)])
  assert got['stats']['per_seed'][got_s.index(got_seed)] == want['stats']['per_seed'][
      want_s.index(want_seed)]
  got, want = ([r for r in logs.read_metrics(w) if r.seed == s]
               for w, s in ((got_dir, got_seed), (want_dir, want_seed)))
  assert [(r.stage, r.epoch, r.val) for r in got] == [(r.stage, r.epoch, r.val) for r in want]
  for g, w in zip(got, want):
    for term, value in w.train.items():
      assert g.train[term] == pytest.approx(value, rel=1e-5), (g.stage, g.epoch, term)


def test_seed_s_of_a_several_seed_run_is_the_one_seed_run_with_seed_s(straight_run, seed_runs):
  four, one = seed_runs
  _assert_same_seed(four, 0, straight_run[0], 0)
  _assert_same_seed(four, 1, one, 1)
  report = reports.read_report(wd.stage_paths(four, 'final')['report'])
  assert report['seeds'] == [0, 1, 2, 3]
  values = [p['results']['segment/visual'] for p in report['per_seed']]
  assert len(set(values)) > 1, 'four seeds gave one result: the seeds are not used'
  assert report['results']['segment/visual'] == pytest.approx(np.mean(values))
  assert report['sd']['segment/visual'] == pytest.approx(np.std(values))


FOUR_DEVICE_SCRIPT = """
import json, os, sys
import jax
from configs import ma
from avvp_jax import pipeline
def config(**extra):
  c = ma.get_config('cr')
  c.update_from_flattened_dict({**json.loads(sys.argv[1]), **extra})
  return c
try:
  pipeline.run(config(num_seeds=3), os.path.join(sys.argv[2], 'three'))
except ValueError as e:
  print('REFUSED', e, os.path.exists(os.path.join(sys.argv[2], 'three')))
for s in (4, 2):
  pipeline.run(config(num_seeds=s), os.path.join(sys.argv[2], f'seeds{s}'))
"""


@pytest.fixture(scope='module')
def four_device_runs(tmp_path_factory):
  """In one process with 4 simulated devices: 4 seeds and 2 seeds, and a refused 3; returns
  (the folder of workdirs seeds4 and seeds2, what the process printed)."""
  tmp = tmp_path_factory.mktemp('four_devices')
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'PYTHONPATH': str(ROOT)}
  printed = subprocess.run([sys.executable, '-c', FOUR_DEVICE_SCRIPT, json.dumps(TINY),
                            str(tmp)], cwd=ROOT, env=env, check=True, capture_output=True,
                           text=True).stdout
  return tmp, printed


def test_four_devices_shard_the_seeds_and_give_the_one_device_numbers(four_device_runs,
                                                                      seed_runs):
  """4 simulated devices: 4 seeds (mesh seed 4 x data 1) and 2 seeds (seed 2 x data 2, the
  batch sharded too) compute what one device does, seed by seed; 3 seeds cannot be placed."""
  tmp, printed = four_device_runs
  assert 'REFUSED num_seeds = 3 cannot be placed on 4 devices' in printed
  assert printed.split('REFUSED')[1].splitlines()[0].endswith('False'), 'no workdir made'
  assert 'seeds [0, 1, 2, 3] on 4 devices, mesh seed 4 x data 1' in printed
  assert 'seeds [0, 1] on 4 devices, mesh seed 2 x data 2' in printed
  four, _ = seed_runs
  for seed in range(4):
    _assert_same_seed(str(tmp / 'seeds4'), seed, four, seed)
  for seed in range(2):
    _assert_same_seed(str(tmp / 'seeds2'), seed, four, seed)


def _start_two_processes(workdir, *extra_of_process_1):
  """main.py as 2 processes of 2 simulated CPU devices each on 127.0.0.1, 2 seeds, a
  process silent for 20 s declared dead."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  flags = ['--config.num_seeds=2', f'--coordinator_address=127.0.0.1:{port}',
           '--num_processes=2', '--heartbeat_timeout=20']
  return [subprocess.Popen(
      _main_command(workdir) + flags + [f'--process_id={i}']
      + (list(extra_of_process_1) if i else []), cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in (0, 1)]


def _two_processes(workdir, *extra_of_process_1):
  """Runs `_start_two_processes` to the end: both (returncode, stdout, stderr)."""
  procs = _start_two_processes(workdir, *extra_of_process_1)
  outputs = [p.communicate(timeout=300) for p in procs]
  return [(p.returncode, *out) for p, out in zip(procs, outputs)]


@pytest.fixture(scope='module')
def two_process_run(tmp_path_factory):
  """The main command as 2 processes, uninterrupted: (workdir, both outputs)."""
  workdir = tmp_path_factory.mktemp('two_processes') / 'run'
  return str(workdir), _two_processes(workdir)


def test_two_processes_give_the_numbers_of_one_process_with_four_devices(tmp_path,
                                                                         two_process_run,
                                                                         four_device_runs):
  """jax.distributed on 127.0.0.1: 2 processes x 2 devices compute what 1 process x 4 devices
  does; only process 0 prints; processes given different configs are refused."""
  bad = _two_processes(tmp_path / 'bad', '--config.train.lr=0.001')
  for returncode, _, stderr in bad:
    assert returncode == 1
    assert 'The 2 processes of this run differ in their config: processes [1]' in stderr
  assert not os.path.exists(tmp_path / 'bad' / 'base'), 'refused before training'
  workdir, ((rc0, out0, _), (rc1, out1, _)) = two_process_run
  assert rc0 == rc1 == 0
  assert 'seeds [0, 1] on 4 devices, mesh seed 2 x data 2' in out0 and '[final]' in out0
  assert 'workdir:' not in out1 and '[base]' not in out1  # (Gloo's own lines may be there.)
  for seed in range(2):
    _assert_same_seed(workdir, seed, str(four_device_runs[0] / 'seeds2'), seed)


def test_two_processes_resume_after_one_of_them_is_killed(tmp_path, two_process_run):
  """Process 1 is SIGKILLed 0-1 s after epoch 2's records of stage 1 or of stage 3 (drawn),
  so that the stage has saved epoch 1 and training collectives remain; process 0 ends by
  itself within 60 s, failing in a collective on the dead peer (exit 1) or stopped by jax.distributed once the peer's
  heartbeat is 20 s late (SIGABRT); then both are started again and finish what the
  uninterrupted two-process run computed."""
  workdir = str(tmp_path / 'killed')
  seed = int.from_bytes(os.urandom(4), 'little')
  rng = np.random.default_rng(seed)
  target, delay = int(rng.choice([4, 10])), rng.uniform(0, 1)
  where = f'kill of process 1 after record {target} + {delay:.2f} s (seed {seed})'
  procs = _start_two_processes(workdir)
  try:
    path = os.path.join(workdir, logs.METRICS_FILE)
    while not (os.path.exists(path) and len(_records(workdir)) >= target):
      assert procs[1].poll() is None, f'the run ended before {target} records; {where}'
      time.sleep(0.02)
    time.sleep(delay)
    procs[1].send_signal(signal.SIGKILL)
    procs[1].communicate()
    try:
      _, err = procs[0].communicate(timeout=60)
    except subprocess.TimeoutExpired:
      pytest.fail(f'process 0 still runs 60 s after its peer was killed; {where}')
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  assert procs[0].returncode in (1, -signal.SIGABRT), (
      f'{where}: exit {procs[0].returncode}\n{err[-2000:]}')
  (rc0, out0, err0), (rc1, _, err1) = _two_processes(workdir)
  assert rc0 == rc1 == 0, f'{where}\n{err0[-2000:]}\n{err1[-2000:]}'
  assert '] resuming after epoch ' in out0, where
  _assert_same_run(workdir, two_process_run[0])


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
  records = logs.read_metrics(str(workdir))
  best_epoch = max(records, key=lambda r: r.val['segment/type']).epoch
  printed = _evaluate(workdir, '--model=best_val')
  assert f'best_val model (epoch {best_epoch})' in printed
  got = json.loads((workdir / 'base' / 'eval_test_best_val.json').read_text())
  params, epoch, _ = checkpoints.restore_params(str(workdir), 'base', 'best_val')
  split = load_splits(config.data)['test']
  expected = train.evaluate_split(HAN.from_config(config.model), params, split, 256,
                                  seeds=True)[0]['results']
  assert epoch == best_epoch and got['model'] == 'best_val' and got['epoch'] == best_epoch
  assert got['results'] == pytest.approx(expected, abs=1e-9)


GOLDEN = ROOT / 'tests' / 'golden' / 'tiny_run.json'


SIMD_FLAGS = ('avx', 'avx2', 'fma', 'avx512f', 'avx512bw', 'avx512vl', 'avx512_bf16')


def _machine() -> dict:
  """The CPU's name and vector extensions (machines sold under one name, e.g. 'AMD EPYC',
  round float sums differently when one has AVX-512 and the other not), and JAX's version."""
  with open('/proc/cpuinfo') as f:
    lines = f.read().splitlines()
  field = lambda name: next((line.split(':', 1)[1].strip() for line in lines
                             if line.startswith(name)), '')
  flags = set(field('flags').split())
  return {'cpu': field('model name') or 'unknown',
          'simd': ' '.join(f for f in SIMD_FLAGS if f in flags),
          'jax': jax.__version__, 'jaxlib': jax.lib.__version__}


def _golden_numbers(workdir) -> dict:
  """What the tiny one-seed run computed: each epoch record (but for timings), both stages'
  test numbers and per-class F, and the refinement's drops and statistics."""
  reports_ = {stage: reports.read_report(wd.stage_paths(workdir, stage)['report'])
              for stage in wd.TRAINING_STAGES}
  refined = checkpoints.load_refined(workdir)
  return {
      'records': [{k: v for k, v in dataclasses.asdict(r).items() if k not in ('seconds', 'time')}
                  for r in logs.read_metrics(workdir)],
      'reports': {stage: {'results': r['results'], 'step': r['step'],
                          **{key: [None if np.isnan(v) else float(v) for v in r[key]]
                             for key in reports.PER_CLASS}} for stage, r in reports_.items()},
      'refine': {'stats': refined['stats'], 'drop_a': np.flatnonzero(refined['drop_a']).tolist(),
                 'drop_v': np.flatnonzero(refined['drop_v']).tolist()},
  }


def test_the_one_seed_run_computes_the_pinned_numbers(straight_run):
  """The tiny main command's numbers, compared exactly with tests/golden/tiny_run.json: any
  change of what the one-seed path computes (a vmap of size 1 instead of the one-model code,
  another key, another reduction order) shows here. Float results depend on the CPU and the
  XLA version: on another machine than the one recorded, regenerate the file first
  (AVVP_REGENERATE_GOLDEN=1 python -m pytest tests/test_pipeline.py -k pinned) and check that
  the change is the machine's, not the code's."""
  got = json.loads(json.dumps(_golden_numbers(straight_run[0])))
  if os.environ.get('AVVP_REGENERATE_GOLDEN'):
    GOLDEN.write_text(json.dumps({'machine': _machine(), **got}, indent=1) + '\n')
  want = json.loads(GOLDEN.read_text())
  machine = want.pop('machine')
  same = '' if machine == _machine() else (
      f' NOTE: recorded on {machine}, this is {_machine()}: regenerate the file if only the '
      'machine differs.')
  assert got['refine'] == want['refine'], 'the refinement differs.' + same
  assert got['reports'] == want['reports'], 'the test reports differ.' + same
  assert got['records'] == want['records'], 'the epoch records differ.' + same
