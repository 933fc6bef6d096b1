"""The pictures: drawn without a display, PNGs of their stated size that show their input."""

import io
import struct

import numpy as np
import pytest
from matplotlib import image
from matplotlib.colors import to_rgb

from avvp_jax import logs, plots
from avvp_jax.data.classes import CLASSES


def _pixels(png: bytes) -> tuple[tuple[int, int], np.ndarray]:
  """((width, height) from the PNG header, (H, W, 3) uint8 pixels)."""
  assert png[:8] == b'\x89PNG\r\n\x1a\n' and png[12:16] == b'IHDR'
  size = struct.unpack('>II', png[16:24])
  return size, np.round(image.imread(io.BytesIO(png))[..., :3] * 255).astype(np.uint8)


def _count(pixels: np.ndarray, colour: str) -> int:
  want = np.round(np.array(to_rgb(colour)) * 255).astype(np.uint8)
  return int(np.all(pixels == want, axis=-1).sum())


HIT, MISSED, FALSE_ALARM = plots.OUTCOME_COLOURS[1:]


def test_outcomes_of_every_cell():
  pred = np.array([[1, 1, 0, 0]], bool)
  truth = np.array([[1, 0, 1, 0]], bool)
  np.testing.assert_array_equal(plots.outcomes(pred, truth), [[1, 3, 2, 0]])


def test_pick_clips_takes_those_with_an_event_of_one_modality():
  gt_a = np.zeros((4, 25, 10), bool)
  gt_v = np.zeros((4, 25, 10), bool)
  gt_a[0, 3, :4] = gt_v[0, 3, 5:] = True  # Heard and seen, at other times: not chosen.
  gt_a[1, 2, :2] = True  # Heard only.
  gt_v[3, 7, 1] = True  # Seen only.
  np.testing.assert_array_equal(plots.pick_clips(gt_a, gt_v, 5), [1, 3])
  np.testing.assert_array_equal(plots.pick_clips(gt_a, gt_v, 1), [1])


@pytest.mark.parametrize('rows', [1, 2])
def test_timeline_shows_hits_misses_and_false_alarms(rows):
  truth = {m: np.zeros((25, 10), bool) for m in plots.MODALITIES}
  truth['audio'][0, 2:7] = truth['visual'][4, :3] = True
  right = {m: t.copy() for m, t in truth.items()}
  fig = plots.timeline('clip', {f'model {r}': right for r in range(rows)}, truth)
  # Only the two classes that have an event: 1.5 + (1 + 0.22 x 2) inches per row.
  assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [CLASSES[0], CLASSES[4]]
  size, pixels = _pixels(plots.png(fig))
  assert size == (1000, 150 + 144 * rows)
  # Only hits, in 5 + 3 cells per row of panels, each cell some 30 x 40 pixels.
  assert _count(pixels, HIT) > 8 * rows * 200
  assert _count(pixels, MISSED) < 500 and _count(pixels, FALSE_ALARM) < 500  # The legend.

  wrong = {'audio': np.zeros((25, 10), bool), 'visual': truth['visual'] | ~truth['visual']}
  size, pixels = _pixels(plots.png(plots.timeline('clip', {'wrong': wrong}, truth)))
  assert size == (1000, 150 + 650)  # Every class is predicted visible somewhere.
  assert _count(pixels, MISSED) > 5 * 200  # The audio event, missed.
  assert _count(pixels, FALSE_ALARM) > 200 * 200  # All the rest of visual.
  assert _count(pixels, HIT) > 3 * 200  # The visual event.


def test_timeline_shows_the_classes_of_the_truth_or_of_any_prediction():
  truth = {m: np.zeros((25, 10), bool) for m in plots.MODALITIES}
  truth['audio'][7, 1] = True
  pred = {m: np.zeros((25, 10), bool) for m in plots.MODALITIES}
  pred['visual'][3, 2] = True  # A false alarm of another class, in the other modality.
  other = {m: np.zeros((25, 10), bool) for m in plots.MODALITIES}
  other['audio'][20, 0] = True
  np.testing.assert_array_equal(plots.shown_classes({'a': pred, 'b': other}, truth), [3, 7, 20])
  empty = {m: np.zeros((25, 10), bool) for m in plots.MODALITIES}
  np.testing.assert_array_equal(plots.shown_classes({'a': empty}, empty), np.arange(25))


