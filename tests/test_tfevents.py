"""TensorBoard event files written by hand, against TensorBoard's own protos and reader."""

import pytest

from avvp_jax import tfevents

event_pb2 = pytest.importorskip('tensorboard.compat.proto.event_pb2')
summary_pb2 = pytest.importorskip('tensorboard.compat.proto.summary_pb2')
event_accumulator = pytest.importorskip(
    'tensorboard.backend.event_processing.event_accumulator')


def test_events_are_the_bytes_of_tensorboards_protos():
  scalars = {'base/train/total': 0.25, 'final/val/segment/type': 71.53, 'base/lr': 3e-4}
  want = event_pb2.Event(wall_time=1765000000.25, step=300, summary=summary_pb2.Summary(
      value=[summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]))
  assert tfevents.event(1765000000.25, 300, scalars=scalars) == want.SerializeToString()
  version = event_pb2.Event(wall_time=2.5, file_version=tfevents.FILE_VERSION)
  assert tfevents.event(2.5, file_version=tfevents.FILE_VERSION) == version.SerializeToString()


def test_crc_is_the_tfrecord_checksum():
  from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c
  for data in (b'', b'a', bytes(range(256)) * 3):
    assert tfevents.masked_crc(data) == masked_crc32c(data)
  assert tfevents.crc32c(b'123456789') == 0xE3069283  # The standard check value of CRC-32C.


def test_tensorboard_reads_a_file_back(tmp_path):
  f = tfevents.EventFile(str(tmp_path), '.x')
  f.write(tfevents.event(10.0, 1, scalars={'a/b': 0.5}), tfevents.event(11.0, 2, scalars={'a/b': 0.25}))
  f.close()
  acc = event_accumulator.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert [(e.step, e.value, e.wall_time) for e in acc.Scalars('a/b')] == [(1, 0.5, 10.0),
                                                                            (2, 0.25, 11.0)]
