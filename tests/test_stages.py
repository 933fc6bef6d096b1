"""The stages in a workdir: targets handed from stage to stage, model selection, NaN, kills."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avvp_jax import checkpoints, pipeline, refine, seeds, stages, train, workdir as wd
from avvp_jax.data import Split, load_splits
from avvp_jax.models import HAN
from configs import ma

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = {
    'model.d_model': 32, 'model.ffn_dim': 32,
    'data.synthetic.num_train': 48, 'data.synthetic.num_val': 16, 'data.synthetic.num_test': 16,
    'train.epochs': 2, 'train.lr_decay_every': 2, 'plots': False,
}


def _tiny_config(**extra):
  config = ma.get_config('cr')
  config.update_from_flattened_dict({**TINY, **extra})
  return config


def _spy_training_targets(monkeypatch) -> list[dict]:
  """Records the targets each training stage puts on the device."""
  seen = []
  device_arrays = train.device_arrays

  def spy(split, targets, mesh, **kwargs):
    seen.append({k: np.asarray(v) for k, v in targets.items()})
    return device_arrays(split, targets, mesh, **kwargs)

  monkeypatch.setattr(train, 'device_arrays', spy)
  return seen


@pytest.mark.parametrize('clears_global', [True, False])
def test_final_stage_trains_on_the_drop_masks(tmp_path, monkeypatch, clears_global):
  """Stage 1 trains on the weak labels, stage 3 on exactly the targets of docs/spec.md section 4
  from the saved masks (random here, and different per modality, so that a swap of the two
  would show)."""
  config = _tiny_config(**{'refine.audio_drop_clears_global': clears_global})
  splits = load_splits(config.data)
  y = splits['train'].labels
  rng = np.random.default_rng(0)
  drop_a, drop_v = ((y > 0) & (rng.random(y.shape) < 0.5) for _ in range(2))
  assert drop_a.sum() and drop_v.sum() and (drop_a != drop_v).any()
  checkpoints.save_refined(str(tmp_path), {'drop_a': drop_a[None], 'drop_v': drop_v[None],
                                  'partners': np.zeros((1, len(y), 1), np.int64)}, {'labels': 0})
  seen = _spy_training_targets(monkeypatch)
  pipeline.run(config, str(tmp_path))  # Stage 2 finds the masks saved: not redone.
  # Stage 2 places its inputs with no targets; the training stages those of one seed.
  base, final = [{k: v[0] for k, v in t.items()} for t in seen if t]
  np.testing.assert_array_equal(base['y_a'], y)
  np.testing.assert_array_equal(base['y_global'], y)
  np.testing.assert_allclose(base['y_v'], 0.9 * y + 0.05)
  np.testing.assert_array_equal(final['y_a'], np.where(drop_a, 0, y))
  np.testing.assert_allclose(final['y_v'], np.where(drop_v, 0, 0.9 * y + 0.05))
  np.testing.assert_array_equal(final['y_global'], np.where(drop_a, 0, y) if clears_global else y)


def test_each_seeds_best_val_epoch_is_saved_and_feeds_the_refinement(tmp_path, monkeypatch):
  """Two seeds, validation scores set per epoch: seed 0 scores 40, 60, 50 (best: epoch 2),
  seed 1 scores 70, 30, 80 (best: epoch 3); each seed's best is kept, not the last epoch's."""
  config = _tiny_config(**{'train.epochs': 3, 'train.base_selection': 'best_val',
                           'num_seeds': 2})
  splits = load_splits(config.data)
  scores = iter([(40.0, 70.0), (60.0, 30.0), (50.0, 80.0)])
  evaluate_split = train.evaluate_split

  def scripted_val(model, params, split, batch_size, seeds=False, clip_filter='modality'):
    out = evaluate_split(model, params, split, batch_size, seeds, clip_filter)
    if split is splits['val']:
      for evaluation, score in zip(out, next(scores)):
        evaluation['results']['segment/type'] = score
    return out

  fed, saved = [], {}
  refine_targets = refine.refine_targets

  def spy(model, params, *args, **kwargs):
    fed.append(params)
    return refine_targets(model, params, *args, **kwargs)

  save = checkpoints.StageCheckpoints.save

  def keep(self, epoch, state, meta):
    saved[epoch] = jax.tree.map(np.asarray, state.params)
    return save(self, epoch, state, meta)

  monkeypatch.setattr(train, 'evaluate_split', scripted_val)
  monkeypatch.setattr(refine, 'refine_targets', spy)
  monkeypatch.setattr(checkpoints.StageCheckpoints, 'save', keep)
  workdir = str(tmp_path)
  stages.train_stage(config, workdir, 'base', splits)
  assert checkpoints.checkpoint_epoch(workdir, 'base', 'best_val') == 3
  best = checkpoints.restore_params(workdir, 'base', 'best_val').params
  stages.refine_stage(config, workdir, splits)
  leaves = lambda tree: [np.asarray(x) for x in jax.tree.leaves(tree)]
  for got, want, seed0, seed1 in zip(leaves(fed[0]), leaves(best), leaves(saved[2]),
                                     leaves(saved[3])):
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(want[0], seed0[0])
    np.testing.assert_array_equal(want[1], seed1[1])
  assert any((a[0] != b[0]).any() for a, b in zip(leaves(best), leaves(saved[3])))


def test_nan_loss_stops_with_stage_epoch_and_step_and_closes_the_checkpoints(tmp_path,
                                                                             monkeypatch):
  config = _tiny_config(**{'train.epochs': 1})
  splits = load_splits(config.data)
  bad = splits['train'].audio.copy()
  bad[:] = np.nan
  splits['train'] = Split(**{**splits['train'].__dict__, 'audio': bad})
  closed = []
  close = checkpoints.StageCheckpoints.close
  monkeypatch.setattr(checkpoints.StageCheckpoints, 'close',
                      lambda self: closed.append(close(self)))
  with pytest.raises(FloatingPointError, match=r"Stage 'base', seed 0, epoch 1, step 0 .*Last good "
                                               r"checkpoint: none"):
    stages.train_stage(config, str(tmp_path), 'base', splits)
  assert closed == [None]


def test_final_stage_without_refined_labels_is_a_clear_error(tmp_path):
  config = _tiny_config()
  with pytest.raises(FileNotFoundError, match='holds no refined labels: run stage 2'):
    stages.stage_targets(config, str(tmp_path), 'final',
                         load_splits(config.data)['train'].take(np.arange(4)), 1)


KILL_IN_STAGE_2 = """
import json, os, signal, sys
import orbax.checkpoint as ocp
from avvp_jax import pipeline, refine
from configs import ma
config = ma.get_config('cr')
config.update_from_flattened_dict(json.loads(sys.argv[1]))
when = sys.argv[3]
if when == 'compute':  # Killed while the swapped probabilities are computed.
  def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
  refine.swapped_probs = killed
