"""The three extraction networks in Flax against their PyTorch references (torchvggish's
VGGish, torchvision's resnet152 and r2plus1d_18) at the same random weights, converted by
`convert.torch_to_flax`: pooled features within 1e-4 of the largest. Small inputs (the
networks pool globally), so that CI stays fast."""

import jax
import numpy as np
import pytest

from avvp_jax.extract import convert, extractor

torch_refs = pytest.importorskip('benchmarks.torch_extract')

# name: one small input in PyTorch's layout, and the permutation to channels-last.
INPUTS = {
    'vggish': ((2, 1, 96, 64), (0, 2, 3, 1)),
    'res152': ((2, 3, 48, 40), (0, 2, 3, 1)),
    'r2plus1d_18': ((2, 3, 8, 32, 24), (0, 2, 3, 4, 1)),
}


@pytest.mark.parametrize('name', list(INPUTS))
def test_flax_network_matches_its_pytorch_reference(name):
  model, weights = torch_refs.network(name, seed=1)
  shape, to_last = INPUTS[name]
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  want = torch_refs.run(model, x)
  variables = convert.torch_to_flax(weights)
  module = extractor.NETWORKS[name].module
  x_flax = np.transpose(x, to_last)[..., 0] if name == 'vggish' else np.transpose(x, to_last)
  # Every converted array lands where the module expects it, with its shape.
  expected = jax.eval_shape(module.init, jax.random.key(0), x_flax)
  assert (jax.tree_util.tree_map(lambda a: a.shape, expected)
          == jax.tree_util.tree_map(np.shape, variables))
  got = np.asarray(jax.jit(module.apply)(variables, x_flax))
  assert got.shape == want.shape == (2, extractor.NETWORKS[name].feature_shape[1])
  scale = np.abs(want).max()
  assert scale > 0
  np.testing.assert_allclose(got / scale, want / scale, atol=1e-4, rtol=0)


def test_conversion_drops_the_head_and_names_blocks_as_torchvision_does():
  _, weights = torch_refs.network('res152')
  variables = convert.torch_to_flax(weights)
  assert 'fc' not in variables['params'] and 'fc.weight' in weights
  # A block's names: layer<i>.<j> -> layer<i>_<j>, its projection -> downsample_0 / _1.
  block = variables['params']['layer2_0']
  assert block['conv2']['kernel'].shape == (3, 3, 128, 128)
  assert set(block) == {'conv1', 'bn1', 'conv2', 'bn2', 'conv3', 'bn3', 'downsample_0',
                        'downsample_1'}
  np.testing.assert_array_equal(
      variables['batch_stats']['layer2_0']['bn1']['var'], weights['layer2.0.bn1.running_var'])
