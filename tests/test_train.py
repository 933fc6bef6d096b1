"""One training stage: batches, schedule, a real learning signal, prediction, NaN handling."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from avvp_jax import placement, train
from avvp_jax.data import synthetic
from configs import ma


def _small_config(**train_overrides):
  config = ma.get_config('c')
  config.model.d_model = 64
  config.model.ffn_dim = 64
  config.train.update(train_overrides)
  return config


def test_epoch_batches_cover_every_clip_with_one_shape():
  rng = jax.random.key(0, impl=train.RNG_IMPL)
  batches = np.asarray(train.epoch_batches(rng, 50, 16))
  assert batches.shape == (4, 16)  # ceil(50 / 16) steps, as PyTorch's DataLoader.
  assert set(batches.ravel()) == set(range(50))
  np.testing.assert_array_equal(batches, train.epoch_batches(rng, 50, 16))
  other = train.epoch_batches(jax.random.fold_in(rng, 1), 50, 16)
  assert not np.array_equal(batches, other)


def test_paper_schedule_divides_lr_by_ten_every_ten_epochs():
  tc = ma.get_config('paper').train
  schedule = train.make_schedule(tc, num_clips=160)  # 10 steps per epoch
  assert float(schedule(0)) == pytest.approx(3e-4)
  assert float(schedule(99)) == pytest.approx(3e-4)
  assert float(schedule(100)) == pytest.approx(3e-5)
  assert float(schedule(399)) == pytest.approx(3e-7)


def test_targets_default_and_refined():
  labels = np.zeros((2, 25), np.float32)
  labels[0, [0, 3]] = 1
  loss_config = ma.get_config().loss
  t = train.targets_from_labels(labels, loss_config)
  np.testing.assert_array_equal(t['y_global'], labels)
  np.testing.assert_allclose(t['y_v'], 0.9 * labels + 0.05)
  drop = np.zeros((2, 25), bool)
  drop[0, 3] = True
  t = train.targets_from_labels(labels, loss_config, drop_a=drop, drop_v=drop)
  assert t['y_a'][0, 3] == 0 and t['y_v'][0, 3] == 0 and t['y_global'][0, 3] == 0
  assert t['y_v'][0, 0] == pytest.approx(0.95) and t['y_v'][1, 0] == pytest.approx(0.05)


def _clip_f1(prob, labels):
  pred, truth = prob >= 0.5, labels > 0
  tp = (pred & truth).sum()
  return 2 * tp / (pred.sum() + truth.sum())


def _training(config, split):
  """(model, schedule, tx, train_steps, data): a stage's training setup on `split`."""
  model = train.HAN.from_config(config.model)
  mesh = placement.make_mesh()
  schedule, tx, train_steps = train.make_training(
      model, ml_collections.FrozenConfigDict(config.train),
      ml_collections.FrozenConfigDict(config.loss), len(split), mesh)
  data = train.device_arrays(split, train.targets_from_labels(split.labels, config.loss), mesh)
  return model, schedule, tx, train_steps, data


def test_short_training_run_learns_a_real_signal():
  """A few hundred steps lower the loss and lift clip-level F far above chance."""
  # 300 steps with the lr step every 10 epochs (the paper's), as this test was sized for.
  config = _small_config(batch_size=16, lr_decay_every=10)
  train_split = synthetic.generate_split(320, 0, 'train')
  test_split = synthetic.generate_split(200, 0, 'test')
  model, schedule, tx, train_steps, data = _training(config, train_split)
  rng = jax.random.key(0, impl=train.RNG_IMPL)
  state = train.create_train_state(model, tx, rng)
  before = train.predict(model, state.params, test_split, 128)
  losses = []
  for epoch in range(15):  # 15 x 20 = 300 steps
    # 20 steps per epoch, at most 8 per call: 3 calls of 7, the last with one skipped row.
    state, terms = train.train_epoch(state, train_steps, data, jax.random.fold_in(rng, epoch),
                                     batch_size=16, steps_per_call=8, lr_fn=schedule,
                                     desc='test')
    assert terms['total'].shape == (20,) and np.all(terms['total'] > 0)
    losses.append(terms['global'].mean() + terms['audio'].mean() + terms['visual'].mean())
  after = train.predict(model, state.params, test_split, 128)
  assert int(state.step) == 300
  assert losses[-1] < 0.6 * losses[0]  # MIL terms
  # Chance: each class predicted independently at its own frequency.
  freq = train_split.labels.mean(0)
  chance = _clip_f1(np.random.default_rng(0).random(test_split.labels.shape) < freq,
                    test_split.labels)
  f_before = _clip_f1(before['global_prob'], test_split.labels)
  f_after = _clip_f1(after['global_prob'], test_split.labels)
  assert f_after > 2 * chance and f_after > f_before + 0.2, (chance, f_before, f_after)


