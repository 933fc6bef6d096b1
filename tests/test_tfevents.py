"""The event-file writer, read back by TensorBoard's own reader."""

import pytest

from avvp_jax import tfevents

event_accumulator = pytest.importorskip(
    'tensorboard.backend.event_processing.event_accumulator')


def test_crc32c_check_value():
  # The check value of CRC-32C (Castagnoli), as for every CRC catalogue entry.
  assert tfevents.crc32c(b'123456789') == 0xE3069283


def test_tensorboard_reads_back_every_scalar(tmp_path):
  scalars = [('base/train/total', 1, 2.5, 1000.0), ('base/val/segment/type', 1, 61.25, 1000.0),
             ('base/train/total', 2, 1.75, 1010.5), ('final/lr', 300, 3e-4, 1020.0),
             ('base/train/total', -1, 0.5, 1030.0)]
  path = tmp_path / 'events.out.tfevents.test'
  path.write_bytes(tfevents.file_header(999.0) + tfevents.scalar_records(scalars[:2])
                   + tfevents.scalar_records(scalars[2:]))  # Appended in two writes.
  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert sorted(acc.Tags()['scalars']) == ['base/train/total', 'base/val/segment/type',
                                           'final/lr']
  got = [(tag, e.step, e.value, e.wall_time) for tag in acc.Tags()['scalars']
         for e in acc.Scalars(tag)]
  key = lambda x: x[:2]
  assert sorted(got, key=key) == sorted(
      [(t, s, pytest.approx(v, rel=1e-7), w) for t, s, v, w in scalars], key=key)
