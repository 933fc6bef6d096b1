"""The in-memory form of one data split, shared by every data source."""

import dataclasses
from typing import Optional

import jax
import numpy as np


# The model's inputs, per clip.
FEATURES = ('audio', 'video_2d', 'video_3d')

# XLA's CPU client uses a host array in place of a device copy when its data starts on a
# 64-byte boundary (NumPy's own arrays start on 16): the loaders allocate the features so,
# and a run on the CPU holds them once.
ALIGNMENT = 64


def aligned_empty(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
  """An uninitialised C-contiguous array whose data starts on an ALIGNMENT-byte boundary."""
  size = int(np.prod(shape)) * np.dtype(dtype).itemsize
  buffer = np.empty(size + ALIGNMENT, np.uint8)
  start = -buffer.ctypes.data % ALIGNMENT
  return buffer[start:start + size].view(dtype).reshape(shape)


def aligned_stack(arrays: list[np.ndarray]) -> np.ndarray:
  """`np.stack(arrays)`, into an `aligned_empty` array."""
  first = np.asarray(arrays[0])
  return np.stack(arrays, out=aligned_empty((len(arrays),) + first.shape, first.dtype))


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: host arrays as loaded, or, once a run has placed it
  (`placement.put_split`), its features as device arrays of N' >= N rows (padded to the
  mesh's `data` axis; rows past N are zeros that no index reaches).

  Attributes:
    names: (N,) clip filenames.
    audio: float32 (N, 10, 128) VGGish features.
    video_2d: float32 (N, 10, 2048) ResNet-152 features, each segment the mean of its 8 frames.
    video_3d: float32 (N, 10, 512) R(2+1)D-18 features.
    labels: float32 (N, 25) weak clip-level labels.
    gt_a, gt_v: bool (N, 25, 10) dense audio / visual truth, or None where the split has none.
  """
  names: np.ndarray
  audio: np.ndarray | jax.Array
  video_2d: np.ndarray | jax.Array
  video_3d: np.ndarray | jax.Array
  labels: np.ndarray
  gt_a: Optional[np.ndarray] = None
  gt_v: Optional[np.ndarray] = None

  def __len__(self) -> int:
    return len(self.names)

  def take(self, idx) -> 'Split':
    """The clips `idx` (an index array), in that order."""
    return Split(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[idx]
                    for f in dataclasses.fields(self)})

  @property
  def has_dense_truth(self) -> bool:
    return self.gt_a is not None and self.gt_v is not None