def test_steps_per_call_does_not_change_the_epoch():
  """An epoch of 3 steps in one call and in calls of 2 (the last padded with a skipped row)
  give one result: the same batches and dropout keys, and padding that leaves the state be."""
  config = _small_config()
  model, schedule, tx, train_steps, data = _training(
      config, synthetic.generate_split(48, 0, 'train'))
  rng = jax.random.key(0, impl=train.RNG_IMPL)
  start = train.create_train_state(model, tx, rng)
  results = []
  for per_call in (3, 2):
    state = jax.tree.map(jnp.copy, start)  # train_steps donates the state it is given.
    results.append(train.train_epoch(state, train_steps, data, jax.random.fold_in(rng, 1),
                                     batch_size=16, steps_per_call=per_call, lr_fn=schedule,
                                     desc='test'))
  (want_state, want_terms), (state, terms) = results
  assert int(want_state.step) == 3 and want_terms['total'].shape == (3,)
  assert int(state.step) == 3
  np.testing.assert_allclose(terms['total'], want_terms['total'], rtol=1e-5)
  for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(want_state.params)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_predict_pads_the_last_batch_without_changing_outputs():
  config = _small_config()
  split = synthetic.generate_split(7, 0, 'val')
  model = train.HAN.from_config(config.model)
  params = model.init(jax.random.key(0), split.audio[:1], split.video_2d[:1], split.video_3d[:1],
                      train=False)['params']
  got = train.predict(model, params, split, batch_size=4)
  want = model.apply({'params': params}, split.audio, split.video_2d, split.video_3d, train=False)
  assert got['frame_prob'].shape == (7, 10, 2, 25)
  for k in got:
    np.testing.assert_allclose(got[k], want[k], atol=1e-6)


def test_states_of_several_models_are_each_one_models_init_bit_for_bit():
  config = _small_config()
  model = train.HAN.from_config(config.model)
  tx = train.make_optimizer(config.train, 1e-3)
  keys = [jax.random.key(s, impl=train.RNG_IMPL) for s in (3, 7)]
  stacked = train.create_train_states(model, tx, jnp.stack(keys))
  for m, key in enumerate(keys):
    one = train.create_train_state(model, tx, key)
    for got, want in zip(jax.tree.leaves(stacked), jax.tree.leaves(one)):
      np.testing.assert_array_equal(np.asarray(got)[m], np.asarray(want))


def test_the_forward_pass_compiles_once_per_batch_size_not_per_split_size():
  config = _small_config()
  model = train.HAN.from_config(config.model)
  tx = train.make_optimizer(config.train, 1e-3)
  params = train.create_train_states(model, tx, jnp.stack([jax.random.key(5)])).params
  before = train._forward_seeds._cache_size()  # pylint: disable=protected-access
  for n in (40, 70):
    train.predict(model, params, synthetic.generate_split(n, 0, 'val'), 32, seeds=True)
  assert train._forward_seeds._cache_size() == before + 1  # pylint: disable=protected-access


def _one_epoch(config, num_clips=48):
  """(initial params, state, terms) of one epoch on `num_clips` synthetic clips from a seeded
  init."""
  model, schedule, tx, train_steps, data = _training(
      config, synthetic.generate_split(num_clips, 0, 'train'))
  rng = jax.random.key(0, impl=train.RNG_IMPL)
  state = train.create_train_state(model, tx, rng)
  start = jax.tree.map(np.asarray, state.params)  # train_steps donates the state.
  return start, *train.train_epoch(state, train_steps, data, jax.random.fold_in(rng, 1),
                           batch_size=config.train.batch_size, steps_per_call=25,
                           lr_fn=schedule, desc='test')


