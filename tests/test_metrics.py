"""Tests of the evaluation protocol (docs/spec.md, section 5) in avvp_jax.metrics."""

import numpy as np
import pytest

from avvp_jax import metrics
from avvp_jax.data.classes import CLASSES

C, T = len(CLASSES), 10
KEYS = [f'{level}/{m}' for level in ('segment', 'event')
        for m in ('audio', 'visual', 'av', 'type', 'event')]


# A plain per-clip, per-class reference implementation, written from the spec: runs are found
# by scanning, IoU is computed on Python sets.


def _ref_runs(row):
  """Maximal runs of True in a 1-D row, as sets of segment indices."""
  runs, current = [], set()
  for t, on in enumerate(row):
    if on:
      current.add(t)
    elif current:
      runs.append(current)
      current = set()
  if current:
    runs.append(current)
  return runs


def _ref_segment_counts(pred_row, gt_row):
  tp = sum(1 for p, g in zip(pred_row, gt_row) if p and g)
  fp = sum(1 for p, g in zip(pred_row, gt_row) if p and not g)
  fn = sum(1 for p, g in zip(pred_row, gt_row) if g and not p)
  return tp, fp, fn


def _ref_event_counts(pred_row, gt_row):
  pred_runs, gt_runs = _ref_runs(pred_row), _ref_runs(gt_row)

  def matches(a, b):
    return len(a & b) / len(a | b) >= 0.5

  tp = sum(1 for p in pred_runs if any(matches(p, g) for g in gt_runs))
  fp = len(pred_runs) - tp
  fn = sum(1 for g in gt_runs if not any(matches(p, g) for p in pred_runs))
  return tp, fp, fn


def _ref_clip_score(class_counts):
  """class_counts: list of (tp, fp, fn), one per class."""
  fs = [2 * tp / (2 * tp + fp + fn)
        for tp, fp, fn in class_counts if tp + fp > 0 or tp + fn > 0]
  return sum(fs) / len(fs) if fs else 1.0


def _ref_evaluate(pred_a, pred_v, gt_a, gt_v):
  n, c, _ = pred_a.shape
  pred = {'audio': pred_a, 'visual': pred_v, 'av': pred_a & pred_v}
  gt = {'audio': gt_a, 'visual': gt_v, 'av': gt_a & gt_v}
  results = {}
  for level, count in (('segment', _ref_segment_counts), ('event', _ref_event_counts)):
    totals = {m: 0.0 for m in ('audio', 'visual', 'av', 'event')}
    for i in range(n):
      per_modality = {}
      for m in ('audio', 'visual', 'av'):
        per_modality[m] = [count(list(pred[m][i, k]), list(gt[m][i, k])) for k in range(c)]
        totals[m] += _ref_clip_score(per_modality[m])
      pooled = [tuple(x + y for x, y in zip(a, v))
                for a, v in zip(per_modality['audio'], per_modality['visual'])]
      totals['event'] += _ref_clip_score(pooled)
    for m in ('audio', 'visual', 'av'):
      results[f'{level}/{m}'] = 100 * totals[m] / n
    results[f'{level}/type'] = sum(results[f'{level}/{m}']
                                   for m in ('audio', 'visual', 'av')) / 3
    results[f'{level}/event'] = 100 * totals['event'] / n
  return results


# Random inputs covering empty to full clips, isolated segments and long runs at both ends.


def _random_rows(rng, shape):
  """(N, C, T) bool; each clip gets its own density from 0 to 1, i.i.d. or run-like."""
  n, c, t = shape
  density = rng.choice([0.0, 0.05, 0.2, 0.5, 0.8, 1.0, -1.0], size=(n, 1, 1))
  density = np.where(density < 0, rng.uniform(size=(n, 1, 1)), density)
  iid = rng.uniform(size=shape) < density
  # Run-like rows: a sticky Markov chain, started and kept on with probability `density`.
  sticky = np.empty(shape, dtype=bool)
  sticky[..., 0] = rng.uniform(size=(n, c)) < density[..., 0]
  for step in range(1, t):
    keep = rng.uniform(size=(n, c)) < 0.8
    sticky[..., step] = np.where(keep, sticky[..., step - 1],
                                 rng.uniform(size=(n, c)) < density[..., 0])
  return np.where(rng.uniform(size=(n, 1, 1)) < 0.5, iid, sticky)


