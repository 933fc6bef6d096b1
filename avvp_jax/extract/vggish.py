"""VGGish (Hershey et al., ICASSP 2017): the audio network of the LLP release.

The architecture of AudioSet's VGGish as torchvggish ports it: four VGG conv blocks
(64, 128, 256-256, 512-512; 3x3 convs with ReLU, 2x2 max pooling after each block) on a
(96, 64) log-mel example, then three fully connected layers (4096, 4096, 128), each
followed by ReLU. The flatten is channels-last, as torchvggish transposes to before its
`view`. Submodule names follow torchvggish's `features.<i>` / `embeddings.<i>`.

The LLP release saved this raw 128-d output (after the last ReLU), without AudioSet's PCA
and 8-bit quantisation (AVVP-ECCV20's `audio_feature_extractor.py` leaves the PCA file
out).
"""

import flax.linen as nn
import jax.numpy as jnp

from avvp_jax.extract.layers import conv

# Conv widths, 'M' for a 2x2 max pooling (torchvggish `make_layers`).
FEATURES = (64, 'M', 128, 'M', 256, 256, 'M', 512, 512, 'M')
EMBEDDING_DIMS = (4096, 4096, 128)


class VGGish(nn.Module):
  """(B, 96, 64) log-mel examples -> (B, 128) embeddings (before PCA)."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    x = x[..., None]  # (B, 96, 64, 1)
    index = 0  # The index of the layer in torchvggish's `features` Sequential.
    for v in FEATURES:
      if v == 'M':
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        index += 1
      else:
        x = nn.relu(conv(v, (3, 3), padding=1, bias=True, name=f'features_{index}')(x))
        index += 2
    x = x.reshape(x.shape[0], -1)  # (B, 6 * 4 * 512), channels last.
    for i, dim in enumerate(EMBEDDING_DIMS):
      x = nn.relu(nn.Dense(dim, name=f'embeddings_{2 * i}')(x))
    return x

