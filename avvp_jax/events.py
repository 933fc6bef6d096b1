"""Segment predictions as event rows in the format of LLP's dense-label files, and back.

An event is a run of consecutive positive segments of one class in one clip and modality, a
row `filename  onset  offset  event_labels` (tab-separated, integer seconds, onset < offset
<= 10) as in AVVP_eval_audio.csv / AVVP_eval_visual.csv. Writing predictions as events and
reading them back gives the same (N, 25, 10) arrays, so scoring the files gives exactly the
numbers of scoring the arrays.
"""

import dataclasses

import numpy as np

from avvp_jax.data import annotations
from avvp_jax.data.classes import CLASSES
from avvp_jax.workdir import atomic_write

COLUMNS = ('filename', 'onset', 'offset', 'event_labels')


def to_events(pred: np.ndarray, names, prob=None) -> list[dict]:
  """The events of segment predictions, by clip, class and onset.

  Args:
    pred: bool (N, 25, 10) segment predictions of one modality.
    names: (N,) clip filenames.
    prob: (N, 25, 10) segment probabilities, or None.
  Returns:
    [{'filename', 'onset', 'offset', 'event_labels', and with `prob` 'confidence': the mean
    probability of the event's segments}].
  """
  pred = np.asarray(pred, bool)
  padded = np.pad(pred, [(0, 0), (0, 0), (1, 1)]).astype(np.int8)
  edges = np.diff(padded, axis=-1)  # +1 where a run starts, -1 after it ends.
  events = []
  for i, c in np.argwhere(pred.any(-1)):
    for onset, offset in zip(np.flatnonzero(edges[i, c] == 1), np.flatnonzero(edges[i, c] == -1)):
      event = {'filename': str(names[i]), 'onset': int(onset), 'offset': int(offset),
               'event_labels': CLASSES[c]}
      if prob is not None:
        event['confidence'] = float(np.mean(prob[i, c, onset:offset]))
      events.append(event)
  return events


def write_events_csv(path: str, events: list[dict]) -> None:
  """Writes events as a tab-separated file with LLP's header, atomically."""
  lines = ['\t'.join(COLUMNS)] + [
      '\t'.join(str(e[k]) for k in COLUMNS) for e in events]
  atomic_write(path, '\n'.join(lines) + '\n')


def read_predictions(path: str, names) -> np.ndarray:
  """The segment predictions (N, 25, 10) of the clips `names` in an events file.

  A row names its clip by the filename (`<id>_<start>_<end>`) or, as the files of a feature
  folder in the release layout do (`parse.py --features`), by its 11-character video id,
  which is mapped to the one clip of `names` with that id, as the loader maps them. A clip
  with no row has no events. A wrong header, an unknown class, a time that is not an integer
  in 0..10, onset >= offset, a clip that is not in `names` or an id that names several of
  them is an `annotations.AnnotationError` naming the file, the line and the clip.
  """
  names = [str(n) for n in names]
  by_id = {}
  for name in names:
    by_id.setdefault(annotations.video_id(name), []).append(name)
  known = set(names)
  rows = []
  for row in annotations.read_event_rows(path):
    if row.offset <= row.onset:
      raise annotations.AnnotationError(
          f'{path}:{row.lineno}: clip {row.clip!r}: onset {row.onset} >= offset {row.offset}; '
          'an event needs onset < offset.')
    if row.clip not in known:
      clips = by_id.get(row.clip, [])
      if len(clips) > 1:
        raise annotations.AnnotationError(
            f'{path}:{row.lineno}: video id {row.clip!r} names {len(clips)} clips of the split '
            f'({", ".join(clips[:3])}{", ..." if len(clips) > 3 else ""}); give the filename.')
      if not clips:
        raise annotations.AnnotationError(
            f'{path}:{row.lineno}: clip {row.clip!r} is not in the split that is scored '
            f'({len(known)} clips).')
      row = dataclasses.replace(row, clip=clips[0])
    rows.append(row)
  pred, _ = annotations.dense_truth(rows, names)
  return pred