def _perturb(rng, truth):
  """A prediction near the truth: shifted by -1..1 segments, grown or shrunk, bits flipped."""
  shifted = np.roll(truth, rng.integers(-1, 2), axis=-1)
  grown = shifted | np.roll(shifted, 1, axis=-1)
  shrunk = shifted & np.roll(shifted, 1, axis=-1)
  choice = rng.integers(0, 3, size=truth.shape[:2] + (1,))
  near = np.where(choice == 0, shifted, np.where(choice == 1, grown, shrunk))
  flip_rate = rng.choice([0.0, 0.05, 0.2], size=(truth.shape[0], 1, 1))
  flips = rng.uniform(size=truth.shape) < flip_rate
  return near ^ flips


def _assert_same(got, expected):
  assert list(got) == KEYS
  for key in KEYS:
    assert got[key] == pytest.approx(expected[key], abs=1e-9), key


@pytest.mark.parametrize('seed', range(4))
def test_matches_reference_on_random_clips(seed):
  rng = np.random.default_rng(seed)
  shape = (1500, 6, T)
  gt_a, gt_v = _random_rows(rng, shape), _random_rows(rng, shape)
  # Half the clips predicted independently of the truth, half near it (so events often match).
  pred_a = np.where(rng.uniform(size=(shape[0], 1, 1)) < 0.5, _random_rows(rng, shape),
                    _perturb(rng, gt_a))
  pred_v = np.where(rng.uniform(size=(shape[0], 1, 1)) < 0.5, _random_rows(rng, shape),
                    _perturb(rng, gt_v))
  _assert_same(metrics.evaluate(pred_a, pred_v, gt_a, gt_v),
               _ref_evaluate(pred_a, pred_v, gt_a, gt_v))


@pytest.mark.parametrize('num_segments', [1, 2, 3, 7, 10])
def test_matches_reference_for_other_clip_lengths(num_segments):
  rng = np.random.default_rng(100 + num_segments)
  shape = (300, 4, num_segments)
  gt_a, gt_v = _random_rows(rng, shape), _random_rows(rng, shape)
  pred_a, pred_v = _perturb(rng, gt_a), _random_rows(rng, shape)
  _assert_same(metrics.evaluate(pred_a, pred_v, gt_a, gt_v),
               _ref_evaluate(pred_a, pred_v, gt_a, gt_v))


def test_event_counts_match_reference_on_all_short_rows():
  # Every pair of rows of length 6 (4096 pairs): all run layouts, touching both ends.
  codes = np.arange(2**6)
  rows = (codes[:, None] >> np.arange(6)) & 1 == 1  # (64, 6)
  pred = np.repeat(rows, 64, axis=0)[None]  # (1, 4096, 6)
  gt = np.tile(rows, (64, 1))[None]
  tp, fp, fn = metrics._event_counts(pred, gt)
  expected = np.array([_ref_event_counts(p, g) for p, g in zip(pred[0], gt[0])])
  np.testing.assert_array_equal(np.stack([tp[0], fp[0], fn[0]], axis=-1), expected)


# Hand-written cases with known answers.


def _clips(n=1):
  """Four empty (n, C, T) arrays: pred_a, pred_v, gt_a, gt_v."""
  return [np.zeros((n, C, T), dtype=bool) for _ in range(4)]


def _on(*segments):
  row = np.zeros(T, dtype=bool)
  row[list(segments)] = True
  return row


def test_empty_clip_scores_one_everywhere():
  results = metrics.evaluate(*_clips())
  assert results == {key: 100.0 for key in KEYS}


def test_perfect_prediction_scores_100():
  rng = np.random.default_rng(0)
  gt_a, gt_v = rng.uniform(size=(2, 20, C, T)) < 0.3
  results = metrics.evaluate(gt_a, gt_v, gt_a, gt_v)
  for key in KEYS:
    assert results[key] == pytest.approx(100.0)


