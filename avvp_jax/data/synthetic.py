"""A built-in, LLP-shaped synthetic data set, generated in memory from a seed.

It keeps what makes weakly-supervised audio-visual parsing hard (docs/spec.md section 1): the 25
LLP classes with LLP's class frequencies (about 1.6 labels per clip), events with temporal
extents, and per-class modality asynchrony: a labelled event is audible only, visible only,
both or neither at LLP's per-class rates (Speech is audible only in ~76 % of its clips), so the
clip-level label is wrong for one modality in about a third of the (clip, class) pairs.
Unlike LLP, every split, train included, keeps its dense per-modality truth, so that the
label refinement of stage 2 can be scored.

Features: each class has a fixed random prototype per feature space. A segment's feature is a
clip-level background plus, for each event active in that segment and modality, the class
prototype times a per-event amplitude, plus Gaussian noise (`noise` scales it). Audio stays
real-valued (like VGGish embeddings); the two visual features go through a ReLU, since ResNet
and R(2+1)D features are pooled post-ReLU activations (non-negative, sparse). The shapes are
those of the release: audio (10, 128), 2D visual pre-averaged (10, 2048), 3D visual (10, 512).
An event that is both audible and visible has the same audio and visual extent as often as in
LLP (60 % of such pairs); otherwise the two extents are drawn independently.
"""

import numpy as np

from avvp_jax.data.classes import (AUDIO_DIM, NUM_CLASSES, NUM_SEGMENTS,
                                   VIDEO_2D_DIM, VIDEO_3D_DIM)
from avvp_jax.data.split import Split, aligned_empty

# Made by `python -m avvp_jax.data.derive_stats ../shared/llp` from the real LLP annotation
# files (see that module for the definitions). modality[c] = [audio only, visual only, both,
# neither] over the val+test (clip, c) pairs.
LLP_STATS = {'class_freq': [0.4988, 0.0624, 0.0528, 0.0761, 0.0192, 0.0343, 0.0455, 0.0218, 0.0299, 0.0602,
                0.0186, 0.1172, 0.0437, 0.1457, 0.0495, 0.0146, 0.0445, 0.0224, 0.0411, 0.0587,
                0.0503, 0.0099, 0.043, 0.0291, 0.0164],
 'modality': [[0.7596, 0.002, 0.2192, 0.0192], [0.0149, 0.2015, 0.7761, 0.0075],
              [0.5606, 0.0379, 0.3712, 0.0303], [0.0769, 0.1243, 0.7929, 0.0059],
              [0.0351, 0.2632, 0.6842, 0.0175], [0.0615, 0.0154, 0.9077, 0.0154],
              [0.0494, 0.1728, 0.7531, 0.0247], [0.1667, 0.0, 0.8333, 0.0],
              [0.0222, 0.0, 0.9778, 0.0], [0.1885, 0.041, 0.7623, 0.0082],
              [0.1778, 0.0444, 0.7556, 0.0222], [0.3057, 0.0038, 0.6792, 0.0113],
              [0.0714, 0.051, 0.8776, 0.0], [0.1681, 0.0259, 0.8017, 0.0043],
              [0.0606, 0.0101, 0.9293, 0.0], [0.2188, 0.0, 0.7812, 0.0],
              [0.2593, 0.0123, 0.7284, 0.0], [0.0682, 0.0227, 0.9091, 0.0],
              [0.0488, 0.0854, 0.8659, 0.0], [0.0874, 0.0194, 0.8932, 0.0],
              [0.0839, 0.1032, 0.8129, 0.0], [0.4211, 0.0, 0.5789, 0.0],
              [0.1688, 0.013, 0.8052, 0.013], [0.0, 0.0179, 0.9821, 0.0],
              [0.4031, 0.0465, 0.5349, 0.0155]],
 'full': {'audio': [0.1427, 0.8396, 0.3651, 0.2297, 0.093, 0.9048, 0.0606, 0.4444, 0.6889,
                    0.8017, 0.7381, 0.3903, 0.4086, 0.646, 0.7551, 0.1875, 0.7927, 0.6136, 0.72,
                    0.8431, 0.6111, 0.2632, 0.3867, 0.3091, 0.2578],
          'visual': [0.12, 0.7594, 0.537, 0.8535, 0.7966, 0.8167, 0.039, 0.4333, 0.6591, 0.8,
                     0.8611, 0.3048, 0.8681, 0.7979, 0.7957, 0.28, 0.8387, 0.8095, 0.7125,
                     0.7579, 0.8446, 0.3636, 0.5556, 0.8571, 0.3117]},
 'mean_len': {'audio': [4.5041, 6.1176, 4.25, 4.9649, 4.2821, 4.6667, 3.9032, 5.75, 5.5714,
                        6.5652, 4.7273, 6.1707, 5.2909, 6.5125, 5.0417, 5.1923, 6.1765, 5.4118,
                        5.0, 5.6875, 6.5536, 4.6429, 7.0652, 5.2632, 4.0737],
              'visual': [4.1111, 6.0938, 4.4, 6.6522, 6.0833, 4.6364, 3.9324, 6.0, 6.2, 5.6,
                         4.4, 5.9538, 5.4167, 5.4615, 6.6316, 5.5556, 4.5, 6.875, 6.2609,
                         5.8696, 4.7826, 5.2857, 6.6071, 6.125, 3.7736]},
 'multi_run': {'audio': 0.3654, 'visual': 0.2881},
 'av_identical': 0.6026}

