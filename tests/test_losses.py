"""Losses vs independent float64 NumPy computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avvp_jax import losses

# The clip bounds as float32 rounds them (prob is float32).
LO = float(np.float32(1e-7))
HI = float(np.float32(1 - 1e-7))


def np_bce(prob, target):
  p = np.clip(np.asarray(prob, np.float64), LO, HI)
  t = np.asarray(target, np.float64)
  return -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))


def np_bce_grad(prob, target):
  """d bce / d prob; 0 where the clip is active."""
  p = np.asarray(prob, np.float64)
  t = np.asarray(target, np.float64)
  inside = (p > LO) & (p < HI)
  pc = np.clip(p, LO, HI)
  return np.where(inside, -(t / pc - (1 - t) / (1 - pc)) / p.size, 0.0)


def np_log_softmax(x, axis=-1):
  m = x.max(axis=axis, keepdims=True)
  return x - m - np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def np_contrastive(h_a, v, tau, ls):
  h_a = np.asarray(h_a, np.float64)
  v = np.asarray(v, np.float64)
  z_a = h_a / np.linalg.norm(h_a, axis=-1, keepdims=True)
  z_v = v / np.linalg.norm(v, axis=-1, keepdims=True)
  logits = np.einsum('btd,bsd->bts', z_a, z_v) / tau
  t = logits.shape[-1]
  target = np.full((t, t), ls / (t - 1))
  np.fill_diagonal(target, 1 - ls)
  return -np.mean(np.sum(target * np_log_softmax(logits), axis=-1))


# BCE.

BCE_PROB = np.array([
    [0.0, 1.0, 0.3, 0.8, 5e-8, 0.02, 0.999, 0.5],
    [1.0, 0.0, 0.6, 1e-3, 0.9999, 0.25, 1e-12, 0.1],
], np.float32)
BCE_TARGET = np.array([
    [0.05, 0.95, 0.0, 1.0, 0.05, 0.95, 0.05, 1.0],
    [0.05, 0.95, 1.0, 0.0, 0.95, 0.05, 0.0, 0.95],
], np.float32)


def test_bce_value_with_clipping():
  loss = losses.bce(jnp.asarray(BCE_PROB), jnp.asarray(BCE_TARGET))
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, np_bce(BCE_PROB, BCE_TARGET), rtol=1e-6)


def test_bce_gradient_is_analytic_and_zero_where_clipped():
  grad = jax.grad(losses.bce)(jnp.asarray(BCE_PROB), jnp.asarray(BCE_TARGET))
  expected = np_bce_grad(BCE_PROB, BCE_TARGET)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)
  clipped = (BCE_PROB <= LO) | (BCE_PROB >= HI)
  assert clipped.sum() == 6  # 0 and 1 twice each, 5e-8, 1e-12.
  assert np.all(np.asarray(grad)[clipped] == 0)
  assert np.all(np.asarray(grad)[~clipped] != 0)


def test_bce_random_and_bf16_input_gives_float32():
  rng = np.random.default_rng(0)
  prob = rng.uniform(size=(4, 25)).astype(np.float32)
  target = rng.integers(0, 2, size=(4, 25)).astype(np.float32)
  np.testing.assert_allclose(
      losses.bce(prob, target), np_bce(prob, target), rtol=1e-6)
  loss = losses.bce(jnp.asarray(prob, jnp.bfloat16), target)
  assert loss.dtype == jnp.float32


def test_mil_loss_is_sum_of_three_bce():
  rng = np.random.default_rng(1)
  out = {k: rng.uniform(size=(3, 25)).astype(np.float32)
         for k in ('global_prob', 'a_prob', 'v_prob')}
  y, y_a, y_v = (rng.uniform(size=(3, 25)).astype(np.float32) for _ in range(3))
  total, parts = losses.mil_loss(out, y, y_a, y_v)
  expected = {
      'global': np_bce(out['global_prob'], y),
      'audio': np_bce(out['a_prob'], y_a),
      'visual': np_bce(out['v_prob'], y_v),
  }
  assert set(parts) == set(expected)
  for k in expected:
    np.testing.assert_allclose(parts[k], expected[k], rtol=1e-6)
  np.testing.assert_allclose(total, sum(expected.values()), rtol=1e-6)


# MIL targets.


def _labels(seed):
  rng = np.random.default_rng(seed)
  y = (rng.uniform(size=(4, 25)) < 0.3).astype(np.float32)
  y[:, 0] = 1.0  # Every clip has a label to drop.
  drop_a = (y > 0) & (rng.uniform(size=y.shape) < 0.5)
  drop_v = (y > 0) & (rng.uniform(size=y.shape) < 0.5)
  drop_a[0, 0], drop_v[0, 0] = True, False
  drop_a[1, 0], drop_v[1, 0] = False, True
  return y, drop_a, drop_v


def test_mil_targets_defaults():
  y, _, _ = _labels(2)
  y_global, y_a, y_v = losses.mil_targets(y)
  np.testing.assert_array_equal(y_global, y)
  np.testing.assert_array_equal(y_a, y)
  np.testing.assert_allclose(y_v, 0.9 * y + 0.05, rtol=0, atol=1e-7)


@pytest.mark.parametrize('clears_global', [True, False])
def test_mil_targets_with_refinement(clears_global):
  y, drop_a, drop_v = _labels(3)
  y_global, y_a, y_v = losses.mil_targets(
      y, drop_a, drop_v, visual_label_smoothing=0.1,
      audio_drop_clears_global=clears_global)
  expected_a = np.where(drop_a, 0.0, y)
  expected_v = np.where(drop_v, 0.0, 0.9 * y + 0.05)
  expected_global = expected_a if clears_global else y
  np.testing.assert_array_equal(y_a, expected_a)
  np.testing.assert_allclose(y_v, expected_v, rtol=0, atol=1e-7)
  np.testing.assert_array_equal(y_global, expected_global)
  # Dropped labels are exactly 0, not the smoothed 0.05.
  assert np.all(np.asarray(y_v)[drop_v] == 0)
  assert np.all(np.asarray(y_a)[drop_a] == 0)


def test_mil_targets_visual_drop_never_touches_global():
  y, _, drop_v = _labels(4)
  y_global, y_a, _ = losses.mil_targets(y, None, drop_v)
  np.testing.assert_array_equal(y_global, y)
  np.testing.assert_array_equal(y_a, y)


# Contrastive loss.


@pytest.mark.parametrize('tau', [0.1, 0.2])
def test_contrastive_closed_form_orthonormal(tau):
  rng = np.random.default_rng(5)
  q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
  z = q[:10]  # 10 orthonormal rows: logits are 1/tau on the diagonal, else 0.
  # Random positive norms: the loss must normalise them away.
  h_a = z[None] * rng.uniform(0.5, 3.0, size=(2, 10, 1))
  v = z[None] * rng.uniform(0.5, 3.0, size=(2, 10, 1))
  lse = np.log(np.exp(1 / tau) + 9)
  expected = -(0.9 * (1 / tau - lse) + 0.1 / 9 * np.sum(np.full(9, 0 - lse)))
  loss = losses.contrastive_loss(
      h_a.astype(np.float32), v.astype(np.float32), tau=tau,
      label_smoothing=0.1)
  np.testing.assert_allclose(loss, expected, rtol=1e-6)


@pytest.mark.parametrize('tau,ls', [(0.2, 0.1), (0.1, 0.0), (0.4, 0.3)])
def test_contrastive_matches_numpy(tau, ls):
  rng = np.random.default_rng(6)
  h_a = rng.normal(size=(3, 10, 8)).astype(np.float32)
  v = rng.normal(size=(3, 10, 8)).astype(np.float32)
  loss = losses.contrastive_loss(h_a, v, tau=tau, label_smoothing=ls)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, np_contrastive(h_a, v, tau, ls), rtol=1e-5)


def test_contrastive_gradient_vs_finite_differences():
  rng = np.random.default_rng(7)
  h_a = rng.normal(size=(2, 4, 3))
  v = rng.normal(size=(2, 4, 3))
  with jax.enable_x64(True):
    grad_a, grad_v = jax.grad(losses.contrastive_loss, argnums=(0, 1))(
        jnp.asarray(h_a, jnp.float64), jnp.asarray(v, jnp.float64))
    assert grad_a.dtype == jnp.float64
  step = 1e-6
  for x, grad, f in (
      (h_a, grad_a, lambda x: np_contrastive(x, v, 0.2, 0.1)),
      (v, grad_v, lambda x: np_contrastive(h_a, x, 0.2, 0.1))):
    fd = np.zeros_like(x)
    for i in np.ndindex(x.shape):
      e = np.zeros_like(x)
      e[i] = step
      fd[i] = (f(x + e) - f(x - e)) / (2 * step)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_contrastive_bf16_input_and_zero_vector():
  rng = np.random.default_rng(8)
  h_a = rng.normal(size=(2, 10, 8)).astype(np.float32)
  v = rng.normal(size=(2, 10, 8)).astype(np.float32)
  loss = losses.contrastive_loss(
      jnp.asarray(h_a, jnp.bfloat16), jnp.asarray(v, jnp.bfloat16))
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, np_contrastive(h_a, v, 0.2, 0.1), rtol=2e-2)
  # An all-zero feature vector must not produce NaN gradients.
  h_a[0, 3] = 0.0
  grads = jax.grad(losses.contrastive_loss, argnums=(0, 1))(h_a, v)
  assert all(np.all(np.isfinite(g)) for g in grads)


def np_bce_with_logits(logits, target):
  x, z = np.asarray(logits, np.float64), np.asarray(target, np.float64)
  p = 1 / (1 + np.exp(-x))
  return -np.mean(z * np.log(p) + (1 - z) * np.log(1 - p))


def test_pseudo_label_loss_is_valors_video_bce_plus_segment_bce_on_the_frame_logits():
  """Against plain NumPy: BCE(global_prob, y) + BCE(sigmoid(frame_logits[:, :, m]), pl_m)
  for audio and visual, soft targets included."""
  rng = np.random.default_rng(0)
  out = {'global_prob': rng.uniform(0, 1, (4, 25)).astype(np.float32),
         'frame_logits': rng.normal(0, 3, (4, 10, 2, 25)).astype(np.float32)}
  targets = {'y_global': (rng.uniform(size=(4, 25)) < 0.2).astype(np.float32),
             'pl_a': (rng.uniform(size=(4, 10, 25)) < 0.3).astype(np.float32),
             'pl_v': rng.uniform(0, 1, (4, 10, 25)).astype(np.float32)}
  total, parts = losses.pseudo_label_loss(out, targets)
  want = {'global': np_bce(out['global_prob'], targets['y_global']),
          'audio': np_bce_with_logits(out['frame_logits'][:, :, 0], targets['pl_a']),
          'visual': np_bce_with_logits(out['frame_logits'][:, :, 1], targets['pl_v'])}
  for k, v in want.items():
    np.testing.assert_allclose(parts[k], v, rtol=1e-5, err_msg=k)
  np.testing.assert_allclose(total, sum(want.values()), rtol=1e-5)


def test_bce_with_logits_stays_finite_where_the_sigmoid_saturates():
  x = jnp.array([-200.0, -30.0, 0.0, 30.0, 200.0])
  z = jnp.array([1.0, 1.0, 0.5, 0.0, 0.0])
  value = losses.bce_with_logits(x, z)
  want = np.mean([200.0, 30.0, np.log(2.0), 30.0, 200.0])
  np.testing.assert_allclose(value, want, rtol=1e-5)
  assert np.isfinite(jax.grad(lambda x: losses.bce_with_logits(x, z))(x)).all()


def test_smoothed_nce_is_jomolds_log_of_the_target_mass_not_the_cross_entropy():
  """-log sum_t' q[t'] softmax(z_a[t] . z_v[t'] / tau), as JoMoLD's LabelSmoothingNCELoss;
  differs from `contrastive_loss` (sum q log p) on the same inputs."""
  rng = np.random.default_rng(3)
  h_a = rng.normal(size=(2, 10, 8))
  h_v = rng.normal(size=(2, 10, 8))
  z_a = h_a / np.linalg.norm(h_a, axis=-1, keepdims=True)
  z_v = h_v / np.linalg.norm(h_v, axis=-1, keepdims=True)
  logits = np.einsum('btd,bsd->bts', z_a, z_v) / 0.2
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  q = np.full((10, 10), 0.1 / 9) + np.eye(10) * (0.9 - 0.1 / 9)
  want = -np.mean(np.log((q * p).sum(-1)))
  got = losses.smoothed_nce_loss(jnp.asarray(h_a, jnp.float32), jnp.asarray(h_v, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert abs(float(losses.contrastive_loss(h_a, h_v)) - want) > 1e-2


def test_jomold_loss_weighs_its_four_terms():
  rng = np.random.default_rng(4)
  out = {k: rng.uniform(0.01, 0.99, (4, 25)).astype(np.float32)
         for k in ('global_prob', 'a_prob', 'v_prob')}
  out.update(h_a=rng.normal(size=(4, 10, 8)).astype(np.float32),
             h_v=rng.normal(size=(4, 10, 8)).astype(np.float32))
  y = (rng.uniform(size=(4, 25)) < 0.3).astype(np.float32)
  targets = {'y_global': y, 'y_a': y, 'y_v': 0.9 * y + 0.05}
  config = {'clip': 1e-7, 'tau': 0.2, 'nce_smoothing': 0.1, 'audio_weight': 2.0,
            'visual_weight': 1.0, 'video_weight': 0.5, 'nce_weight': 3.0, 'kind': 'jomold'}
  import ml_collections
  total, terms = losses.total_loss(out, targets, ml_collections.ConfigDict(config))
  want = (2.0 * np_bce(out['a_prob'], y) + np_bce(out['v_prob'], 0.9 * y + 0.05)
          + 0.5 * np_bce(out['global_prob'], y)
          + 3.0 * float(losses.smoothed_nce_loss(out['h_a'], out['h_v'])))
  np.testing.assert_allclose(total, want, rtol=1e-5)
  np.testing.assert_allclose(terms['total'], want, rtol=1e-5)