def test_prediction_shifted_by_one_segment():
  pred_a, pred_v, gt_a, gt_v = _clips()
  gt_a[0, 3] = _on(2, 3, 4, 5)
  pred_a[0, 3] = _on(3, 4, 5, 6)
  results = metrics.evaluate(pred_a, pred_v, gt_a, gt_v)
  # Segments: TP = 3 (3..5), FP = 1 (6), FN = 1 (2): F = 2*3 / (2*3 + 1 + 1) = 0.75.
  assert results['segment/audio'] == pytest.approx(75.0)
  # Visual and audio-visual are empty in both: 1.0 each.
  assert results['segment/visual'] == results['segment/av'] == 100.0
  assert results['segment/type'] == pytest.approx((75 + 100 + 100) / 3)
  # Event@AV pools audio (3, 1, 1) and visual (0, 0, 0): 0.75 again.
  assert results['segment/event'] == pytest.approx(75.0)
  # Events: IoU({3..6}, {2..5}) = 3 / 5 = 0.6 >= 0.5, so the predicted event is a TP.
  assert results['event/audio'] == pytest.approx(100.0)
  assert results['event/event'] == pytest.approx(100.0)


def test_two_predicted_events_over_one_truth_event():
  # With set IoU and a 0.5 threshold, two disjoint predicted events can never both match one
  # truth event (their overlaps with it would each need half of it, but a gap lies between
  # them). The non-one-to-one rule shows as: the truth is matched once, the other is an FP.
  pred_a, pred_v, gt_a, gt_v = _clips()
  gt_a[0, 0] = _on(1, 2, 3, 4, 5, 6)
  pred_a[0, 0] = _on(1, 2, 3, 5, 6)  # IoU({1,2,3}, truth) = 3/6 (TP); {5,6}: 2/6 (FP).
  results = metrics.evaluate(pred_a, pred_v, gt_a, gt_v)
  # TP = 1, FP = 1, FN = 0: F = 2 / 3.
  assert results['event/audio'] == pytest.approx(200 / 3)
  # Segments: TP = 5, FP = 0, FN = 1 (segment 4): F = 10 / 11.
  assert results['segment/audio'] == pytest.approx(1000 / 11)


def test_one_predicted_event_over_two_truth_events():
  pred_a, pred_v, gt_a, gt_v = _clips()
  gt_v[0, 0] = _on(0, 1, 2, 4, 5)
  pred_v[0, 0] = _on(0, 1, 2, 3, 4, 5)
  # IoU with {0,1,2} = 3/6 (match), with {4,5} = 2/6 (FN): TP = 1, FP = 0, FN = 1: F = 2/3.
  assert metrics.evaluate(pred_a, pred_v, gt_a, gt_v)['event/visual'] == pytest.approx(200 / 3)


def test_length_one_events_at_both_ends():
  pred_a, pred_v, gt_a, gt_v = _clips()
  gt_a[0, 5] = _on(0, 9)
  pred_a[0, 5] = _on(0, 8, 9)
  results = metrics.evaluate(pred_a, pred_v, gt_a, gt_v)
  # {0} matches {0} (IoU 1); {8, 9} matches {9} (IoU 1/2): TP = 2, F = 1.
  assert results['event/audio'] == pytest.approx(100.0)
  # Segments: TP = 2, FP = 1 (8), FN = 0: F = 4 / 5.
  assert results['segment/audio'] == pytest.approx(80.0)

  pred_a[0, 5] = _on(9)  # Misses the event at t = 0: TP = 1, FN = 1: F = 2 / 3.
  assert metrics.evaluate(pred_a, pred_v, gt_a, gt_v)['event/audio'] == pytest.approx(200 / 3)


@pytest.mark.parametrize('gt_segments, pred_segments, expected', [
    (range(2, 6), (2, 3), 100.0),  # IoU 2/4 = 0.5: counts as a match.
    (range(0, 10), range(0, 5), 100.0),  # IoU 5/10 = 0.5.
    (range(1, 10), range(1, 5), 0.0),  # IoU 4/9 < 0.5: one FP and one FN.
    (range(2, 7), (2, 3), 0.0),  # IoU 2/5 < 0.5.
])
def test_event_iou_threshold_is_inclusive(gt_segments, pred_segments, expected):
  pred_a, pred_v, gt_a, gt_v = _clips()
  gt_a[0, 1] = _on(*gt_segments)
  pred_a[0, 1] = _on(*pred_segments)
  assert metrics.evaluate(pred_a, pred_v, gt_a, gt_v)['event/audio'] == pytest.approx(expected)


