"""TensorBoard event files of scalars, written by hand: a TFRecord file of `Event` protos.

Only what the logs need: the file-version event and scalar summaries. Written here rather
than through tensorboardX, whose package imports PyTorch where it is installed (1.3 s and
0.3 GB at every start of a run).

Record framing (TFRecord): uint64 length, uint32 masked CRC-32C of the length, the bytes,
uint32 masked CRC-32C of the bytes, little-endian. Proto fields used: Event.wall_time (1,
double), Event.step (2, int64), Event.file_version (3, string), Event.summary (5);
Summary.value (1); Summary.Value.tag (1, string), Summary.Value.simple_value (2, float).
"""

import os
import socket
import struct
import time

FILE_VERSION = 'brain.Event:2'


def _crc32c_table() -> list[int]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    table.append(crc)
  return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), as TFRecord checksums use it."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
  out = bytearray()
  while True:
    low, n = n & 0x7F, n >> 7
    out.append(low | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (wire type 2)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, *, scalars: dict[str, float] | None = None,
          file_version: str | None = None) -> bytes:
  """One serialised `Event`: a file version, or scalar summaries {tag: value}."""
  out = b'\x09' + struct.pack('<d', wall_time)
  if step:  # (proto3 leaves a zero out.)
    out += b'\x10' + _varint(step)
  if file_version is not None:
    out += _field(3, file_version.encode())
  if scalars:
    values = b''.join(_field(1, _field(1, tag.encode()) + b'\x15' + struct.pack('<f', value))
                      for tag, value in scalars.items())
    out += _field(5, values)
  return out


def record(data: bytes) -> bytes:
  """`data` framed as one TFRecord."""
  length = struct.pack('<Q', len(data))
  return (length + struct.pack('<I', masked_crc(length)) + data
          + struct.pack('<I', masked_crc(data)))


class EventFile:
  """An event file in `directory`, named as TensorBoard finds them (`*tfevents*`), with a
  suffix of its own (two files of one second must not share a name); each `write` goes to
  the file before it returns."""

  def __init__(self, directory: str, suffix: str):
    self.path = os.path.join(
        directory, f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}{suffix}')
    self._file = open(self.path, 'ab')
    self.write(event(time.time(), file_version=FILE_VERSION))

  def write(self, *events: bytes) -> None:
    self._file.write(b''.join(record(e) for e in events))
    self._file.flush()

  def close(self) -> None:
    self._file.close()
