"""Segment-level pseudo labels (VALOR, Lai et al., NeurIPS 2023): one (10, 25) array per clip
and modality, 1 where a teacher (CLAP for audio, CLIP for visual) finds the event in that
segment.

Two sources, one entry point (`for_split`):
- folders in VALOR's release layout, `<folder>/<11-character video id>.npy`, named by
  `config.data.pseudo_labels.audio` and `.visual`;
- for the built-in data, labels made from its dense truth (`simulate`), restricted to the
  clip's weak labels and corrupted at per-modality miss and false-alarm rates, so that the
  method runs without any download.

A file is checked before anything trains: present, readable, shape (10, 25), finite, every
value in [0, 1], and no positive outside the clip's weak labels. VALOR's own loader does
none of this: a missing file stops its training mid-epoch, a NaN or a value outside [0, 1]
trains silently (`binary_cross_entropy_with_logits` takes any target), and a positive
outside the weak labels is used as a label.
"""

import os

import numpy as np

from avvp_jax.data import files
from avvp_jax.data.classes import NUM_CLASSES, NUM_SEGMENTS
from avvp_jax.data.split import Split

MODALITIES = ('audio', 'visual')


class PseudoLabelError(ValueError):
  """A pseudo-label file is missing or malformed; the message names the file and the clip."""


def load_file(path: str, clip: str, weak: np.ndarray) -> np.ndarray:
  """One clip's pseudo labels, float32 (10, 25), checked; `weak` (25,) its weak labels."""
  x = files.read_npy(path, clip, PseudoLabelError, 'pseudo-label')
  shape = (NUM_SEGMENTS, NUM_CLASSES)
  if x.shape != shape:
    raise PseudoLabelError(f'{path}: clip {clip!r}: shape {x.shape}, expected {shape} '
                           '(segments, classes).')
  x = x.astype(np.float32)
  if not np.isfinite(x).all():
    raise PseudoLabelError(f'{path}: clip {clip!r}: {int((~np.isfinite(x)).sum())} NaN or '
                           'inf values.')
  if x.min() < 0 or x.max() > 1:
    raise PseudoLabelError(f'{path}: clip {clip!r}: values in [{x.min()}, {x.max()}], '
                           'outside [0, 1].')
  outside = (x.max(0) > 0) & ~(weak > 0)
  if outside.any():
    raise PseudoLabelError(f'{path}: clip {clip!r}: positive for class indices '
                           f'{np.flatnonzero(outside).tolist()}, which are not among its weak '
                           f'labels {np.flatnonzero(weak > 0).tolist()}.')
  return x


def load_folder(folder: str, split: Split) -> np.ndarray:
  """The pseudo labels of every clip of `split` from `folder`: float32 (N, 10, 25). Files are
  named by the clip name's first 11 characters (the YouTube id), as the features are."""
  if not os.path.isdir(folder):
    raise PseudoLabelError(f'{folder}: no such pseudo-label folder.')
  return np.stack([load_file(os.path.join(folder, str(name)[:11] + '.npy'), str(name), weak)
                   for name, weak in zip(split.names, split.labels)])


def simulate(split: Split, rates, seed: int) -> dict[str, np.ndarray]:
  """Pseudo labels made from the dense truth of `split`: per modality, each truly active
  segment of a weak-label class is missed (0) with probability `rates.<m>_miss`, each
  inactive segment of a weak-label class is a false alarm (1) with probability
  `rates.<m>_false_alarm`; classes outside the weak labels stay 0.

  Returns {'audio', 'visual': float32 (N, 10, 25)}.
  """
  if split.gt_a is None:
    raise ValueError('Simulated pseudo labels need dense truth; this split has none: give '
                     'config.data.pseudo_labels.audio and .visual folders.')
  rng = np.random.default_rng([seed, 3])
  weak = (split.labels > 0)[:, None, :]  # (N, 1, 25)
  out = {}
  for m, gt in zip(MODALITIES, (split.gt_a, split.gt_v)):
    truth = np.swapaxes(gt, 1, 2) & weak  # (N, 10, 25)
    draw = rng.random(truth.shape)
    miss, false_alarm = rates[f'{m}_miss'], rates[f'{m}_false_alarm']
    out[m] = (np.where(truth, draw >= miss, draw < false_alarm) & weak).astype(np.float32)
  return out


def for_split(data_config, split: Split) -> dict[str, np.ndarray]:
  """The train split's pseudo labels, {'audio', 'visual': float32 (N, 10, 25)}: read from
  `data_config.pseudo_labels` folders when both are given, else simulated (built-in data)."""
  pc = data_config.pseudo_labels
  folders = {'audio': pc.audio, 'visual': pc.visual}
  if all(folders.values()):
    return {m: load_folder(f, split) for m, f in folders.items()}
  if any(folders.values()):
    raise ValueError('Give both config.data.pseudo_labels.audio and .visual, or neither '
                     f'(built-in data only); got {folders}.')
  if data_config.source != 'synthetic':
    raise ValueError('config.data.pseudo_labels.audio and .visual must name the folders of '
                     "VALOR's segment pseudo labels for the LLP data.")
  return simulate(split, pc.simulated, data_config.synthetic.seed)


def quality(pseudo: dict[str, np.ndarray], split: Split) -> dict[str, float]:
  """Segment-level precision and recall (%) of pseudo labels against the dense truth:
  {'audio/precision', 'audio/recall', 'visual/...'}; empty without truth."""
  if split.gt_a is None:
    return {}
  out = {}
  for m, gt in zip(MODALITIES, (split.gt_a, split.gt_v)):
    truth, pred = np.swapaxes(gt, 1, 2), pseudo[m] >= 0.5
    tp = float((truth & pred).sum())
    out[f'{m}/precision'] = 100 * tp / max(float(pred.sum()), 1.0)
    out[f'{m}/recall'] = 100 * tp / max(float(truth.sum()), 1.0)
  return out


def format_quality(quality: dict[str, float]) -> str:
  """'pseudo labels of the train split against its truth: audio precision 95.1 %, ...'."""
  if not quality:
    return 'pseudo labels: the train split has no truth to score them against'
  return 'pseudo labels of the train split against its truth (segments): ' + '; '.join(
      f'{m} precision {quality[f"{m}/precision"]:.1f} %, recall {quality[f"{m}/recall"]:.1f} %'
      for m in MODALITIES)