def test_clip_score_averages_only_present_classes():
  pred_a, pred_v, gt_a, gt_v = _clips()
  gt_a[0, 0] = pred_a[0, 0] = _on(1, 2)  # F = 1.
  pred_a[0, 3] = _on(4)  # Prediction only: F = 0.
  gt_a[0, 7] = _on(*range(10))
  pred_a[0, 7] = _on(*range(5))  # Segments: 2*5 / (2*5 + 0 + 5) = 2/3.
  results = metrics.evaluate(pred_a, pred_v, gt_a, gt_v)
  # Mean over the three present classes, not over all 25: (1 + 0 + 2/3) / 3 = 5/9.
  assert results['segment/audio'] == pytest.approx(500 / 9)
  # Events: class 0 F = 1, class 3 F = 0, class 7 IoU 5/10 = 0.5 so F = 1: 2/3.
  assert results['event/audio'] == pytest.approx(200 / 3)


def test_dataset_score_is_mean_over_clips():
  pred_a, pred_v, gt_a, gt_v = _clips(2)
  gt_a[1, 2] = _on(4, 5)  # Clip 0 is empty (1.0); clip 1 misses its only event (0.0).
  results = metrics.evaluate(pred_a, pred_v, gt_a, gt_v)
  assert results['segment/audio'] == pytest.approx(50.0)
  assert results['event/audio'] == pytest.approx(50.0)


def test_audio_visual_is_and_of_modalities():
  pred_a, pred_v, gt_a, gt_v = _clips()
  gt_a[0, 0] = _on(0, 1, 2, 3)
  gt_v[0, 0] = _on(2, 3, 4, 5)  # Audio-visual truth: {2, 3}.
  pred_a[0, 0] = _on(2, 3, 4)
  pred_v[0, 0] = _on(1, 2, 3)  # Audio-visual prediction: {2, 3}.
  results = metrics.evaluate(pred_a, pred_v, gt_a, gt_v)
  assert results['segment/av'] == pytest.approx(100.0)
  assert results['event/av'] == pytest.approx(100.0)
  # Event@AV pools audio (2, 1, 2) and visual (2, 1, 2): 2*4 / (2*4 + 2 + 4) = 8/14.
  assert results['segment/event'] == pytest.approx(800 / 14)


def test_evaluate_rejects_mismatched_shapes():
  pred_a, pred_v, gt_a, _ = _clips()
  with pytest.raises(ValueError):
    metrics.evaluate(pred_a, pred_v, gt_a, np.zeros((1, C, T - 1), dtype=bool))


# segment_predictions.


def test_segment_predictions_thresholds_and_layout():
  n = 2
  frame_prob = np.zeros((n, T, 2, C))
  a_prob = np.zeros((n, C))
  v_prob = np.zeros((n, C))
  frame_prob[1, 7, 0, 4] = 0.5  # Exactly at the threshold: on.
  frame_prob[1, 8, 0, 4] = 0.4999999
  frame_prob[1, 9, 0, 4] = 0.9
  a_prob[1, 4] = 0.5
  frame_prob[0, 3, 1, 2] = 0.8
  frame_prob[0, 3, 1, 6] = 0.8
  v_prob[0, 2] = 0.7
  v_prob[0, 6] = 0.4999999  # Clip-level probability below the threshold gates the class off.
  frame_prob[0, 0, 0, 2] = 0.9  # Audio frame on but a_prob is 0: off.
  pred_a, pred_v = metrics.segment_predictions(frame_prob, a_prob, v_prob)
  assert pred_a.shape == pred_v.shape == (n, C, T)
  assert pred_a.dtype == pred_v.dtype == bool
  expected_a = np.zeros((n, C, T), dtype=bool)
  expected_a[1, 4, [7, 9]] = True
  expected_v = np.zeros((n, C, T), dtype=bool)
  expected_v[0, 2, 3] = True
  np.testing.assert_array_equal(pred_a, expected_a)
  np.testing.assert_array_equal(pred_v, expected_v)