def test_bfloat16_steps_keep_float32_parameters_and_losses():
  """bf16 compute: parameters, optimiser state and loss stay float32, and the steps follow
  the float32 run to bf16 precision (3 significant digits, over 3 steps)."""
  start, want_state, want = _one_epoch(_small_config())
  config = _small_config()
  config.model.dtype = 'bfloat16'
  _, state, terms = _one_epoch(config)
  for leaf in jax.tree.leaves((state.params, state.opt_state)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  assert all(v.dtype == np.float32 for v in terms.values())
  assert np.isfinite(terms['total']).all()
  np.testing.assert_allclose(terms['total'], want['total'], rtol=2e-2)
  moved = lambda s: np.concatenate([np.ravel(p - q) for p, q in zip(
      jax.tree.leaves(s.params), jax.tree.leaves(start))])
  a, b = moved(state), moved(want_state)
  assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.9  # The same direction of travel.


UNEVEN_BATCH_SCRIPT = """
import json, sys
import jax
import numpy as np
sys.path.insert(0, sys.argv[1])
from tests import test_train
config = test_train._small_config(batch_size=5)
_, state, terms = test_train._one_epoch(config, num_clips=23)
print(json.dumps({'devices': jax.device_count(), 'total': terms['total'].tolist()}))
"""


def test_a_batch_that_the_devices_do_not_divide_gives_the_one_device_steps():
  """Batch 5 on 2 (simulated) devices: XLA places the uneven shards; nothing is dropped."""
  root = str(pathlib.Path(__file__).resolve().parents[1])
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2'}
  proc = subprocess.run([sys.executable, '-c', UNEVEN_BATCH_SCRIPT, root], cwd=root, env=env,
                        check=True, capture_output=True, text=True)
  two = json.loads(proc.stdout.strip().splitlines()[-1])
  assert two['devices'] == 2
  _, _, terms = _one_epoch(_small_config(batch_size=5), num_clips=23)
  assert len(two['total']) == 5  # ceil(23 / 5) steps.
  np.testing.assert_allclose(two['total'], terms['total'], rtol=1e-5)


def test_seeds_in_one_program_train_as_separate_runs():
  """Two models vmapped in one program follow, each, the run of one model with its key:
  the same permutations, dropout keys, losses and parameters."""
  config = _small_config()
  split = synthetic.generate_split(48, 0, 'train')
  model = train.HAN.from_config(config.model)
  mesh = placement.make_mesh()
  frozen = (ml_collections.FrozenConfigDict(config.train),
            ml_collections.FrozenConfigDict(config.loss))
  targets = train.targets_from_labels(split.labels, config.loss)
  keys = [jax.random.key(s, impl=train.RNG_IMPL) for s in (3, 7)]
  single = []
  schedule, tx, train_steps = train.make_training(model, *frozen, len(split), mesh)
  data = train.device_arrays(split, targets, mesh)
  for key in keys:
    state = train.create_train_state(model, tx, key)
    single.append(train.train_epoch(state, train_steps, data, jax.random.fold_in(key, 1),
                                    batch_size=16, steps_per_call=2, lr_fn=schedule,
                                    desc='test'))
  _, _, seeds_steps = train.make_training(model, *frozen, len(split), mesh, seeds=True)
  keys_m = jnp.stack(keys)
  state = train.create_train_states(model, tx, keys_m)
  data_m = train.device_arrays(split, {k: np.stack([v, v]) for k, v in targets.items()}, mesh)
  state, terms = train.train_epoch(state, seeds_steps, data_m,
                                   jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys_m),
                                   batch_size=16, steps_per_call=2, lr_fn=schedule, desc='test')
  assert terms['total'].shape == (2, 3) and state.step.tolist() == [3, 3]
  for m, (want_state, want_terms) in enumerate(single):
    np.testing.assert_allclose(terms['total'][m], want_terms['total'], rtol=1e-6)
    # Not bit-identical: a vmapped matrix product sums in another order (float32 noise in
    # the gradients), and Adam moves a parameter whose gradient is ~0 by ~lr either way; so
    # a parameter may differ by at most 2 lr per step, while the losses agree to 1e-6.
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(want_state.params)):
      np.testing.assert_allclose(got[m], want, atol=2 * config.train.lr * 3)
  assert not np.allclose(terms['total'][0], terms['total'][1])


def test_seeds_are_placed_evenly_on_the_devices_or_refused():
  assert [placement.seed_devices(s, 4) for s in (1, 2, 4, 8, 12)] == [1, 2, 4, 4, 4]
  assert [placement.seed_devices(s, 1) for s in (1, 3, 5)] == [1, 1, 1]
  with pytest.raises(ValueError, match=r'num_seeds = 3 cannot be placed on 4 devices.*'
                                       r'\[1, 2, 4, 8, 16\]'):
    placement.seed_devices(3, 4)
  with pytest.raises(ValueError, match='num_seeds must be at least 1, not 0'):
    placement.seed_devices(0, 4)


def test_over_seeds_of_one_model_is_the_function_itself():
  """One seed runs `fn` on unstacked arguments (no vmap), several a vmap; shared arguments
  and dict axes are passed as they are."""
  calls = []

  def fn(w, data, x):
    calls.append((w.ndim, isinstance(w, jax.core.Tracer)))
    return {'y': w * data['scale'] + data['shift'] + x}

  data = {'scale': jnp.array([[2.0, 3.0]]), 'shift': jnp.array(1.0)}
  stacked = train.over_seeds(fn, (0, {'scale': 0, 'shift': None}, None))
  out = stacked(jnp.array([[1.0, 2.0]]), data, jnp.array(10.0))
  np.testing.assert_array_equal(out['y'], [[13.0, 17.0]])
  data2 = {'scale': jnp.array([[2.0, 3.0], [4.0, 5.0]]), 'shift': jnp.array(1.0)}
  out = stacked(jnp.array([[1.0, 2.0], [1.0, 1.0]]), data2, jnp.array(10.0))
  np.testing.assert_array_equal(out['y'], [[13.0, 17.0], [15.0, 16.0]])
  # Unstacked (1-D) both times: once called directly on arrays, once traced by vmap.
  assert calls == [(1, False), (1, True)]
