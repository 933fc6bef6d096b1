"""R(2+1)D-18 (Tran et al., CVPR 2018) as torchvision builds it (`r2plus1d_18`): the 3D
visual network of the LLP release, up to its 512-d global average pool.

Every 3x3x3 convolution is factorised into a (1, 3, 3) spatial conv to `mid` channels,
batch norm, ReLU and a (3, 1, 1) temporal conv, with `mid` chosen so that the parameter
count matches the full 3D conv (torchvision's `Conv2Plus1D`). Submodule names follow
torchvision's state dict: `stem.<i>` -> `stem_<i>`, block `layer<i>.<j>` -> `layer<i>_<j>`,
inside it `conv1.0.0` -> `conv1_0_0` and so on.
"""

import flax.linen as nn
import jax.numpy as jnp

from avvp_jax.extract.layers import batch_norm, conv


def midplanes(inplanes: int, planes: int) -> int:
  """The width of the factorised conv's middle (torchvision `BasicBlock`)."""
  return (inplanes * planes * 27) // (inplanes * 9 + 3 * planes)


class Conv2Plus1D(nn.Module):
  """(1, 3, 3) spatial conv, BN, ReLU, (3, 1, 1) temporal conv; `stride` in all three axes
  (time on the temporal conv, space on the spatial one)."""
  planes: int
  mid: int
  stride: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    s = self.stride
    x = conv(self.mid, (1, 3, 3), (1, s, s), (0, 1, 1), name='0')(x)
    x = nn.relu(batch_norm('1')(x))
    return conv(self.planes, (3, 1, 1), (s, 1, 1), (1, 0, 0), name='3')(x)


class BasicBlock(nn.Module):
  """Two factorised convs with BN, a projection shortcut where shapes change."""
  planes: int
  stride: int
  inplanes: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    mid = midplanes(self.inplanes, self.planes)
    y = Conv2Plus1D(self.planes, mid, self.stride, name='conv1_0')(x)
    y = nn.relu(batch_norm('conv1_1')(y))
    y = Conv2Plus1D(self.planes, mid, 1, name='conv2_0')(y)
    y = batch_norm('conv2_1')(y)
    if self.stride != 1 or self.inplanes != self.planes:
      x = conv(self.planes, (1, 1, 1), self.stride, name='downsample_0')(x)
      x = batch_norm('downsample_1')(x)
    return nn.relu(x + y)


class R2Plus1D(nn.Module):
  """(B, T, H, W, 3) normalised clips -> (B, 512) pooled features (torchvision's `avgpool`
  output, before `fc`)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = conv(45, (1, 7, 7), (1, 2, 2), (0, 3, 3), name='stem_0')(x)
    x = nn.relu(batch_norm('stem_1')(x))
    x = conv(64, (3, 1, 1), 1, (1, 0, 0), name='stem_3')(x)
    x = nn.relu(batch_norm('stem_4')(x))
    inplanes = 64
    for i, planes in enumerate((64, 128, 256, 512)):
      for j in range(2):
        stride = 2 if i > 0 and j == 0 else 1
        x = BasicBlock(planes, stride, inplanes, name=f'layer{i + 1}_{j}')(x)
        inplanes = planes
    return jnp.mean(x, axis=(1, 2, 3))
