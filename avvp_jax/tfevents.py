"""TensorBoard event files of scalars, written without TensorFlow.

An event file is a TFRecord stream of `Event` protocol buffers. Each record is framed as
uint64 length, masked CRC-32C of the length, the bytes, masked CRC-32C of the bytes (all
little-endian). The first event carries the file version, each later one a `Summary` with a
scalar `Value` (tag, simple_value). Only those few protobuf fields are encoded here, by hand:
  Event:   wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
           summary = 5 (Summary)
  Summary: value = 1 (repeated Value)
  Value:   tag = 1 (string), simple_value = 2 (float)
"""

import struct

FILE_VERSION = 'brain.Event:2'


def _crc32c_table() -> tuple[int, ...]:
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1  # Castagnoli, reflected.
    table.append(crc)
  return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
  length = struct.pack('<Q', len(data))
  return (length + struct.pack('<I', _masked_crc(length)) + data
          + struct.pack('<I', _masked_crc(data)))


def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1  # int64 is encoded as its two's complement.
  out = bytearray()
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (wire type 2)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, what: bytes) -> bytes:
  return (_varint(1 << 3 | 1) + struct.pack('<d', wall_time)
          + _varint(2 << 3 | 0) + _varint(step) + what)


def file_header(wall_time: float) -> bytes:
  """The first record of an event file: its version."""
  return _record(_event(wall_time, 0, _field(3, FILE_VERSION.encode())))


def scalar_records(scalars: list[tuple[str, int, float, float]]) -> bytes:
  """The records of `scalars`, (tag, step, value, wall_time) each, in the order given; an
  event file is `file_header` followed by any number of these."""
  out = []
  for tag, step, value, wall_time in scalars:
    value_msg = _field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack('<f', value)
    out.append(_record(_event(wall_time, step, _field(5, _field(1, value_msg)))))
  return b''.join(out)