if when in ('save', 'checkpoint'):  # Killed as refined labels / an epoch are being written.
  folder = 'refine' if when == 'save' else os.path.join('base', 'checkpoints')
  save = ocp.CheckpointManager.save
  def killed(self, *args, **kwargs):
    out = save(self, *args, **kwargs)
    if str(self.directory).endswith(folder):
      os.kill(os.getpid(), signal.SIGKILL)
    return out
  ocp.CheckpointManager.save = killed
pipeline.run(config, sys.argv[2])
"""


def _reports(workdir):
  return {stage: json.loads(open(wd.stage_paths(workdir, stage)['report']).read())
          for stage in wd.TRAINING_STAGES}


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """The workdir of an uninterrupted run of the tiny config."""
  workdir = str(tmp_path_factory.mktemp('straight') / 'run')
  pipeline.run(_tiny_config(), workdir)
  return workdir


@pytest.mark.parametrize('when', ['compute', 'save', 'checkpoint'])
def test_a_kill_during_stage_2_or_a_save_resumes_to_the_same_result(tmp_path, when, straight):
  config = _tiny_config()
  env = {**os.environ, 'PYTHONPATH': str(ROOT)}
  killed = str(tmp_path / 'killed')
  proc = subprocess.run([sys.executable, '-c', KILL_IN_STAGE_2, json.dumps(TINY), killed, when],
                        cwd=ROOT, env=env, capture_output=True, text=True)
  assert proc.returncode == -9, proc.stderr
  if when != 'checkpoint':
    assert os.path.exists(wd.stage_paths(killed, 'base')['report'])
  if when == 'compute':  # ('save': the cut save may or may not have committed; both resume.)
    assert checkpoints.load_refined(killed) is None
  pipeline.run(config, killed)
  assert _reports(killed) == _reports(straight)
  for key in ('drop_a', 'drop_v', 'partners'):
    np.testing.assert_array_equal(checkpoints.load_refined(killed)[key],
                                  checkpoints.load_refined(straight)[key])


def test_processes_that_loaded_different_data_are_refused(monkeypatch):
  """Two processes (simulated: the digests gathered as jax.distributed would) with the same
  config, whose data differs in one feature value of one test clip: refused, naming process
  1; the same data passes."""
  config = _tiny_config()
  splits = load_splits(config.data)
  audio = splits['test'].audio.copy()
  audio[0, 0, 0] += 1.0
  other = {**splits, 'test': dataclasses.replace(splits['test'], audio=audio)}
  monkeypatch.setattr(jax, 'process_count', lambda: 2)

  def digests_of(process_splits):  # What that process hands to each gather (config, data).
    handed = []
    monkeypatch.setattr(stages.multihost_utils, 'process_allgather',
                        lambda x: handed.append(np.asarray(x)) or np.stack([x, x]))
    stages.check_processes(config, process_splits)
    return handed

  for process_1, refused in ((other, True), (splits, False)):
    theirs = digests_of(process_1)
    monkeypatch.setattr(stages.multihost_utils, 'process_allgather',
                        lambda x: np.stack([np.asarray(x), theirs.pop(0)]))
    if refused:
      with pytest.raises(ValueError, match=r'The 2 processes of this run differ in their data: '
                                           r'processes \[1\] against process 0'):
        stages.check_processes(config, splits)
    else:
      stages.check_processes(config, splits)
