"""Parsers for the LLP annotation files (docs/spec.md section 1).

Two formats, both tab-separated with a header row:
  * weak labels (`AVVP_train.csv`, `AVVP_val_pd.csv`, ...): `filename`, `event_labels`
    (comma-separated class names);
  * dense labels (`AVVP_eval_audio.csv`, `AVVP_eval_visual.csv`): `filename`, `onset`,
    `offset`, `event_labels` (one class per row), covering segments onset <= t < offset.

Every error names the file, the line and the clip. The real dense files contain rows that
mark nothing (`offset <= onset`) and rows for clips that belong to no split; both are
counted and reported, and handled as the reference does (an empty slice; ignored).
"""

import dataclasses
import os
from typing import Sequence

import numpy as np

from avvp_jax.data.classes import CLASS_INDEX, NUM_CLASSES, NUM_SEGMENTS

ID_LENGTH = 11  # A YouTube id; feature files are named by it.


class AnnotationError(ValueError):
  """An annotation file is malformed; the message names the file, line and clip."""


def video_id(filename: str) -> str:
  """The feature-file name of a clip: the first 11 characters (ids may contain '_' or '-')."""
  return filename[:ID_LENGTH]


def _read_rows(path: str, columns: Sequence[str]) -> list[tuple[int, list[str]]]:
  """Returns (line number, fields) for each data row, after checking the header."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: annotation file not found.')
  with open(path, newline='') as f:
    lines = f.read().splitlines()
  if not lines:
    raise AnnotationError(f'{path}: empty file, expected a header {list(columns)}.')
  header = lines[0].split('\t')
  if header != list(columns):
    raise AnnotationError(f'{path}:1: header is {header}, expected {list(columns)}.')
  rows = []
  for lineno, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = line.split('\t')
    if len(fields) != len(columns):
      raise AnnotationError(
          f'{path}:{lineno}: clip {fields[0]!r}: {len(fields)} fields, expected '
          f'{len(columns)} ({", ".join(columns)}).')
    rows.append((lineno, fields))
  return rows


def _class_index(name: str, path: str, lineno: int, clip: str) -> int:
  if name not in CLASS_INDEX:
    raise AnnotationError(f'{path}:{lineno}: clip {clip!r}: unknown class {name!r}.')
  return CLASS_INDEX[name]


def read_weak_labels(path: str) -> tuple[list[str], np.ndarray]:
  """Reads a weak-label file.

  Returns:
    names: the clip filenames in file order (N,).
    labels: float32 (N, 25), 1 where the class is in the clip's label set.
  """
  names, labels, first_line, first_id = [], [], {}, {}
  for lineno, (clip, events) in _read_rows(path, ('filename', 'event_labels')):
    if clip in first_line:
      raise AnnotationError(
          f'{path}:{lineno}: clip {clip!r} is listed twice (first on line {first_line[clip]}).')
    vid = video_id(clip)
    if vid in first_id:
      raise AnnotationError(
          f'{path}:{lineno}: clip {clip!r} has the same video id {vid!r} as clip '
          f'{first_id[vid][1]!r} on line {first_id[vid][0]}: their feature files would collide.')
    first_line[clip], first_id[vid] = lineno, (lineno, clip)
    row = np.zeros(NUM_CLASSES, np.float32)
    if not events.strip():
      raise AnnotationError(f'{path}:{lineno}: clip {clip!r} has no event label.')
    for name in events.split(','):
      row[_class_index(name.strip(), path, lineno, clip)] = 1.0
    names.append(clip)
    labels.append(row)
  if not names:
    raise AnnotationError(f'{path}: no clip listed.')
  return names, np.stack(labels)


@dataclasses.dataclass(frozen=True)
class EventRow:
  clip: str
  onset: int
  offset: int
  label: int
  lineno: int


def read_event_rows(path: str) -> list[EventRow]:
  """Reads a dense-label file into validated rows (one event instance each)."""
  rows = []
  for lineno, (clip, onset, offset, name) in _read_rows(
      path, ('filename', 'onset', 'offset', 'event_labels')):
    try:
      onset_i, offset_i = int(onset), int(offset)
    except ValueError:
      raise AnnotationError(
          f'{path}:{lineno}: clip {clip!r}: onset {onset!r} / offset {offset!r} are not '
          'integer seconds.') from None
    for what, value in (('onset', onset_i), ('offset', offset_i)):
      if not 0 <= value <= NUM_SEGMENTS:
        raise AnnotationError(
            f'{path}:{lineno}: clip {clip!r}: {what} {value} is outside 0..{NUM_SEGMENTS}.')
    rows.append(EventRow(clip, onset_i, offset_i, _class_index(name, path, lineno, clip), lineno))
  return rows


@dataclasses.dataclass(frozen=True)
class DenseStats:
  """What `dense_truth` handled without failing, so that callers can report it."""
  empty_rows: list[EventRow]  # offset <= onset: marks nothing.
  unknown_clip_rows: list[EventRow]  # The clip is not in `names`.


def dense_truth(rows: Sequence[EventRow], names: Sequence[str]) -> tuple[np.ndarray, DenseStats]:
  """Fills the dense truth of the clips `names` from event rows.

  Returns:
    truth: bool (N, 25, 10), truth[i, c, t] for onset <= t < offset.
    stats: the rows that marked nothing and the rows of clips not in `names`.
  """
  index = {name: i for i, name in enumerate(names)}
  truth = np.zeros((len(names), NUM_CLASSES, NUM_SEGMENTS), bool)
  empty, unknown = [], []
  for row in rows:
    if row.clip not in index:
      unknown.append(row)
      continue
    if row.offset <= row.onset:
      empty.append(row)  # The reference fills an empty slice.
      continue
    truth[index[row.clip], row.label, row.onset:row.offset] = True
  return truth, DenseStats(empty, unknown)


def describe_rows(rows: Sequence[EventRow], limit: int = 3) -> str:
  """A short, readable list of rows for warnings: 'clip (line N), ...'."""
  shown = ', '.join(f'{r.clip} (line {r.lineno})' for r in rows[:limit])
  return shown + (f', ... ({len(rows) - limit} more)' if len(rows) > limit else '')
