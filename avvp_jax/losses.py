"""Losses of HAN and MA (docs/spec.md sections 3 and 4): MIL BCE and contrastive; and of the
methods after MA: VALOR's segment-level pseudo-label loss and JoMoLD's weighted MIL with its
contrastive term.

Pure functions on arrays. Inputs are promoted to at least float32, so the
losses stay float32 when the model computes in bfloat16 (and float64 stays
float64, which the gradient tests use).
"""

import jax
import jax.numpy as jnp


def _at_least_f32(x):
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def bce(prob, target, clip: float = 1e-7):
  """Binary cross-entropy averaged over all elements.

  Args:
    prob: probabilities, any shape, e.g. (B, 25).
    target: targets in [0, 1], same shape.
    clip: prob is clipped to [clip, 1 - clip] in its own dtype (so in float32
      the upper bound rounds to 1 - 1.19e-7, as in the PyTorch reference);
      the gradient is 0 where the clip is active.

  Returns:
    Scalar loss.
  """
  return jnp.mean(bce_elements(prob, target, clip))


def bce_elements(prob, target, clip: float = 1e-7):
  """`bce` before the mean: the binary cross-entropy of each element, same shape."""
  prob = _at_least_f32(prob)
  target = _at_least_f32(target)
  p = jnp.clip(prob, clip, 1.0 - clip)
  return -(target * jnp.log(p) + (1.0 - target) * jnp.log1p(-p))


def bce_with_logits(logits, target):
  """Binary cross-entropy of sigmoid(logits) against targets, averaged over all elements,
  computed from the logits (PyTorch's `binary_cross_entropy_with_logits`)."""
  x = _at_least_f32(logits)
  z = _at_least_f32(target)
  return jnp.mean(jnp.maximum(x, 0.0) - x * z + jnp.log1p(jnp.exp(-jnp.abs(x))))


def pseudo_label_loss(out: dict, targets: dict, clip: float = 1e-7):
  """VALOR's loss: BCE(global_prob, y) plus the segment-level BCE of each modality's frame
  logits against its pseudo labels.

  Args:
    out: model outputs with global_prob (B, 25) and frame_logits (B, T, 2, 25).
    targets: y_global (B, 25); pl_a, pl_v (B, T, 25) segment pseudo labels in [0, 1].
    clip: see `bce`.

  Returns:
    (total, {'global': .., 'audio': .., 'visual': ..}), scalars.
  """
  parts = {
      'global': bce(out['global_prob'], targets['y_global'], clip),
      'audio': bce_with_logits(out['frame_logits'][..., 0, :], targets['pl_a']),
      'visual': bce_with_logits(out['frame_logits'][..., 1, :], targets['pl_v']),
  }
  return parts['global'] + parts['audio'] + parts['visual'], parts


def mil_loss(out: dict, y, y_a, y_v, clip: float = 1e-7):
  """BCE(global_prob, y) + BCE(a_prob, y_a) + BCE(v_prob, y_v).

  Args:
    out: model outputs with global_prob, a_prob, v_prob, each (B, 25).
    y, y_a, y_v: targets (B, 25), e.g. from `mil_targets`.
    clip: see `bce`.

  Returns:
    (total, {'global': .., 'audio': .., 'visual': ..}), scalars.
  """
  parts = {
      'global': bce(out['global_prob'], y, clip),
      'audio': bce(out['a_prob'], y_a, clip),
      'visual': bce(out['v_prob'], y_v, clip),
  }
  return parts['global'] + parts['audio'] + parts['visual'], parts


def total_loss(out: dict, targets: dict, loss_config):
  """The training loss of every stage: MIL (`loss_config.kind` 'mil') or VALOR's pseudo-label
  loss ('pseudo_labels'), plus w * contrastive when it is enabled.

  Args:
    out: model outputs: global_prob, a_prob, v_prob (B, 25); frame_logits (B, T, 2, 25);
      h_a, v (B, T, d).
    targets: y_global, y_a, y_v (B, 25), e.g. from `mil_targets`; for 'pseudo_labels',
      y_global and pl_a, pl_v (B, T, 25).
    loss_config: config.loss (kind, clip, contrastive, contrastive_weight, tau,
      contrastive_label_smoothing).

  Returns:
    (total, terms): terms holds global, audio, visual, [contrastive,] total; scalars.
  """
  kind = loss_config.get('kind', 'mil')
  if kind == 'mil':
    total, terms = mil_loss(out, targets['y_global'], targets['y_a'], targets['y_v'],
                            loss_config.clip)
  elif kind == 'pseudo_labels':
    total, terms = pseudo_label_loss(out, targets, loss_config.clip)
  elif kind == 'jomold':
    return jomold_loss(out, targets, loss_config)
  else:
    raise ValueError(f"config.loss.kind is 'mil', 'pseudo_labels' or 'jomold', not {kind!r}.")
  if loss_config.contrastive:
    terms['contrastive'] = contrastive_loss(
        out['h_a'], out['v'], loss_config.tau, loss_config.contrastive_label_smoothing)
    total = total + loss_config.contrastive_weight * terms['contrastive']
  terms['total'] = total
  return total, terms


