"""The run's log: epoch records in metrics.jsonl and their TensorBoard view."""

import dataclasses
import os

import pytest

from avvp_jax import logs

event_accumulator = pytest.importorskip(
    'tensorboard.backend.event_processing.event_accumulator')


def _record(stage, epoch, seed):
  return logs.EpochRecord(
      stage=stage, epoch=epoch, seed=seed, step=3 * epoch, lr=1e-3 / epoch,
      train={'total': 3.0 - epoch + seed}, val={'segment/type': 50.0 + epoch},
      seconds=1.5, time=1000.0 + epoch)


def test_truncate_metrics_drops_later_epochs_and_a_cut_line(tmp_path):
  records = [_record(s, e, 0) for s, e in (('base', 1), ('base', 2), ('base', 3), ('final', 1))]
  logs.append_metrics(str(tmp_path), records[:2])
  logs.append_metrics(str(tmp_path), records[2:])
  with open(tmp_path / logs.METRICS_FILE, 'a') as f:
    f.write('{"stage": "final", "ep')  # A kill in the middle of a write.
  assert logs.read_metrics(str(tmp_path)) == records  # The cut line is not a record.
  logs.truncate_metrics(str(tmp_path), 'final', 0)
  assert logs.read_metrics(str(tmp_path)) == records[:3]
  logs.truncate_metrics(str(tmp_path), 'base', 1)
  assert logs.read_metrics(str(tmp_path)) == records[:1]
  with open(tmp_path / logs.METRICS_FILE, 'a') as f:
    f.write('{"stage": "final", "ep\n' + _record('final', 2, 0).to_json() + '\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl, line 2: not an epoch record'):
    logs.read_metrics(str(tmp_path))  # A broken line before the last is no kill's doing.


def _tensorboard(workdir, seed):
  acc = event_accumulator.EventAccumulator(logs.tensorboard_dir(workdir, seed))
  acc.Reload()
  return acc


def _steps(workdir, seed, tag):
  acc = _tensorboard(workdir, seed)
  return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()['scalars'] else []


def test_tensorboard_reads_back_every_scalar_of_a_record(tmp_path):
  workdir = str(tmp_path)
  record = _record('final', 2, 3)
  with logs.TensorBoardLog(workdir) as tensorboard:
    tensorboard.add([record])
  acc = _tensorboard(workdir, 3)
  assert sorted(acc.Tags()['scalars']) == ['final/lr', 'final/train/total',
                                           'final/val/segment/type']
  got = {tag: [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)]
         for tag in acc.Tags()['scalars']}
  assert got == {tag: [(2, pytest.approx(value, rel=1e-7), 1002.0)]
                 for tag, value in record.scalars().items()}


def test_tensorboard_files_follow_the_metrics_log_through_a_resume(tmp_path):
  """Each seed's events get every epoch as it is logged; a resume that drops the epochs
  after the last checkpoint drops them from TensorBoard too, leaving one file per seed."""
  workdir = str(tmp_path)
  with logs.TensorBoardLog(workdir) as tensorboard:
    for epoch in (1, 2, 3):
      records = [_record('base', epoch, seed) for seed in (0, 1)]
      logs.append_metrics(workdir, records)
      tensorboard.add(records)
      assert _steps(workdir, 1, 'base/train/total')[-1] == (epoch, 4.0 - epoch)  # Live.
  assert _steps(workdir, 1, 'base/train/total') == [(1, 3.0), (2, 2.0), (3, 1.0)]
  assert [s for s, _ in _steps(workdir, 0, 'base/val/segment/type')] == [1, 2, 3]
  logs.truncate_metrics(workdir, 'base', 1)  # What a resume after epoch 1 does.
  with logs.TensorBoardLog(workdir):
    pass
  for seed in (0, 1):
    assert _steps(workdir, seed, 'base/train/total') == [(1, 2.0 + seed)]
    assert _steps(workdir, seed, 'base/lr') == [(1, pytest.approx(1e-3))]
    assert len(os.listdir(logs.tensorboard_dir(workdir, seed))) == 1
  logs.truncate_metrics(workdir, 'base', 0)  # A kill in the first epoch: no record is left.
  with logs.TensorBoardLog(workdir):
    pass
  assert _steps(workdir, 0, 'base/train/total') == []


def test_format_epoch_shows_the_mean_and_sd_over_seeds():
  records = [dataclasses.replace(_record('base', 2, seed), val={'segment/type': 50.0 + 2 * seed,
                                                                'event/type': 40.0})
             for seed in (0, 1)]
  assert logs.format_epoch(records[:1], 8) == (
      '[base] epoch 2/8  loss 1.0000  val Type@AV 50.0 / 40.0 (segment / event)  1.5s')
  assert logs.format_epoch(records, 8) == (
      '[base] epoch 2/8  loss 1.5000 ± 0.5000  val Type@AV 51.0 ± 1.0 / 40.0 ± 0.0 '
      '(segment / event)  1.5s')
