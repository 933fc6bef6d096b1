"""Reading one per-clip .npy file, with errors that name the file and the clip."""

import os

import numpy as np


def read_npy(path: str, clip: str, error: type[Exception], what: str) -> np.ndarray:
  """The array in `path`, or `error` naming the file, the clip and `what` the file is."""
  if not os.path.exists(path):
    raise error(f'{path}: {what} file of clip {clip!r} not found.')
  try:
    return np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise error(f'{path}: clip {clip!r}: not a readable .npy array ({e}).') from e
