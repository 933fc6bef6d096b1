"""Layers shared by the three extraction networks, named so that `convert` can map PyTorch
state-dict keys onto them (module `a.b.c` -> Flax module `a_b_c`)."""

from typing import Sequence

import flax.linen as nn


def conv(features: int, kernel: Sequence[int], stride: Sequence[int] | int = 1,
         padding: Sequence[int] | int = 0, bias: bool = False, name: str | None = None):
  """PyTorch's ConvNd on channels-last input: symmetric zero padding `padding` per spatial
  axis, kernel (*kernel, in, out)."""
  n = len(kernel)
  stride = (stride,) * n if isinstance(stride, int) else tuple(stride)
  padding = (padding,) * n if isinstance(padding, int) else tuple(padding)
  return nn.Conv(features, tuple(kernel), strides=stride, padding=[(p, p) for p in padding],
                 use_bias=bias, name=name)


def batch_norm(name: str):
  """PyTorch's BatchNormNd in eval mode (running statistics, eps 1e-5)."""
  return nn.BatchNorm(use_running_average=True, epsilon=1e-5, name=name)
