"""PyTorch state dicts of the three networks -> Flax variables.

The Flax modules name each submodule after its PyTorch module path (`layer1.0.conv1` ->
`layer1_0` / `conv1`; see each network's docstring), so one rule converts all three:
a conv weight (out, in, *k) becomes a kernel (*k, in, out), a linear weight (out, in) a
kernel (in, out), a batch norm's weight / bias / running statistics its scale / bias /
mean / var. Keys of the classification heads (`fc.*`) are left out: the release's
features are the pooled outputs before them.
"""

import re

import numpy as np

SKIPPED = re.compile(r'^fc\.|num_batches_tracked$')


def flax_path(module: str) -> tuple[str, ...]:
  """PyTorch module path -> Flax module path: `layer<i>.<j>` is one block, named
  `layer<i>_<j>`, whose inner path joins with '_' except where it names a factorised conv's
  layer (`conv1.0.3` -> ('conv1_0', '3')); elsewhere the whole path joins with '_'."""
  parts = module.split('.')
  if parts[0].startswith('layer'):
    block, inner = f'{parts[0]}_{parts[1]}', parts[2:]
    if len(inner) == 3:  # R(2+1)D: conv<k>.0.<layer of Conv2Plus1D>.
      return block, f'{inner[0]}_{inner[1]}', inner[2]
    return block, '_'.join(inner)
  return ('_'.join(parts),)


def torch_to_flax(state_dict: dict) -> dict:
  """{name: array-like} (a PyTorch state dict, values as numpy) -> {'params': ...,
  'batch_stats': ...} nested dicts of float32 arrays."""
  modules: dict[str, dict[str, np.ndarray]] = {}
  for key, value in state_dict.items():
    if SKIPPED.search(key):
      continue
    module, leaf = key.rsplit('.', 1)
    modules.setdefault(module, {})[leaf] = np.asarray(value, dtype=np.float32)
  variables = {'params': {}, 'batch_stats': {}}

  def put(collection, module, leaves):
    node = variables[collection]
    for name in flax_path(module):
      node = node.setdefault(name, {})
    node.update(leaves)

  for module, tensors in modules.items():
    if 'running_mean' in tensors:
      put('params', module, {'scale': tensors['weight'], 'bias': tensors['bias']})
      put('batch_stats', module, {'mean': tensors['running_mean'],
                                  'var': tensors['running_var']})
      continue
    weight = tensors['weight']
    # (out, in, *k) -> (*k, in, out); (out, in) -> (in, out).
    kernel = np.transpose(weight, tuple(range(2, weight.ndim)) + (1, 0))
    put('params', module, {'kernel': kernel, **({'bias': tensors['bias']}
                                                 if 'bias' in tensors else {})})
  if not variables['batch_stats']:
    del variables['batch_stats']
  return variables