def mil_targets(y, drop_a=None, drop_v=None, *,
                visual_label_smoothing: float = 0.1,
                audio_drop_clears_global: bool = True):
  """Clip-level, audio and visual targets from weak labels and refinement.

  Args:
    y: (B, 25) weak labels in {0, 1}.
    drop_a: optional bool (B, 25), True where the audio label was dropped.
    drop_v: optional bool (B, 25), True where the visual label was dropped.
    visual_label_smoothing: eps; y_v = (1 - eps) y + eps / 2.
    audio_drop_clears_global: reference behaviour, where the audio target and
      the clip-level target are one array, so an audio drop also zeroes y.

  Returns:
    (y_global, y_a, y_v), float (B, 25). Dropped labels are exactly 0.
  """
  y = _at_least_f32(y)
  eps = visual_label_smoothing
  y_a = y if drop_a is None else jnp.where(drop_a, 0.0, y)
  y_v = (1.0 - eps) * y + eps / 2
  if drop_v is not None:
    y_v = jnp.where(drop_v, 0.0, y_v)
  y_global = y_a if audio_drop_clears_global else y
  return y_global, y_a, y_v


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
  """x / max(||x||, eps), with a finite gradient at x = 0."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def contrastive_loss(h_a, v, tau: float = 0.2, label_smoothing: float = 0.1):
  """Segment-level audio-visual contrastive loss within each clip ("C").

  For segment t, the logits over the clip's T segments are
  z_a[t] . z_v[t'] / tau with z = l2-normalised features; the target is t' = t,
  smoothed to (1 - ls) on t and ls / (T - 1) on each other segment.

  Args:
    h_a: (B, T, d) audio after the HAN layer.
    v: (B, T, d) visual embedding before the HAN layer.
    tau: temperature.
    label_smoothing: ls.

  Returns:
    Scalar cross-entropy, mean over segments and clips.
  """
  z_a = l2_normalize(_at_least_f32(h_a))
  z_v = l2_normalize(_at_least_f32(v))
  logits = jnp.einsum('...td,...sd->...ts', z_a, z_v) / tau  # (B, T, T)
  num_segments = logits.shape[-1]
  eye = jnp.eye(num_segments, dtype=logits.dtype)
  target = ((1.0 - label_smoothing) * eye
            + label_smoothing / (num_segments - 1) * (1.0 - eye))
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jnp.sum(target * log_p, axis=-1))


def smoothed_nce_loss(h_a, h_v, tau: float = 0.2, label_smoothing: float = 0.1):
  """JoMoLD's `LabelSmoothingNCELoss` on the segment similarities of one clip.

  For segment t, p = softmax over t' of z_a[t] . z_v[t'] / tau with z = l2-normalised
  features after the HAN layer; the loss is -log sum_t' q[t'] p[t'] with q the smoothed
  one-hot target (1 - ls on t, ls / (T - 1) elsewhere): the log of the target's expected
  probability, not the cross-entropy of `contrastive_loss`.

  Args:
    h_a, h_v: (B, T, d) audio and visual after the HAN layer.
    tau: temperature.
    label_smoothing: ls.

  Returns:
    Scalar, mean over segments and clips.
  """
  z_a = l2_normalize(_at_least_f32(h_a))
  z_v = l2_normalize(_at_least_f32(h_v))
  logits = jnp.einsum('...td,...sd->...ts', z_a, z_v) / tau
  num_segments = logits.shape[-1]
  eye = jnp.eye(num_segments, dtype=logits.dtype)
  target = ((1.0 - label_smoothing) * eye
            + label_smoothing / (num_segments - 1) * (1.0 - eye))
  log_p = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.mean(jax.nn.logsumexp(jnp.log(target) + log_p, axis=-1))


def jomold_loss(out: dict, targets: dict, loss_config):
  """JoMoLD's loss: w_a BCE(a_prob, y_a) + w_v BCE(v_prob, y_v) + w_y BCE(global_prob, y) +
  w_nce `smoothed_nce_loss(h_a, h_v)`.

  Args:
    out: model outputs: global_prob, a_prob, v_prob (B, 25); h_a, h_v (B, T, d).
    targets: y_global, y_a, y_v (B, 25).
    loss_config: clip, tau, nce_smoothing and the weights audio_weight, visual_weight,
      video_weight, nce_weight.

  Returns:
    (total, {'global', 'audio', 'visual', 'contrastive', 'total'}), scalars.
  """
  lc = loss_config
  terms = {
      'global': bce(out['global_prob'], targets['y_global'], lc.clip),
      'audio': bce(out['a_prob'], targets['y_a'], lc.clip),
      'visual': bce(out['v_prob'], targets['y_v'], lc.clip),
      'contrastive': smoothed_nce_loss(out['h_a'], out['h_v'], lc.tau, lc.nce_smoothing),
  }
  total = (lc.audio_weight * terms['audio'] + lc.visual_weight * terms['visual']
           + lc.video_weight * terms['global'] + lc.nce_weight * terms['contrastive'])
  terms['total'] = total
  return total, terms
