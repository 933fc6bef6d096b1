"""HAN ("MMIL_Net", Tian et al., ECCV 2020): the model MA (CVPR 2021) trains.

Per clip: audio, 2D-visual and 3D-visual segment features are embedded, one
hybrid-attention layer (self-attention plus cross-modal attention, shared by
both modalities) contextualises them, and multimodal multiple-instance
pooling (MMIL) turns segment-level logits into clip-level probabilities.
docs/spec.md section 2 is the specification.

Parameter names are kept simple (fc_a, han_layer/cross_attn/query, ...) so
that a PyTorch port is a rename and a transpose: every `nn.Dense` kernel is
(in, out), i.e. PyTorch's `weight.T`.
Initialisers mirror PyTorch's defaults for `nn.Linear` and
`nn.MultiheadAttention` (the reference never overrides them).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avvp_jax.data import classes


def _uniform(bound: float):
  """U(-bound, bound) initialiser."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _linear(features: int, fan_in: int, dtype: Any, name: str) -> nn.Dense:
  """Dense layer initialised like PyTorch's `nn.Linear`: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return nn.Dense(
      features, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=_uniform(bound), bias_init=_uniform(bound), name=name)


def _layer_norm(dtype: Any, name: str) -> nn.LayerNorm:
  # PyTorch's epsilon and its two-pass variance.
  return nn.LayerNorm(
      epsilon=1e-5, use_fast_variance=False, dtype=dtype,
      param_dtype=jnp.float32, name=name)


def _mask_bits(state, shape):
  """(shape) uint32 random bits from a (4,) uint32 state by XLA's RngBitGenerator.

  On CPU it runs ThreeFry: the default there, Philox, needs 64-bit multiplies, which x86 runs
  as scalar code (measurements: benchmarks/RESULTS.md, "Design measurements"). Accelerators
  keep their own default, so the same seed gives other masks there than on CPU.
  """
  def bits(algorithm):
    return lambda s: jax.lax.rng_bit_generator(s, shape, jnp.uint32, algorithm=algorithm)[1]

  return jax.lax.platform_dependent(
      state, cpu=bits(jax.lax.RandomAlgorithm.RNG_THREE_FRY),
      default=bits(jax.lax.RandomAlgorithm.RNG_DEFAULT))


def _dropout_bits(key, shape):
  """(shape) uint32 mask bits from `key` (any implementation), through 128 bits of
  generator state.

  Under `jax.vmap` over keys (models of several seeds in one program) the bits are drawn key
  by key: vmapped RngBitGenerator, and rbg keys' own bits, draw other numbers than a loop
  would, and each model must get the masks of its one-model run.
  """
  @jax.custom_batching.custom_vmap
  def draw(key):
    return _mask_bits(jax.random.bits(key, (4,), jnp.uint32), shape)

  @draw.def_vmap
  def draw_per_key(axis_size, in_batched, key):
    del axis_size
    if not in_batched[0]:
      return draw(key), False
    return jax.lax.map(draw, key), True

  return draw(key)


class Dropout(nn.Module):
  """Inverted dropout: zeroes each element with probability `rate`, scales the rest by
  1 / (1 - rate). Seeded by the 'dropout' rng collection, like `nn.Dropout`, whose masks it
  replaces only to draw the bits faster (see `_mask_bits`)."""
  rate: float

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    if not 0.0 <= self.rate <= 1.0:
      raise ValueError(f'Dropout rate must lie in [0, 1], not {self.rate}.')
    if deterministic or self.rate == 0.0:
      return x
    if self.rate == 1.0:
      return jnp.zeros_like(x)
    # P(bits >= threshold) = 1 - threshold / 2^32 = 1 - rate, to within 2^-32.
    threshold = np.uint32(min(round(self.rate * 2.0 ** 32), 2 ** 32 - 1))
    keep = _dropout_bits(self.make_rng('dropout'), x.shape) >= threshold
    return jnp.where(keep, x / (1.0 - self.rate), jnp.zeros_like(x))


class MultiHeadAttention(nn.Module):
  """Scaled dot-product multi-head attention with q/k/v/out projections.

  Params: `query`, `key`, `value`, `out`, each a Dense (d, d) kernel plus a
  (d,) bias. Heads are contiguous slices of d_head = d / num_heads features
  of the projected q, k and v, as in PyTorch's `nn.MultiheadAttention`.
  """
  num_heads: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query, key, value, *, train: bool):
    """query (B, Tq, d); key, value (B, Tk, d) -> (B, Tq, d)."""
    d = query.shape[-1]
    if d % self.num_heads:
      raise ValueError(f'd_model={d} is not divisible by num_heads={self.num_heads}.')
    d_head = d // self.num_heads
    # PyTorch initialises the packed (3d, d) in-projection with Xavier-uniform
    # and zero biases; the out-projection kernel like nn.Linear, zero bias.
    in_bound = math.sqrt(6.0 / (d + 3 * d))

    def project(x, name):
      """(B, T, d) -> (B, h, T, d_head)."""
      y = nn.Dense(
          d, dtype=self.dtype, param_dtype=jnp.float32,
          kernel_init=_uniform(in_bound), bias_init=nn.initializers.zeros,
          name=name)(x)
      return jnp.swapaxes(y.reshape(*x.shape[:-1], self.num_heads, d_head), -2, -3)

    q = project(query, 'query')
    k = project(key, 'key')
    v = project(value, 'value')
    # Heads before time: the per-head products are then plain batched matmuls, for which XLA
    # on CPU needs fewer layout transposes in the backward pass.
    scores = jnp.einsum('...hqc,...hkc->...hqk', q, k) / math.sqrt(d_head)
    # Softmax in float32 even when the matmuls run in bfloat16.
    weights = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
    weights = Dropout(self.dropout)(weights, deterministic=not train)
    out = jnp.einsum('...hqk,...hkc->...hqc', weights.astype(v.dtype), v)
    out = jnp.swapaxes(out, -2, -3).reshape(*query.shape[:-1], d)
    return nn.Dense(
        d, dtype=self.dtype, param_dtype=jnp.float32,
        kernel_init=_uniform(1.0 / math.sqrt(d)),
        bias_init=nn.initializers.zeros, name='out')(out)


class HybridAttentionLayer(nn.Module):
  """One HAN layer for a query sequence q and the other modality o.

    y = LayerNorm(q + Dropout(MHA_cross(q, o, o)) + Dropout(MHA_self(q, q, q)))
    h = LayerNorm(y + Dropout(W2 Dropout(ReLU(W1 y))))

  Params: `cross_attn`, `self_attn` (MultiHeadAttention), `linear1` (d, ffn),
  `linear2` (ffn, d), `norm1`, `norm2`.
  """
  num_heads: int
  ffn_dim: int
  dropout: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q, o, *, train: bool, cross_modal: bool = True):
    """q (B, T, d), o (B, T', d) -> h (B, T, d); without `cross_modal`, the cross-modal
    attention term is left out (JoMoLD's `with_ca=False`)."""
    d = q.shape[-1]

    def drop(x):
      return Dropout(self.dropout)(x, deterministic=not train)

    def attention(name):
      return MultiHeadAttention(
          self.num_heads, self.dropout, dtype=self.dtype, name=name)

    if cross_modal:
      cross = attention('cross_attn')(q, o, o, train=train)
      self_ = attention('self_attn')(q, q, q, train=train)
      y = q + drop(cross) + drop(self_)
    else:
      y = q + drop(attention('self_attn')(q, q, q, train=train))
    y = _layer_norm(self.dtype, 'norm1')(y)
    f = _linear(self.ffn_dim, d, self.dtype, 'linear1')(y)
    f = _linear(d, self.ffn_dim, self.dtype, 'linear2')(drop(nn.relu(f)))
    return _layer_norm(self.dtype, 'norm2')(y + drop(f))


def mmil_pool(frame_logits, frame_att_logits, av_att_logits) -> dict:
  """Multimodal multiple-instance pooling (float32).

  Args:
    frame_logits: (B, T, 2, C) from fc_prob; modality 0 is audio, 1 visual.
    frame_att_logits: (B, T, 2, C) from fc_frame_att.
    av_att_logits: (B, T, 2, C) from fc_av_att.

  Returns:
    dict with frame_logits, frame_prob, frame_att (softmax over T), av_att (softmax
    over the modality axis), all (B, T, 2, C); global_prob, a_prob, v_prob (B, C).
    a_prob and v_prob lie in [0, 1]; global_prob, as in the reference, only in
    [0, 2] (av_att may weight a different segment per modality), so the BCE
    clip is what keeps it a probability.
  """
  f32 = lambda x: jnp.asarray(x).astype(jnp.float32)
  frame_prob = jax.nn.sigmoid(f32(frame_logits))
  frame_att = jax.nn.softmax(f32(frame_att_logits), axis=-3)
  av_att = jax.nn.softmax(f32(av_att_logits), axis=-2)
  temporal = frame_att * frame_prob
  return {
      'frame_logits': f32(frame_logits),
      'global_prob': jnp.sum(temporal * av_att, axis=(-3, -2)),
      'a_prob': jnp.sum(temporal[..., 0, :], axis=-2),
      'v_prob': jnp.sum(temporal[..., 1, :], axis=-2),
      'frame_prob': frame_prob,
      'frame_att': frame_att,
      'av_att': av_att,
  }


def _segment_mean(video_2d, num_segments: int):
  """(B, 8T, D) frames -> (B, T, D) segment means; (B, T, D) passes through.

  Averaging before fc_v equals averaging after it because fc_v is affine.
  """
  n = video_2d.shape[-2]
  if n == num_segments:
    return video_2d
  if n != classes.FRAMES_PER_SEGMENT * num_segments:
    raise ValueError(
        f'video_2d has {n} frames; expected {num_segments} (pre-averaged) or '
        f'{classes.FRAMES_PER_SEGMENT * num_segments}.')
  frames = video_2d.reshape(
      *video_2d.shape[:-2], num_segments, classes.FRAMES_PER_SEGMENT,
      video_2d.shape[-1])
  return jnp.mean(frames, axis=-2)


class HAN(nn.Module):
  """The HAN / MMIL_Net model.

  Parameter count at the reference sizes (d = 512, FFN 512, 25 classes,
  inputs 128 / 2048 / 512), weights + biases of each layer:

    fc_a       128 x 512 + 512                         =    66,048
    fc_v       2048 x 512 + 512                        = 1,049,088
    fc_st      512 x 512 + 512                         =   262,656
    fc_fusion  1024 x 512 + 512                        =   524,800
    han_layer
      cross_attn  4 x (512 x 512 + 512)  (q, k, v, out) = 1,050,624
      self_attn   4 x (512 x 512 + 512)                 = 1,050,624
      linear1     512 x 512 + 512                       =   262,656
      linear2     512 x 512 + 512                       =   262,656
      norm1, norm2  2 x (512 scale + 512 bias)          =     2,048
                                               layer    = 2,628,608
    fc_prob, fc_frame_att, fc_av_att  3 x (512 x 25 + 25) =  38,475
    total                                               = 4,569,675

  The number of heads does not change the count.
  """
  d_model: int = 512
  num_heads: int = 1
  ffn_dim: int = 512
  dropout: float = 0.1
  num_classes: int = classes.NUM_CLASSES
  audio_dim: int = classes.AUDIO_DIM
  video_2d_dim: int = classes.VIDEO_2D_DIM
  video_3d_dim: int = classes.VIDEO_3D_DIM
  dtype: str = 'float32'  # 'bfloat16': bf16 compute, float32 params.
  # Dropout on the visual stream after the HAN layer, before the heads (JoMoLD's
  # `cls_dropout`; 0 in HAN and MA).
  visual_dropout: float = 0.0
  # The visual stream attends to the audio stream after the HAN layer instead of before
  # (VALOR's encoder: h_a = layer(a, v), then h_v = layer(v, h_a)).
  sequential: bool = False
  # The default of __call__'s `cross_modal` (False: JoMoLD's noise estimator).
  cross_modal: bool = True

  @classmethod
  def from_config(cls, model_config, stage: str | None = None) -> 'HAN':
    """Builds the model from `config.model` (configs/ma.py); that of a training `stage`
    leaves cross-modal attention out where `model_config.unimodal_stages` names it."""
    return cls(
        cross_modal=stage not in model_config.get('unimodal_stages', ()),
        d_model=model_config.d_model,
        num_heads=model_config.num_heads,
        ffn_dim=model_config.ffn_dim,
        dropout=model_config.dropout,
        num_classes=model_config.num_classes,
        audio_dim=model_config.audio_dim,
        video_2d_dim=model_config.video_2d_dim,
        video_3d_dim=model_config.video_3d_dim,
        dtype=model_config.dtype,
        visual_dropout=model_config.get('visual_dropout', 0.0),
        sequential=model_config.get('sequential', False))

  @nn.compact
  def __call__(self, audio, video_2d, video_3d, *, train: bool,
               cross_modal: bool | None = None) -> dict:
    """Forward pass; audio and visual may come from different clips.

    Args:
      audio: (B, T, audio_dim) VGGish features.
      video_2d: (B, T, video_2d_dim) segment-averaged ResNet features, or
        (B, 8T, video_2d_dim) at 8 frames per second.
      video_3d: (B, T, video_3d_dim) R(2+1)D features.
      train: enables dropout (rng collection 'dropout').
      cross_modal: False leaves the HAN layer's cross-modal attention out (JoMoLD's
        noise estimator and its per-batch denoising forward); None: `self.cross_modal`.

    Returns:
      dict of float32 arrays: global_prob, a_prob, v_prob (B, C); frame_logits,
      frame_prob, frame_att, av_att (B, T, 2, C), modality 0 audio, 1 visual;
      h_a, h_v (B, T, d) audio and visual after the HAN layer and v (B, T, d) the
      visual embedding before it (inputs of the contrastive losses).
    """
    dtype = jnp.dtype(self.dtype)
    d = self.d_model
    cross_modal = self.cross_modal if cross_modal is None else cross_modal
    video_2d = _segment_mean(video_2d, audio.shape[-2])

    a = _linear(d, self.audio_dim, dtype, 'fc_a')(audio)
    v2d = _linear(d, self.video_2d_dim, dtype, 'fc_v')(video_2d)
    s = _linear(d, self.video_3d_dim, dtype, 'fc_st')(video_3d)
    v = _linear(d, 2 * d, dtype, 'fc_fusion')(jnp.concatenate([v2d, s], -1))

    # One shared layer for both modalities: h_a = layer(a, v) and
    # h_v = layer(v, a) run as a single call on 2B rows.
    layer = HybridAttentionLayer(
        self.num_heads, self.ffn_dim, self.dropout, dtype=dtype,
        name='han_layer')
    batch = a.shape[0]
    if self.sequential:
      h_a = layer(a, v, train=train, cross_modal=cross_modal)
      h_v = layer(v, h_a, train=train, cross_modal=cross_modal)
    else:
      h = layer(jnp.concatenate([a, v], 0), jnp.concatenate([v, a], 0),
                train=train, cross_modal=cross_modal)
      h_a, h_v = h[:batch], h[batch:]
    if self.visual_dropout:
      h_v_heads = Dropout(self.visual_dropout)(h_v, deterministic=not train)
    else:
      h_v_heads = h_v

    x = jnp.stack([h_a, h_v_heads], axis=-2)  # (B, T, 2, d)
    head = lambda name: _linear(self.num_classes, d, dtype, name)(x)
    out = mmil_pool(head('fc_prob'), head('fc_frame_att'), head('fc_av_att'))
    out['h_a'] = h_a.astype(jnp.float32)
    out['h_v'] = h_v.astype(jnp.float32)
    out['v'] = v.astype(jnp.float32)
    return out


def count_params(params) -> int:
  """Number of scalars in a parameter pytree (arrays or ShapeDtypeStructs)."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
