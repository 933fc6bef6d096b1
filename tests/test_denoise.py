"""JoMoLD's noise ratios, warm-up and per-batch rule against plain NumPy transcriptions of
the loops of the official code (MCG-NJU/JoMoLD main.py), on random inputs with ties and
with classes absent from a batch."""

import numpy as np
import pytest

from avvp_jax import denoise


def np_noise_ratios(a, v, pa, pv, labels, a_thres, v_thres):
  """calculate_noise_ratio: the loop over clips and classes."""
  a_mean, v_mean = a.mean(0), v.mean(0)
  noise_a, noise_v = np.zeros(25), np.zeros(25)
  a, v = a * pa, v * pv
  for b in range(len(a)):
    for c in range(25):
      if labels[b][c] != 0:
        if v[b][c] / v_mean[c] < v_thres:
          noise_v[c] += 1
        if a[b][c] / a_mean[c] < a_thres:
          noise_a[c] += 1
  counts = labels.sum(0)
  with np.errstate(invalid='ignore'):
    return noise_a / counts, noise_v / counts


def np_batch_drops(loss_a, loss_v, pa, pv, ratio_a, ratio_v):
  """train_label_denoising's loop over classes, with stable sorts."""
  batch = len(pa)
  drop_a, drop_v = np.zeros_like(pa, bool), np.zeros_like(pv, bool)
  sort_a = np.argsort(loss_a, axis=0, kind='stable')
  sort_v = np.argsort(loss_v, axis=0, kind='stable')
  pos_a, pos_v = pa > 0.5, pv > 0.5
  for i in range(25):
    num_a = int(np.float32(ratio_a[i]) * np.float32(pos_a[:, i].sum()))
    num_v = int(np.float32(ratio_v[i]) * np.float32(pos_v[:, i].sum()))
    mask_a, mask_v = np.zeros(batch), np.zeros(batch)
    if num_v > 0:
      mask_a[sort_a[pos_v[sort_a[:, i], i], i][:num_v]] = 1
      mask_v[sort_v[pos_v[sort_v[:, i], i], i][-num_v:]] = 1
    drop_v[np.nonzero(mask_a * mask_v)[0], i] = True
    mask_a, mask_v = np.zeros(batch), np.zeros(batch)
    if num_a > 0:
      mask_a[sort_a[pos_a[sort_a[:, i], i], i][-num_a:]] = 1
      mask_v[sort_v[pos_a[sort_v[:, i], i], i][:num_a]] = 1
    drop_a[np.nonzero(mask_a * mask_v)[0], i] = True
  return drop_a, drop_v


def _batch(seed, batch=32):
  rng = np.random.default_rng(seed)
  labels = (rng.uniform(size=(batch, 25)) < 0.3).astype(np.float32)
  labels[:, 5] = 0  # A class absent from the batch.
  labels[:, 6] = 0
  labels[0, 6] = 1  # And one with a single positive.
  pa = labels.copy()
  pv = (0.9 * labels + 0.05).astype(np.float32)
  # Losses on a coarse grid, so that many tie.
  loss_a = np.round(rng.uniform(0, 2, (batch, 25)), 1).astype(np.float32)
  loss_v = np.round(rng.uniform(0, 2, (batch, 25)), 1).astype(np.float32)
  ratio_a = rng.uniform(0, 1, 25).astype(np.float32)
  ratio_v = rng.uniform(0, 1, 25).astype(np.float32)
  ratio_v[7] = 1.0  # Every positive is a candidate.
  return loss_a, loss_v, pa, pv, ratio_a, ratio_v


@pytest.mark.parametrize('seed', range(5))
def test_batch_drops_match_the_official_loop(seed):
  args = _batch(seed)
  got = denoise.batch_drops(*args)
  want = np_batch_drops(*args)
  for g, w, name in zip(got, want, ('audio', 'visual')):
    np.testing.assert_array_equal(np.asarray(g), w, err_msg=name)
  assert want[1].any() and want[0].any(), 'the random batch drops nothing: inconclusive'
  assert not np.asarray(got[0])[:, 5].any() and not np.asarray(got[1])[:, 5].any()


def test_batch_drops_with_ratio_zero_drop_nothing():
  loss_a, loss_v, pa, pv, _, _ = _batch(0)
  zero = np.zeros(25, np.float32)
  for drops in denoise.batch_drops(loss_a, loss_v, pa, pv, zero, zero):
    assert not np.asarray(drops).any()


def test_noise_ratios_match_the_official_loop():
  rng = np.random.default_rng(1)
  labels = (rng.uniform(size=(200, 25)) < 0.2).astype(np.float32)
  labels[:, 9] = 0  # A class no training clip has: ratio 0 here, NaN in the official code.
  a = rng.uniform(0, 1, (200, 25)).astype(np.float32)
  v = rng.uniform(0, 1, (200, 25)).astype(np.float32)
  pa, pv = labels, 0.9 * labels + 0.05
  got = denoise.noise_ratios(a, v, pa, pv, labels, a_thres=0.6, v_thres=1.8)
  want_a, want_v = np_noise_ratios(a, v, pa, pv, labels, 0.6, 1.8)
  assert np.isnan(want_a[9]) and got['audio'][9] == 0 and got['visual'][9] == 0
  keep = np.arange(25) != 9
  np.testing.assert_allclose(got['audio'][keep], want_a[keep], rtol=1e-6)
  np.testing.assert_allclose(got['visual'][keep], want_v[keep], rtol=1e-6)
  assert 0 < got['audio'][keep].mean() < 1 and 0 < got['visual'][keep].mean() < 1


def np_warmup(epochs, iters, warm):
  """The official running minimum, on a ratio of 1, batch by batch."""
  out = []
  for epoch in range(1, epochs + 1):
    ratio = 1.0
    for b in range(iters):
      ratio = min(ratio, ratio * ((epoch - 1) * iters + b) / (warm * iters))
      out.append(ratio)
  return np.array(out)


@pytest.mark.parametrize('warm', [0.9, 1.5, 2.0])
def test_warmup_factors_follow_the_official_running_minimum(warm):
  got = denoise.warmup_factors(4, 7, warm)
  np.testing.assert_allclose(got, np_warmup(4, 7, warm), rtol=1e-6, atol=1e-7)
  if warm < 1:  # The default: nothing in epoch 1, everything afterwards.
    assert (got[:7] == 0).all() and (got[7:] == 1).all()
