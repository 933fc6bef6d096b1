"""The built-in synthetic LLP: statistics within tolerance of LLP's, determinism, shapes."""

import pathlib

import ml_collections
import numpy as np
import pytest

from avvp_jax.data import derive_stats, load_splits, synthetic
from avvp_jax.data.classes import CLASS_INDEX

LLP_DIR = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'llp'
NUM_STATS_CLIPS = 20_000


@pytest.fixture(scope='module')
def annotations():
  return synthetic.sample_annotations(np.random.default_rng(0), NUM_STATS_CLIPS)


def test_class_frequencies_match_llp(annotations):
  labels, _, _ = annotations
  target = np.asarray(synthetic.LLP_STATS['class_freq'])
  # 5 binomial standard deviations at 20,000 clips.
  tolerance = 5 * np.sqrt(target * (1 - target) / NUM_STATS_CLIPS)
  np.testing.assert_array_less(np.abs(labels.mean(0) - target), tolerance)
  assert labels.any(1).all(), 'every clip has at least one label'
  assert abs(labels.sum(1).mean() - target.sum()) < 0.03  # ~1.6 labels per clip.


def test_modality_asynchrony_matches_llp(annotations):
  labels, gt_a, gt_v = annotations
  audible, visible = gt_a.any(-1), gt_v.any(-1)
  target = synthetic.modality_probs(1.0)
  for name in ('Speech', 'Cheering', 'Car', 'Dog'):
    c = CLASS_INDEX[name]
    pairs = labels[:, c]
    measured = [(audible & ~visible)[pairs, c].mean(), (~audible & visible)[pairs, c].mean()]
    tolerance = 5 * np.sqrt(target[c, :2] * (1 - target[c, :2]) / pairs.sum()) + 1e-3
    np.testing.assert_array_less(np.abs(np.array(measured) - target[c, :2]), tolerance, name)
  # Speech is audible only in about three quarters of its clips, as in LLP.
  assert 0.72 < (audible & ~visible)[labels[:, 0], 0].mean() < 0.80


def test_audible_and_visible_events_share_their_extent_as_in_llp(annotations):
  labels, gt_a, gt_v = annotations
  both = labels & gt_a.any(-1) & gt_v.any(-1)
  identical = (gt_a[both] == gt_v[both]).all(-1).mean()
  # Copying is calibrated on full-clip coincidences only; partial ones add a little.
  assert abs(identical - synthetic.LLP_STATS['av_identical']) < 0.03


def test_dense_truth_only_where_labelled(annotations):
  labels, gt_a, gt_v = annotations
  assert not (gt_a.any(-1) & ~labels).any()
  assert not (gt_v.any(-1) & ~labels).any()
  # Some events cover part of the clip only, some have several runs.
  lengths = gt_a.sum(-1)[gt_a.any(-1)]
  assert (lengths == 10).mean() > 0.2 and (lengths < 10).mean() > 0.2


def test_no_asynchrony_means_every_label_in_both_modalities():
  labels, gt_a, gt_v = synthetic.sample_annotations(np.random.default_rng(1), 2000, 0.0)
  np.testing.assert_array_equal(gt_a.any(-1), labels)
  np.testing.assert_array_equal(gt_v.any(-1), labels)


def test_asynchrony_out_of_range_is_an_error():
  with pytest.raises(ValueError, match='asynchrony'):
    synthetic.modality_probs(2.0)


def _config(**overrides):
  c = ml_collections.ConfigDict(dict(seed=0, num_train=40, num_val=10, num_test=12, noise=1.0,
                                     asynchrony=1.0))
  c.update(overrides)
  return ml_collections.ConfigDict(dict(source='synthetic', synthetic=c))


def test_splits_shapes_dtypes_and_ranges():
  splits = load_splits(_config())
  assert {k: len(v) for k, v in splits.items()} == {'train': 40, 'val': 10, 'test': 12}
  s = splits['train']
  assert s.audio.shape == (40, 10, 128) and s.audio.dtype == np.float32
  assert s.video_2d.shape == (40, 10, 2048) and s.video_2d.dtype == np.float32
  assert s.video_3d.shape == (40, 10, 512) and s.video_3d.dtype == np.float32
  assert s.labels.shape == (40, 25) and s.labels.dtype == np.float32
  assert s.gt_a.shape == s.gt_v.shape == (40, 25, 10) and s.has_dense_truth
  # Visual features are post-ReLU like ResNet / R(2+1)D; audio is real-valued.
  assert s.video_2d.min() == 0 and s.video_3d.min() == 0 and s.audio.min() < 0
  assert np.isfinite(s.audio).all() and np.isfinite(s.video_2d).all()
  assert len(set(s.names)) == 40


def test_same_seed_same_arrays_other_seed_other_arrays():
  a, b = load_splits(_config()), load_splits(_config())
  c = load_splits(_config(seed=1))
  for split in a:
    for field in ('audio', 'video_2d', 'video_3d', 'labels', 'gt_a', 'gt_v'):
      np.testing.assert_array_equal(getattr(a[split], field), getattr(b[split], field))
  assert not np.array_equal(a['train'].audio, c['train'].audio)
  assert not np.array_equal(a['train'].audio, a['val'].audio[:1])


def test_events_are_visible_in_the_features():
  """A class's audio prototype correlates with the segments where it is audible."""
  s = synthetic.generate_split(300, 0, 'train')
  proto = synthetic._prototypes()['audio'][0]  # Speech
  score = s.audio @ proto  # (N, T)
  on, off = s.gt_a[:, 0, :], ~s.gt_a[:, 0, :]
  assert score[on].mean() > score[off].mean() + 0.5 * proto @ proto


@pytest.mark.skipif(not LLP_DIR.is_dir(), reason=f'{LLP_DIR} (real LLP annotations) not present')
def test_embedded_statistics_are_derived_from_the_real_files():
  assert derive_stats.derive(str(LLP_DIR)) == synthetic.LLP_STATS
