"""JoMoLD's joint-modal label denoising (Cheng et al., ECCV 2022), the math.

Stage 2 estimates, per class and modality, the share of weak labels that are noise for that
modality (`noise_ratios`), from a noise estimator: a HAN trained without cross-modal
attention on the weak labels. Stage 3 trains a fresh HAN and, in every batch, drops from each
modality's targets the labels that the rule of `batch_drops` flags, at those ratios
(`warmup_factors` phases them in). Written from the official code (MCG-NJU/JoMoLD,
`main.py`: `calculate_noise_ratio`, `train_label_denoising`).
"""

import jax.numpy as jnp
import numpy as np


def noise_ratios(a_prob: np.ndarray, v_prob: np.ndarray, y_a: np.ndarray, y_v: np.ndarray,
                 labels: np.ndarray, *, a_thres: float, v_thres: float
                 ) -> dict[str, np.ndarray]:
  """Per-class noise ratios of the weak labels, per modality.

  A labelled class c of clip i is audio noise when `a_prob[i, c] y_a[i, c] / mean_i a_prob[:, c]
  < a_thres`, and visual noise likewise with `v_thres`; the ratio is the count over the number
  of training clips labelled c (0 for a class no clip has). The mean runs over all clips (the
  official code averages batch means of a shuffled loader, which differs only in the last,
  smaller batch).

  Args:
    a_prob, v_prob: (N, 25) the estimator's clip-level probabilities on the train split.
    y_a, y_v: (N, 25) the targets it was trained on (the visual ones smoothed).
    labels: (N, 25) weak labels in {0, 1}.

  Returns:
    {'audio', 'visual': (25,) float32 in [0, 1]}.
  """
  labelled = labels > 0
  counts = labelled.sum(0)
  out = {}
  for m, prob, y, thres in (('audio', a_prob, y_a, a_thres), ('visual', v_prob, y_v, v_thres)):
    mean = prob.mean(0)
    with np.errstate(divide='ignore', invalid='ignore'):
      noisy = labelled & (prob * y / mean < thres)
    out[m] = np.where(counts > 0, noisy.sum(0) / np.maximum(counts, 1), 0.0).astype(np.float32)
  return out


def warmup_factors(epochs: int, steps_per_epoch: int, warmup_epochs: float) -> np.ndarray:
  """The factor on the noise ratios at each train step, (epochs x steps_per_epoch,).

  The official code sets, at batch b of epoch e (from 1), ratio <- min(ratio, ratio x
  ((e - 1) I + b) / (W I)), on the ratio of the previous batch of the same epoch, starting
  each epoch from the estimate. The factor is therefore the running product of
  min(1, ((e - 1) I + b') / (W I)) over b' <= b; as its first factor is 0, no label is dropped
  in epoch 1, and for W < 1 (its default 0.9) every later epoch uses the full ratios.
  """
  total = warmup_epochs * steps_per_epoch
  factors = []
  for epoch in range(epochs):
    step = epoch * steps_per_epoch + np.arange(steps_per_epoch)
    factors.append(np.cumprod(np.minimum(1.0, step / total)))
  return np.concatenate(factors).astype(np.float32)


def _ranks(loss, positive):
  """(B, C): each clip's place, from 0, among the positive clips of its class ordered by
  ascending loss (stable: the lower batch index first among ties); positives come before
  every other clip."""
  key = jnp.where(positive, loss, jnp.inf)
  order = jnp.argsort(key, axis=0, stable=True)
  return jnp.argsort(order, axis=0, stable=True)


def batch_drops(loss_a, loss_v, y_a, y_v, ratio_a, ratio_v):
  """The labels that JoMoLD drops in one batch, per class.

  Visual: among the k_v = floor(ratio_v[c] x #positives) clips whose visual target is
  positive (> 0.5), those that are both among the k_v with the largest visual loss and among
  the k_v with the smallest audio loss. Audio: among the k_a audio positives, those with both
  the largest audio loss and the smallest visual loss.

  Args:
    loss_a, loss_v: (B, 25) per-element BCE of a_prob, v_prob against y_a, y_v.
    y_a, y_v: (B, 25) the targets.
    ratio_a, ratio_v: (25,) the noise ratios of this step (after the warm-up factor).

  Returns:
    (drop_a, drop_v): bool (B, 25).
  """
  def drops(positive, ratio, own_loss, other_loss):
    n = positive.sum(0)
    k = jnp.floor(ratio * n).astype(jnp.int32)
    high_own = _ranks(own_loss, positive) >= n - k
    low_other = _ranks(other_loss, positive) < k
    return positive & high_own & low_other & (k > 0)

  pos_a, pos_v = y_a > 0.5, y_v > 0.5
  return drops(pos_a, ratio_a, loss_a, loss_v), drops(pos_v, ratio_v, loss_v, loss_a)