def test_heard_and_seen_shows_the_found_classes_and_outlines_their_seconds():
  pred = {m: np.zeros((25, 10), bool) for m in plots.MODALITIES}
  prob = {m: np.full((25, 10), 0.1) for m in plots.MODALITIES}
  pred['audio'][6, 2:5] = pred['visual'][11, 0] = True
  fig = plots.heard_and_seen('clip', pred, prob, note='a note')
  heard, seen = fig.axes[:2]
  assert [t.get_text() for t in heard.get_yticklabels()] == [CLASSES[6], CLASSES[11]]
  # One outline per found second, in its own panel.
  assert len(heard.patches) == 3 and len(seen.patches) == 1
  assert fig._suptitle.get_text() == 'clip\na note'  # pylint: disable=protected-access
  size, _ = _pixels(plots.png(fig))
  assert size == (1000, 240)

  # Nothing found: the five most probable classes, and the title says so.
  none = {m: np.zeros((25, 10), bool) for m in plots.MODALITIES}
  prob['visual'][[2, 9, 14, 20, 24], 3] = 0.4
  fig = plots.heard_and_seen('clip', none, prob)
  assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
      CLASSES[k] for k in (2, 9, 14, 20, 24)]
  assert 'no event found' in fig._suptitle.get_text()  # pylint: disable=protected-access
  assert not fig.axes[0].patches and not fig.axes[1].patches


def test_refinement_marks_what_was_dropped():
  examples = [{'name': f'clip{i}', 'classes': [0, 5], 'drop_a': np.array([False, i == 0]),
               'drop_v': np.array([i == 1, False]),
               'truth_a': np.array([True, False]) if i else None,
               'truth_v': np.array([False, True]) if i else None} for i in range(3)]
  size, pixels = _pixels(plots.png(plots.refinement(
      {'audio': examples[:1], 'visual': examples[1:]})))
  assert size == (1400, 700)
  kept = _count(pixels, '#9ecae1')
  assert kept > 9 * 2000  # 3 panels of 2 x 2 cells, 3 of them kept in each.
  size, fewer = _pixels(plots.png(plots.refinement({'audio': examples[:1], 'visual': []})))
  assert size == (1400, 700) and _count(fewer, '#9ecae1') < kept / 2


def test_per_class_draws_a_bar_per_stage_and_class():
  f = {'base': {'audio': np.full(25, 50.0), 'visual': np.full(25, 40.0)},
       'final': {'audio': np.full(25, 90.0), 'visual': np.r_[np.full(24, 80.0), np.nan]}}
  size, pixels = _pixels(plots.png(plots.per_class(f)))
  assert size == (1200, 800)
  base, final = (_count(pixels, plots.STAGE_COLOURS[s]) for s in ('base', 'final'))
  assert base > 1000 and final > 1.5 * base  # Longer bars for higher F.


def test_curves_draw_every_loss_term_and_stage():
  records = [logs.EpochRecord(
      stage=stage, epoch=e, seed=seed, step=3 * e, lr=1e-3,
      train={'total': k + 3.0 / e, 'audio': k + 1.0 / e},
      val={'segment/type': 50.0 + e + k, 'event/type': 45.0 + e + k}, seconds=1.0, time=0.0)
             for k, stage in enumerate(('base', 'final')) for seed in (0, 1) for e in (1, 2, 3)]
  size, pixels = _pixels(plots.png(plots.curves(records)))
  assert size == (1200, 700)
  for stage in ('base', 'final'):
    assert _count(pixels, plots.STAGE_COLOURS[stage]) > 300
  _, base_only = _pixels(plots.png(plots.curves(records[:6])))
  assert _count(base_only, plots.STAGE_COLOURS['final']) == 0