SPLIT_SEEDS = {'train': 0, 'val': 1, 'test': 2}
PROTOTYPE_SEED = 12345  # The classes' prototypes are the same for every data seed.
SIGNAL = {'audio': 0.5, 'video_2d': 0.25, 'video_3d': 0.35}  # Per-dimension prototype scale.


def modality_probs(asynchrony: float) -> np.ndarray:
  """Per-class probabilities of [audio only, visual only, both, neither], (25, 4).

  `asynchrony` scales the three non-'both' rates (1.0 = LLP, 0.0 = always both).
  """
  p = np.asarray(LLP_STATS['modality'], np.float64)
  off = p[:, [0, 1, 3]] * asynchrony
  if (off.sum(1) > 1).any():
    raise ValueError(f'asynchrony={asynchrony} makes the single-modality rates exceed 1.')
  return np.stack([off[:, 0], off[:, 1], 1 - off.sum(1), off[:, 2]], 1)


def label_rates(class_freq: np.ndarray) -> np.ndarray:
  """Bernoulli rates q such that 'draw each class with q; if none, draw one class ~ q'
  gives each class exactly the marginal frequency `class_freq` (fixed-point iteration)."""
  q = class_freq.copy()
  for _ in range(200):
    p_none = np.prod(1 - q)
    q = class_freq / (1 + p_none / q.sum())
  return q


def copy_probs() -> np.ndarray:
  """Per class, how often a visual extent copies the audio one, (25,).

  Independent draws already coincide when both are full-clip (probability full_a * full_v;
  partial coincidences are rare), so copying with p = (r - q) / (1 - q), q = full_a * full_v,
  makes identical extents occur at LLP's rate r = `av_identical`.
  """
  q = np.asarray(LLP_STATS['full']['audio']) * np.asarray(LLP_STATS['full']['visual'])
  return np.clip((LLP_STATS['av_identical'] - q) / (1 - q), 0.0, 1.0)


def _extent(rng, full: float, mean_len: float, multi_run: float) -> np.ndarray:
  """One (clip, class, modality) temporal extent, bool (10,)."""
  mask = np.zeros(NUM_SEGMENTS, bool)
  if rng.random() < full:
    mask[:] = True
    return mask
  length = 1 + rng.binomial(NUM_SEGMENTS - 2, (mean_len - 1) / (NUM_SEGMENTS - 2))
  if length >= 2 and rng.random() < multi_run:
    # Two runs of total `length` separated by a gap of at least one segment.
    first = rng.integers(1, length)
    gap = rng.integers(1, NUM_SEGMENTS - length + 1)
    start = rng.integers(0, NUM_SEGMENTS - length - gap + 1)
    mask[start:start + first] = True
    mask[start + first + gap:start + length + gap] = True
  else:
    start = rng.integers(0, NUM_SEGMENTS - length + 1)
    mask[start:start + length] = True
  return mask


