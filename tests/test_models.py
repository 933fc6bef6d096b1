"""HAN vs an independent float64 NumPy forward, plus jit/vmap/dropout/bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avvp_jax.models import HAN
from avvp_jax.models import Dropout
from avvp_jax.models import HybridAttentionLayer
from avvp_jax.models import count_params
from avvp_jax.models import mmil_pool
from configs import ma

B, T, C = 3, 10, 25
# Small sizes; two heads so the per-head slicing is exercised too.
SMALL = dict(d_model=32, num_heads=2, ffn_dim=48, dropout=0.1, num_classes=C,
             audio_dim=12, video_2d_dim=24, video_3d_dim=20)
OUTPUT_KEYS = {'global_prob', 'a_prob', 'v_prob', 'frame_logits', 'frame_prob', 'frame_att',
               'av_att', 'h_a', 'h_v', 'v'}


# Float64 NumPy reference of docs/spec.md section 2.


def np_dense(p, x):
  return x @ p['kernel'] + p['bias']


def np_layer_norm(p, x, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def np_softmax(x, axis):
  e = np.exp(x - x.max(axis=axis, keepdims=True))
  return e / e.sum(axis=axis, keepdims=True)


def np_sigmoid(x):
  return 1 / (1 + np.exp(-x))


def np_mha(p, query, key, value, num_heads):
  q, k, v = (np_dense(p[n], x) for n, x in
             (('query', query), ('key', key), ('value', value)))
  d_head = q.shape[-1] // num_heads
  heads = []
  for h in range(num_heads):
    sl = slice(h * d_head, (h + 1) * d_head)
    scores = q[..., sl] @ np.swapaxes(k[..., sl], -1, -2) / np.sqrt(d_head)
    heads.append(np_softmax(scores, -1) @ v[..., sl])
  return np_dense(p['out'], np.concatenate(heads, -1))


def np_han_layer(p, q, o, num_heads, cross_modal=True):
  cross = np_mha(p['cross_attn'], q, o, o, num_heads) if cross_modal else 0.0
  y = np_layer_norm(p['norm1'], q + cross + np_mha(p['self_attn'], q, q, q, num_heads))
  f = np_dense(p['linear2'], np.maximum(np_dense(p['linear1'], y), 0))
  return np_layer_norm(p['norm2'], y + f)


def np_mmil(frame_logits, frame_att_logits, av_att_logits):
  frame_prob = np_sigmoid(frame_logits)
  frame_att = np_softmax(frame_att_logits, 1)  # (B, T, 2, C): over T.
  av_att = np_softmax(av_att_logits, 2)  # Over the modalities.
  temporal = frame_att * frame_prob
  return {
      'frame_logits': frame_logits,
      'global_prob': (temporal * av_att).sum((1, 2)),
      'a_prob': temporal[:, :, 0].sum(1),
      'v_prob': temporal[:, :, 1].sum(1),
      'frame_prob': frame_prob,
      'frame_att': frame_att,
      'av_att': av_att,
  }


def np_han(p, audio, video_2d, video_3d, num_heads, cross_modal=True, sequential=False):
  """Separate h_a and h_v calls, frame-level fc_v then the mean over 8."""
  a = np_dense(p['fc_a'], audio)
  v2d = np_dense(p['fc_v'], video_2d)
  if v2d.shape[1] != audio.shape[1]:
    v2d = v2d.reshape(v2d.shape[0], audio.shape[1], -1, v2d.shape[-1]).mean(2)
  s = np_dense(p['fc_st'], video_3d)
  v = np_dense(p['fc_fusion'], np.concatenate([v2d, s], -1))
  h_a = np_han_layer(p['han_layer'], a, v, num_heads, cross_modal)
  h_v = np_han_layer(p['han_layer'], v, h_a if sequential else a, num_heads, cross_modal)
  x = np.stack([h_a, h_v], 2)
  out = np_mmil(np_dense(p['fc_prob'], x), np_dense(p['fc_frame_att'], x),
                np_dense(p['fc_av_att'], x))
  out.update(h_a=h_a, h_v=h_v, v=v)
  return out


def to_f64(tree):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def assert_outputs_close(actual, expected, rtol, atol):
  assert set(actual) == set(expected)
  for k in expected:
    np.testing.assert_allclose(actual[k], expected[k], rtol=rtol, atol=atol,
                               err_msg=k)


# Fixtures.


def make_inputs(seed, batch=B, sizes=SMALL):
  rng = np.random.default_rng(seed)
  audio = rng.normal(size=(batch, T, sizes['audio_dim']))
  frames = rng.normal(size=(batch, 8 * T, sizes['video_2d_dim']))
  video_3d = rng.normal(size=(batch, T, sizes['video_3d_dim']))
  return tuple(x.astype(np.float32) for x in (audio, frames, video_3d))


@pytest.fixture(scope='module')
def model():
  return HAN(**SMALL)


@pytest.fixture(scope='module')
def inputs():
  return make_inputs(0)


@pytest.fixture(scope='module')
def params(model, inputs):
  return model.init(jax.random.key(0), *inputs, train=False)


@pytest.fixture(scope='module')
def eval_out(model, params, inputs):
  return model.apply(params, *inputs, train=False)


# Tests.


def test_mmil_pool_matches_numpy_on_random_logits():
  rng = np.random.default_rng(1)
  logits = [3 * rng.normal(size=(B, T, 2, C)) for _ in range(3)]
  out = mmil_pool(*(x.astype(np.float32) for x in logits))
  expected = np_mmil(*logits)
  assert_outputs_close(out, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out['frame_att'].sum(1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(out['av_att'].sum(2), 1.0, rtol=1e-5)
  for k in ('a_prob', 'v_prob'):
    assert out[k].shape == (B, C)
    assert np.all((out[k] >= 0) & (out[k] <= 1)), k
  # global_prob is bounded by 2, not 1: each modality's frame_att sums to 1
  # over T, and av_att can pick a different segment for each modality.
  assert np.all((out['global_prob'] >= 0) & (out['global_prob'] <= 2))
  assert np.any(out['global_prob'] > 1)


def test_global_prob_reaches_two():
  big = 20.0
  frame_logits = np.full((1, 2, 2, 1), big)  # (B, T=2, 2, C=1): prob ~ 1.
  # Audio attends segment 0 and visual segment 1, in time and across modality.
  att = np.array([[big, -big], [-big, big]]).reshape(1, 2, 2, 1)
  out = mmil_pool(frame_logits, att, att)
  np.testing.assert_allclose(out['global_prob'], 2.0, rtol=1e-6)
  np.testing.assert_allclose(out['a_prob'], 1.0, rtol=1e-6)
  np.testing.assert_allclose(out['v_prob'], 1.0, rtol=1e-6)


def test_hybrid_attention_layer_matches_numpy(params):
  rng = np.random.default_rng(2)
  q = rng.normal(size=(B, T, 32)).astype(np.float32)
  o = rng.normal(size=(B, 7, 32)).astype(np.float32)  # Other length T' = 7.
  layer = HybridAttentionLayer(num_heads=2, ffn_dim=48, dropout=0.1)
  layer_params = params['params']['han_layer']
  h = layer.apply({'params': layer_params}, q, o, train=False)
  expected = np_han_layer(to_f64(layer_params), q.astype(np.float64),
                          o.astype(np.float64), num_heads=2)
  assert h.shape == (B, T, 32)
  np.testing.assert_allclose(h, expected, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize('cross_modal, sequential', [(False, False), (True, True),
                                                      (False, True)])
def test_the_variants_of_jomold_and_valor_match_numpy(params, inputs, cross_modal, sequential):
  """JoMoLD's forward without cross-modal attention, and VALOR's encoder in which the visual
  stream attends to the audio stream after the layer, on the same parameters."""
  net = HAN(**SMALL, sequential=sequential)
  out = net.apply(params, *inputs, train=False, cross_modal=cross_modal)
  expected = np_han(to_f64(params['params']), *(x.astype(np.float64) for x in inputs),
                    num_heads=2, cross_modal=cross_modal, sequential=sequential)
  assert_outputs_close(out, expected, rtol=1e-5, atol=2e-5)


def test_visual_dropout_drops_the_visual_stream_only_and_only_in_training(params, inputs):
  net = HAN(**SMALL, visual_dropout=0.5)
  plain = HAN(**SMALL).apply(params, *inputs, train=False)
  np.testing.assert_array_equal(net.apply(params, *inputs, train=False)['global_prob'],
                                plain['global_prob'])
  rngs = {'dropout': jax.random.key(1, impl='rbg')}
  dropped = HAN(**{**SMALL, 'dropout': 0.0}, visual_dropout=0.5).apply(params, *inputs, train=True,
                                                                  rngs=rngs)
  no_dropout = HAN(**{**SMALL, 'dropout': 0.0}).apply(params, *inputs, train=True, rngs=rngs)
  np.testing.assert_allclose(dropped['frame_logits'][:, :, 0], no_dropout['frame_logits'][:, :, 0],
                             rtol=1e-6)
  assert not np.allclose(dropped['frame_logits'][:, :, 1], no_dropout['frame_logits'][:, :, 1])
  np.testing.assert_allclose(dropped['h_v'], no_dropout['h_v'], rtol=1e-6)


def test_model_matches_numpy_forward(params, inputs, eval_out):
  expected = np_han(to_f64(params['params']),
                    *(x.astype(np.float64) for x in inputs), num_heads=2)
  assert_outputs_close(eval_out, expected, rtol=1e-5, atol=2e-5)
  shapes = {k: v.shape for k, v in eval_out.items()}
  assert shapes == {
      'global_prob': (B, C), 'a_prob': (B, C), 'v_prob': (B, C),
      'frame_logits': (B, T, 2, C), 'frame_prob': (B, T, 2, C), 'frame_att': (B, T, 2, C),
      'av_att': (B, T, 2, C), 'h_a': (B, T, 32), 'h_v': (B, T, 32), 'v': (B, T, 32)}
  assert all(v.dtype == jnp.float32 for v in eval_out.values())


def test_frames_equal_preaveraged(model, params, inputs, eval_out):
  audio, frames, video_3d = inputs
  averaged = frames.reshape(B, T, 8, -1).mean(2)
  out = model.apply(params, audio, averaged, video_3d, train=False)
  assert_outputs_close(out, eval_out, rtol=1e-5, atol=1e-6)


def test_bad_frame_count_raises(model, params, inputs):
  audio, frames, video_3d = inputs
  with pytest.raises(ValueError, match='frames'):
    model.apply(params, audio, frames[:, :20], video_3d, train=False)


def test_jit_and_vmap_over_partner_pairs(model, params, inputs, eval_out):
  audio, frames, video_3d = inputs
  apply = lambda a, v2, v3: model.apply(params, a, v2, v3, train=False)
  jit_out = jax.jit(apply)(*inputs)
  assert_outputs_close(jit_out, eval_out, rtol=1e-5, atol=1e-6)

  # K re-paired batches: audio of clip perm[k][i] with the visual of clip i.
  k = 4
  rng = np.random.default_rng(3)
  perms = np.stack([rng.permutation(B) for _ in range(k)])
  audio_k = audio[perms]  # (K, B, T, audio_dim)
  frames_k = np.broadcast_to(frames, (k,) + frames.shape)
  video_3d_k = np.broadcast_to(video_3d, (k,) + video_3d.shape)
  vmap_out = jax.jit(jax.vmap(apply))(audio_k, frames_k, video_3d_k)
  for i in range(k):
    plain = apply(audio_k[i], frames, video_3d)
    assert_outputs_close(jax.tree.map(lambda x: x[i], vmap_out), plain,
                         rtol=1e-5, atol=1e-5)
  # The last pairing against NumPy too: re-pairing needs no special path.
  expected = np_han(to_f64(params['params']), audio_k[-1].astype(np.float64),
                    frames.astype(np.float64), video_3d.astype(np.float64),
                    num_heads=2)
  assert_outputs_close(plain, expected, rtol=1e-5, atol=2e-5)


def test_dropout_off_in_eval_and_seeded_in_train(model, params, inputs,
                                                 eval_out):
  def run(seed, train):
    return model.apply(params, *inputs, train=train,
                       rngs={'dropout': jax.random.key(seed)})

  assert_outputs_close(run(1, False), eval_out, rtol=0, atol=0)
  assert_outputs_close(run(2, False), eval_out, rtol=0, atol=0)
  train_1, train_1b, train_2 = run(1, True), run(1, True), run(2, True)
  assert_outputs_close(train_1, train_1b, rtol=0, atol=0)
  for k in ('global_prob', 'h_a'):
    assert not np.allclose(train_1[k], train_2[k]), k
    assert not np.allclose(train_1[k], eval_out[k]), k
  # The embedding v comes before any dropout.
  np.testing.assert_array_equal(train_1['v'], eval_out['v'])


@pytest.mark.parametrize('rate', [0.1, 0.5])
def test_dropout_keeps_one_minus_rate_and_rescales(rate):
  x = jnp.full((64, 10, 512), 2.0)
  drop = lambda seed, det: Dropout(rate).apply(
      {}, x, deterministic=det, rngs={'dropout': jax.random.key(seed)})
  y = np.asarray(drop(0, False))
  kept = y != 0
  # Kept elements are scaled by 1 / (1 - rate); the kept fraction is binomial.
  np.testing.assert_allclose(y[kept], 2.0 / (1.0 - rate), rtol=1e-6)
  n = x.size
  assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
  # No structure across positions: each of the 512 features is kept at the same rate.
  per_feature = kept.reshape(-1, 512).mean(0)
  assert abs(per_feature.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
  assert per_feature.std() < 3 * np.sqrt(rate * (1 - rate) / 640)
  np.testing.assert_array_equal(drop(0, False), y)
  assert (np.asarray(drop(1, False)) != y).any()
  np.testing.assert_array_equal(drop(0, True), x)


def test_dropout_rate_zero_and_one():
  x = jnp.ones((4, 8))
  rngs = {'dropout': jax.random.key(0)}
  np.testing.assert_array_equal(
      Dropout(0.0).apply({}, x, deterministic=False, rngs=rngs), x)
  np.testing.assert_array_equal(
      Dropout(1.0).apply({}, x, deterministic=False, rngs=rngs), 0 * x)
  # Just under 1: the threshold saturates instead of overflowing uint32.
  assert not np.asarray(Dropout(1.0 - 2.0 ** -40).apply(
      {}, x, deterministic=False, rngs=rngs)).any()
  for rate in (-0.1, 1.5):
    with pytest.raises(ValueError, match='must lie in'):
      Dropout(rate).apply({}, x, deterministic=True)


def test_bfloat16_compute_float32_params_and_outputs(params, inputs,
                                                     eval_out):
  model = HAN(**SMALL, dtype='bfloat16')
  init = jax.eval_shape(
      lambda: model.init(jax.random.key(0), *inputs, train=False))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(init))
  assert jax.tree.structure(init) == jax.tree.structure(params)
  out = model.apply(params, *inputs, train=False)
  assert set(out) == OUTPUT_KEYS
  assert all(v.dtype == jnp.float32 for v in out.values())
  for k in ('global_prob', 'a_prob', 'v_prob', 'frame_prob', 'frame_att',
            'av_att'):
    np.testing.assert_allclose(out[k], eval_out[k], atol=0.01, err_msg=k)
  for k in ('h_a', 'v'):
    np.testing.assert_allclose(out[k], eval_out[k], atol=0.1, err_msg=k)
  assert not np.array_equal(out['h_a'], eval_out['h_a'])  # Really bf16.


def expected_count(d_model, ffn_dim, num_classes, audio_dim, video_2d_dim,
                   video_3d_dim, **_):
  linear = lambda n_in, n_out: n_in * n_out + n_out
  embeddings = (linear(audio_dim, d_model) + linear(video_2d_dim, d_model)
                + linear(video_3d_dim, d_model) + linear(2 * d_model, d_model))
  layer = (2 * 4 * linear(d_model, d_model) + linear(d_model, ffn_dim)
           + linear(ffn_dim, d_model) + 2 * 2 * d_model)
  return embeddings + layer + 3 * linear(d_model, num_classes)


def test_count_params_reference_sizes():
  config = ma.get_config().model
  model = HAN.from_config(config)
  assert (model.d_model, model.video_2d_dim, model.dtype) == (512, 2048,
                                                              'float32')
  sizes = dict(audio_dim=128, video_2d_dim=2048, video_3d_dim=512)
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), *make_inputs(0, 2, sizes),
                         train=False))
  n = count_params(shapes)
  assert n == 4_569_675
  assert '4,569,675' in HAN.__doc__  # The hand derivation in the docstring.
  assert n == expected_count(**config.to_dict())


def test_count_params_small_and_layout(params):
  assert count_params(params) == expected_count(**SMALL)
  p = params['params']
  assert set(p) == {'fc_a', 'fc_v', 'fc_st', 'fc_fusion', 'han_layer',
                    'fc_prob', 'fc_frame_att', 'fc_av_att'}
  assert set(p['han_layer']) == {'cross_attn', 'self_attn', 'linear1',
                                 'linear2', 'norm1', 'norm2'}
  assert set(p['han_layer']['cross_attn']) == {'query', 'key', 'value', 'out'}
  assert p['fc_v']['kernel'].shape == (24, 32)  # (in, out).
