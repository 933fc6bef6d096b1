"""Segment predictions <-> event rows in LLP's dense-label format, and the checks on reading."""

import numpy as np
import pytest

from avvp_jax import events
from avvp_jax.data import annotations
from avvp_jax.data.classes import CLASSES

NAMES = np.array(['clipA_0_10', 'clipB_0_10', 'clipC_0_10'])


def test_events_round_trip_through_the_csv_file(tmp_path):
  rng = np.random.default_rng(0)
  pred = rng.random((3, 25, 10)) < 0.3
  pred[2] = False  # A clip with no event writes no row and reads back as no events.
  prob = rng.random((3, 25, 10))
  rows = events.to_events(pred, NAMES, prob)
  path = str(tmp_path / 'events_audio.csv')
  events.write_events_csv(path, rows)
  lines = open(path).read().splitlines()
  assert lines[0] == 'filename\tonset\toffset\tevent_labels' and len(lines) == len(rows) + 1
  np.testing.assert_array_equal(events.read_predictions(path, NAMES), pred)
  assert not any(r['filename'] == 'clipC_0_10' for r in rows)
  for r in rows:  # Maximal runs, each with the mean probability of its segments.
    i, c = list(NAMES).index(r['filename']), CLASSES.index(r['event_labels'])
    assert pred[i, c, r['onset']:r['offset']].all()
    assert not pred[i, c, r['onset'] - 1] if r['onset'] else True
    assert not pred[i, c, r['offset']] if r['offset'] < 10 else True
    assert r['confidence'] == pytest.approx(prob[i, c, r['onset']:r['offset']].mean())
  whole = np.zeros((1, 25, 10), bool)
  whole[0, 3] = True
  assert events.to_events(whole, NAMES[:1]) == [
      {'filename': 'clipA_0_10', 'onset': 0, 'offset': 10, 'event_labels': CLASSES[3]}]


@pytest.mark.parametrize('text, message', [
    ('file\tonset\toffset\tevent_labels\n', r':1: header is'),
    ('filename\tonset\toffset\tevent_labels\nclipA_0_10\t0\t3\tUnicorn\n',
     r":2: clip 'clipA_0_10'.*Unicorn"),
    ('filename\tonset\toffset\tevent_labels\nclipA_0_10\t0\t3\tSpeech\nclipB_0_10\t2\t11\tDog\n',
     r":3: clip 'clipB_0_10': offset 11 is outside 0..10"),
    ('filename\tonset\toffset\tevent_labels\nclipA_0_10\t4\t4\tSpeech\n',
     r":2: clip 'clipA_0_10': onset 4 >= offset 4"),
    ('filename\tonset\toffset\tevent_labels\nclipZ_0_10\t0\t1\tSpeech\n',
     r":2: clip 'clipZ_0_10' is not in the split"),
    ('filename\tonset\toffset\tevent_labels\nclipA_0_10\t0.5\t1\tSpeech\n',
     r":2: clip 'clipA_0_10': onset '0.5' / offset '1' are not integer seconds"),
])
def test_malformed_prediction_files_name_the_file_the_row_and_the_problem(tmp_path, text,
                                                                          message):
  path = tmp_path / 'events_visual.csv'
  path.write_text(text)
  with pytest.raises(annotations.AnnotationError, match=str(path) + message):
    events.read_predictions(str(path), NAMES)


def test_rows_named_by_the_video_id_score_as_their_clip(tmp_path):
  """A feature folder in the release layout names clips by their 11-character id; its events
  read back as those of the clips with that id, as the loader maps ids to clips."""
  names = np.array(['aaaaaaaaaaa_30_40', 'bbbbbbbbbbb_0_10', 'ccccccccccc_5_15'])
  rng = np.random.default_rng(1)
  pred = rng.random((3, 25, 10)) < 0.3
  by_name, by_id = str(tmp_path / 'by_name.csv'), str(tmp_path / 'by_id.csv')
  events.write_events_csv(by_name, events.to_events(pred, names))
  ids = np.array([annotations.video_id(n) for n in names])
  events.write_events_csv(by_id, events.to_events(pred, ids))
  np.testing.assert_array_equal(events.read_predictions(by_id, names), pred)
  np.testing.assert_array_equal(events.read_predictions(by_name, names), pred)
  shared = np.array(['aaaaaaaaaaa_30_40', 'aaaaaaaaaaa_40_50', 'bbbbbbbbbbb_0_10'])
  with pytest.raises(annotations.AnnotationError,
                     match=r"video id 'aaaaaaaaaaa' names 2 clips of the split "
                           r"\(aaaaaaaaaaa_30_40, aaaaaaaaaaa_40_50\); give the filename"):
    events.read_predictions(by_id, shared)
