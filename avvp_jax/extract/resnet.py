"""ResNet-152 (He et al., CVPR 2016) as torchvision builds it: the 2D visual network of
the LLP release, up to its 2048-d global average pool.

torchvision's v1.5 bottleneck (the stride on the 3x3 conv), batch norm in eval mode.
Submodule names follow torchvision's state dict: `conv1`, `bn1`, block `layer<i>.<j>` ->
`layer<i>_<j>`, its `downsample.0` / `.1` -> `downsample_0` / `downsample_1`.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from avvp_jax.extract.layers import batch_norm, conv

RESNET152_BLOCKS = (3, 8, 36, 3)
EXPANSION = 4


class Bottleneck(nn.Module):
  """1x1, 3x3 (stride here), 1x1 convs with a projection shortcut where shapes change."""
  planes: int
  stride: int
  project: bool

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = nn.relu(batch_norm('bn1')(conv(self.planes, (1, 1), name='conv1')(x)))
    y = conv(self.planes, (3, 3), self.stride, 1, name='conv2')(y)
    y = nn.relu(batch_norm('bn2')(y))
    y = batch_norm('bn3')(conv(self.planes * EXPANSION, (1, 1), name='conv3')(y))
    if self.project:
      x = conv(self.planes * EXPANSION, (1, 1), self.stride, name='downsample_0')(x)
      x = batch_norm('downsample_1')(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """(B, H, W, 3) normalised images -> (B, 2048) pooled features (torchvision's `avgpool`
  output, before `fc`)."""
  blocks: Sequence[int] = RESNET152_BLOCKS

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = nn.relu(batch_norm('bn1')(conv(64, (7, 7), 2, 3, name='conv1')(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, (planes, count) in enumerate(zip((64, 128, 256, 512), self.blocks)):
      for j in range(count):
        stride = 2 if i > 0 and j == 0 else 1
        x = Bottleneck(planes, stride, project=j == 0, name=f'layer{i + 1}_{j}')(x)
    return jnp.mean(x, axis=(1, 2))