def _prototypes() -> dict:
  rng = np.random.default_rng(PROTOTYPE_SEED)
  dims = {'audio': AUDIO_DIM, 'video_2d': VIDEO_2D_DIM, 'video_3d': VIDEO_3D_DIM}
  return {k: rng.standard_normal((NUM_CLASSES, d)).astype(np.float32) * SIGNAL[k]
          for k, d in dims.items()}


def sample_annotations(rng: np.random.Generator, num_clips: int, asynchrony: float = 1.0):
  """Weak labels and dense truths of `num_clips` clips.

  Returns:
    labels: bool (N, 25); gt_a, gt_v: bool (N, 25, 10).
  """
  q = label_rates(np.asarray(LLP_STATS['class_freq']))
  labels = rng.random((num_clips, NUM_CLASSES)) < q
  for i in np.flatnonzero(~labels.any(1)):
    labels[i, rng.choice(NUM_CLASSES, p=q / q.sum())] = True

  kind_p = modality_probs(asynchrony)
  p_copy = copy_probs()
  gt = {'audio': np.zeros((num_clips, NUM_CLASSES, NUM_SEGMENTS), bool)}
  gt['visual'] = np.zeros_like(gt['audio'])
  for i, c in zip(*np.nonzero(labels)):
    kind = rng.choice(4, p=kind_p[c])
    for m, present in (('audio', kind in (0, 2)), ('visual', kind in (1, 2))):
      if present:
        gt[m][i, c] = _extent(rng, LLP_STATS['full'][m][c], LLP_STATS['mean_len'][m][c],
                              LLP_STATS['multi_run'][m])
    if kind == 2 and rng.random() < p_copy[c]:
      gt['visual'][i, c] = gt['audio'][i, c]
  return labels, gt['audio'], gt['visual']


NOISE_BLOCK = 1024  # clips


def generate_split(num_clips: int, seed: int, split: str, *, noise: float = 1.0,
                   asynchrony: float = 1.0) -> Split:
  """Generates one split; the same arguments give the same arrays."""
  if num_clips > 10**6:  # The ids hold 6 digits.
    raise ValueError(f'At most 1,000,000 synthetic clips per split, not {num_clips}.')
  rng = np.random.default_rng([seed, SPLIT_SEEDS[split]])
  labels, gt_a, gt_v = sample_annotations(rng, num_clips, asynchrony)
  protos = _prototypes()
  features = {}
  for key, gt in (('audio', gt_a), ('video_2d', gt_v), ('video_3d', gt_v)):
    d = protos[key].shape[1]
    # Per-event amplitude, constant over the event's segments.
    amplitude = rng.uniform(0.6, 1.4, (num_clips, NUM_CLASSES, 1)).astype(np.float32)
    activity = (gt * amplitude).transpose(0, 2, 1)  # (N, T, C)
    background = rng.standard_normal((num_clips, 1, d), np.float32) * 0.5
    x = np.matmul(activity, protos[key], out=aligned_empty((num_clips, NUM_SEGMENTS, d)))
    x += background
    # The noise in blocks of clips (the same stream as one draw): a whole-split temporary
    # would double the peak memory of a large split.
    for start in range(0, num_clips, NOISE_BLOCK):
      block = rng.standard_normal((min(NOISE_BLOCK, num_clips - start),) + x.shape[1:],
                                  np.float32)
      block *= noise
      x[start:start + NOISE_BLOCK] += block
    features[key] = x if key == 'audio' else np.maximum(x, 0.0, out=x)

  # LLP's filenames: an 11-character video id, then the clip's start and end seconds.
  names = np.array([f'syn{split[:2]}{i:06d}_0_10' for i in range(num_clips)])
  return Split(names=names, audio=features['audio'], video_2d=features['video_2d'],
               video_3d=features['video_3d'], labels=labels.astype(np.float32),
               gt_a=gt_a, gt_v=gt_v)


def load(synthetic_config) -> dict[str, Split]:
  """The train, val and test splits from the `data.synthetic` config section."""
  c = synthetic_config
  sizes = {'train': c.num_train, 'val': c.num_val, 'test': c.num_test}
  return {split: generate_split(n, c.seed, split, noise=c.noise, asynchrony=c.asynchrony)
          for split, n in sizes.items()}
