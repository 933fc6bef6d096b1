"""The PyTorch yardsticks of feature extraction: torchvggish's VGGish and torchvision's
resnet152 and r2plus1d_18, at random weights with random batch-norm statistics, in eval
mode and without their classification heads. The parity tests and the `extract` benchmark
section use them.

torchvision's wheel for this torch has no CPU build of its C++ operators, whose fake
registrations fail at import; the models do not use them, so that module is stubbed out
before torchvision is imported.
"""

import sys
import types

import numpy as np
import torch

sys.modules.setdefault('torchvision._meta_registrations',
                       types.ModuleType('torchvision._meta_registrations'))
# pylint: disable=g-import-not-at-top,wrong-import-position
from torchvggish import torchvggish
from torchvision.models import resnet152
from torchvision.models.video import r2plus1d_18


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
  """Batch norms with random affine parameters and running statistics (fresh ones are the
  identity, which would hide a mix-up of scale, bias, mean and variance)."""
  gen = torch.Generator().manual_seed(seed)
  for module in model.modules():
    if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
      n = module.num_features
      module.weight.data = 0.5 + torch.rand(n, generator=gen)
      module.bias.data = 0.2 * torch.rand(n, generator=gen) - 0.1
      module.running_mean = 0.2 * torch.rand(n, generator=gen) - 0.1
      module.running_var = 0.5 + torch.rand(n, generator=gen)
  return model.eval()


def network(name: str, seed: int = 0) -> tuple[torch.nn.Module, dict[str, np.ndarray]]:
  """(the reference `name` with its head removed, pooled features out; its whole state
  dict, head included, as the public weight files hold it)."""
  torch.manual_seed(seed)
  build = {'vggish': lambda: torchvggish._vgg(postprocess=False),  # pylint: disable=protected-access
           'res152': resnet152, 'r2plus1d_18': r2plus1d_18}[name]
  model = _randomise(build(), seed)
  weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
  if hasattr(model, 'fc'):
    model.fc = torch.nn.Identity()
  return model, weights


def run(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(x)).numpy()