def test_segment_predictions_custom_threshold():
  frame_prob = np.full((1, T, 2, C), 0.3)
  pred_a, pred_v = metrics.segment_predictions(frame_prob, np.full((1, C), 0.3),
                                               np.full((1, C), 0.2), threshold=0.3)
  assert pred_a.all() and not pred_v.any()


# per_class_f, formatting and reports.


def test_per_class_f_pools_over_clips():
  pred, _, gt, _ = _clips(2)
  gt[0, 0] = _on(1, 2)
  pred[0, 0] = _on(1, 2, 3)  # TP 2, FP 1.
  gt[1, 0] = _on(5)  # FN 1.
  pred[1, 2] = _on(0)  # Class 2: prediction only.
  f = metrics.per_class_f(pred, gt)
  assert f.shape == (C,)
  assert f[0] == pytest.approx(100 * 4 / 6)  # 2*2 / (2*2 + 1 + 1).
  assert f[2] == 0.0
  assert np.isnan(f[1]) and np.isnan(f[3:]).all()


def _example_results():
  return {key: 10.0 * i + 0.25 for i, key in enumerate(KEYS)}


def test_format_table_layout():
  table = metrics.format_table(_example_results(), title='test split')
  lines = table.splitlines()
  assert lines[0] == 'test split'
  for name in ('Audio', 'Visual', 'Audio-Visual', 'Type@AV', 'Event@AV'):
    assert name in lines[1]
  assert lines[2].startswith('Segment-level')
  assert lines[2].split()[1:] == ['0.2', '10.2', '20.2', '30.2', '40.2']
  assert lines[3].startswith('Event-level')
  assert lines[3].split()[1:] == ['50.2', '60.2', '70.2', '80.2', '90.2']
  assert metrics.format_table(_example_results()).splitlines()[0] == lines[1]


def test_format_table_signed_shows_differences():
  diff = {key: 1.5 - i for i, key in enumerate(KEYS)}
  lines = metrics.format_table(diff, signed=True).splitlines()
  assert lines[1].split()[1:] == ['+1.5', '+0.5', '-0.5', '-1.5', '-2.5']
  assert lines[2].split()[1:] == ['-3.5', '-4.5', '-5.5', '-6.5', '-7.5']


def test_format_per_class_lists_every_class():
  f_audio = np.arange(C, dtype=float)
  f_visual = np.full(C, np.nan)
  lines = metrics.format_per_class(f_audio, f_visual).splitlines()
  assert len(lines) == C + 1
  assert lines[1].split() == ['Speech', '0.0', '-']
  assert lines[-1].split() == ['Clapping', '24.0', '-']


def test_format_mean_sd_leaves_undefined_values_out():
  assert metrics.format_mean_sd([50.0, None, 70.0]) == '60.0 ± 10.0 (2 of 3)'
  assert metrics.format_mean_sd([None, None]) == 'n/a'
  assert metrics.format_mean_sd([0.0, 0.0]) == '0.0 ± 0.0'
  assert metrics.format_mean_sd([7.25]) == '7.2'
  assert metrics.format_mean_sd([None, 7.25]) == '7.2 (1 of 2)'


def test_summarise_seeds_means_defined_per_class_values_and_population_sd():
  per_class = lambda *v: np.array(list(v) + [np.nan] * (len(CLASSES) - len(v)))
  evaluations = [{'results': {'segment/audio': 60.0}, 'per_class_audio': per_class(10.0, np.nan),
                  'per_class_visual': per_class(1.0)},
                 {'results': {'segment/audio': 64.0}, 'per_class_audio': per_class(30.0, 5.0),
                  'per_class_visual': per_class(3.0)}]
  summary = metrics.summarise_seeds(evaluations)
  assert summary['results'] == {'segment/audio': 62.0} and summary['sd'] == {'segment/audio': 2.0}
  np.testing.assert_array_equal(summary['per_class_audio'][:3], [20.0, 5.0, np.nan])
  assert metrics.summarise_seeds(evaluations[:1])['sd'] is None
