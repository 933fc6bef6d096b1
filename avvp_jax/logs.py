"""The log of a run: one `EpochRecord` per training stage, epoch and seed, kept in
<workdir>/metrics.jsonl and viewed as TensorBoard scalars, one run per seed.

metrics.jsonl is appended to, a line per record. A kill can cut its last line and leave the
records of epochs that the next run redoes: that run drops both (`truncate_metrics`) and
rewrites the TensorBoard files from what is left (`TensorBoardLog`). Only process 0 writes.
"""

import dataclasses
import glob
import json
import os
import secrets
import socket
import time

import numpy as np
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.record_writer import RecordWriter

from avvp_jax import workdir as wd

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


@dataclasses.dataclass(frozen=True)
class EpochRecord:
  """What one epoch of a training stage did for one seed.

  `train`: the epoch mean of each loss term; `val`: the ten numbers on val; `step`: the
  train step after the epoch; `lr`: the lr of its last step; `seconds`: the epoch's wall
  time (all seeds together); `time`: when it ended (Unix time).
  """
  stage: str
  epoch: int
  seed: int
  step: int
  lr: float
  train: dict[str, float]
  val: dict[str, float]
  seconds: float
  time: float

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, line: str) -> 'EpochRecord':
    return cls(**json.loads(line))

  def scalars(self) -> dict[str, float]:
    """As TensorBoard tags: <stage>/train/<loss term>, <stage>/val/<metric>, <stage>/lr."""
    return {**{f'{self.stage}/{group}/{k}': v
               for group in ('train', 'val') for k, v in getattr(self, group).items()},
            f'{self.stage}/lr': self.lr}


def _metrics_path(workdir: str) -> str:
  return os.path.join(workdir, METRICS_FILE)


def read_metrics(workdir: str) -> list[EpochRecord]:
  """The records of <workdir>/metrics.jsonl, oldest first ([] if none), without a last line
  cut by a kill."""
  path = _metrics_path(workdir)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  records = []
  for n, line in enumerate(lines):
    try:
      records.append(EpochRecord.from_json(line))
    except (json.JSONDecodeError, TypeError):
      if n < len(lines) - 1:  # Only the last line can be cut (by a kill); the next run drops it.
        raise ValueError(f'{path}, line {n + 1}: not an epoch record: {line[:80]!r}') from None
  return records


def append_metrics(workdir: str, records: list[EpochRecord]) -> None:
  if not wd.writes_files():
    return
  with open(_metrics_path(workdir), 'a') as f:
    f.write(''.join(r.to_json() + '\n' for r in records))
    f.flush()
    os.fsync(f.fileno())


def truncate_metrics(workdir: str, stage: str, last_epoch: int) -> None:
  """Drops the records of `stage` after `last_epoch`: written before a kill, redone now.
  A line cut short by the kill is dropped too."""
  path = _metrics_path(workdir)
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.read().splitlines()
  keep = []
  for line in lines:
    try:
      record = EpochRecord.from_json(line)
    except (json.JSONDecodeError, TypeError):
      continue
    if not (record.stage == stage and record.epoch > last_epoch):
      keep.append(line)
  if keep != lines:
    wd.atomic_write(path, ''.join(line + '\n' for line in keep))


def tensorboard_dir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, TENSORBOARD_DIR, f'seed_{seed}')


class TensorBoardLog:
  """The TensorBoard view of metrics.jsonl, one run per seed, stepped by epoch; a context
  manager around one event file per seed, written synchronously with TensorBoard's own
  `RecordWriter` (its `EventFileWriter` and tensorboardX's queue events for a thread, and
  tensorboardX imports PyTorch where it is installed).

  Opening it rewrites every seed's events from metrics.jsonl into a new file and then
  deletes the older ones, so that epochs which a killed run logged and this run redoes
  appear once (a kill in between leaves both files, and the next run rewrites them again).
  `add` then appends each epoch as it ends, so that a live `tensorboard` sees it.
  """

  def __init__(self, workdir: str):
    self._workdir = workdir
    self._writers = {}
    if not wd.writes_files():
      return
    seeds = set()
    root = os.path.join(workdir, TENSORBOARD_DIR)
    for name in os.listdir(root) if os.path.isdir(root) else []:  # Seeds left with no record.
      if name.startswith('seed_') and name[5:].lstrip('-').isdigit():
        seeds.add(int(name[5:]))
    records = read_metrics(workdir)
    old = {s: glob.glob(os.path.join(tensorboard_dir(workdir, s), '*tfevents*'))
           for s in seeds | {r.seed for r in records}}
    for seed in old:
      self._writer(seed)
    self.add(records)
    for path in (p for paths in old.values() for p in paths):
      os.remove(path)

  def _writer(self, seed: int) -> RecordWriter:
    if seed not in self._writers:
      directory = tensorboard_dir(self._workdir, seed)
      os.makedirs(directory, exist_ok=True)
      # A suffix of its own: two stages, or a rewrite and its predecessor, can share a second.
      name = (f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.'
              f'{secrets.token_hex(4)}')
      self._writers[seed] = RecordWriter(open(os.path.join(directory, name), 'ab'))
      self._writers[seed].write(event_pb2.Event(
          wall_time=time.time(), file_version='brain.Event:2').SerializeToString())
    return self._writers[seed]

  def add(self, records: list[EpochRecord]) -> None:
    if not wd.writes_files():
      return
    for record in records:
      summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=v)
                                           for tag, v in record.scalars().items()])
      self._writer(record.seed).write(event_pb2.Event(
          wall_time=record.time, step=record.epoch, summary=summary).SerializeToString())
    for writer in self._writers.values():
      writer.flush()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    for writer in self._writers.values():
      writer.close()


def format_epoch(records: list[EpochRecord], epochs: int) -> str:
  """One line per epoch of all seeds: the loss and val Type@AV (mean ± sd where several)."""
  def show(values, fmt):
    sd = f' ± {np.std(values):{fmt}}' if len(values) > 1 else ''
    return f'{np.mean(values):{fmt}}{sd}'

  first = records[0]
  val = {k: [r.val[k] for r in records] for k in ('segment/type', 'event/type')}
  return (f'[{first.stage}] epoch {first.epoch}/{epochs}  loss '
          f'{show([r.train["total"] for r in records], ".4f")}  val Type@AV '
          f'{show(val["segment/type"], ".1f")} / {show(val["event/type"], ".1f")} '
          f'(segment / event)  {first.seconds:.1f}s')
