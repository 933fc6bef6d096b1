"""Derives the synthetic data set's per-class statistics from a folder of LLP annotation CSVs.

  python -m avvp_jax.data.derive_stats /path/to/llp_csvs

prints the `LLP_STATS` literal kept in `avvp_jax/data/synthetic.py`. Statistics:
  * `class_freq[c]`: fraction of train clips whose weak label contains c (AVVP_train.csv).
  * `modality[c]`: over the (clip, c) pairs of the val+test weak labels, the fractions that are
    audible only, visible only, both, neither in the dense annotations (docs/spec.md section 1).
  * `full[m][c]`: for modality m, the fraction of present (clip, c) pairs whose event covers all
    10 segments; `mean_len[m][c]`: the mean number of covered segments when it does not.
  * `multi_run[m]`: fraction of present, not-full (clip, class) pairs with more than one event.
  * `av_identical`: fraction of the audible-and-visible (clip, class) pairs whose audio and
    visual extents are the same segments (a sound and its visible source mostly start and
    stop together).
"""

import os
import sys

import numpy as np

from avvp_jax.data import annotations
from avvp_jax.data.classes import NUM_CLASSES, NUM_SEGMENTS

def _num_runs(row: np.ndarray) -> np.ndarray:
  """Number of maximal runs of True along the last axis. row: bool (..., T)."""
  starts = row & ~np.concatenate([np.zeros_like(row[..., :1]), row[..., :-1]], axis=-1)
  return starts.sum(-1)


def derive(llp_dir: str) -> dict:
  """Returns the statistics as plain Python numbers (see the module docstring)."""
  path = lambda name: os.path.join(llp_dir, name)
  _, train_labels = annotations.read_weak_labels(path('AVVP_train.csv'))
  names, labels = [], []
  for split in ('AVVP_val_pd.csv', 'AVVP_test_pd.csv'):
    n, l = annotations.read_weak_labels(path(split))
    names += n
    labels.append(l)
  labels = np.concatenate(labels) > 0
  gt = {}
  for m, name in (('audio', 'AVVP_eval_audio.csv'), ('visual', 'AVVP_eval_visual.csv')):
    gt[m], _ = annotations.dense_truth(annotations.read_event_rows(path(name)), names)

  audible, visible = gt['audio'].any(-1), gt['visual'].any(-1)  # (N, C)
  kinds = np.stack([audible & ~visible, ~audible & visible, audible & visible,
                    ~audible & ~visible], -1)  # (N, C, 4)
  pairs = labels.sum(0)  # (C,)
  modality = (kinds & labels[..., None]).sum(0) / np.maximum(pairs, 1)[:, None]

  full, mean_len, multi_run = {}, {}, {}
  for m in ('audio', 'visual'):
    present = gt[m].any(-1)
    length = gt[m].sum(-1)
    is_full = length == NUM_SEGMENTS
    full[m] = [float(is_full[:, c][present[:, c]].mean()) for c in range(NUM_CLASSES)]
    partial = present & ~is_full
    mean_len[m] = [float(length[:, c][partial[:, c]].mean()) if partial[:, c].any() else 5.0
                   for c in range(NUM_CLASSES)]
    multi_run[m] = float((_num_runs(gt[m])[partial] > 1).mean())

  both = labels & audible & visible
  av_identical = float((gt['audio'][both] == gt['visual'][both]).all(-1).mean())

  r = lambda x: [round(float(v), 4) for v in x]
  return {
      'class_freq': r(train_labels.mean(0)),
      'modality': [r(row) for row in modality],
      'full': {m: r(v) for m, v in full.items()},
      'mean_len': {m: r(v) for m, v in mean_len.items()},
      'multi_run': {m: round(v, 4) for m, v in multi_run.items()},
      'av_identical': round(av_identical, 4),
  }


def main(argv):
  if len(argv) != 2:
    raise SystemExit('usage: python -m avvp_jax.data.derive_stats LLP_CSV_DIR')
  stats = derive(argv[1])
  print('LLP_STATS = {')
  for key, value in stats.items():
    print(f'    {key!r}: {value!r},')
  print('}')


if __name__ == '__main__':
  main(sys.argv)
