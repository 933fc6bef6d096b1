"""The three networks with their weights, run on decoded clips, and the release layout
they write: vggish/<name>.npy (10, 128), res152/<name>.npy (80, 2048),
r2plus1d_18/<name>.npy (10, 512), float32.

Weights are the public PyTorch files the release's networks came from, read from a folder
and converted once (`convert`); random weights exist for tests and benchmarks and mark
everything written with them (`MANIFEST`).
"""

import dataclasses
import functools
import hashlib
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from avvp_jax import workdir as wd
from avvp_jax.extract import convert, frontend, r2plus1d, resnet, video, vggish


@dataclasses.dataclass(frozen=True)
class Network:
  """One network of the release: its module, the PyTorch weight file it loads, where that
  file comes from, the shape of the smallest input that initialises it, and the saved
  feature shape of one clip."""
  module: object
  weights: str
  source: str
  init_shape: tuple[int, ...]
  feature_shape: tuple[int, int]


NETWORKS = {
    'vggish': Network(
        vggish.VGGish(), 'vggish-10086976.pth',
        "torchvggish's port of AudioSet's VGGish: the release asset v0.1 of "
        'harritaylor/torchvggish on GitHub',
        (1, 96, 64), (10, 128)),
    'res152': Network(
        resnet.ResNet(), 'resnet152-b121ed2d.pth',
        "torchvision's ImageNet ResNet-152 (ResNet152_Weights.IMAGENET1K_V1), as "
        'torchvision.models.resnet152(weights="IMAGENET1K_V1") downloads it',
        (1, 32, 32, 3), (80, 2048)),
    'r2plus1d_18': Network(
        r2plus1d.R2Plus1D(), 'r2plus1d_18-91a641e6.pth',
        "torchvision's Kinetics-400 R(2+1)D-18 (R2Plus1D_18_Weights.KINETICS400_V1), as "
        'torchvision.models.video.r2plus1d_18(weights="KINETICS400_V1") downloads it',
        (1, 8, 16, 16, 3), (10, 512)),
}
MANIFEST = 'extract.json'
RANDOM_NOTE = ('RANDOM WEIGHTS: these features come from untrained networks, for tests and '
               'benchmarks only; they mean nothing.')


def missing_weights(folder: str | None) -> list[str]:
  """The weight files that `folder` lacks, each with where it comes from."""
  return [f'{n.weights}: {n.source}' for n in NETWORKS.values()
          if not folder or not os.path.isfile(os.path.join(folder, n.weights))]


def load_torch_file(path: str) -> dict:
  """A PyTorch state dict file -> {key: numpy array}. Needs torch (CPU is enough)."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise SystemExit(f'Reading {path} needs PyTorch: pip install torch (the CPU build is '
                     'enough; the converted weights are cached beside it).') from None
  state = torch.load(path, map_location='cpu', weights_only=True)
  return {k: v.numpy() for k, v in state.items()}


def load_weights(folder: str) -> dict[str, dict]:
  """{network: Flax variables} from the PyTorch files in `folder`; each conversion is cached
  there as <file>.flax.npz, so PyTorch is needed only the first time."""
  variables = {}
  for name, net in NETWORKS.items():
    path = os.path.join(folder, net.weights)
    cache = path + '.flax.npz'
    if os.path.exists(cache) and os.path.getmtime(cache) >= os.path.getmtime(path):
      with np.load(cache) as z:
        variables[name] = traverse_util.unflatten_dict({k: z[k] for k in z.files}, sep='/')
      continue
    variables[name] = convert.torch_to_flax(load_torch_file(path))
    buffer = io.BytesIO()
    np.savez(buffer, **traverse_util.flatten_dict(variables[name], sep='/'))
    wd.atomic_write(cache, buffer.getvalue())
  return variables


def random_weights(seed: int = 0) -> dict[str, dict]:
  """{network: Flax variables} initialised at random (tests and benchmarks only)."""
  keys = jax.random.split(jax.random.key(seed), len(NETWORKS))
  return {name: jax.jit(net.module.init)(key, jnp.zeros(net.init_shape))
          for key, (name, net) in zip(keys, NETWORKS.items())}


def weights_digest(variables: dict[str, dict]) -> str:
  """A short digest of all the networks' variables, recorded in the manifest."""
  h = hashlib.sha256()
  for name in sorted(variables):
    for key, value in sorted(traverse_util.flatten_dict(variables[name], sep='/').items()):
      h.update(key.encode())
      h.update(np.ascontiguousarray(value, dtype=np.float32).tobytes())
  return h.hexdigest()[:16]


def feature_functions(variables: dict[str, dict]):
  """{network: (batch of one clip's inputs) -> features}, each a jitted function of the
  weights and the inputs with the weights bound (passed as arguments, so that they are not
  baked into the compiled program as constants).

  vggish: (10, 96, 64) log-mel examples -> (10, 128);
  res152: (80, 224, 224, 3) uint8 frames -> (80, 2048);
  r2plus1d_18: (10, 8, 112, 112, 3) uint8 clips -> (10, 512).
  """
  def images(mean, std):
    return lambda x: (x.astype(jnp.float32) / 255.0 - mean) / std

  prepare = {
      'vggish': lambda x: x,
      'res152': images(frontend.IMAGENET_MEAN, frontend.IMAGENET_STD),
      'r2plus1d_18': images(frontend.KINETICS_MEAN, frontend.KINETICS_STD),
  }
  return {name: functools.partial(jax.jit(
      lambda v, x, n=name: NETWORKS[n].module.apply(v, prepare[n](x))), variables[name])
          for name in NETWORKS}


def clip_inputs(clip: video.Clip) -> dict[str, np.ndarray]:
  """The three networks' inputs for one decoded clip (shapes as `feature_functions`)."""
  return {'vggish': frontend.clip_examples(clip.audio),
          'res152': video.resnet_input(clip.frames),
          'r2plus1d_18': video.r2plus1d_input(clip.frames)}


def feature_paths(out: str, name: str) -> dict[str, str]:
  return {n: os.path.join(out, n, f'{name}.npy') for n in NETWORKS}


def is_extracted(out: str, name: str) -> bool:
  return all(os.path.exists(p) for p in feature_paths(out, name).values())


def write_features(out: str, name: str, features: dict[str, np.ndarray]) -> None:
  """Writes one clip's three files, each whole or not at all."""
  for n, path in feature_paths(out, name).items():
    x = np.asarray(features[n], np.float32)
    if x.shape != NETWORKS[n].feature_shape:
      raise ValueError(f'{name}: {n} features of shape {x.shape}, expected '
                       f'{NETWORKS[n].feature_shape}.')
    buffer = io.BytesIO()
    np.save(buffer, x)
    wd.atomic_write(path, buffer.getvalue())


def open_manifest(out: str, weights: str, start: float) -> dict:
  """The manifest of `out`, created or checked: one folder holds features of one set of
  weights and one start, so that real and random features never mix."""
  path = os.path.join(out, MANIFEST)
  want = {'weights': weights, 'start': start,
          **({'note': RANDOM_NOTE} if weights == 'random' else {})}
  if os.path.exists(path):
    with open(path) as f:
      have = json.load(f)
    if (have['weights'], have['start']) != (weights, start):
      raise SystemExit(f'{path}: this folder holds features of weights {have["weights"]} '
                       f'from {have["start"]} s; this run has {weights} from {start} s. '
                       'Use another --out.')
    return have
  wd.atomic_write(path, json.dumps(want, indent=1) + '\n')
  return want


def read_manifest(folder: str) -> dict | None:
  """The manifest of a feature folder written by `launch/extract.py`, or None."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)
